"""Tests of lightcomp.export._grid: uniform-grid detection and coding."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lightcomp as lc
from lightcomp.export._grid import (
    decode_grid,
    find_grid,
    granularities,
    grid_candidates,
    grid_groups,
    grid_values,
    group_ids,
)

DTYPES = [np.float32, ml_dtypes.bfloat16, np.float16]


def _bits(x):
    x = np.asarray(x)
    return x.view(f"u{x.dtype.itemsize}")


def _assert_bit_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(_bits(a), _bits(b))


def _roundtrip(x):
    packed = lc.export.pack({"w": x})
    _assert_bit_equal(lc.export.unpack(packed)["w"], x)
    return lc.export.report(packed)["leaves"][0]


@pytest.mark.parametrize(
    "gran",
    [
        {"kind": "tensor"},
        {"kind": "axis", "axis": 0},
        {"kind": "axis", "axis": 2},
        {"kind": "group", "gaxis": 1, "size": 2, "axis": 2},
        {"kind": "group", "gaxis": 1, "size": 4, "axis": None},
        {"kind": "axes", "axes": [0, 2]},
        {"kind": "group", "gaxis": 1, "size": 2, "axes": [0, 2]},
    ],
)
def test_group_ids_match_coordinates(gran):
    shape = (3, 8, 5)
    idx = np.sort(np.random.default_rng(0).choice(120, 50, replace=False))
    gid, ngroups = group_ids(idx, shape, gran)
    c = np.unravel_index(idx, shape)
    if gran["kind"] == "tensor":
        want, k = np.zeros_like(idx), 1
    elif gran["kind"] == "axis":
        want, k = c[gran["axis"]], shape[gran["axis"]]
    elif gran["kind"] == "axes":  # [layers, in, out]: per layer and output unit
        want, k = c[0] * 5 + c[2], 3 * 5
    elif "axes" in gran:
        want, k = ((c[1] // 2) * 3 + c[0]) * 5 + c[2], 4 * 3 * 5
    elif gran["axis"] is None:
        want, k = c[1] // gran["size"], 8 // gran["size"]
    else:
        want, k = (c[1] // gran["size"]) * 5 + c[2], (8 // gran["size"]) * 5
    assert ngroups == k
    np.testing.assert_array_equal(gid, want)


def test_granularities_coarsest_first():
    got = granularities((8, 6))
    assert got[:3] == [{"kind": "tensor"}, {"kind": "axis", "axis": 1}, {"kind": "axis", "axis": 0}]
    assert got[3:] == [
        {"kind": "group", "gaxis": 0, "size": s, "axis": a} for s in (4, 2) for a in (1, None)
    ]
    assert granularities((5,)) == [{"kind": "tensor"}, {"kind": "axis", "axis": 0}]
    assert granularities(()) == [{"kind": "tensor"}]
    stacked = granularities((3, 8, 2))  # combinations of axes after single axes, fewest first
    assert stacked[4:7] == [{"kind": "axes", "axes": a} for a in ([0, 2], [1, 2], [0, 1])]
    assert {"kind": "group", "gaxis": 1, "size": 4, "axes": [0, 2]} in stacked


def test_scales_per_layer_and_head_are_found():
    # a stacked attention kernel [layers, embed, heads, head_dim] with a scale per layer,
    # head and head_dim (lightcomp.fake_quantization's default for it) packs on a grid
    x = np.random.default_rng(4).normal(size=(3, 8, 2, 4)).astype(np.float32)
    x *= np.array([1.0, 10.0, 0.1], np.float32)[:, None, None, None]
    q = np.asarray(lc.quant.fake_quant(jnp.asarray(x), 4, axis=(0, 2, 3)))
    assert _roundtrip(q)["encoding"].startswith("grid axes0,2,3")
    flat, idx = np.where(q == 0, np.float32(0), q).reshape(-1), np.arange(q.size)
    cands = grid_candidates(flat, idx, q.shape, True)
    assert cands[0][0]["g"] == {"kind": "axes", "axes": [0, 2, 3]}
    for spec, blobs in cands:
        _assert_bit_equal(decode_grid(spec, idx, q.shape, q.dtype, blobs), flat)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_grid_values_is_dequantize_arithmetic(dtype):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 16)), dtype)
    qt = lc.quant.quantize(x, 5, axis=-1)
    gid = np.tile(np.arange(16), 8)
    got = grid_values(np.asarray(qt.values).reshape(-1), np.asarray(qt.scale).reshape(-1), gid,
                      np.dtype(dtype))  # fmt: skip
    _assert_bit_equal(got.reshape(8, 16), np.asarray(lc.quant.dequantize(qt)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_grid_values_is_float32_product_cast(dtype):
    rng = np.random.default_rng(6)
    n, gid = rng.integers(-100, 100, 30), rng.integers(0, 3, 30)
    scale = rng.uniform(0.01, 2.0, 3).astype(np.float32)
    want = np.array([np.float32(np.float32(a) * scale[g]) for a, g in zip(n, gid, strict=True)])
    _assert_bit_equal(grid_values(n, scale, gid, np.dtype(dtype)), want.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 4])
def test_find_grid_recovers_a_numpy_grid(dtype, groups):
    rng = np.random.default_rng(groups)
    n = rng.integers(-7, 8, 64)
    gid = np.arange(64) % groups
    scale = rng.uniform(1e-3, 1.0, groups).astype(np.float32)
    v = (n.astype(np.float32) * scale[gid]).astype(dtype)
    found = find_grid(v, gid, groups)
    assert found is not None
    n2, s2 = found
    assert n2.dtype == np.int64 and s2.dtype == np.float32 and s2.shape == (groups,)
    _assert_bit_equal(grid_values(n2, s2, gid, np.dtype(dtype)), v)
    assert np.abs(n2).max() <= 7  # no finer grid than the one that made the values


@pytest.mark.parametrize(
    "v", [np.random.default_rng(2).normal(size=64), np.array([1.0, np.nan, 2.0])]
)
def test_find_grid_rejects_values_off_any_grid(v):
    v = v.astype(np.float32)
    assert find_grid(v, np.zeros(v.size, np.int64), 1) is None


def test_all_zero_groups_are_on_any_grid():
    n, scale = find_grid(np.zeros(6, np.float32), np.arange(6) % 2, 2)
    np.testing.assert_array_equal(n, 0)
    np.testing.assert_array_equal(scale, 1)


@pytest.mark.parametrize("symmetric", [True, False])
def test_grid_candidates_decode_bit_exactly(symmetric):
    x = np.asarray(
        lc.quant.fake_quant(
            jnp.asarray(np.random.default_rng(3).normal(size=(8, 16)), jnp.float32),
            4,
            axis=-1,
            symmetric=symmetric,
        )
    )
    flat, idx = np.where(x == 0, np.float32(0), x).reshape(-1), np.arange(x.size)  # no -0
    cands = grid_candidates(flat, idx, x.shape, True)
    assert cands and any(s["g"] == {"kind": "axis", "axis": 1} for s, _ in cands)
    assert any("z" in s for s, _ in cands)  # an affine candidate with per-group zero points
    for spec, blobs in cands:
        _assert_bit_equal(decode_grid(spec, idx, x.shape, x.dtype, blobs), flat)


def test_corrupted_grid_scales_are_rejected():
    x = np.arange(-4, 4, dtype=np.float32) * np.float32(0.25)
    spec, blobs = grid_candidates(x, np.arange(8), (8,), False)[0]
    with pytest.raises(ValueError, match="corrupted grid scales"):
        decode_grid(spec, np.arange(8), (8,), x.dtype, [blobs[0][:2], *blobs[1:]])


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_grid_costs_about_its_bit_width(bits):
    x = np.random.default_rng(bits).normal(size=(64, 64)).astype(np.float32)
    x = np.asarray(lc.quant.fake_quant(jnp.asarray(x), bits))
    row = _roundtrip(x)
    assert row["bits_per_weight"] <= bits + 0.1, row
    assert row["ratio_vs_float32"] >= 32 / (bits + 0.1)


def test_ml_dtypes_bfloat16_grid_matches_quant_dequantize():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(8, 16)), jnp.bfloat16)
    qt = lc.quant.quantize(x, 5, axis=-1)
    deq = np.asarray(lc.quant.dequantize(qt))
    assert deq.dtype == ml_dtypes.bfloat16
    assert "grid" in _roundtrip(deq)["encoding"]


@pytest.mark.parametrize("shape", [(8,), (6, 4), (2, 8, 4)])
def test_grid_groups_counts_without_allocating(shape):
    for gran in granularities(shape):
        assert grid_groups(shape, gran) == group_ids(np.arange(np.prod(shape)), shape, gran)[1]


@pytest.mark.parametrize(
    "gran",
    [
        {"kind": "axis", "axis": 2},
        {"kind": "axis", "axis": True},
        {"kind": "group", "gaxis": 0, "size": 0, "axis": None},  # was a ZeroDivisionError
        {"kind": "group", "gaxis": 0, "size": 4, "axis": None},  # does not divide 6
        {"kind": "group", "gaxis": 0, "size": 2, "axis": -1},
        {"kind": "blocks"},
    ],
)
def test_grid_groups_refuses_other_granularities(gran):
    with pytest.raises(ValueError, match="corrupted grid granularity"):
        grid_groups((6, 4), gran)


def test_many_groups_are_probed_first_and_a_grid_is_still_found():
    # past the screen's sample size, 32 whole groups are searched first: random floats
    # are refused at once; a grid of 4096 groups (group size 8) is still found exactly
    rng = np.random.default_rng(9)
    x = rng.normal(size=(256, 128)).astype(np.float32)
    idx = np.arange(x.size)
    gran = {"kind": "group", "gaxis": 0, "size": 8, "axis": 1}
    gid, ngroups = group_ids(idx, x.shape, gran)
    assert find_grid(x.reshape(-1), gid, ngroups) is None
    q = np.asarray(lc.quant.fake_quant(jnp.asarray(x), 4, axis=-1, group_size=8))
    flat = np.where(q == 0, np.float32(0), q).reshape(-1)
    n, scale = find_grid(flat, gid, ngroups)
    _assert_bit_equal(grid_values(n, scale, gid, q.dtype), flat)
