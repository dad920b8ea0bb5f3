"""Tests for lightcomp.quant's calibration: min/max, percentile, MSE and EMA ranges."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import quant


def _rand(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


@pytest.mark.parametrize("axis", [None, -1])
def test_minmax_and_percentile_match_numpy(axis):
    x = _rand((50, 3), 8)
    red = None if axis is None else 0
    lo, hi = quant.minmax_range(jnp.asarray(x), axis)
    np.testing.assert_array_equal(np.asarray(lo).ravel(), np.ravel(x.min(axis=red)))
    np.testing.assert_array_equal(np.asarray(hi).ravel(), np.ravel(x.max(axis=red)))
    jit_m = jax.jit(quant.minmax_range, static_argnums=1)(jnp.asarray(x), axis)
    chex.assert_trees_all_equal(jit_m, (lo, hi))
    plo, phi = quant.percentile_range(jnp.asarray(x), 95.0, axis)
    np.testing.assert_allclose(
        np.asarray(plo).ravel(), np.ravel(np.percentile(x, 5.0, axis=red)), rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(phi).ravel(), np.ravel(np.percentile(x, 95.0, axis=red)), rtol=1e-5
    )
    jit_p = jax.jit(quant.percentile_range, static_argnums=(1, 2))(jnp.asarray(x), 95.0, axis)
    chex.assert_trees_all_close(jit_p, (plo, phi), rtol=1e-6)


def test_minmax_per_group_matches_numpy(ref):
    x = _rand((8, 3), 18)
    lo, hi = quant.minmax_range(jnp.asarray(x), -1, group_size=2)
    xg, _ = ref.grouped(x, -1, 2, None)  # (4, 2, 3)
    np.testing.assert_array_equal(lo, xg.min(axis=1))
    np.testing.assert_array_equal(hi, xg.max(axis=1))


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, -1])
def test_mse_range_is_the_numpy_search_optimum(ref, symmetric, axis):
    rng = np.random.default_rng(9)
    x = rng.standard_t(3, size=(200, 3)).astype(np.float32)  # heavy tails: clipping pays
    lo, hi = quant.mse_range(jnp.asarray(x), 3, symmetric=symmetric, axis=axis, num_candidates=50)
    chex.assert_trees_all_equal(
        jax.jit(lambda x: quant.mse_range(x, 3, symmetric=symmetric, axis=axis, num_candidates=50))(
            jnp.asarray(x)
        ),
        (lo, hi),
    )
    red = None if axis is None else 0
    mn, mx = x.min(axis=red, keepdims=True), x.max(axis=red, keepdims=True)
    errs = []
    for r in np.arange(1, 51, dtype=np.float32) / 50:
        xh = ref.quant(x, 3, symmetric, rng=(r * mn, r * mx))[0]
        errs.append(((x - xh) ** 2).sum(axis=red, keepdims=True))
    best = np.min(np.stack(errs), axis=0)
    ours = ((x - ref.quant(x, 3, symmetric, rng=(np.asarray(lo), np.asarray(hi)))[0]) ** 2).sum(
        axis=red, keepdims=True
    )
    np.testing.assert_allclose(ours, best, rtol=1e-5)
    full = ((x - ref.quant(x, 3, symmetric, rng=(mn, mx))[0]) ** 2).sum(axis=red, keepdims=True)
    assert np.all(ours < full)  # clipping beats min/max on heavy tails


def test_ema_range_matches_formula_and_is_jittable():
    xs = [_rand((10, 4), s) * (s + 1) for s in range(5)]
    decay = 0.9
    state = quant.ema_range_init((1, 4))
    upd = jax.jit(lambda s, x: quant.ema_range_update(s, x, decay, axis=-1))
    lo, hi = xs[0].min(0), xs[0].max(0)
    for i, x in enumerate(xs):
        state = upd(state, jnp.asarray(x))
        if i:
            lo = decay * lo + (1 - decay) * x.min(0)
            hi = decay * hi + (1 - decay) * x.max(0)
        np.testing.assert_allclose(np.asarray(state.min).ravel(), lo, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(state.max).ravel(), hi, rtol=1e-6)
    assert int(state.count) == 5
    eager = quant.ema_range_update(quant.ema_range_init((1, 4)), jnp.asarray(xs[0]), decay, axis=-1)
    chex.assert_trees_all_equal(eager, upd(quant.ema_range_init((1, 4)), jnp.asarray(xs[0])))
    y = quant.fake_quant(jnp.asarray(xs[0]), 8, axis=-1, range=state.range)
    assert y.shape == (10, 4)


_X = jnp.ones((4, 6))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: quant.percentile_range(_X, 30.0), ValueError, "q"),
        (lambda: quant.percentile_range(_X, "99"), TypeError, "q"),
        (lambda: quant.minmax_range(np.full((4, 6), np.nan, np.float32)), ValueError, "NaN"),
        (lambda: quant.minmax_range(jnp.ones(3, jnp.int32)), TypeError, "floating"),
        (lambda: quant.mse_range(_X, 4, num_candidates=0), ValueError, "num_candidates"),
        (lambda: quant.mse_range(_X, 1), ValueError, "binarize"),
        (lambda: quant.ema_range_update(quant.ema_range_init(), _X, 1.5), ValueError, "decay"),
        (lambda: quant.ema_range_update(quant.ema_range_init(), _X, True), TypeError, "decay"),
        (lambda: quant.ema_range_update((0.0, 1.0), _X, 0.9), TypeError, "EmaRange"),
        (
            lambda: quant.ema_range_update(quant.ema_range_init((1, 6)), _X, 0.9),
            ValueError,
            "shape",
        ),
    ],
)
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_tuple_axes_ranges_match_numpy(ref):
    x = _rand((3, 10, 4), 28)  # [layers, in, out]: one range per layer and output unit
    lo, hi = quant.minmax_range(jnp.asarray(x), (0, 2))
    np.testing.assert_array_equal(lo, x.min(axis=1, keepdims=True))
    np.testing.assert_array_equal(hi, x.max(axis=1, keepdims=True))
    plo, phi = quant.percentile_range(jnp.asarray(x), 90.0, (0, 2))
    for got, q in ((plo, 10.0), (phi, 90.0)):
        want = np.percentile(x, q, axis=1, keepdims=True)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    mse = jax.jit(
        lambda x, axis: quant.mse_range(x, 3, axis=axis, num_candidates=20), static_argnums=1
    )
    mlo, mhi = mse(jnp.asarray(x), (0, 2))
    chex.assert_shape((mlo, mhi), (3, 1, 4))
    for layer in range(3):  # each slice's search alone gives the same range
        np.testing.assert_array_equal(
            np.asarray(mhi)[layer], np.asarray(mse(jnp.asarray(x[layer]), -1)[1])
        )
