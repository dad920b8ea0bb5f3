"""Tests for lightcomp.quant.binarize and ternarize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import quant


def _rand(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


@pytest.mark.parametrize("axis", [None, -1])
def test_binarize_and_ternarize_match_numpy(axis):
    x = _rand((16, 4), 14)
    red = None if axis is None else 0
    alpha = np.abs(x).mean(axis=red, keepdims=True)
    np.testing.assert_allclose(
        quant.binarize(jnp.asarray(x), axis), np.where(x >= 0, 1, -1) * alpha, rtol=1e-6
    )
    delta = 0.7 * alpha
    keep = np.abs(x) > delta
    a = (np.abs(x) * keep).sum(axis=red, keepdims=True) / keep.sum(axis=red, keepdims=True)
    np.testing.assert_allclose(
        quant.ternarize(jnp.asarray(x), axis), np.sign(x) * keep * a, rtol=1e-6
    )
    for fn in (quant.binarize, quant.ternarize):
        np.testing.assert_array_equal(
            jax.jit(fn, static_argnums=1)(jnp.asarray(x), axis), fn(jnp.asarray(x), axis)
        )
        g = jax.grad(lambda x: fn(x, axis).sum())(jnp.asarray(x))
        np.testing.assert_array_equal(g, np.ones_like(x))
        gc = jax.grad(lambda x: fn(x, axis, ste="clipped").sum())(jnp.asarray(x))
        np.testing.assert_array_equal(gc, (np.abs(x) <= 1).astype(np.float32))


def test_ternarize_threshold():
    x = _rand((16, 4), 15)
    a = np.abs(x)
    for t in (0, 0.3, 1):
        y = np.asarray(quant.ternarize(jnp.asarray(x), threshold=t))
        np.testing.assert_array_equal(y == 0, a <= np.float32(t) * a.mean())


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: quant.ternarize(jnp.ones((4, 6)), threshold=2.0), ValueError, "threshold"),
        (lambda: quant.ternarize(jnp.ones((4, 6)), threshold=True), TypeError, "threshold"),
        (lambda: quant.binarize(jnp.ones((4, 6)), ste="soft"), ValueError, "ste"),
        (lambda: quant.binarize(jnp.ones((4, 6)), axis=3), ValueError, "axis"),
        (lambda: quant.binarize(jnp.ones(3, jnp.int8)), TypeError, "floating"),
        (lambda: quant.binarize(np.full((16, 4), np.nan, np.float32)), ValueError, "NaN"),
    ],
)
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
