"""Tests of lightcomp.serve.from_packed: packed kernels on an integer grid as QTensors."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RNG = np.random.default_rng(3)
W = jnp.asarray(RNG.normal(size=(24, 10)).astype(np.float32))
B = jnp.asarray(RNG.normal(size=(10,)).astype(np.float32))


def _tree(bits):
    w = lc.quant.fake_quant(W, bits, axis=-1) if bits else W
    return {
        "Dense_0": {"kernel": w, "bias": B},
        "Embed_0": {"embedding": lc.quant.fake_quant(W, 8)},
    }


def test_integer_kernels_become_qtensors_that_dequantize_to_the_packed_leaf():
    packed = lc.export.pack(_tree(8))
    q = lc.serve.from_packed(packed)
    back = lc.export.unpack(packed)
    k = q["Dense_0"]["kernel"]
    assert isinstance(k, lc.quant.QTensor) and k.values.dtype == jnp.int8 and k.bits == 8
    assert (k.axis, k.scale.shape, k.symmetric) == (1, (1, 10), True)
    np.testing.assert_array_equal(lc.quant.dequantize(k), back["Dense_0"]["kernel"])
    np.testing.assert_array_equal(k.values, lc.quant.quantize(W, 8, axis=-1).values)
    np.testing.assert_array_equal(q["Dense_0"]["bias"], B)
    assert not isinstance(q["Embed_0"]["embedding"], lc.quant.QTensor)  # not a kernel
    assert isinstance(
        lc.serve.from_packed(packed, names=("kernel", "embedding"))["Embed_0"]["embedding"],
        lc.quant.QTensor,
    )


def test_4_bit_codes_two_per_byte_or_one_int8_each():
    packed = lc.export.pack(_tree(4))
    packed4 = lc.serve.from_packed(packed)["Dense_0"]["kernel"]
    one_each = lc.serve.from_packed(packed, int4=False)["Dense_0"]["kernel"]
    assert isinstance(packed4.values, lc.quant.PackedInt4) and packed4.values.nbytes == 24 * 5
    assert one_each.values.dtype == jnp.int8 and one_each.values.nbytes == 24 * 10
    np.testing.assert_array_equal(packed4.values.unpack(), one_each.values)
    np.testing.assert_array_equal(
        jax.jit(lc.quant.dequantize)(packed4), lc.quant.dequantize(one_each)
    )


@pytest.mark.parametrize("bits", [12, None], ids=["12-bit grid", "raw floats"])
def test_kernels_off_an_8_bit_grid_stay_float(bits):
    q = lc.serve.from_packed(lc.export.pack(_tree(bits)))
    assert q["Dense_0"]["kernel"].dtype == jnp.float32


def test_a_010_file_and_nnx_paths():
    q = lc.serve.from_packed(lc.export.load(FIXTURES / "demo_v010.lcpk"))
    want = np.load(FIXTURES / "demo_v010_params.npz")
    for layer in ("Dense_0", "Dense_1", "Dense_2"):
        k = q[layer]["kernel"]
        assert k.values.dtype in (jnp.int8, jnp.uint8) or isinstance(k.values, lc.quant.PackedInt4)
        np.testing.assert_array_equal(lc.quant.dequantize(k), want[f"{layer}/kernel"])


def test_bad_arguments():
    packed = lc.export.pack(_tree(8))
    with pytest.raises(TypeError, match=r"Packed"):
        lc.serve.from_packed(_tree(8))
    with pytest.raises(TypeError, match=r"names"):
        lc.serve.from_packed(packed, names="kernel")
    with pytest.raises(TypeError, match=r"int4"):
        lc.serve.from_packed(packed, int4=1)
