"""Tests of lightcomp.export.integers: a packed leaf read back as integers and scales."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lightcomp as lc
from lightcomp import export, quant

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RNG = np.random.default_rng(7)
W = RNG.normal(size=(64, 32)).astype(np.float32)
PRUNED = np.where(RNG.random(W.shape) < 0.5, 0.0, W).astype(np.float32)


def _dequantized(ints: export.Integers) -> np.ndarray:
    qt = quant.QTensor(
        jnp.asarray(ints.values),
        jnp.asarray(ints.scale),
        None,
        ints.bits,
        True,
        ints.axis,
        ints.group_size,
        ints.group_axis,
        ints.dtype,
    )
    return np.asarray(quant.dequantize(qt))


@pytest.mark.parametrize(
    "kw",
    [
        {"axis": -1},
        {},
        {"axis": 0},
        {"axis": -1, "group_size": 16},
        {"group_size": 8},
    ],
    ids=["channel", "tensor", "axis0", "group+channel", "group"],
)
@pytest.mark.parametrize("bits", [8, 4])
def test_grid_leaves_give_their_codes_and_scales(kw, bits):
    w = quant.fake_quant(jnp.asarray(PRUNED), bits, **kw)
    packed = export.pack({"Dense_0": {"kernel": w}})
    ints = export.integers(packed, "Dense_0/kernel")
    found = quant.layout(W.shape, ints.axis, ints.group_size, ints.group_axis)
    assert ints.scale.shape == found.scale_shape and ints.scale.dtype == np.float32
    if kw != {"group_size": 8}:  # groups of 8 rows: a scale per row reproduces them too
        want = quant.layout(W.shape, kw.get("axis"), kw.get("group_size"))
        assert found == want
    assert ints.values.dtype == np.int8 and ints.bits == bits
    # the codes of lightcomp.quant.quantize, and the leaf back exactly
    codes = quant.quantize(jnp.asarray(PRUNED), bits, **kw).values
    np.testing.assert_array_equal(ints.values, codes)
    np.testing.assert_array_equal(_dequantized(ints), w)


def test_bfloat16_leaf_and_a_searched_codebook():
    w = quant.fake_quant(jnp.asarray(W, jnp.bfloat16), 6, axis=-1)
    ints = export.integers(export.pack({"k": w}), "k")
    assert ints.dtype == np.dtype(ml_dtypes.bfloat16) and ints.bits <= 6
    np.testing.assert_array_equal(_dequantized(ints), w)
    # 16 shared values, then an 8-bit grid per channel: whatever the encoder stores, the grid
    c, a = lc.cluster.kmeans(jnp.asarray(W), 16)
    shared = quant.fake_quant(lc.cluster.share(c, a), 8, axis=-1)
    packed = export.pack({"k": shared})
    ints = export.integers(packed, "k")
    assert ints is not None and ints.bits <= 8
    np.testing.assert_array_equal(_dequantized(ints), shared)
    if packed.manifest["leaves"][0]["enc"]["val"]["val"] != "grid":
        assert export.integers(packed, "k", search=False) is None


def test_leaves_off_any_grid_give_none():
    packed = export.pack({"w": jnp.asarray(W), "n": np.arange(6, dtype=np.int32)})
    assert export.integers(packed, "w") is None
    assert export.integers(packed, "n") is None


def test_a_010_file_reads_as_integers():
    packed = export.load(FIXTURES / "demo_v010.lcpk")
    want = np.load(FIXTURES / "demo_v010_params.npz")
    for path in ("Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"):
        ints = export.integers(packed, path)
        assert ints is not None and ints.values.dtype == np.int8, path
        np.testing.assert_array_equal(_dequantized(ints), want[path])


def test_bad_arguments():
    packed = export.pack({"w": jnp.asarray(W)})
    with pytest.raises(TypeError, match=r"Packed"):
        export.integers({"w": W}, "w")
    with pytest.raises(ValueError, match=r"not a packed leaf"):
        export.integers(packed, "Dense_0/kernel")
    with pytest.raises(TypeError, match=r"path"):
        export.integers(packed, 0)
    with pytest.raises(TypeError, match=r"search"):
        export.integers(packed, "w", search="no")


@pytest.mark.parametrize("axis", [(1, 2), (0, 2)], ids=["heads x head_dim", "layers x units"])
def test_a_scale_per_combination_of_axes_reads_back(axis):
    # an attention kernel [embed, heads, head_dim] (or stacked [layers, ...]) with a scale per
    # combination of its output axes: integers and scales must give the leaf back exactly
    shape = (16, 2, 4) if axis == (1, 2) else (3, 16, 4)
    x = RNG.normal(size=shape).astype(np.float32) * np.linspace(0.1, 3.0, shape[-1])
    w = quant.fake_quant(jnp.asarray(x, jnp.float32), 4, axis=axis)
    ints = export.integers(export.pack({"attn": {"kernel": w}}), "attn/kernel")
    assert ints is not None and ints.bits == 4
    np.testing.assert_array_equal(_dequantized(ints), np.asarray(w))
