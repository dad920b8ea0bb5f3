"""Tests for lightcomp/export/_segments.py: chunked per-group reductions and smallest gaps."""

import numpy as np
import pytest

from lightcomp.export._groups import GivenGroups, Groups, group_ids
from lightcomp.export._segments import segment, smallest_gaps, sorted_distinct, spans


def _np_smallest_gaps(v, gid, k):
    """The definition: per group, the smallest positive gap between sorted distinct |v|."""
    out = np.full(k, np.inf)
    for g in range(k):
        a = np.unique(np.abs(v[gid == g].astype(np.float64)))
        if a.size > 1:
            out[g] = np.diff(a).min()
    return out


@pytest.mark.parametrize("m", [0, 1, 5, 1 << 15, 100_003])
def test_spans_cover_the_range_in_order(m):
    got = list(spans(m))
    assert [lo for lo, _ in got] == sorted(lo for lo, _ in got)
    assert np.array_equal(
        np.concatenate([np.arange(lo, hi) for lo, hi in got] or [[]]), np.arange(m)
    )


def test_segment_and_sorted_distinct_match_numpy():
    rng = np.random.default_rng(0)
    v, ids = rng.standard_normal(1000), rng.integers(0, 7, 1000)
    want = np.array([v[ids == g].max() for g in range(7)])
    np.testing.assert_array_equal(segment(np.maximum, -np.inf, v, ids, 7), want)
    assert segment(np.minimum, np.inf, v, np.zeros(1000, int), 1)[0] == v.min()
    x = rng.integers(0, 50, 500).astype(np.uint64)
    np.testing.assert_array_equal(sorted_distinct(x), np.unique(x))


@pytest.mark.parametrize("few", [False, True])
def test_smallest_gaps_equal_one_sort_of_all_values(few):
    # 100k values: several buckets and chunks; ``few``: a small set of distinct values
    rng = np.random.default_rng(1)
    m, k = 100_000, 7
    if few:
        v = (rng.integers(-40, 40, m) * 0.125).astype(np.float32)
    else:
        v = rng.standard_normal(m).astype(np.float32)
    gid = rng.integers(0, k, m)
    np.testing.assert_array_equal(
        smallest_gaps(v, GivenGroups(gid, k)), _np_smallest_gaps(v, gid, k)
    )


def test_smallest_gaps_of_a_dense_leaf_per_channel():
    shape = (300, 256)
    v = np.random.default_rng(2).standard_normal(np.prod(shape)).astype(np.float32)
    gran = {"kind": "axis", "axis": 1}
    gid, k = group_ids(np.arange(v.size), shape, gran)
    got = smallest_gaps(v, Groups(None, shape, gran))
    np.testing.assert_array_equal(got, _np_smallest_gaps(v, gid, k))
