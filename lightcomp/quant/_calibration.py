"""Calibration: where a quantization range comes from (min/max, percentiles, MSE, EMA).

Every quantizer accepts ``range=(min, max)`` from `minmax_range`, `ema_range_update`,
`percentile_range` or `mse_range`, and uses the tensor's own min/max when none is given.
Ranges are float32 and shaped like the layout's scales (`Layout.scale_shape`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lightcomp._checks import (
    check_bool,
    check_finite,
    check_floating,
    check_int,
    check_number,
    is_traced,
)
from lightcomp.quant._layout import Layout, layout, scale_in_view
from lightcomp.quant._numerics import check_bits, codes, decode, own_range, scale_zero_point

Range = tuple[Any, Any]


def check_range(rng: Any, lay: Layout) -> tuple[jax.Array, jax.Array]:
    """A user's ``range=(min, max)`` -> float32 ``(min, max)`` broadcastable against the view.

    Each bound is a scalar, a ``[C]`` vector along the layout's axis or scale-shaped; concrete
    bounds must be finite with ``min <= max``.
    """
    if not isinstance(rng, (tuple, list)) or len(rng) != 2:
        raise TypeError(f"range must be a pair (min, max), got {type(rng).__name__}")
    as_view = lambda v, name: scale_in_view(jnp.asarray(v, jnp.float32), lay, name)
    if not is_traced(rng):
        with jax.ensure_compile_time_eval():
            lo, hi = as_view(rng[0], "range min"), as_view(rng[1], "range max")
            check_finite(lo, "range min")
            check_finite(hi, "range max")
            ordered = bool(jnp.all(lo <= hi))
        if not ordered:
            raise ValueError("range has min > max")
    return as_view(rng[0], "range min"), as_view(rng[1], "range max")


def _checked_layout(x, axis, group_size, group_axis) -> Layout:
    check_floating(x, "x")
    lay = layout(x.shape, axis, group_size, group_axis)
    check_finite(x, "x")
    return lay


def view32(x: jax.Array, lay: Layout) -> jax.Array:
    """``x`` in ``lay``'s view, as float32."""
    return lay.view(jnp.asarray(x)).astype(jnp.float32)


def minmax_of(x: jax.Array, lay: Layout) -> tuple[jax.Array, jax.Array]:
    """`minmax_range` for a checked ``x`` and its layout."""
    lo, hi = own_range(view32(x, lay), lay)
    return lay.scale_from_view(lo), lay.scale_from_view(hi)


def minmax_range(
    x: jax.Array, axis: int | tuple[int, ...] | None = None, *, group_size=None, group_axis=None
) -> tuple[jax.Array, jax.Array]:
    """The tensor's own ``(min, max)`` per tensor / channel / group.

    Args:
      x: floating array.
      axis, group_size, group_axis: the layout, as `layout`.

    Returns:
      float32 ``(min, max)`` of `Layout.scale_shape`.

    Example:
      >>> lc.quant.minmax_range(jnp.array([[1.0, -2.0], [3.0, 0.5]]), axis=-1)
      (Array([[ 1., -2.]], dtype=float32), Array([[3. , 0.5]], dtype=float32))
    """
    lay = _checked_layout(x, axis, group_size, group_axis)
    return minmax_of(x, lay)


def percentile_range(
    x: jax.Array,
    q: float,
    axis: int | tuple[int, ...] | None = None,
    *,
    group_size=None,
    group_axis=None,
) -> tuple[jax.Array, jax.Array]:
    """``(percentile(x, 100 - q), percentile(x, q))``: clips the ``100 - q`` % tails on each side.

    Args:
      x: floating array.
      q: upper percentile in (50, 100] (e.g. 99.9); linear interpolation as ``np.percentile``.
      axis, group_size, group_axis: the layout, as `layout`.

    Returns:
      float32 ``(min, max)`` of `Layout.scale_shape`.
    """
    q = check_number(q, "q", lo=50.0, hi=100.0, lo_open=True)
    lay = _checked_layout(x, axis, group_size, group_axis)
    xv = view32(x, lay)
    p = jnp.percentile(
        xv, jnp.array([100.0 - q, q], jnp.float32), axis=lay.reduce_axes, keepdims=True
    )
    return lay.scale_from_view(p[0]), lay.scale_from_view(p[1])


def mse_range(
    x: jax.Array,
    bits: int,
    *,
    symmetric: bool = True,
    axis: int | tuple[int, ...] | None = None,
    group_size: int | None = None,
    group_axis: int | tuple[int, ...] | None = None,
    num_candidates: int = 100,
) -> tuple[jax.Array, jax.Array]:
    """The clipping range minimising ``||x - fake_quant(x, range=r)||**2`` per scale.

    Candidates are ``r * (min, max)`` for ratios ``r = i / num_candidates``,
    ``i = 1..num_candidates``; each channel / group takes its best ratio (the smallest on
    ties). The search is vectorised over candidates (``lax.map`` in batches) and jittable.

    Args:
      x: floating array.
      bits: integer width, 2..16.
      symmetric: signed narrow range, or unsigned with a zero point.
      axis, group_size, group_axis: the layout, as `layout`.
      num_candidates: number of clipping ratios tried, >= 1.

    Returns:
      float32 ``(min, max)`` of `Layout.scale_shape`.

    References:
      Banner, Nahshan & Soudry 2019 (ACIQ, clipping for post-training quantization); Choukroun
      et al. 2019 (minimum mean-squared-error quantization).
    """
    bits = check_bits(bits)
    symmetric = check_bool(symmetric, "symmetric")
    num_candidates = check_int(num_candidates, "num_candidates", lo=1)
    lay = _checked_layout(x, axis, group_size, group_axis)
    xv = view32(x, lay)
    lo, hi = own_range(xv, lay)
    ratios = jnp.arange(1, num_candidates + 1, dtype=jnp.float32) / num_candidates

    def err(r):
        scale, zp = scale_zero_point(r * lo, r * hi, bits, symmetric)
        q, _ = codes(xv, scale, zp, bits, symmetric, "nearest", None)
        return jnp.sum((xv - decode(q, scale, zp)) ** 2, axis=lay.reduce_axes, keepdims=True)

    errs = jax.lax.map(err, ratios, batch_size=min(num_candidates, 16))
    best = ratios[jnp.argmin(errs, axis=0)]
    return lay.scale_from_view(best * lo), lay.scale_from_view(best * hi)


class EmaRange(NamedTuple):
    """Exponential moving average of a tensor's min and max (float32, scale-shaped).

    Attributes:
      min: running minimum, float32 of the layout's `Layout.scale_shape`.
      max: running maximum, same shape.
      count: int32 scalar, the number of updates; the first update copies the batch's range.
    """

    min: jax.Array
    max: jax.Array
    count: jax.Array

    @property
    def range(self) -> tuple[jax.Array, jax.Array]:
        """``(min, max)``, to pass as ``range=`` to a quantizer."""
        return self.min, self.max


def ema_range_init(shape: Sequence[int] = ()) -> EmaRange:
    """An empty `EmaRange` for scales of ``shape`` (``()`` per tensor, e.g. ``(1, C)`` per channel).

    Raises:
      TypeError: ``shape`` not a tuple/list of ints.
      ValueError: a negative size.
    """
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape must be a tuple of ints, got {type(shape).__name__}")
    shape = tuple(check_int(d, "shape", lo=0) for d in shape)
    z = jnp.zeros(shape, jnp.float32)
    return EmaRange(z, z, jnp.zeros((), jnp.int32))


def check_decay(decay: Any) -> float:
    """An EMA decay in ``[0, 1)``."""
    return check_number(decay, "decay", lo=0.0, hi=1.0, hi_open=True)


def ema_step(state: EmaRange, lo: jax.Array, hi: jax.Array, decay: float) -> EmaRange:
    """`ema_range_update` with the batch's ``(min, max)`` given, unchecked."""
    first = state.count == 0
    mix = lambda old, new: jnp.where(first, new, decay * old + (1.0 - decay) * new)
    return EmaRange(mix(state.min, lo), mix(state.max, hi), state.count + 1)


def check_state_shape(state: EmaRange, lay: Layout) -> None:
    """The state's range shape must be the layout's scale shape."""
    if tuple(state.min.shape) != lay.scale_shape:
        raise ValueError(
            f"state has range shape {tuple(state.min.shape)}, the batch gives {lay.scale_shape}"
        )


def ema_range_update(
    state: EmaRange,
    x: jax.Array,
    decay: float = 0.99,
    *,
    axis: int | tuple[int, ...] | None = None,
    group_size: int | None = None,
    group_axis: int | tuple[int, ...] | None = None,
) -> EmaRange:
    """``ema = decay * ema + (1 - decay) * batch`` for min and max (a pure update).

    The first update (``count == 0``) takes the batch's range as is.

    Args:
      state: the running range (from `ema_range_init`).
      x: the batch, a floating array.
      decay: in [0, 1).
      axis, group_size, group_axis: the layout, as `layout`.

    Returns:
      The new `EmaRange`.

    References:
      Jacob et al. 2018 (EMA of activation ranges during quantization-aware training).
    """
    if not isinstance(state, EmaRange):
        raise TypeError(f"state must be an EmaRange, got {type(state).__name__}")
    decay = check_decay(decay)
    lay = _checked_layout(x, axis, group_size, group_axis)
    check_state_shape(state, lay)
    lo, hi = minmax_of(x, lay)
    return ema_step(state, lo, hi, decay)
