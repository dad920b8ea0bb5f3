"""Tests of lightcomp.export._positions: non-zero positions as a bitmask or relative indices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp.export._positions import decode_positions, encode_positions, relative_symbols


def _reference_symbols(idx, b):
    """Deep Compression's relative indices, the long gaps cut by skip symbols."""
    top = 2**b - 1
    out, prev = [], -1
    for i in idx:
        gap = i - prev - 1
        out += [top] * (gap // top) + [gap % top]
        prev = i
    return np.array(out, np.int64)


@pytest.mark.parametrize("density", [0.005, 0.05, 0.3])
def test_relative_symbols_match_reference_and_pick_the_cheapest_width(density):
    rng = np.random.default_rng(int(density * 1000))
    idx = np.flatnonzero(rng.random(3000) < density)
    b, sym = relative_symbols(idx)
    np.testing.assert_array_equal(sym, _reference_symbols(idx, b))
    costs = {w: w * _reference_symbols(idx, w).size for w in range(1, 17)}
    assert costs[b] == min(costs.values()) and b == min(w for w in costs if costs[w] == costs[b])


@pytest.mark.parametrize(
    "density,form", [(0.6, "mask"), (0.01, "rel"), (0.0, "mask"), (1.0, "rel")]
)
@pytest.mark.parametrize("entropy", [True, False])
def test_round_trip_and_form(density, form, entropy):
    n = 2000
    idx = np.flatnonzero(np.random.default_rng(5).random(n) < density)
    parts = [b"before"]
    spec = encode_positions(idx, n, parts, entropy)
    assert spec["pos"] == form
    np.testing.assert_array_equal(decode_positions(spec, n, parts), idx)


def test_long_runs_use_skip_symbols():
    idx = np.array([0, 70_000, 70_001, 199_999])
    parts: list[bytes] = []
    spec = encode_positions(idx, 200_000, parts, True)
    assert spec["pos"] == "rel" and spec["m"] == 4
    assert sum(map(len, parts)) < 200_000 // 8 // 100  # far under a bitmask
    np.testing.assert_array_equal(decode_positions(spec, 200_000, parts), idx)


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 500), density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_property_positions_round_trip(n, density, seed):
    idx = np.flatnonzero(np.random.default_rng(seed).random(n) < density)
    parts: list[bytes] = []
    spec = encode_positions(idx, n, parts, True)
    np.testing.assert_array_equal(decode_positions(spec, n, parts), idx)


def test_corrupted_positions_are_rejected():
    idx = np.array([3, 50, 51])
    parts: list[bytes] = []
    spec = encode_positions(idx, 100, parts, False)
    assert spec["pos"] == "rel"
    with pytest.raises(ValueError, match="corrupted relative indices"):
        decode_positions(spec, 40, parts)  # an index past the leaf
    with pytest.raises(ValueError, match="corrupted relative indices"):
        decode_positions({**spec, "m": 4}, 100, parts)
    mask_parts: list[bytes] = []
    mask = encode_positions(np.arange(0, 100, 2), 100, mask_parts, False)
    with pytest.raises(ValueError, match="bitmask"):
        decode_positions(mask, 99, mask_parts)
