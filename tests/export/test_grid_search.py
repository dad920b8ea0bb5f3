"""Tests for lightcomp/export/_grid_search.py: the grid search chunk by chunk."""

import numpy as np
import pytest

from lightcomp.export._format import bits_of
from lightcomp.export._grid_search import find_grid, grid_values, search_grid
from lightcomp.export._groups import Groups, group_ids


def _grid_leaf(shape, bits, seed):
    """A leaf ``float32(n * scale[channel])`` with one scale per last-axis index."""
    rng = np.random.default_rng(seed)
    q = 2 ** (bits - 1) - 1
    n = rng.integers(-q, q + 1, shape)
    scale = (rng.random(shape[-1]) * 0.02 + 0.001).astype(np.float32)
    return (n.astype(np.float32) * scale).astype(np.float32)


@pytest.mark.parametrize("bits", [4, 8])
def test_a_long_dense_leaf_is_found_on_its_grid_bitwise(bits):
    # 2**18 values: many chunks of the passes, the sample screen, the probe of groups
    shape = (1024, 256)
    leaf = _grid_leaf(shape, bits, seed=bits)
    gran = {"kind": "axis", "axis": 1}
    n, scale = search_grid(leaf.reshape(-1), Groups(None, shape, gran))
    assert n.dtype == np.int16 and np.abs(n).max() <= 2 ** (bits - 1) - 1
    gid, _ = group_ids(np.arange(leaf.size), shape, gran)
    assert np.array_equal(
        bits_of(grid_values(n, scale, gid, np.float32)), bits_of(leaf.reshape(-1))
    )


def test_search_grid_agrees_with_find_grid_and_refuses_off_grid_values():
    shape = (512, 64)
    leaf = _grid_leaf(shape, 4, seed=0).reshape(-1)
    gran = {"kind": "axis", "axis": 1}
    gid, k = group_ids(np.arange(leaf.size), shape, gran)
    n1, s1 = search_grid(leaf, Groups(None, shape, gran))
    n2, s2 = find_grid(leaf, gid, k)
    np.testing.assert_array_equal(n1, n2)
    np.testing.assert_array_equal(s1, s2)
    off = leaf + np.float32(1e-4) * np.random.default_rng(1).standard_normal(leaf.size).astype(
        np.float32
    )
    assert search_grid(off, Groups(None, shape, gran)) is None
