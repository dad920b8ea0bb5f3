"""Tests for lightcomp.quant.QTensor, quantize and dequantize."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import quant


def _rand(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


MODES = [
    dict(),
    dict(axis=-1),
    dict(axis=-1, group_size=4),
    dict(axis=1, group_size=3, group_axis=0),
]


def test_per_channel_scale_shapes():
    x = jnp.asarray(_rand((3, 3, 8, 16), 1))  # a conv kernel (h, w, in, out)
    assert quant.quantize(x, 8).scale.shape == ()
    assert quant.quantize(x, 8, axis=-1).scale.shape == (1, 1, 1, 16)
    assert quant.quantize(x, 8, axis=-1, group_size=4).scale.shape == (1, 1, 2, 16)
    assert quant.quantize(x, 8, axis=-1, group_size=4).values.shape == x.shape
    # every quantizer stores its scales in the layout's scale shape
    lay = quant.layout(x.shape, -1, 4)
    assert quant.quantize(x, 8, axis=-1, group_size=4).layout == lay
    chex.assert_shape(quant.minmax_range(x, -1, group_size=4), lay.scale_shape)
    chex.assert_shape(quant.lsq_init_scale(x, 8, axis=-1, group_size=4), lay.scale_shape)
    qt = quant.quantize(x, 4, symmetric=False, axis=-1, group_size=4)
    assert qt.zero_point.shape == qt.scale.shape and qt.zero_point.dtype == jnp.uint8
    assert qt.shape == x.shape and qt.layout == quant.layout(x.shape, -1, 4)


@pytest.mark.parametrize(
    "dtype, mode, symmetric",
    [
        (jnp.float32, MODES[0], True),
        (jnp.bfloat16, MODES[1], False),
        (jnp.float16, MODES[2], True),
        (jnp.float32, MODES[3], False),
    ],
)
def test_dequantize_quantize_is_fake_quant_bit_for_bit(ref, dtype, mode, symmetric):
    x = jnp.asarray(_rand((12, 5), 3), dtype)
    kw = dict(symmetric=symmetric, **mode)
    fq = quant.fake_quant(x, 4, **kw)
    qt = quant.quantize(x, 4, **kw)
    dq = quant.dequantize(qt)
    assert fq.dtype == dq.dtype == dtype
    np.testing.assert_array_equal(np.asarray(fq, np.float32), np.asarray(dq, np.float32))
    # dequantize is (values - zero_point) * scale in float32, jitted or not
    gs, gax = mode.get("group_size"), mode.get("group_axis")
    s = np.asarray(qt.scale)
    z = 0.0 if symmetric else np.asarray(qt.zero_point, np.float32)
    if gs is not None:  # scales of the group axis broadcast over its groups' elements
        g = (gax if gax is not None else -2) % x.ndim
        s = np.expand_dims(s, g + 1)
        z = z if symmetric else np.expand_dims(z, g + 1)
    vg, _ = ref.grouped(np.asarray(qt.values, np.float32), mode.get("axis"), gs, gax)
    want = ((vg - z) * s).reshape(x.shape).astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(dq, np.float32), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(quant.dequantize)(qt), np.float32), want)
    key = jax.random.key(5)
    fq_s = quant.fake_quant(x, 4, rounding="stochastic", key=key, **kw)
    dq_s = quant.dequantize(quant.quantize(x, 4, rounding="stochastic", key=key, **kw))
    np.testing.assert_array_equal(np.asarray(fq_s, np.float32), np.asarray(dq_s, np.float32))


def test_qtensor_is_a_pytree_with_static_configuration():
    qt = quant.quantize(jnp.asarray(_rand((8, 4), 2)), 6, symmetric=False, axis=-1)
    leaves = jax.tree.leaves(qt)
    assert len(leaves) == 3  # values, scale, zero point
    through_jit = jax.jit(lambda q: q)(qt)
    chex.assert_trees_all_equal(through_jit, qt)
    assert (through_jit.bits, through_jit.symmetric, through_jit.axis) == (6, False, 1)
    assert through_jit.dtype == np.float32


def test_dequantize_needs_a_qtensor():
    with pytest.raises(TypeError, match="QTensor"):
        quant.dequantize(jnp.ones((4, 6)))


@pytest.mark.parametrize(
    "mode",
    [dict(axis=(1, 2)), dict(axis=(-1, 1), group_size=4, group_axis=0), dict(axis=(0, 2))],
)
def test_tuple_axes_keep_a_scale_per_combination(ref, mode):
    x = _rand((8, 2, 4), 31)  # [embed, heads, head_dim]
    x[:, 0] *= 10  # heads of different magnitude
    qt = quant.quantize(jnp.asarray(x), 4, **mode)
    lay = quant.layout(x.shape, mode["axis"], mode.get("group_size"), mode.get("group_axis"))
    assert qt.layout == lay and qt.axis == lay.axes and len(lay.axes) == 2
    chex.assert_shape(qt.scale, lay.scale_shape)
    want_hat, want_q, _, _ = ref.quant(
        x,
        4,
        axis=mode["axis"],
        group_size=mode.get("group_size"),
        group_axis=mode.get("group_axis"),
    )
    np.testing.assert_array_equal(np.asarray(qt.values, np.float32), want_q)
    np.testing.assert_allclose(np.asarray(quant.dequantize(qt)), want_hat, rtol=1e-6)
    fq = quant.fake_quant(jnp.asarray(x), 4, **mode)
    np.testing.assert_array_equal(fq, quant.dequantize(qt))
    jitted = jax.jit(lambda x: quant.fake_quant(x, 4, **mode))(jnp.asarray(x))
    np.testing.assert_array_equal(jitted, fq)
