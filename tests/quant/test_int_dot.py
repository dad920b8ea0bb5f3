"""Tests for lightcomp.quant.int_dot_general / int_conv_general_dilated / PackedInt4."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp import quant

RNG = np.random.default_rng(0)


def _qt(codes, scale, zero_point=None, axis=None):
    """A QTensor from given codes (int8, or uint8 with a zero point) and float32 scales."""
    sym = zero_point is None
    return quant.QTensor(
        values=jnp.asarray(codes, jnp.int8 if sym else jnp.uint8),
        scale=jnp.asarray(scale, jnp.float32),
        zero_point=None if sym else jnp.asarray(zero_point, jnp.uint8),
        bits=8,
        symmetric=sym,
        axis=axis,
        group_size=None,
        group_axis=None,
        dtype=np.dtype(np.float32),
    )


def _scale(shape, axis):
    """A random positive float32 scale of a layout's scale shape (keepdims on ``axis``)."""
    if axis is None:
        return np.float32(RNG.uniform(0.01, 0.1))
    s = [1] * len(shape)
    s[axis] = shape[axis]
    return RNG.uniform(0.01, 0.1, s).astype(np.float32)


# (lhs shape, rhs shape, dimension numbers, lhs scale axis, rhs scale axis)
DOTS = [
    ((5, 7), (7, 3), (((1,), (0,)), ((), ())), None, 1),  # Dense
    ((5, 7), (7, 3), (((1,), (0,)), ((), ())), 0, None),  # per-row activations
    ((2, 4, 6), (6, 3, 2), (((2,), (0,)), ((), ())), None, 2),  # DenseGeneral, features (3, 2)
    ((2, 4, 3, 5), (3, 5, 6), (((2, 3), (0, 1)), ((), ())), 1, 2),  # two contracted axes
    ((3, 4, 6), (3, 6, 5), (((2,), (1,)), ((0,), (0,))), 1, 0),  # batched
]


def _np_dot(lq, lzp, rq, dn):
    """The exact integer sum, in int64, of (lhs codes - zero point) x rhs codes."""
    (lc_, rc_), (lb, rb) = dn
    a = np.asarray(lq, np.int64) - (0 if lzp is None else np.asarray(lzp, np.int64))
    b = np.asarray(rq, np.int64)
    la = list(range(a.ndim))
    lbl = [20 + i for i in range(b.ndim)]
    for x, y in zip(lc_ + lb, rc_ + rb, strict=True):
        lbl[y] = la[x]
    out = [la[i] for i in lb] + [la[i] for i in range(a.ndim) if i not in lc_ + lb]
    out += [lbl[i] for i in range(b.ndim) if i not in rc_ + rb]
    return np.einsum(a, la, b, lbl, out)


def _arranged(s, ndim, contract, batch, n_other, lhs):
    """A keepdims scale moved to the dot's output layout (batch, lhs free, rhs free)."""
    if np.ndim(s) == 0:
        return s
    free = [d for d in range(ndim) if d not in contract + batch]
    t = np.transpose(s, (*batch, *free, *contract)).reshape([s.shape[d] for d in (*batch, *free)])
    nb = len(batch)
    ones = (1,) * n_other
    return t.reshape(t.shape + ones if lhs else t.shape[:nb] + ones + t.shape[nb:])


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("case", DOTS, ids=range(len(DOTS)))
def test_int_dot_general_is_the_exact_integer_sum_rescaled(case, symmetric):
    ls, rs, dn, lax_, rax = case
    lq = RNG.integers(-127, 128, ls) if symmetric else RNG.integers(0, 256, ls)
    rq = RNG.integers(-127, 128, rs)
    sl, sr = _scale(ls, lax_), _scale(rs, rax)
    zp = None if symmetric else np.broadcast_to(RNG.integers(0, 256), np.shape(sl)).copy()
    lhs, rhs = _qt(lq, sl, zp, lax_), _qt(rq, sr, axis=rax)
    exact = _np_dot(lq, zp, rq, dn)
    (lc_, rc_), (lb, rb) = dn
    n_lfree = len(ls) - len(lc_) - len(lb)
    n_rfree = len(rs) - len(rc_) - len(rb)
    scale = _arranged(sl, len(ls), lc_, lb, n_rfree, True) * _arranged(
        sr, len(rs), rc_, rb, n_lfree, False
    )
    want = exact.astype(np.float32) * scale.astype(np.float32)
    got = quant.int_dot_general(lhs, rhs, dn)
    jitted = jax.jit(quant.int_dot_general, static_argnums=2)(lhs, rhs, dn)
    assert got.dtype == jnp.float32 and got.shape == exact.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(jitted, got)
    # the codes carried in bfloat16 with float32 sums: the same exact integers
    np.testing.assert_array_equal(quant.int_dot_general(lhs, rhs, dn, operands="bfloat16"), want)
    # unit scales: the float32 result is the integer sum itself
    ones = quant.int_dot_general(
        _qt(lq, 1.0, zp if zp is None else zp.reshape(-1)[0]), _qt(rq, 1.0), dn
    )
    np.testing.assert_array_equal(ones, exact.astype(np.float32))


@pytest.mark.parametrize("symmetric", [True, False])
def test_int_dot_general_equals_the_fake_quant_forward(symmetric):
    x = jnp.asarray(RNG.normal(size=(16, 24)).astype(np.float32))
    if not symmetric:
        x = jax.nn.relu(x)
    w = jnp.asarray(RNG.normal(size=(24, 8)).astype(np.float32))
    y = quant.int_dot_general(
        quant.quantize(x, 8, symmetric=symmetric),
        quant.quantize(w, 8, axis=-1),
        (((1,), (0,)), ((), ())),
    )
    ref = quant.fake_quant(x, 8, symmetric=symmetric) @ quant.fake_quant(w, 8, axis=-1)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))


def _np_conv(q, zp, k, stride, pads, groups):
    """NHWC x HWIO, exact in int64: (codes - zero point) padded with 0, windowed."""
    a = np.asarray(q, np.int64) - zp
    a = np.pad(a, [(0, 0), *pads, (0, 0)])
    kh, kw, ci, co = k.shape
    win = np.lib.stride_tricks.sliding_window_view(a, (kh, kw), axis=(1, 2))
    win = win[:, :: stride[0], :: stride[1]]  # [n, oh, ow, c, kh, kw]
    outs = []
    per = co // groups
    for g in range(groups):
        wg = np.asarray(k[..., g * per : (g + 1) * per], np.int64)
        xg = win[:, :, :, g * ci : (g + 1) * ci]
        outs.append(np.einsum("nhwcij,ijco->nhwo", xg, wg))
    return np.concatenate(outs, -1)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("padding,stride,groups", [("SAME", (1, 1), 1), ("VALID", (2, 1), 2)])
def test_int_conv_is_the_exact_integer_sum_rescaled(symmetric, padding, stride, groups):
    n, h, w, ci, co = 2, 7, 6, 4, 6
    q = RNG.integers(-127, 128, (n, h, w, ci)) if symmetric else RNG.integers(0, 256, (n, h, w, ci))
    zp = 0 if symmetric else int(RNG.integers(0, 256))
    k = RNG.integers(-127, 128, (3, 3, ci // groups, co))
    sk = _scale(k.shape, 3)
    lhs = _qt(q, 0.05, None if symmetric else zp)
    rhs = _qt(k, sk, axis=3)
    pads = [(1, 1), (1, 1)] if padding == "SAME" else [(0, 0), (0, 0)]
    exact = _np_conv(q, zp, k, stride, pads, groups)
    args = (stride, padding, None, None, ("NHWC", "HWIO", "NHWC"), groups)
    got = quant.int_conv_general_dilated(lhs, rhs, *args)
    want = exact.astype(np.float32) * (np.float32(0.05) * sk.reshape(1, 1, 1, -1))
    np.testing.assert_array_equal(got, want)
    bf16 = quant.int_conv_general_dilated(lhs, rhs, *args, operands="bfloat16")
    np.testing.assert_array_equal(bf16, want)
    jitted = jax.jit(lambda a, b: quant.int_conv_general_dilated(a, b, *args))(lhs, rhs)
    np.testing.assert_array_equal(jitted, got)


def test_int_conv_equals_the_fake_quant_forward():
    x = jnp.asarray(RNG.random((2, 8, 8, 3)).astype(np.float32))
    k = jnp.asarray(RNG.normal(size=(3, 3, 3, 5)).astype(np.float32))
    dn = ("NHWC", "HWIO", "NHWC")
    y = quant.int_conv_general_dilated(
        quant.quantize(x, 8, symmetric=False),
        quant.quantize(k, 8, axis=-1),
        (1, 1),
        "SAME",
        dimension_numbers=dn,
    )
    ref = jax.lax.conv_general_dilated(
        quant.fake_quant(x, 8, symmetric=False),
        quant.fake_quant(k, 8, axis=-1),
        (1, 1),
        "SAME",
        dimension_numbers=dn,
    )
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * float(jnp.abs(ref).max()))


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(-8, 7), min_size=1, max_size=21), st.integers(1, 3))
def test_pack_int4_round_trips(codes, rows):
    c = np.tile(np.asarray(codes), (rows, 1))
    p = quant.pack_int4(c)
    assert p.shape == c.shape and p.dtype == np.int8
    assert p.data.dtype == jnp.uint8 and p.data.shape == (rows, (c.shape[1] + 1) // 2)
    np.testing.assert_array_equal(p.unpack(), c)


def test_packed_int4_values_serve_like_int8_in_half_the_memory():
    codes = RNG.integers(-7, 8, (24, 9))
    scale = _scale((24, 9), 1)
    x = quant.quantize(jnp.asarray(RNG.normal(size=(4, 24)).astype(np.float32)))
    packed = quant.QTensor(
        quant.pack_int4(codes),
        jnp.asarray(scale),
        None,
        4,
        True,
        1,
        None,
        None,
        np.dtype(np.float32),
    )
    dn = (((1,), (0,)), ((), ()))
    np.testing.assert_array_equal(
        jax.jit(quant.int_dot_general, static_argnums=2)(x, packed, dn),
        quant.int_dot_general(x, _qt(codes, scale, axis=1), dn),
    )
    assert packed.values.nbytes == 24 * 5  # ceil(9 / 2) bytes per row
    np.testing.assert_array_equal(jax.jit(lambda t: t.unpack())(packed.values), codes)
    np.testing.assert_array_equal(quant.dequantize(packed), codes.astype(np.float32) * scale)


def test_int_dot_general_compiles_once():
    dn = (((1,), (0,)), ((), ()))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(a, b):
        return quant.int_dot_general(a, b, dn)

    w = quant.quantize(jnp.asarray(RNG.normal(size=(6, 3)).astype(np.float32)), axis=-1)
    for seed in range(3):
        x = jnp.asarray(np.random.default_rng(seed).normal(size=(2, 6)).astype(np.float32))
        f(quant.quantize(x), w)


def test_int_dot_general_bad_operands():
    dn = (((1,), (0,)), ((), ()))
    x = quant.quantize(jnp.ones((2, 6)))
    w = quant.quantize(jnp.asarray(RNG.normal(size=(6, 3)).astype(np.float32)), axis=-1)
    with pytest.raises(TypeError, match=r"rhs must be a lightcomp.quant.QTensor"):
        quant.int_dot_general(x, jnp.ones((6, 3)), dn)
    with pytest.raises(ValueError, match=r"12-bit codes"):
        quant.int_dot_general(x, quant.quantize(jnp.ones((6, 3)), 12), dn)
    with pytest.raises(ValueError, match=r"rhs must be symmetric"):
        quant.int_dot_general(x, quant.quantize(jnp.ones((6, 3)), symmetric=False), dn)
    with pytest.raises(ValueError, match=r"axis 0, which is contracted"):
        quant.int_dot_general(x, quant.quantize(jnp.ones((6, 3)), axis=0), dn)
    with pytest.raises(ValueError, match=r"per-group scales"):
        quant.int_dot_general(x, quant.quantize(jnp.ones((6, 3)), group_size=2), dn)
    with pytest.raises(ValueError, match=r"do not contract"):
        quant.int_dot_general(x, w, (((0,), (0,)), ((), ())))
    with pytest.raises(ValueError, match=r"dimension_numbers"):
        quant.int_dot_general(x, w, (((5,), (0,)), ((), ())))
    big = quant.quantize(jnp.ones((2, 1100)))
    with pytest.raises(ValueError, match=r"exact up to 1024 contracted terms; this .* 1100"):
        quant.int_dot_general(big, quant.quantize(jnp.ones((1100, 2))), dn, operands="bfloat16")
    with pytest.raises(ValueError, match=r"operands"):
        quant.int_dot_general(x, w, dn, operands="int4")
    with pytest.raises(TypeError, match=r"lhs must be"):
        quant.int_conv_general_dilated(jnp.ones((1, 4, 4, 6)), w, (1, 1), "SAME")
    with pytest.raises((TypeError, ValueError), match=r"codes"):
        quant.pack_int4(np.array([8, 1]))
