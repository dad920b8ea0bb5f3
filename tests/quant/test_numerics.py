"""Tests for lightcomp.quant's integer grid: every mode against the NumPy conventions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp import quant


def _rand(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _assert_matches_reference(ref, x, qt, fq, bits, symmetric, **mode):
    """Scales within 1 ulp of NumPy's; codes equal (except at .5 ties, which a 1-ulp different
    scale or XLA's reciprocal-multiply division may round the other way); values equal
    ``(codes - zero_point) * scale`` bit for bit in float32."""
    want, codes, scale, zp = ref.quant(x, bits, symmetric, **mode)
    axis, gs, gax = mode.get("axis"), mode.get("group_size"), mode.get("group_axis")
    assert qt.scale.size == scale.size and qt.scale.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(qt.scale).ravel(), scale.ravel(), rtol=2.5e-7)
    if symmetric:
        assert qt.zero_point is None
    else:
        np.testing.assert_array_equal(np.asarray(qt.zero_point, np.float32).ravel(), zp.ravel())
    xg, _ = ref.grouped(np.asarray(x, np.float64), axis, gs, gax)
    v = (xg / scale.astype(np.float64)).reshape(x.shape)
    tie = np.abs(np.abs(v - np.floor(v)) - 0.5) < 1e-4
    got_codes = np.asarray(qt.values, np.float32)
    assert np.all((got_codes == codes) | tie), "codes differ away from a rounding tie"
    s = np.asarray(qt.scale, np.float32)
    if gs is not None:
        s = np.expand_dims(s, ((gax if gax is not None else -2) % x.ndim) + 1)
    z = 0.0 if symmetric else np.asarray(qt.zero_point, np.float32).reshape(s.shape)
    cg, _ = ref.grouped(got_codes, axis, gs, gax)
    np.testing.assert_array_equal(np.asarray(fq, np.float32), ((cg - z) * s).reshape(x.shape))
    np.testing.assert_allclose(np.asarray(fq, np.float32), want, rtol=1e-6, atol=float(scale.max()))


MODES = [
    dict(),
    dict(axis=-1),
    dict(axis=0),
    dict(axis=-1, group_size=4),
    dict(group_size=2),
    dict(axis=1, group_size=3, group_axis=0),
]


@pytest.mark.parametrize(
    "mode, symmetric, bits",
    [(m, sym, (2, 4, 8, 12)[(i + sym) % 4]) for i, m in enumerate(MODES) for sym in (True, False)],
)
def test_fake_quant_and_quantize_match_numpy(ref, mode, symmetric, bits):
    x = _rand((12, 5), seed=bits * 7 + len(mode))
    got = quant.fake_quant(jnp.asarray(x), bits, symmetric=symmetric, **mode)
    qt = quant.quantize(jnp.asarray(x), bits, symmetric=symmetric, **mode)
    _assert_matches_reference(ref, x, qt, got, bits, symmetric, **mode)
    expected = {(True, True): jnp.int8, (False, True): jnp.uint8}
    expected.update({(True, False): jnp.int16, (False, False): jnp.uint16})
    assert qt.values.dtype == expected[(symmetric, bits <= 8)]


@pytest.mark.parametrize("bits", [1, 2, 5, 8, 16])
def test_qrange_is_the_contract(bits):
    assert quant.qrange(bits) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
    if bits > 1:
        assert quant.qrange(bits, symmetric=False) == (0, 2**bits - 1)


def test_check_bits_and_qrange_errors():
    assert quant.check_bits(4) == 4 and type(quant.check_bits(np.int64(4))) is int
    with pytest.raises(ValueError, match="binarize"):
        quant.check_bits(1)
    with pytest.raises(ValueError, match=r"nbits must be in 3\.\.6"):
        quant.check_bits(7, lo=3, hi=6, argname="nbits")
    with pytest.raises(TypeError, match="bits"):
        quant.check_bits(True)
    with pytest.raises(ValueError, match="binarize"):
        quant.qrange(1, symmetric=False)
    with pytest.raises(TypeError, match="symmetric"):
        quant.qrange(4, "no")


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


_arrays = st.integers(0, 10_000).map(lambda s: _rand((6, 5), s) * np.float32(np.exp((s % 7) - 3)))


@settings(max_examples=10, deadline=None)
@given(_arrays, st.sampled_from([2, 4, 8]))
def test_values_on_grid_and_levels_counted(x, bits):
    qt = quant.quantize(jnp.asarray(x), bits, axis=-1)
    v = np.asarray(qt.values).astype(np.int32)
    assert v.min() >= -(2 ** (bits - 1) - 1) and v.max() <= 2 ** (bits - 1) - 1
    assert np.all(np.abs(v).max(axis=0) == 2 ** (bits - 1) - 1)  # each channel's max hits qmax
