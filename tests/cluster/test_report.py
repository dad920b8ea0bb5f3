"""Tests for lightcomp/cluster/_report.py: per-leaf sizes and inertia of a clustering."""

import math

import numpy as np
import pytest

from lightcomp import cluster


def _params(seed=13):
    rng = np.random.default_rng(seed)
    return {
        "Dense_0": {"kernel": rng.standard_normal((50, 10)).astype(np.float32), "bias": np.zeros(10, np.float32)},
        "Dense_1": {"kernel": rng.standard_normal((25, 20)).astype(np.float32), "bias": np.zeros(20, np.float32)},
    }  # fmt: skip


def _codes(params, k, per_channel=False, seed=0):
    """Random centroids and assignments mirroring the kernels (None at the biases)."""
    rng = np.random.default_rng(seed)
    cents, codes = {}, {}
    for name, layer in params.items():
        w = layer["kernel"]
        shape = (w.shape[-1], k) if per_channel else (k,)
        cents[name] = {"kernel": rng.standard_normal(shape).astype(np.float32), "bias": None}
        codes[name] = {"kernel": rng.integers(0, k, w.shape).astype(np.uint8), "bias": None}
    return cents, codes


def test_report_matches_numpy():
    params = _params()
    cents, codes = _codes(params, 16)
    report = cluster.cluster_report(params, cents, codes)
    assert list(report) == ["Dense_0/kernel", "Dense_1/kernel"]
    r = report["Dense_0/kernel"]
    w = params["Dense_0"]["kernel"]
    recon = cents["Dense_0"]["kernel"][codes["Dense_0"]["kernel"]]
    assert (r.k, r.bits, r.channels) == (16, 4, 1)
    np.testing.assert_allclose(r.inertia, np.sum((w - recon) ** 2), rtol=1e-5)
    assert (r.codebook_bytes, r.index_bytes, r.dense_bytes) == (64, 250, 2000)
    assert r.total_bytes == 314


def test_report_of_kmeans_tree():
    params = _params()
    cents, codes = cluster.kmeans_tree(params, 16)
    r = cluster.cluster_report(params, cents, codes)["Dense_1/kernel"]
    c, a = np.asarray(cents["Dense_1"]["kernel"]), np.asarray(codes["Dense_1"]["kernel"])
    np.testing.assert_allclose(
        r.inertia, np.sum((params["Dense_1"]["kernel"] - c[a]) ** 2), rtol=1e-5
    )
    assert (r.k, r.bits, r.channels, r.total_bytes) == (16, 4, 1, 64 + 250)


def test_report_per_channel_with_zero_code():
    params = _params(14)
    cents, codes = _codes(params, 5, per_channel=True)
    r = cluster.cluster_report(params, cents, codes, preserve_zeros=True)["Dense_1/kernel"]
    c, a = cents["Dense_1"]["kernel"], codes["Dense_1"]["kernel"]
    recon = np.where(a == 0, 0.0, c[np.arange(20), a])
    w = params["Dense_1"]["kernel"]
    assert (r.k, r.bits, r.channels) == (5, 3, 20)
    np.testing.assert_allclose(r.inertia, np.sum((w - recon) ** 2), rtol=1e-5)
    assert r.codebook_bytes == 20 * 5 * 4 and r.index_bytes == math.ceil(500 * 3 / 8)


def test_report_errors():
    params = _params()
    cents, codes = _codes(params, 4)
    with pytest.raises(ValueError, match="mirror params"):
        cluster.cluster_report(params, cents["Dense_0"], codes)
    short = {**codes, "Dense_0": {**codes["Dense_0"], "kernel": codes["Dense_0"]["kernel"][:2]}}
    with pytest.raises(ValueError, match="assignments of 'Dense_0/kernel'"):
        cluster.cluster_report(params, cents, short)
    wrong = {**cents, "Dense_0": {"kernel": np.zeros((7, 4), np.float32), "bias": None}}
    with pytest.raises(ValueError, match="fit no axis"):
        cluster.cluster_report(params, wrong, codes)
