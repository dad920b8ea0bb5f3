"""Tests for lightcomp.quant.fake_quant: jit, given ranges, rounding, bad input, models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lightcomp as lc
from lightcomp import quant


def _rand(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


_fq_jit = jax.jit(quant.fake_quant, static_argnames=("bits", "symmetric", "axis", "group_size"))
_q_jit = jax.jit(quant.quantize, static_argnames=("bits", "symmetric", "axis", "group_size"))


@pytest.mark.parametrize(
    "symmetric, mode", [(True, dict()), (False, dict()), (False, dict(axis=-1, group_size=4))]
)
def test_jit_matches_eager(symmetric, mode):
    x = jnp.asarray(_rand((8, 6), 11))
    kw = dict(bits=4, symmetric=symmetric, **mode)
    np.testing.assert_array_equal(_fq_jit(x, **kw), quant.fake_quant(x, **kw))
    chex.assert_trees_all_equal(_q_jit(x, **kw), quant.quantize(x, **kw))


def test_jitted_fake_quant_traces_once_for_new_values_and_ranges():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x, lo, hi):
        return quant.fake_quant(x, 4, axis=-1, range=(lo, hi))

    for seed in range(3):
        x = jnp.asarray(_rand((8, 3), seed))
        lo, hi = quant.minmax_range(x, -1)
        np.testing.assert_array_equal(f(x, lo, hi), quant.fake_quant(x, 4, axis=-1))


def test_given_range_per_channel_and_scalar(ref):
    x = _rand((10, 4), 2)
    lo, hi = (
        np.array([-1.0, -0.5, -2.0, -0.1], np.float32),
        np.array([1.0, 0.2, 0.5, 3.0], np.float32),
    )
    for sym in (True, False):
        want = ref.quant(x, 6, sym, axis=-1, rng=(lo[None], hi[None]))[0]
        got = quant.fake_quant(jnp.asarray(x), 6, symmetric=sym, axis=-1, range=(lo, hi))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
        got2 = quant.fake_quant(
            jnp.asarray(x), 6, symmetric=sym, axis=-1, range=(lo[None], hi[None])
        )
        np.testing.assert_array_equal(got2, got)
        # clipped to the range (asymmetric: up to one step more, as the zero point is rounded)
        top = np.maximum(np.abs(lo), hi) if sym else hi + (hi - np.minimum(lo, 0)) / 63
        assert np.all(np.asarray(got) <= top * (1 + 1e-6))
    want = ref.quant(x, 3, True, rng=(np.float32(-0.7), np.float32(0.7)))[0]
    got = quant.fake_quant(jnp.asarray(x), 3, range=(-0.7, 0.7))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_given_range_per_group_in_scale_shape(ref):
    x = _rand((8, 3), 21)
    lo, hi = quant.minmax_range(jnp.asarray(x), -1, group_size=4)
    chex.assert_shape((lo, hi), (2, 3))
    got = quant.fake_quant(jnp.asarray(x), 4, axis=-1, group_size=4, range=(lo * 0.5, hi * 0.5))
    rng = (np.asarray(lo)[:, None] * 0.5, np.asarray(hi)[:, None] * 0.5)  # the grouped view
    want = ref.quant(x, 4, True, axis=-1, group_size=4, rng=rng)[0]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


_arrays = st.integers(0, 10_000).map(lambda s: _rand((6, 5), s) * np.float32(np.exp((s % 7) - 3)))


@settings(max_examples=10, deadline=None)
@given(_arrays, st.sampled_from([2, 3, 4, 8]), st.booleans(), st.sampled_from([None, -1]))
def test_idempotent_and_error_bound(x, bits, symmetric, axis):
    x = jnp.asarray(x)
    kw = dict(symmetric=symmetric, axis=axis)
    qt = quant.quantize(x, bits, **kw)
    y = quant.dequantize(qt)
    # |x - fq(x)| <= scale / 2 inside the range (the tensor's own range: everywhere)
    scale = qt.scale
    assert bool(jnp.all(jnp.abs(x - y) <= scale / 2 * (1 + 1e-5) + 1e-30))
    # idempotence: same codes; values equal up to the last bit of the recomputed scale
    qt2 = quant.quantize(y, bits, **kw)
    np.testing.assert_array_equal(qt2.values, qt.values)
    np.testing.assert_allclose(quant.dequantize(qt2), y, rtol=1e-6, atol=0)
    # with the range fixed, idempotence is exact
    rng = quant.minmax_range(x, axis)
    y_fixed = quant.fake_quant(x, bits, range=rng, **kw)
    np.testing.assert_array_equal(quant.fake_quant(y_fixed, bits, range=rng, **kw), y_fixed)


def test_stochastic_rounding_unbiased():
    x = jnp.asarray(_rand((64,), 7))
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)
    fq = jax.jit(
        jax.vmap(lambda k: quant.fake_quant(x, 3, rounding="stochastic", key=k, range=(-3.0, 3.0)))
    )
    samples = np.asarray(fq(keys))
    s = 3.0 / 3
    # every sample is the floor or the ceiling of x / s on the grid
    lo_grid, hi_grid = np.floor(np.asarray(x) / s) * s, np.ceil(np.asarray(x) / s) * s
    assert np.all(np.isclose(samples, lo_grid, atol=1e-6) | np.isclose(samples, hi_grid, atol=1e-6))
    # mean of n draws: std <= s / (2 sqrt n); 5 sigma over 64 elements
    err = np.abs(samples.mean(0) - np.asarray(x))
    assert err.max() < 5 * s / (2 * np.sqrt(n))
    # nearest rounding of the same x is biased by far more than that
    nearest = np.asarray(quant.fake_quant(x, 3, range=(-3.0, 3.0)))
    assert np.abs(nearest - np.asarray(x)).max() > 10 * err.max()


_X = jnp.ones((4, 6))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: quant.fake_quant(_X, 1), ValueError, "bits"),
        (lambda: quant.fake_quant(_X, 17), ValueError, "bits"),
        (lambda: quant.fake_quant(_X, 4.0), TypeError, "bits"),
        (lambda: quant.fake_quant(_X, True), TypeError, "bits"),
        (lambda: quant.fake_quant(_X, 4, symmetric="yes"), TypeError, "symmetric"),
        (lambda: quant.fake_quant(_X, 4, axis=2), ValueError, "axis"),
        (lambda: quant.fake_quant(_X, 4, axis=-1, group_size=5), ValueError, "group_size"),
        (
            lambda: quant.fake_quant(_X, 4, axis=0, group_size=2, group_axis=0),
            ValueError,
            "group_axis",
        ),
        (lambda: quant.fake_quant(_X, 4, rounding="stochastic"), ValueError, "key"),
        (lambda: quant.fake_quant(_X, 4, rounding="stochastic", key=3), TypeError, "key"),
        (lambda: quant.fake_quant(_X, 4, rounding="up"), ValueError, "rounding"),
        (lambda: quant.fake_quant(_X, 4, ste="tanh"), ValueError, "ste"),
        (lambda: quant.fake_quant(jnp.ones((3,), jnp.int32), 4), TypeError, "floating"),
        (lambda: quant.fake_quant(_X, 4, range=(1.0, -1.0)), ValueError, "min > max"),
        (lambda: quant.fake_quant(_X, 4, range=(0.0, jnp.inf)), ValueError, "range max"),
        (lambda: quant.fake_quant(_X, 4, range=1.0), TypeError, "pair"),
        (
            lambda: quant.fake_quant(_X, 4, axis=-1, range=(jnp.zeros(5), jnp.ones(5))),
            ValueError,
            "range",
        ),
        (lambda: quant.fake_quant(_X.at[1, 1].set(jnp.nan), 4), ValueError, "NaN"),
        (lambda: quant.quantize(_X.at[1, 1].set(jnp.inf), 4), ValueError, "inf"),
    ],
)
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _fq_params(params, bits, **kw):
    return lc.tree.map_selected(lambda w: quant.fake_quant(w, bits, **kw), params)


def _served_params(params, bits, **kw):
    return lc.tree.map_selected(lambda w: quant.dequantize(quant.quantize(w, bits, **kw)), params)


@pytest.mark.parametrize(
    "model, image, kw",
    [
        (lc.models.CNN(channels=(8, 16)), True, dict(axis=-1)),
        (lc.models.MLP((32, 16, 10)), False, dict(axis=-1, group_size=8, symmetric=False)),
    ],
)
def test_what_you_train_is_what_you_serve(model, image, kw):
    x = jnp.asarray(lc.data.load_digits(image=image).x_test[:32])
    params = model.init(jax.random.key(0), x)["params"]
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
    trained = jax.jit(lambda p, x: fwd(_fq_params(p, 4, **kw), x))(params, x)  # as in training
    served = fwd(_served_params(params, 4, **kw), x)  # integer tensors dequantized eagerly
    np.testing.assert_array_equal(trained, served)
    assert not np.array_equal(trained, fwd(params, x))  # quantization did change the model


def _train(apply, params, xs, ys, transform, steps=300, lr=1e-2):
    opt = optax.adam(lr)

    def loss(p, x, y):
        logits = apply(transform(p), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def body(carry, batch):
        p, o = carry
        g = jax.grad(loss)(p, *batch)
        u, o = opt.update(g, o, p)
        return (optax.apply_updates(p, u), o), None

    (params, _), _ = jax.lax.scan(body, (params, opt.init(params)), (xs[:steps], ys[:steps]))
    return params


def test_four_bit_per_channel_mlp_on_digits_close_to_float():
    d = lc.data.load_digits(seed=0)
    apply, params = lc.models.init_mlp((32, 10), 64, jax.random.key(0))
    it = lc.data.batches(d.x_train, d.y_train, 64, seed=0)
    bs = [next(it) for _ in range(300)]
    xs = jnp.asarray(np.stack([b["inputs"] for b in bs]))
    ys = jnp.asarray(np.stack([b["labels"] for b in bs]))
    fq = lambda p: _fq_params(p, 4, axis=-1)
    acc = lambda p: float(jnp.mean(jnp.argmax(apply(p, d.x_test), -1) == d.y_test))
    p_float = jax.jit(lambda p: _train(apply, p, xs, ys, lambda q: q))(params)
    p_quant = jax.jit(lambda p: _train(apply, p, xs, ys, fq))(params)
    a_float, a_quant = acc(p_float), acc(fq(p_quant))
    served = _served_params(p_quant, 4, axis=-1)
    assert acc(served) == a_quant
    assert a_float > 0.93
    assert a_quant >= a_float - 0.03, (a_float, a_quant)


def test_tuple_axes_range_of_the_kept_axes_sizes(ref):
    x = _rand((6, 2, 3), 41)  # [embed, heads, head_dim]
    lo, hi = quant.minmax_range(jnp.asarray(x), (1, 2))
    chex.assert_shape((lo, hi), (1, 2, 3))
    half = (np.asarray(lo)[0] * 0.5, np.asarray(hi)[0] * 0.5)  # [heads, head_dim]
    got = quant.fake_quant(jnp.asarray(x), 4, axis=(1, 2), range=half)
    want = ref.quant(x, 4, True, axis=(1, 2), rng=(half[0][None], half[1][None]))[0]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
    with pytest.raises(
        ValueError, match=r"range min has shape \(3, 2\), axes \(1, 2\) have \(2, 3\)"
    ):
        quant.fake_quant(jnp.asarray(x), 4, axis=(1, 2), range=(np.zeros((3, 2)), np.ones((3, 2))))


def test_asymmetric_grid_over_a_range_wider_than_float32s_max():
    # hi - lo = 4e38 overflows float32; the scale is hi / n - lo / n there, the contract's
    # (hi - lo) / n computed in float64.
    x = jnp.array([-1e38, -5e37, 0.0, 2e38, 3e38], jnp.float32)
    want_scale = (3e38 - -1e38) / 255
    for fn in (quant.quantize, _q_jit):
        qt = fn(x, bits=8, symmetric=False)
        np.testing.assert_allclose(float(qt.scale), want_scale, rtol=1e-6)
        zp = np.round(1e38 / want_scale)
        codes = np.clip(np.round(np.asarray(x, np.float64) / want_scale) + zp, 0, 255)
        np.testing.assert_array_equal(np.asarray(qt.values), codes)
    for fn in (quant.fake_quant, _fq_jit):
        out = fn(x, bits=8, symmetric=False)
        assert np.isfinite(np.asarray(out)).all()
        np.testing.assert_allclose(out, (codes - zp) * want_scale, rtol=1e-6)
