"""Learned step size quantization (LSQ): the scale is a trained parameter."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp._checks import check_bool, check_finite, check_floating, check_number, is_traced
from lightcomp.quant._layout import Layout, layout, scale_in_view
from lightcomp.quant._numerics import check_bits, levels


def _lsq_levels(bits: int, symmetric: bool) -> tuple[float, float]:
    qmin, qmax = levels(bits, symmetric)
    return float(-qmin), float(qmax)  # (Q_N, Q_P)


def _unbroadcast(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    # Sums a gradient back to a broadcast operand's shape (jax does this inside its own
    # broadcasting rules, but a custom_vjp must do it by hand).
    lead = g.ndim - len(shape)
    g = jnp.sum(g, axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return jnp.sum(g, axis=axes, keepdims=True) if axes else g


def _scale_for(scale: jax.Array, lay: Layout, x_shape: tuple[int, ...]) -> jax.Array:
    """The step sizes broadcastable against ``lay``'s view of ``x``."""
    if lay.per_tensor and scale.ndim:
        # 0.1.0's convention, kept: with neither axis nor group_size, any scale that
        # broadcasts to x (e.g. ``(1, 1)`` for a kernel).
        try:
            fits = jnp.broadcast_shapes(scale.shape, x_shape) == x_shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"scale of shape {scale.shape} does not broadcast to x {x_shape}")
        return scale
    return scale_in_view(scale, lay, "scale")


def lsq_fake_quant(
    x: jax.Array,
    scale: jax.Array,
    bits: int,
    *,
    symmetric: bool = True,
    axis: int | tuple[int, ...] | None = None,
    group_size: int | None = None,
    group_axis: int | tuple[int, ...] | None = None,
    grad_scale: float | None = None,
) -> jax.Array:
    """Fake quantization with a learned step size ``scale`` (LSQ).

    Forward: ``round(clip(x / s, -Q_N, Q_P)) * s`` with ``Q_N = Q_P = 2**(b-1) - 1`` (symmetric,
    narrow range as the contract) or ``Q_N = 0, Q_P = 2**b - 1`` (unsigned, e.g. after ReLU).
    Backward: ``d/dx = 1`` inside ``(-Q_N, Q_P)``, 0 outside; ``d/ds = -x/s + round(x/s)``
    inside, ``-Q_N`` below, ``Q_P`` above, times ``g = 1 / sqrt(N * Q_P)`` with ``N`` the
    number of elements sharing a step size (``x.size / scale.size``), or ``grad_scale``.

    Args:
      x: floating array.
      scale: float step size(s) of the layout's `Layout.scale_shape` (``()`` per tensor; the
        rank of ``x`` with ``x.shape[axis]`` on ``axis``, ``n_groups`` on the group axis and 1
        elsewhere), as `lsq_init_scale` returns; also a scalar, a ``[x.shape[axis]]`` vector,
        or, with neither ``axis`` nor ``group_size``, any shape that broadcasts to ``x``. A
        trainable leaf (wrap it in `lightcomp.Learned` inside a transform state). A
        concrete scale must be finite and > 0; under ``jit`` (a scale being trained)
        values below 1e-8 are treated as 1e-8.
      bits: 2..16.
      symmetric: signed narrow range, or unsigned.
      axis: the axis (or tuple of axes, every combination its own) that keeps its own step
        size; None: one per tensor (or per group).
      group_size: ``group_size`` consecutive elements along ``group_axis`` share a step size.
      group_axis: the axis split into groups; default -2 (a kernel's input axis), 0 for 1-D.
      grad_scale: overrides ``g``.

    Returns:
      ``x``'s shape and dtype.

    Raises:
      ValueError / TypeError: bad ``bits``, ``symmetric``, layout or ``grad_scale``, a
        non-float ``x`` or ``scale``, a ``scale`` of the wrong shape, NaN/inf in a concrete
        ``x`` or ``scale``, a concrete ``scale <= 0``.

    References:
      Esser et al. 2019, "Learned Step Size Quantization" (ICLR 2020).

    Example:
      >>> x = jnp.array([[0.3, -1.2], [0.9, 0.1]])
      >>> lc.quant.lsq_fake_quant(x, jnp.array([[0.25, 0.5]]), 3, axis=-1)
      Array([[ 0.25, -1.  ],
             [ 0.75,  0.  ]], dtype=float32)
    """
    check_floating(x, "x")
    bits = check_bits(bits)
    symmetric = check_bool(symmetric, "symmetric")
    if grad_scale is not None:
        grad_scale = check_number(grad_scale, "grad_scale", lo=0.0)
    lay = layout(x.shape, axis, group_size, group_axis)
    s = jnp.asarray(scale)
    check_floating(s, "scale")
    s_view = _scale_for(s, lay, tuple(x.shape))
    check_finite(x, "x")
    _check_positive(s, "scale")
    qn, qp = _lsq_levels(bits, symmetric)
    n = math.prod(x.shape) / max(math.prod(s.shape), 1)
    g = grad_scale if grad_scale is not None else 1.0 / math.sqrt(n * qp)
    return lay.unview(_lsq(lay.view(x), s_view.astype(jnp.float32), qn, qp, g))


def _check_positive(s: jax.Array, argname: str) -> None:
    """A concrete step size must be finite and > 0 (a traced one is clamped to 1e-8)."""
    if is_traced(s) or not s.size:
        return
    check_finite(s, argname)
    low = float(np.min(np.asarray(s, np.float32)))
    if low <= 0:
        raise ValueError(f"{argname} must be > 0 (a step size), got a minimum of {low}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _lsq(x, s, qn, qp, g):
    return _lsq_fwd(x, s, qn, qp, g)[0]


def _lsq_fwd(x, s, qn, qp, g):
    del g
    s_safe = jnp.maximum(s, 1e-8)
    v = x.astype(jnp.float32) / s_safe
    r = jnp.round(jnp.clip(v, -qn, qp))
    return (r * s_safe).astype(x.dtype), (v, r, s)


def _lsq_bwd(qn, qp, g, res, gy):
    v, r, s = res
    gy32 = gy.astype(jnp.float32)
    inside = (v > -qn) & (v < qp)
    gx = jnp.where(inside, gy32, 0.0).astype(gy.dtype)
    ds = jnp.where(v <= -qn, -qn, jnp.where(v >= qp, qp, r - v))
    gs = _unbroadcast(gy32 * ds * g, s.shape)
    return gx, gs.astype(s.dtype)


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def lsq_init_scale(
    x: jax.Array,
    bits: int,
    *,
    axis: int | tuple[int, ...] | None = None,
    group_size: int | None = None,
    group_axis: int | tuple[int, ...] | None = None,
    symmetric: bool = True,
) -> jax.Array:
    """LSQ's initial step size ``2 * mean|x| / sqrt(Q_P)`` per scale of the layout, float32.

    Args:
      x: floating array.
      bits: 2..16.
      axis, group_size, group_axis: the layout, as `lsq_fake_quant`.
      symmetric: signed narrow range, or unsigned.

    Returns:
      float32 step sizes of `Layout.scale_shape`: a scalar per tensor; the tensor's rank,
      with 1 on shared axes, ``x.shape[axis]`` on ``axis`` and ``n_groups`` on the group axis.

    References:
      Esser et al. 2019, "Learned Step Size Quantization".
    """
    check_floating(x, "x")
    bits = check_bits(bits)
    symmetric = check_bool(symmetric, "symmetric")
    lay = layout(x.shape, axis, group_size, group_axis)
    check_finite(x, "x")
    _, qp = _lsq_levels(bits, symmetric)
    a = lay.view(jnp.abs(jnp.asarray(x, jnp.float32)))
    m = lay.scale_from_view(jnp.mean(a, axis=lay.reduce_axes, keepdims=True))
    return jnp.maximum(2.0 * m / math.sqrt(qp), 1e-8)
