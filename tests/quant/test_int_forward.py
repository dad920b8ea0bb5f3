"""Tests for lightcomp.quant._int_forward: int8 contractions with a straight-through backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from lightcomp import quant
from lightcomp.quant._int_forward import (
    IntForward,
    einsum_dims,
    int_ste_conv,
    int_ste_dot_general,
    int_ste_einsum,
)

RNG = np.random.default_rng(7)
X = jnp.asarray(RNG.normal(size=(6, 5, 24)).astype(np.float32))
W = quant.fake_quant(jnp.asarray(RNG.normal(size=(24, 8)).astype(np.float32)), 8, axis=-1)
DIMS = (((2,), (0,)), ((), ()))


def _np_dense(ref, x, w, symmetric, rows, rng=None):
    """NumPy: the activation fake-quantized per tensor or per row, then a float64 matmul."""
    axis = (0, 1) if rows else None
    x_hat = ref.quant(np.asarray(x), 8, symmetric, axis, rng=rng)[0]
    return np.einsum("btk,kf->btf", x_hat.astype(np.float64), np.asarray(w, np.float64))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, "tokens"])
@pytest.mark.parametrize("jit", [False, True])
def test_dot_equals_fake_quant_forward(ref, symmetric, axis, jit):
    spec = IntForward(8, symmetric, 8, axis)
    f = lambda x, w: int_ste_dot_general(x, w, DIMS, spec)
    y = (jax.jit(f) if jit else f)(X, W)
    want = _np_dense(ref, X, W, symmetric, axis == "tokens")
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert y.dtype == jnp.float32


@pytest.mark.parametrize("symmetric", [True, False])
def test_gradients_are_the_fake_quant_ones(symmetric):
    spec = IntForward(8, symmetric, 8, None)
    lo_hi = (jnp.float32(-0.5), jnp.float32(1.0))  # a fixed range: clipped STE for x
    g_int = jax.grad(
        lambda x, w: jnp.sum(int_ste_dot_general(x, w, DIMS, spec, lo_hi) ** 2), (0, 1)
    )

    def fq(x, w):
        xq = quant.fake_quant(x, 8, symmetric=symmetric, ste="clipped", range=lo_hi)
        return jnp.sum(lax.dot_general(xq, w, DIMS) ** 2)

    for a, b in zip(g_int(X, W), jax.grad(fq, (0, 1))(X, W), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert float(jnp.mean(g_int(X, W)[0] == 0)) > 0.1  # clipped elements get no gradient


def test_bfloat16_operands_give_the_int8_result():
    y8 = int_ste_dot_general(X, W, DIMS, IntForward(8, True, 8))
    y16 = int_ste_dot_general(X, W, DIMS, IntForward(8, True, 8, operands="bfloat16"))
    np.testing.assert_array_equal(y8, y16)


def test_conv_equals_fake_quant_forward():
    x = jnp.asarray(RNG.normal(size=(2, 7, 7, 3)).astype(np.float32))
    w = quant.fake_quant(jnp.asarray(RNG.normal(size=(3, 3, 3, 4)).astype(np.float32)), 8, axis=-1)
    kw = dict(window_strides=(2, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.jit(lambda x, w: int_ste_conv(x, w, tuple(kw.items()), IntForward(8, False, 8)))(x, w)
    want = lax.conv_general_dilated(quant.fake_quant(x, 8, symmetric=False), w, **kw)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_einsum_equals_fake_quant_forward():
    x = jnp.asarray(RNG.normal(size=(2, 3, 8)).astype(np.float32))
    w = quant.fake_quant(jnp.asarray(RNG.normal(size=(8, 2, 4)).astype(np.float32)), 8, axis=(1, 2))
    y = int_ste_einsum("btd,dhk->bthk", x, w, IntForward(8, True, 8))
    want = jnp.einsum("btd,dhk->bthk", quant.fake_quant(x, 8), w)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    dims, perm = einsum_dims("btd,hdk->bhtk", (2, 3, 8), (2, 8, 4))
    assert dims == (((2,), (1,)), ((), ())) and perm == (0, 2, 1, 3)
    with pytest.raises(ValueError, match="one operand alone"):
        einsum_dims("btd,dk->bk", (2, 3, 8), (8, 4))


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(2, 8), seed=st.integers(0, 2**31 - 1))
def test_requantizing_a_fake_quantized_kernel_gives_its_codes(bits, seed):
    """The integer forward re-derives the kernel's codes from its fake-quantized values."""
    w = np.random.default_rng(seed).normal(size=(16, 5)).astype(np.float32)
    w_hat = quant.fake_quant(jnp.asarray(w), bits, axis=-1)
    np.testing.assert_array_equal(
        quant.quantize(w_hat, bits, axis=-1).values,
        quant.quantize(jnp.asarray(w), bits, axis=-1).values,
    )
