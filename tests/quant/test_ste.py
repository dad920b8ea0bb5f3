"""Tests for lightcomp.quant.straight_through and the straight-through gradients of fake_quant."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import quant


def _rand(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


@pytest.mark.parametrize("jit, gated", [(False, True), (True, False)])
def test_straight_through_value_and_gradients(jit, gated):
    x, w, gy = (jnp.asarray(_rand((16, 3), s)) for s in (1, 2, 3))
    gate = jnp.abs(x) <= 1 if gated else None

    def f(x, w):
        return quant.straight_through(x, jnp.round(w * 4) / 4, gate)

    f = jax.jit(f) if jit else f
    y, vjp = jax.vjp(f, x, w)
    gx, gw = vjp(gy)
    np.testing.assert_array_equal(y, np.round(np.asarray(w) * 4) / 4)  # the value is y
    want_gx = np.where(np.abs(np.asarray(x)) <= 1, gy, 0) if gated else np.asarray(gy)
    np.testing.assert_array_equal(gx, want_gx)  # x: the gradient, times the gate
    np.testing.assert_array_equal(gw, np.zeros_like(gw))  # y's own gradient: round's is zero
    # y receives the incoming gradient too (here through a differentiable y = 2 w)
    g2 = jax.grad(lambda w: (quant.straight_through(x, 2 * w, gate) * gy).sum())(w)
    np.testing.assert_array_equal(g2, 2 * np.asarray(gy))


def test_straight_through_under_stop_gradient_is_pure_ste():
    x = jnp.asarray(_rand((4,), 4), jnp.bfloat16)
    g = jax.grad(
        lambda x: quant.straight_through(x, jax.lax.stop_gradient(x * 3)).astype(jnp.float32).sum()
    )(x)
    assert g.dtype == jnp.bfloat16 and bool(jnp.all(g == 1))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: quant.straight_through(jnp.ones(3), jnp.ones(4)), ValueError, "shape"),
        (
            lambda: quant.straight_through(jnp.ones(3), jnp.ones(3, jnp.float16)),
            ValueError,
            "dtype",
        ),
        (lambda: quant.straight_through(jnp.ones(3, jnp.int32), jnp.ones(3)), TypeError, "x"),
        (lambda: quant.straight_through(jnp.ones(3), jnp.ones(3), jnp.ones(4)), ValueError, "gate"),
    ],
)
def test_straight_through_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_fake_quant_ste_identity_and_clipped_gradients():
    x = jnp.asarray(_rand((16, 3), 4))
    lo, hi = -0.8, 0.5
    gy = jnp.asarray(_rand((16, 3), 5))
    for symmetric in (True, False):
        kw = dict(symmetric=symmetric, range=(lo, hi))
        _, vjp = jax.vjp(lambda x: quant.fake_quant(x, 4, ste="identity", **kw), x)
        np.testing.assert_array_equal(vjp(gy)[0], gy)
        _, vjp = jax.vjp(lambda x: quant.fake_quant(x, 4, ste="clipped", **kw), x)
        # definition: gradient passes where round(x/s) + zp lies in [qmin, qmax]
        xn = np.asarray(x)
        if symmetric:
            s, zp, qmin, qmax = max(abs(lo), abs(hi)) / 7, 0, -7, 7
        else:
            s = np.float32(hi - lo) / np.float32(15)
            zp, qmin, qmax = np.round(-lo / s), 0, 15
        raw = np.round(xn / np.float32(s)) + zp
        mask = (raw >= qmin) & (raw <= qmax)
        assert 0 < mask.sum() < mask.size
        np.testing.assert_array_equal(vjp(gy)[0], np.where(mask, gy, 0))
        _, jvjp = jax.vjp(jax.jit(lambda x: quant.fake_quant(x, 4, ste="clipped", **kw)), x)
        np.testing.assert_array_equal(jvjp(gy)[0], np.where(mask, gy, 0))


def test_fake_quant_gradient_does_not_reach_a_traced_range():
    x = jnp.asarray(_rand((8, 3), 6))
    g = jax.grad(lambda r: quant.fake_quant(x, 4, range=(-r, r)).sum())(jnp.float32(1.0))
    assert float(g) == 0.0


def test_ste_keeps_dtype_bfloat16():
    x = jnp.asarray(_rand((8, 4), 6), jnp.bfloat16)
    g = jax.grad(lambda x: quant.fake_quant(x, 4, axis=-1).astype(jnp.float32).sum())(x)
    assert g.dtype == jnp.bfloat16 and bool(jnp.all(g == 1))
