"""Tests for lightcomp/cluster/_merge.py: channel merging against a NumPy leader clustering."""

import jax
import numpy as np
import pytest

from lightcomp import cluster


def _leader_groups(v, threshold, metric):
    groups = list(range(len(v)))
    for i in range(len(v)):
        for r in range(i):
            if groups[r] != r:
                continue
            if metric == "euclidean":
                ok = np.linalg.norm(v[i] - v[r]) <= threshold
            else:
                ni, nr = np.linalg.norm(v[i]), np.linalg.norm(v[r])
                ok = (ni == nr == 0) or (ni > 0 and nr > 0 and v[i] @ v[r] / (ni * nr) >= threshold)
            if ok:
                groups[i] = r
                break
    return np.array(groups)


@pytest.mark.parametrize("metric, threshold", [("cosine", 0.98), ("euclidean", 0.5)])
def test_merge_channels_matches_numpy(metric, threshold):
    rng = np.random.default_rng(12)
    base = rng.standard_normal((6, 4)).astype(np.float32)
    cols = [base[:, 0], base[:, 1], 1.5 * base[:, 0], base[:, 1] + 0.01, base[:, 2],
            np.zeros(6, np.float32), np.zeros(6, np.float32), base[:, 3]]  # fmt: skip
    w = np.stack(cols, axis=-1)
    merged, info = cluster.merge_channels(w, threshold, metric=metric)
    groups = _leader_groups(w.T.astype(np.float64), threshold, metric)
    np.testing.assert_array_equal(info.groups, groups)
    assert int(info.num_groups) == len(set(groups.tolist()))
    assert int(info.num_merged) == 8 - len(set(groups.tolist()))
    want = np.stack([w[:, groups == g].mean(axis=1) for g in groups], axis=-1)
    np.testing.assert_allclose(merged, want, rtol=1e-6)
    assert merged.dtype == w.dtype
    jitted = jax.jit(lambda v: cluster.merge_channels(v, threshold, metric=metric))(w)
    np.testing.assert_array_equal(jitted[1].groups, info.groups)
    np.testing.assert_allclose(jitted[0], merged, rtol=1e-6)
    with pytest.raises(ValueError, match="metric must be"):
        cluster.merge_channels(w, 0.5, metric="manhattan")
    with pytest.raises(ValueError, match="threshold"):
        cluster.merge_channels(w, 2.0 if metric == "cosine" else -1.0, metric=metric)


def test_merge_channels_along_another_axis():
    rng = np.random.default_rng(13)
    w = rng.standard_normal((8, 3, 2)).astype(np.float32)  # 8 channels of 6, as above
    w[3] = w[0]  # channel 3 repeats channel 0 along axis 0
    merged, info = cluster.merge_channels(w, 0.999, axis=0)
    groups = _leader_groups(w.reshape(8, -1).astype(np.float64), 0.999, "cosine")
    np.testing.assert_array_equal(info.groups, groups)
    assert int(info.num_merged) == 1
    np.testing.assert_allclose(merged[3], merged[0], rtol=1e-6)


def test_bad_merge_arguments():
    w = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="threshold must be a number"):
        cluster.merge_channels(w, True)
    with pytest.raises(TypeError, match="floating-point"):
        cluster.merge_channels(np.ones((3, 4), np.int32), 0.5)
    with pytest.raises(ValueError, match="at least one dimension"):
        cluster.merge_channels(np.float32(1.0), 0.5)
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        cluster.merge_channels(w, 0.5, axis=2)
    bad = w.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"'conv/kernel'.*NaN/inf"):
        cluster.merge_channels(bad, 0.5, name="conv/kernel")
