"""Tests for lightcomp.quant: every mode against a direct NumPy implementation of the conventions."""

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lightcomp as lc
from lightcomp import quant

# --------------------------------------------------------------------------- NumPy reference


def _grouped(x, axis, group_size, group_axis):
    nd = x.ndim
    if group_size is None:
        keep = set() if axis is None else {axis % nd}
        return x, keep
    gax = (group_axis if group_axis is not None else (-2 if nd >= 2 else 0)) % nd
    xg = x.reshape((*x.shape[:gax], x.shape[gax] // group_size, group_size, *x.shape[gax + 1 :]))
    keep = {gax}
    if axis is not None:
        a = axis % nd
        keep.add(a + (a > gax))
    return xg, keep


def np_quant(x, bits, symmetric=True, axis=None, group_size=None, group_axis=None, rng=None):
    """The contract's conventions, in float32 NumPy. Returns (x_hat, codes, scale, zero_point)."""
    x = np.asarray(x, np.float32)
    xg, keep = _grouped(x, axis, group_size, group_axis)
    red = tuple(i for i in range(xg.ndim) if i not in keep)
    if rng is None:
        lo, hi = xg.min(axis=red, keepdims=True), xg.max(axis=red, keepdims=True)
    else:
        lo, hi = (np.asarray(r, np.float32) for r in rng)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax
        scale = np.maximum(np.abs(lo), np.abs(hi)) / np.float32(qmax)
        zp = np.zeros_like(scale)
    else:
        qmin, qmax = 0, 2**bits - 1
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
        scale = (hi - lo) / np.float32(qmax)
        zp = np.round(-lo / scale)
    q = np.clip(np.round(xg / scale) + zp, qmin, qmax).astype(np.float32)
    x_hat = ((q - zp) * scale).astype(np.float32)
    return x_hat.reshape(x.shape), q.reshape(x.shape), scale, zp


def assert_matches_reference(x, qt, fq, bits, symmetric, **mode):
    """Scales within 1 ulp of NumPy's; codes equal (except at .5 ties, which a 1-ulp different
    scale or XLA's reciprocal-multiply division may round the other way); values equal
    ``(codes - zero_point) * scale`` bit for bit in float32."""
    ref, codes, scale, zp = np_quant(x, bits, symmetric, **mode)
    axis, gs, gax = mode.get("axis"), mode.get("group_size"), mode.get("group_axis")
    assert qt.scale.size == scale.size and qt.scale.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(qt.scale).ravel(), scale.ravel(), rtol=2.5e-7)
    if symmetric:
        assert qt.zero_point is None
    else:
        np.testing.assert_array_equal(np.asarray(qt.zero_point, np.float32).ravel(), zp.ravel())
    xg, _ = _grouped(np.asarray(x, np.float64), axis, gs, gax)
    v = (xg / scale.astype(np.float64)).reshape(x.shape)
    tie = np.abs(np.abs(v - np.floor(v)) - 0.5) < 1e-4
    got_codes = np.asarray(qt.values, np.float32)
    assert np.all((got_codes == codes) | tie), "codes differ away from a rounding tie"
    s = np.asarray(qt.scale, np.float32)
    if gs is not None:
        s = np.expand_dims(s, ((gax if gax is not None else -2) % x.ndim) + 1)
    z = 0.0 if symmetric else np.asarray(qt.zero_point, np.float32).reshape(s.shape)
    cg, _ = _grouped(got_codes, axis, gs, gax)
    np.testing.assert_array_equal(np.asarray(fq, np.float32), ((cg - z) * s).reshape(x.shape))
    np.testing.assert_allclose(np.asarray(fq, np.float32), ref, rtol=1e-6, atol=float(scale.max()))


def _rand(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


MODES = [
    dict(),
    dict(axis=-1),
    dict(axis=0),
    dict(axis=-1, group_size=4),
    dict(group_size=2),
    dict(axis=1, group_size=3, group_axis=0),
]


# --------------------------------------------------------------------------- fake_quant / quantize


@pytest.mark.parametrize(
    "mode, symmetric, bits",
    [(m, sym, (2, 4, 8, 12)[(i + sym) % 4]) for i, m in enumerate(MODES) for sym in (True, False)],
)
def test_fake_quant_matches_numpy(mode, symmetric, bits):
    x = _rand((12, 5), seed=bits * 7 + len(mode))
    got = quant.fake_quant(jnp.asarray(x), bits, symmetric=symmetric, **mode)
    qt = quant.quantize(jnp.asarray(x), bits, symmetric=symmetric, **mode)
    assert_matches_reference(x, qt, got, bits, symmetric, **mode)
    expected = {(True, True): jnp.int8, (False, True): jnp.uint8}
    expected.update({(True, False): jnp.int16, (False, False): jnp.uint16})
    assert qt.values.dtype == expected[(symmetric, bits <= 8)]


def test_per_channel_scale_shapes():
    x = jnp.asarray(_rand((3, 3, 8, 16), 1))  # a conv kernel (h, w, in, out)
    assert quant.quantize(x, 8).scale.shape == ()
    assert quant.quantize(x, 8, axis=-1).scale.shape == (1, 1, 1, 16)
    assert quant.quantize(x, 8, axis=-1, group_size=4).scale.shape == (1, 1, 2, 16)
    assert quant.quantize(x, 8, axis=-1, group_size=4).values.shape == x.shape


@pytest.mark.parametrize(
    "dtype, mode, symmetric",
    [
        (jnp.float32, MODES[0], True),
        (jnp.bfloat16, MODES[1], False),
        (jnp.float16, MODES[3], True),
        (jnp.float32, MODES[5], False),
    ],
)
def test_dequantize_quantize_is_fake_quant_bit_for_bit(dtype, mode, symmetric):
    x = jnp.asarray(_rand((12, 5), 3), dtype)
    kw = dict(symmetric=symmetric, **mode)
    fq = quant.fake_quant(x, 4, **kw)
    dq = quant.dequantize(quant.quantize(x, 4, **kw))
    assert fq.dtype == dq.dtype == dtype
    np.testing.assert_array_equal(np.asarray(fq, np.float32), np.asarray(dq, np.float32))
    key = jax.random.key(5)
    fq_s = quant.fake_quant(x, 4, rounding="stochastic", key=key, **kw)
    dq_s = quant.dequantize(quant.quantize(x, 4, rounding="stochastic", key=key, **kw))
    np.testing.assert_array_equal(np.asarray(fq_s, np.float32), np.asarray(dq_s, np.float32))


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


def test_given_range_per_channel_and_scalar():
    x = _rand((10, 4), 2)
    lo, hi = (
        np.array([-1.0, -0.5, -2.0, -0.1], np.float32),
        np.array([1.0, 0.2, 0.5, 3.0], np.float32),
    )
    for sym in (True, False):
        ref = np_quant(x, 6, sym, axis=-1, rng=(lo[None], hi[None]))[0]
        got = quant.fake_quant(jnp.asarray(x), 6, symmetric=sym, axis=-1, range=(lo, hi))
        np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6)
        got2 = quant.fake_quant(
            jnp.asarray(x), 6, symmetric=sym, axis=-1, range=(lo[None], hi[None])
        )
        np.testing.assert_array_equal(got2, got)
        # clipped to the range (asymmetric: up to one step more, as the zero point is rounded)
        top = np.maximum(np.abs(lo), hi) if sym else hi + (hi - np.minimum(lo, 0)) / 63
        assert np.all(np.asarray(got) <= top * (1 + 1e-6))
    ref = np_quant(x, 3, True, rng=(np.float32(-0.7), np.float32(0.7)))[0]
    got = quant.fake_quant(jnp.asarray(x), 3, range=(-0.7, 0.7))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-6)


def test_asymmetric_range_widened_to_include_zero():
    x = jnp.asarray(np.random.default_rng(0).uniform(2.0, 3.0, (20,)).astype(np.float32))
    qt = quant.quantize(x, 8, symmetric=False)
    assert int(qt.zero_point) == 0
    np.testing.assert_allclose(float(qt.scale), float(x.max()) / 255, rtol=1e-6)


@pytest.mark.parametrize("symmetric, mode", [(True, dict()), (False, dict(axis=-1, group_size=2))])
def test_zero_input_gives_zeros_not_nan(symmetric, mode):
    x = jnp.zeros((4, 6), jnp.float32)
    y, g = jax.value_and_grad(lambda x: quant.fake_quant(x, 4, symmetric=symmetric, **mode).sum())(
        x
    )
    assert float(y) == 0.0 and bool(jnp.all(jnp.isfinite(g)))
    qt = quant.quantize(x, 4, symmetric=symmetric, **mode)
    np.testing.assert_array_equal(quant.dequantize(qt), x)
    # one all-zero channel among normal ones
    x2 = jnp.asarray(_rand((4, 6), 9)).at[:, 2].set(0.0)
    y2 = quant.fake_quant(x2, 4, symmetric=symmetric, axis=-1)
    assert bool(jnp.all(jnp.isfinite(y2))) and bool(jnp.all(y2[:, 2] == 0))
    for fn in (lambda z: quant.binarize(z, -1), lambda z: quant.ternarize(z, -1)):
        assert bool(jnp.all(fn(x) == 0))
    lo, hi = quant.mse_range(x, 4, symmetric=symmetric, **mode)
    assert bool(jnp.all(lo == 0) & jnp.all(hi == 0))
    assert bool(jnp.all(quant.lsq_fake_quant(x, quant.lsq_init_scale(x, 4), 4) == 0))


# --------------------------------------------------------------------------- properties

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


@settings(max_examples=10, deadline=None)
@given(_arrays, st.sampled_from([2, 4, 8]))
def test_values_on_grid_and_levels_counted(x, bits):
    qt = quant.quantize(jnp.asarray(x), bits, axis=-1)
    v = np.asarray(qt.values).astype(np.int32)
    assert v.min() >= -(2 ** (bits - 1) - 1) and v.max() <= 2 ** (bits - 1) - 1
    assert np.all(np.abs(v).max(axis=0) == 2 ** (bits - 1) - 1)  # each channel's max hits qmax


# --------------------------------------------------------------------------- STE


def test_ste_identity_and_clipped_gradients():
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


def test_ste_keeps_dtype_bfloat16():
    x = jnp.asarray(_rand((8, 4), 6), jnp.bfloat16)
    g = jax.grad(lambda x: quant.fake_quant(x, 4, axis=-1).astype(jnp.float32).sum())(x)
    assert g.dtype == jnp.bfloat16 and bool(jnp.all(g == 1))


# --------------------------------------------------------------------------- stochastic rounding


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


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("axis", [None, -1])
def test_minmax_and_percentile_match_numpy(axis):
    x = _rand((50, 3), 8)
    red = None if axis is None else 0
    lo, hi = quant.minmax_range(jnp.asarray(x), axis)
    np.testing.assert_array_equal(np.asarray(lo).ravel(), np.ravel(x.min(axis=red)))
    np.testing.assert_array_equal(np.asarray(hi).ravel(), np.ravel(x.max(axis=red)))
    plo, phi = quant.percentile_range(jnp.asarray(x), 95.0, axis)
    np.testing.assert_allclose(
        np.asarray(plo).ravel(), np.ravel(np.percentile(x, 5.0, axis=red)), rtol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(phi).ravel(), np.ravel(np.percentile(x, 95.0, axis=red)), rtol=1e-5
    )
    jit_p = jax.jit(quant.percentile_range, static_argnums=(1, 2))(jnp.asarray(x), 95.0, axis)
    chex.assert_trees_all_close(jit_p, (plo, phi), rtol=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, -1])
def test_mse_range_is_the_numpy_search_optimum(symmetric, axis):
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
        xh = np_quant(x, 3, symmetric, rng=(r * mn, r * mx))[0]
        errs.append(((x - xh) ** 2).sum(axis=red, keepdims=True))
    best = np.min(np.stack(errs), axis=0)
    ours = ((x - np_quant(x, 3, symmetric, rng=(np.asarray(lo), np.asarray(hi)))[0]) ** 2).sum(
        axis=red, keepdims=True
    )
    np.testing.assert_allclose(ours, best, rtol=1e-5)
    full = ((x - np_quant(x, 3, symmetric, rng=(mn, mx))[0]) ** 2).sum(axis=red, keepdims=True)
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


# --------------------------------------------------------------------------- LSQ


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("axis", [None, -1])
def test_lsq_forward_and_gradients_match_formula(symmetric, axis):
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


# --------------------------------------------------------------------------- binary / ternary / casts


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
    x = _rand((32,), 15) * 3
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


# --------------------------------------------------------------------------- gradients


def test_quantize_grads_structure_unbiased_and_shared_scales():
    grads = {
        "Dense_0": {"kernel": jnp.asarray(_rand((8, 4), 16)), "bias": jnp.asarray(_rand((4,), 17))},
        "x": None,
    }
    q = quant.quantize_grads(grads, 4, jax.random.key(0))
    assert isinstance(q["Dense_0"]["kernel"], quant.QTensor) and q["x"] is None
    assert (
        q["Dense_0"]["kernel"].values.dtype == jnp.int8 and q["Dense_0"]["kernel"].scale.shape == ()
    )
    np.testing.assert_allclose(
        q["Dense_0"]["kernel"].scale, np.abs(grads["Dense_0"]["kernel"]).max() / 7, rtol=1e-6
    )
    back = quant.dequantize_grads(q)
    chex.assert_trees_all_equal_structs(back, grads)
    qj = jax.jit(quant.quantize_grads, static_argnums=1)(grads, 4, jax.random.key(0))
    chex.assert_trees_all_equal(qj, q)
    # unbiased: mean over keys
    n = 500
    many = jax.jit(jax.vmap(lambda k: quant.dequantize_grads(quant.quantize_grads(grads, 4, k))))(
        jax.random.split(jax.random.key(1), n)
    )
    for path in (("Dense_0", "kernel"), ("Dense_0", "bias")):
        g, m = grads[path[0]][path[1]], many[path[0]][path[1]]
        s = np.abs(g).max() / 7
        assert np.abs(np.asarray(m).mean(0) - g).max() < 5 * s / (2 * np.sqrt(n))
    # shared (larger) scales: codes of two "devices" add up in int32
    scales = jax.tree.map(lambda s: s * 2, quant.grad_scales(grads, 4))
    q2 = quant.quantize_grads(grads, 4, jax.random.key(2), scales=scales)
    chex.assert_trees_all_close(q2["Dense_0"]["kernel"].scale, scales["Dense_0"]["kernel"])
    assert int(jnp.abs(q2["Dense_0"]["kernel"].values.astype(jnp.int32)).max()) <= 4


def test_quantize_grads_names_bad_leaf():
    grads = {
        "Dense_0": {"kernel": jnp.ones((2, 2)).at[0, 0].set(jnp.nan)},
        "Dense_1": {"kernel": jnp.ones(2)},
    }
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        quant.quantize_grads(grads, 8, jax.random.key(0))
    with pytest.raises(ValueError, match="Dense_1/kernel"):
        quant.quantize_grads(
            {"Dense_1": {"kernel": jnp.array([1.0, jnp.inf])}}, 8, jax.random.key(0)
        )
    with pytest.raises(TypeError, match="Dense_0/step"):
        quant.quantize_grads({"Dense_0": {"step": jnp.ones(2, jnp.int32)}}, 8, jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        quant.quantize_grads({"a": jnp.ones(2)}, 8, None)


# --------------------------------------------------------------------------- bad input

_X = jnp.ones((4, 6))


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: quant.fake_quant(_X, 1), ValueError, "bits"),
        (lambda: quant.fake_quant(_X, 17), ValueError, "bits"),
        (lambda: quant.fake_quant(_X, 4.0), TypeError, "bits"),
        (lambda: quant.fake_quant(_X, 4, axis=2), ValueError, "axis"),
        (lambda: quant.fake_quant(_X, 4, axis=-1, group_size=5), ValueError, "group_size"),
        (
            lambda: quant.fake_quant(_X, 4, axis=0, group_size=2, group_axis=0),
            ValueError,
            "group_axis",
        ),
        (lambda: quant.fake_quant(_X, 4, rounding="stochastic"), ValueError, "key"),
        (lambda: quant.fake_quant(_X, 4, rounding="up"), ValueError, "rounding"),
        (lambda: quant.fake_quant(_X, 4, ste="tanh"), ValueError, "ste"),
        (lambda: quant.fake_quant(jnp.ones((3,), jnp.int32), 4), TypeError, "floating"),
        (lambda: quant.fake_quant(_X, 4, range=(1.0, -1.0)), ValueError, "min > max"),
        (
            lambda: quant.fake_quant(_X, 4, axis=-1, range=(jnp.zeros(5), jnp.ones(5))),
            ValueError,
            "range",
        ),
        (lambda: quant.fake_quant(_X.at[1, 1].set(jnp.nan), 4), ValueError, "NaN"),
        (lambda: quant.quantize(_X.at[1, 1].set(jnp.inf), 4), ValueError, "inf"),
        (lambda: quant.percentile_range(_X, 30.0), ValueError, "q"),
        (lambda: quant.mse_range(_X, 4, num_candidates=0), ValueError, "num_candidates"),
        (lambda: quant.ema_range_update(quant.ema_range_init(), _X, 1.5), ValueError, "decay"),
        (
            lambda: quant.ema_range_update(quant.ema_range_init((1, 6)), _X, 0.9),
            ValueError,
            "shape",
        ),
        (lambda: quant.lsq_fake_quant(_X, jnp.ones(5), 4, axis=-1), ValueError, "scale"),
        (lambda: quant.ternarize(_X, threshold=2.0), ValueError, "threshold"),
        (lambda: quant.cast(_X, jnp.int8), ValueError, "dtype"),
        (lambda: quant.dequantize(_X), TypeError, "QTensor"),
    ],
)
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --------------------------------------------------------------------------- models


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
