"""Tests for lightcomp.quant.layout / Layout: views, scale shapes and reductions."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import quant


def _kept(axis, nd):
    if axis is None:
        return set()
    return {a % nd for a in (axis if isinstance(axis, tuple) else (axis,))}


def _np_layout(shape, axis, group_size, group_axis):
    """(view shape, reduce axes, scale shape) computed directly with NumPy."""
    x = np.zeros(shape)
    nd = x.ndim
    if group_size is None:
        kept = _kept(axis, nd)
        red = tuple(i for i in range(nd) if i not in kept)
        scale = () if axis is None else x.max(axis=red, keepdims=True).shape
        return x.shape, red, scale
    g = (group_axis if group_axis is not None else (-2 if nd >= 2 else 0)) % nd
    view = np.reshape(x, (*shape[:g], shape[g] // group_size, group_size, *shape[g + 1 :]))
    kept = {g} | {a + (a > g) for a in _kept(axis, nd)}
    red = tuple(i for i in range(view.ndim) if i not in kept)
    scale = np.squeeze(view.max(axis=red, keepdims=True), axis=g + 1).shape
    return view.shape, red, scale


CASES = [
    ((12, 5), None, None, None),
    ((12, 5), -1, None, None),
    ((12, 5), 0, None, None),
    ((12, 5), -1, 4, None),
    ((12, 5), None, 2, None),
    ((12, 6), 1, 3, 0),
    ((3, 3, 8, 16), -1, 4, None),
    ((3, 3, 8, 16), None, None, None),
    ((10,), None, 5, None),
    ((10,), 0, None, None),
    ((), None, None, None),
    ((8, 2, 4), (1, 2), None, None),  # per head and head_dim of a query kernel
    ((8, 2, 4), (-1, 1), None, None),
    ((3, 8, 2, 4), (0, 2, 3), 4, 1),  # stacked: per layer, head, head_dim; groups of embed
    ((3, 2, 4, 8), (0, 3), 2, 2),  # stacked attention out: groups along head_dim
]


@pytest.mark.parametrize("shape, axis, group_size, group_axis", CASES)
def test_layout_matches_numpy(shape, axis, group_size, group_axis):
    lay = quant.layout(shape, axis, group_size, group_axis)
    view, red, scale = _np_layout(shape, axis, group_size, group_axis)
    assert lay.view_shape == view and lay.reduce_axes == red and lay.scale_shape == scale
    assert lay.view_scale_shape == tuple(1 if i in red else d for i, d in enumerate(view))
    kept = tuple(sorted(_kept(axis, len(shape))))
    assert lay.axes == kept and lay.axis == (
        None if not kept else kept[0] if len(kept) == 1 else kept
    )
    assert lay.per_tensor == (axis is None and group_size is None)
    x = np.random.default_rng(len(shape)).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(lay.view(x), x.reshape(view))
    np.testing.assert_array_equal(lay.unview(lay.view(x)), x)
    # a statistic of the view round-trips through the stored scale shape
    stat = np.max(lay.view(x), axis=red, keepdims=True)
    stored = lay.scale_from_view(stat)
    chex.assert_shape(stored, scale)
    back = np.broadcast_to(lay.scale_to_view(stored), lay.view_scale_shape)
    np.testing.assert_array_equal(back, np.broadcast_to(stat, lay.view_scale_shape))


def test_layout_view_under_jit():
    lay = quant.layout((12, 5), -1, 4)
    x = jnp.arange(60.0).reshape(12, 5)
    np.testing.assert_array_equal(jax.jit(lambda x: lay.view(x) * 2)(x), 2 * x.reshape(3, 4, 5))
    np.testing.assert_array_equal(jax.jit(lambda x: lay.unview(lay.view(x)))(x), x)


def test_layout_is_frozen_and_hashable():
    a = quant.layout((8, 4), -1, 2)
    b = quant.layout([8, 4], axis=1, group_size=2, group_axis=-2)
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a != quant.layout((8, 4), -1)
    with pytest.raises(AttributeError):
        a.shape = (4, 8)

    @functools.partial(jax.jit, static_argnums=1)
    @chex.assert_max_traces(n=1)
    def double(x, lay):
        return lay.unview(lay.view(x) * 2)

    for seed in range(3):  # an equal layout built anew is the same static argument
        x = jnp.full((8, 4), float(seed))
        np.testing.assert_array_equal(double(x, quant.layout((8, 4), -1, 2)), 2 * x)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        (((4, 6), 2), ValueError, "axis"),
        (((4, 6), 1.0), TypeError, "axis"),
        (((4, 6), True), TypeError, "axis"),
        (((4, 6), -1, 5), ValueError, "group_size"),
        (((4, 6), -1, 0), ValueError, "group_size"),
        (((4, 6), -1, 2.0), TypeError, "group_size"),
        (((4, 6), 0, 2, 0), ValueError, "group_axis"),
        (((4, 6), 0, None, 1), ValueError, "group_axis"),
        (((4, 6), None, 2, 3), ValueError, "group_axis"),
        (((), None, 1), ValueError, "rank"),
        (((4, 6, 2), (0, -3)), ValueError, "twice"),
        (((4, 6, 2), (0, 3)), ValueError, "axis"),
        (((4, 6, 2), (0, 1.0)), TypeError, "axis"),
        (((4, 6, 2), (0, 2), 2, 2), ValueError, "kept axis"),
    ],
)
def test_layout_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        quant.layout(*args)
