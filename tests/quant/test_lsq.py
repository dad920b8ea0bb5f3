"""Tests for lightcomp.quant's learned step size quantization (LSQ)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lightcomp import quant


def _rand(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _np_lsq(ref, x, s, gy, bits, symmetric, axis=None, group_size=None):
    """LSQ's forward and gradients in NumPy, with ``s`` of the layout's scale shape."""
    qn, qp = (2 ** (bits - 1) - 1,) * 2 if symmetric else (0, 2**bits - 1)
    xg, keep = ref.grouped(x, axis, group_size, None)
    sg = np.asarray(s, np.float32)
    if group_size is not None:
        sg = np.expand_dims(sg, (-2 % x.ndim) + 1)
    v = xg / sg
    y = (np.round(np.clip(v, -qn, qp)) * sg).reshape(x.shape)
    n = x.size / max(np.size(s), 1)
    ds = np.where(v <= -qn, -qn, np.where(v >= qp, qp, np.round(v) - v))
    red = tuple(i for i in range(xg.ndim) if i not in keep)
    gg = np.asarray(gy).reshape(xg.shape) * ds / np.sqrt(n * qp)
    gs = np.sum(gg, axis=red, keepdims=True).reshape(np.shape(s))
    inside = ((v > -qn) & (v < qp)).reshape(x.shape)
    return y, np.where(inside, gy, 0), gs


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, -1])
def test_lsq_forward_and_gradients_match_formula(ref, symmetric, axis):
    x = _rand((20, 3), 10) * 2
    if not symmetric:
        x = np.abs(x)
    bits = 3
    qn, qp = (3.0, 3.0) if symmetric else (0.0, 7.0)
    s = np.float32(0.4) if axis is None else np.array([0.3, 0.5, 0.7], np.float32)
    s_b = s if axis is None else s[None]
    gy = _rand((20, 3), 11)
    f = lambda x, s: quant.lsq_fake_quant(x, s, bits, symmetric=symmetric, axis=axis)
    y, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(s))
    gx, gs = vjp(jnp.asarray(gy))
    v = x / s_b
    np.testing.assert_allclose(y, np.round(np.clip(v, -qn, qp)) * s_b, rtol=1e-6)
    n = x.size / np.size(s)
    g = 1.0 / np.sqrt(n * qp)
    ds = np.where(v <= -qn, -qn, np.where(v >= qp, qp, np.round(v) - v))
    red = None if axis is None else 0
    np.testing.assert_allclose(gs, np.sum(gy * ds * g, axis=red), rtol=1e-5, atol=1e-6)
    inside = (v > -qn) & (v < qp)
    assert 0 < inside.sum() < inside.size
    np.testing.assert_array_equal(gx, np.where(inside, gy, 0))
    jy, jvjp = jax.vjp(jax.jit(f), jnp.asarray(x), jnp.asarray(s))
    np.testing.assert_array_equal(jy, y)
    chex.assert_trees_all_close(jvjp(jnp.asarray(gy)), (gx, gs), rtol=1e-6)


def test_lsq_per_group_matches_numpy(ref):
    x = _rand((20, 3), 19) * 2
    gy = _rand((20, 3), 20)
    xg, _ = ref.grouped(np.abs(x), None, 5, None)
    per_group = quant.lsq_init_scale(jnp.asarray(x), 3, group_size=5)  # one step per group
    np.testing.assert_allclose(
        per_group, 2 * xg.mean(axis=(1, 2), keepdims=True)[:, 0] / np.sqrt(3), rtol=1e-6
    )
    init = quant.lsq_init_scale(jnp.asarray(x), 3, axis=-1, group_size=5)
    chex.assert_shape(init, quant.layout(x.shape, -1, 5).scale_shape)  # (4, 3)
    np.testing.assert_allclose(init, 2 * xg.mean(axis=1) / np.sqrt(3), rtol=1e-6)
    s = jnp.asarray(np.asarray(init) * 0.7)
    want_y, want_gx, want_gs = _np_lsq(ref, x, np.asarray(s), gy, 3, True, -1, 5)
    f = lambda x, s: quant.lsq_fake_quant(x, s, 3, axis=-1, group_size=5)
    for fn in (f, jax.jit(f)):
        y, vjp = jax.vjp(fn, jnp.asarray(x), s)
        gx, gs = vjp(jnp.asarray(gy))
        np.testing.assert_allclose(y, want_y, rtol=1e-6)
        np.testing.assert_array_equal(gx, want_gx)
        np.testing.assert_allclose(gs, want_gs, rtol=1e-5, atol=1e-6)


def test_lsq_per_tensor_accepts_a_scale_that_broadcasts_to_x():
    x = jnp.asarray(_rand((20, 3), 22))
    gy = jnp.asarray(_rand((20, 3), 23))
    f = lambda s: quant.lsq_fake_quant(x, s, 4)
    y0, vjp0 = jax.vjp(f, jnp.float32(0.2))
    y1, vjp1 = jax.vjp(f, jnp.full((1, 1), 0.2, jnp.float32))  # 0.1.0's keepdims form
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(vjp0(gy)[0], vjp1(gy)[0].reshape(()))


def test_lsq_init_scale_matches_paper():
    x = _rand((30, 4), 12)
    np.testing.assert_allclose(
        quant.lsq_init_scale(jnp.asarray(x), 4), 2 * np.abs(x).mean() / np.sqrt(7), rtol=1e-6
    )
    s = quant.lsq_init_scale(jnp.asarray(x), 4, axis=-1)
    chex.assert_shape(s, (1, 4))
    np.testing.assert_allclose(s.ravel(), 2 * np.abs(x).mean(0) / np.sqrt(7), rtol=1e-6)


def test_lsq_scale_learns_with_optax():
    x = jnp.asarray(_rand((64, 8), 13))
    s0 = quant.lsq_init_scale(x, 3, axis=-1) * 3  # deliberately too coarse
    loss = lambda s: jnp.sum((quant.lsq_fake_quant(x, s, 3, axis=-1) - x) ** 2)
    opt = optax.adam(5e-2)

    @jax.jit
    def step(s, o):
        val, g = jax.value_and_grad(loss)(s)
        u, o = opt.update(g, o)
        return optax.apply_updates(s, u), o, val

    s, o = s0, opt.init(s0)
    first = float(loss(s0))
    for _ in range(100):
        s, o, _ = step(s, o)
    assert float(loss(s)) < 0.25 * first


_X = jnp.ones((4, 6))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: quant.lsq_fake_quant(_X, jnp.ones(5), 4, axis=-1), ValueError, "scale"),
        (lambda: quant.lsq_fake_quant(_X, jnp.ones((3, 1)), 4), ValueError, "scale"),
        (lambda: quant.lsq_fake_quant(_X, jnp.ones((2, 6)), 4, group_size=2), ValueError, "scale"),
        (lambda: quant.lsq_fake_quant(_X, jnp.ones((), jnp.int32), 4), TypeError, "scale"),
        (lambda: quant.lsq_fake_quant(_X, 0.1, 1), ValueError, "bits"),
        (lambda: quant.lsq_fake_quant(_X, 0.1, 4, symmetric=1), TypeError, "symmetric"),
        (lambda: quant.lsq_fake_quant(_X, 0.1, 4, grad_scale="big"), TypeError, "grad_scale"),
        (lambda: quant.lsq_init_scale(_X, 4, group_size=3), ValueError, "group_size"),
        (lambda: quant.lsq_init_scale(_X.at[0, 0].set(jnp.inf), 4), ValueError, "inf"),
    ],
)
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_lsq_tuple_axes_match_numpy(ref):
    x = _rand((3, 8, 4), 29) * 2  # [layers, in, out]: a step size per layer and output unit
    gy = _rand((3, 8, 4), 30)
    init = quant.lsq_init_scale(jnp.asarray(x), 3, axis=(0, 2))
    np.testing.assert_allclose(
        init, 2 * np.abs(x).mean(axis=1, keepdims=True) / np.sqrt(3), rtol=1e-6
    )
    s = jnp.asarray(np.asarray(init) * 0.8)
    want_y, want_gx, want_gs = _np_lsq(ref, x, np.asarray(s), gy, 3, True, (0, 2))
    f = lambda x, s: quant.lsq_fake_quant(x, s, 3, axis=(0, 2))
    for fn in (f, jax.jit(f)):
        y, vjp = jax.vjp(fn, jnp.asarray(x), s)
        gx, gs = vjp(jnp.asarray(gy))
        np.testing.assert_allclose(y, want_y, rtol=1e-6)
        np.testing.assert_array_equal(gx, want_gx)
        np.testing.assert_allclose(gs, want_gs, rtol=1e-5, atol=1e-6)
