"""Tests for lightcomp.quant.cast: rounding to narrower float formats."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from lightcomp import quant


@pytest.mark.parametrize(
    "name, np_dtype",
    [
        ("bfloat16", ml_dtypes.bfloat16),
        ("float16", np.float16),
        ("e4m3", ml_dtypes.float8_e4m3fn),
        ("e5m2", ml_dtypes.float8_e5m2),
    ],
)
def test_cast_matches_ml_dtypes(name, np_dtype):
    x = np.random.default_rng(15).normal(size=(32,)).astype(np.float32) * 3
    got = quant.cast(jnp.asarray(x), name)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, x.astype(np_dtype).astype(np.float32))
    np.testing.assert_array_equal(jax.jit(quant.cast, static_argnums=1)(jnp.asarray(x), name), got)
    np.testing.assert_array_equal(
        jax.grad(lambda x: quant.cast(x, name).sum())(jnp.asarray(x)), np.ones(32)
    )
    top = float(ml_dtypes.finfo(np_dtype).max)
    if top < 1e6:  # saturation instead of inf / NaN
        big = quant.cast(jnp.array([1e6, -1e6], jnp.float32), np_dtype)
        np.testing.assert_array_equal(big, [top, -top])
        over = quant.cast(jnp.array([1e6], jnp.float32), np_dtype, saturate=False)
        assert not bool(jnp.all(jnp.isfinite(over)))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: quant.cast(jnp.ones((4, 6)), jnp.int8), ValueError, "dtype"),
        (lambda: quant.cast(jnp.ones((4, 6)), "int4"), ValueError, "dtype"),
        (lambda: quant.cast(jnp.ones((4, 6)), "e4m3", saturate="yes"), TypeError, "saturate"),
        (lambda: quant.cast(jnp.ones(3, jnp.int32), "e4m3"), TypeError, "floating"),
    ],
)
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
