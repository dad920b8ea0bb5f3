"""Uniform quantization: fake quantization with a straight-through estimator, integer tensors,
range calibration, learned step sizes, binary/ternary weights, float casts and gradients.

Conventions (fixed by the public contract; round half to even everywhere):

- symmetric, signed, ``b`` bits: ``qmax = 2**(b-1) - 1``, ``scale = max|x| / qmax``,
  ``q = clip(round(x / scale), -qmax, qmax)``, ``x_hat = q * scale`` (narrow range).
- asymmetric, unsigned, ``b`` bits: the range ``[min, max]`` is first widened to include 0,
  ``scale = (max - min) / (2**b - 1)``, ``zero_point = round(-min / scale)``,
  ``q = clip(round(x / scale) + zero_point, 0, 2**b - 1)``, ``x_hat = (q - zero_point) * scale``.
- ``axis`` names the axis that keeps its own scale (Flax kernels: -1, the output channel);
  ``None`` gives one scale for the whole tensor. With ``group_size``, ``group_size`` consecutive
  elements along ``group_axis`` (default: the input axis, -2 for a kernel) share a scale.
- Statistics (ranges, scales, zero points) are float32; a fake-quantized tensor keeps its dtype.
- A zero range (an all-zero tensor or channel) has ``scale = 0`` and quantizes to exactly 0.

Numerics (rounding, clipping, noise) are kept apart from calibration (where a range comes
from): every quantizer accepts ``range=(min, max)`` from `minmax_range`, `ema_range_update`,
`percentile_range` or `mse_range`, and uses the tensor's own min/max when none is given.

Activation fake quantization of Flax layers lives in `lightcomp.act_quant`; its public names
(`activation_quant`, `FakeQuantInputs`, `wrap_nnx`, ...) are also reachable here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree as _tree

__all__ = [
    "EmaRange",
    "QTensor",
    "binarize",
    "cast",
    "dequantize",
    "dequantize_grads",
    "ema_range_init",
    "ema_range_update",
    "fake_quant",
    "grad_scales",
    "lsq_fake_quant",
    "lsq_init_scale",
    "minmax_range",
    "mse_range",
    "percentile_range",
    "qrange",
    "quantize",
    "quantize_grads",
    "ternarize",
]

PyTree = Any
Range = tuple[Any, Any]

_ROUNDINGS = ("nearest", "stochastic")
_STES = ("identity", "clipped")
_ACT_NAMES = ("ActQuant", "FakeQuantInputs", "activation_quant", "wrap_nnx")
__all__ += list(_ACT_NAMES)  # defined in lightcomp.act_quant, loaded by __getattr__ below


def __getattr__(name: str) -> Any:
    # The Flax activation quantizers sit in their own module (they import flax); they are
    # loaded on first use so that `lightcomp.quant` stays importable without a cycle.
    if name in _ACT_NAMES:
        from lightcomp import act_quant

        return getattr(act_quant, name)
    raise AttributeError(f"module 'lightcomp.quant' has no attribute {name!r}")


# --------------------------------------------------------------------------- validation


def _check_bits(bits: Any, lo: int = 2, hi: int = 16, argname: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"{argname} must be a Python int in {lo}..{hi}, got {bits!r}")
    if not lo <= int(bits) <= hi:
        extra = " (for 1 bit use lightcomp.quant.binarize)" if int(bits) == 1 else ""
        raise ValueError(f"{argname} must be in {lo}..{hi}, got {bits}{extra}")
    return int(bits)


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_float(x: Any, argname: str = "x", path: str = "") -> None:
    where = f" (leaf {path!r})" if path else ""
    if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
        dtype = getattr(x, "dtype", type(x).__name__)
        raise TypeError(f"{argname}{where} must be a floating-point array, got {dtype}")


def _check_finite(x: Any, argname: str = "x", path: str = "") -> None:
    # Only concrete arrays can be checked without a host sync; traced values (inside jit)
    # are the caller's to check (e.g. with jax.experimental.checkify).
    if not _is_concrete(x):
        return
    with jax.ensure_compile_time_eval():  # concrete even while an outer function is traced
        finite = bool(jnp.all(jnp.isfinite(x)))
    if not finite:
        where = f" leaf {path!r}" if path else ""
        raise ValueError(f"{argname}{where} contains NaN or inf; cannot quantize it")


def _check_choice(value: Any, choices: Sequence[str], argname: str) -> None:
    if value not in choices:
        raise ValueError(f"{argname} must be one of {list(choices)}, got {value!r}")


def _norm_axis(axis: Any, ndim: int, argname: str = "axis") -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{argname} must be an int or None, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{argname}={axis} is out of range for an array of rank {ndim}")
    return int(axis) % ndim


def _check_key(rounding: str, key: Any) -> None:
    if rounding == "stochastic" and key is None:
        raise ValueError("rounding='stochastic' needs a PRNG key: pass key=jax.random.key(...)")


# --------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where the scales of a tensor live (static).

    A tensor of ``shape`` is viewed as ``grouped`` (the group axis split into
    ``(n_groups, group_size)``); statistics reduce over ``reduce`` of that view with keepdims.
    """

    shape: tuple[int, ...]
    axis: int | None
    group_size: int | None
    group_axis: int | None
    grouped: tuple[int, ...]
    reduce: tuple[int, ...]

    @property
    def stat_shape(self) -> tuple[int, ...]:
        """Shape of a scale in the grouped view (keepdims)."""
        return tuple(1 if i in self.reduce else d for i, d in enumerate(self.grouped))

    @property
    def scale_shape(self) -> tuple[int, ...]:
        """Shape of a stored scale: ``()`` per tensor; else the tensor's rank with 1 on shared
        axes and ``n_groups`` on the group axis."""
        if self.axis is None and self.group_size is None:
            return ()
        s = list(self.stat_shape)
        if self.group_size is not None:
            del s[self.group_axis + 1]
        return tuple(s)

    def group(self, x: jax.Array) -> jax.Array:
        return x.reshape(self.grouped)

    def ungroup(self, x: jax.Array) -> jax.Array:
        return x.reshape(self.shape)

    def stat_from_scale(self, s: jax.Array) -> jax.Array:
        if self.group_size is None:
            return s
        return jnp.expand_dims(s, self.group_axis + 1)


def _layout(shape, axis=None, group_size=None, group_axis=None) -> _Layout:
    shape = tuple(int(d) for d in shape)
    ndim = len(shape)
    ax = _norm_axis(axis, ndim)
    if group_size is None:
        if group_axis is not None:
            raise ValueError("group_axis is only meaningful with group_size")
        reduce = tuple(i for i in range(ndim) if i != ax)
        return _Layout(shape, ax, None, None, shape, reduce)
    if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)):
        raise TypeError(f"group_size must be a positive int or None, got {group_size!r}")
    if ndim == 0:
        raise ValueError("group_size needs an array of rank >= 1")
    if group_axis is None:
        group_axis = -2 if ndim >= 2 else 0
    gax = _norm_axis(group_axis, ndim, "group_axis")
    if ax is not None and gax == ax:
        raise ValueError(f"group_axis ({group_axis}) must differ from axis ({axis})")
    n = shape[gax]
    if group_size < 1 or n % group_size:
        raise ValueError(f"group_size={group_size} does not divide axis {gax} of size {n}")
    grouped = (*shape[:gax], n // group_size, group_size, *shape[gax + 1 :])
    keep = {gax} | ({ax + (ax > gax)} if ax is not None else set())
    reduce = tuple(i for i in range(ndim + 1) if i not in keep)
    return _Layout(shape, ax, int(group_size), gax, grouped, reduce)


def _range_to_stat(value: Any, lay: _Layout, argname: str) -> jax.Array:
    """A user's min or max (scalar, ``[C]`` along ``axis``, or scale-shaped) -> stat shape."""
    v = jnp.asarray(value, jnp.float32)
    if v.ndim == 1 and lay.axis is not None and len(lay.shape) > 1:
        if v.shape[0] != lay.shape[lay.axis]:
            raise ValueError(
                f"{argname} has {v.shape[0]} entries but axis {lay.axis} has {lay.shape[lay.axis]}"
            )
        v = v.reshape(tuple(-1 if i == lay.axis else 1 for i in range(len(lay.shape))))
    try:
        v = jnp.broadcast_to(v, lay.scale_shape) if v.ndim else v
    except ValueError as e:
        raise ValueError(
            f"{argname} of shape {v.shape} does not match the scale shape {lay.scale_shape}"
        ) from e
    return lay.stat_from_scale(v) if v.ndim else v


def _user_range(rng: Any, lay: _Layout) -> tuple[jax.Array, jax.Array]:
    if not isinstance(rng, (tuple, list)) or len(rng) != 2:
        raise TypeError(f"range must be a pair (min, max), got {type(rng).__name__}")
    if _is_concrete(rng[0]) and _is_concrete(rng[1]):
        with jax.ensure_compile_time_eval():
            lo = _range_to_stat(rng[0], lay, "range min")
            hi = _range_to_stat(rng[1], lay, "range max")
            finite = bool(jnp.all(jnp.isfinite(lo)) & jnp.all(jnp.isfinite(hi)))
            ordered = bool(jnp.all(lo <= hi))
        if not finite:
            raise ValueError("range contains NaN or inf")
        if not ordered:
            raise ValueError("range has min > max")
    return _range_to_stat(rng[0], lay, "range min"), _range_to_stat(rng[1], lay, "range max")


# --------------------------------------------------------------------------- numerics


def qrange(bits: int, symmetric: bool = True) -> tuple[int, int]:
    """The integer code range ``(qmin, qmax)``: ``(-(2**(b-1)-1), 2**(b-1)-1)`` or ``(0, 2**b-1)``."""
    bits = _check_bits(bits, 1 if symmetric else 2)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _int_dtype(bits: int, symmetric: bool):
    if bits <= 8:
        return jnp.int8 if symmetric else jnp.uint8
    return jnp.int16 if symmetric else jnp.uint16


def _scale_zero_point(lo, hi, bits: int, symmetric: bool):
    """float32 ``(scale, zero_point)`` of a range by the contract; ``zero_point`` is 0 if symmetric."""
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        scale = jnp.maximum(jnp.abs(lo), jnp.abs(hi)) / qmax
        return scale, jnp.zeros_like(scale)
    lo = jnp.minimum(lo, 0.0)
    hi = jnp.maximum(hi, 0.0)
    scale = (hi - lo) / (qmax - qmin)
    safe = jnp.where(scale > 0, scale, 1.0)
    zp = jnp.where(scale > 0, jnp.round(-lo / safe), 0.0)
    return scale, zp


def _codes(x32, scale, zp, bits, symmetric, rounding, key):
    """Integer codes (as float32) and the mask of elements that were not clipped."""
    qmin, qmax = qrange(bits, symmetric)
    safe = jnp.where(scale > 0, scale, 1.0)
    v = x32 / safe
    if rounding == "stochastic":
        # floor(v + u), u ~ U[0, 1): E[floor(v + u)] = v (unbiased).
        v = jnp.floor(v + jax.random.uniform(key, x32.shape, jnp.float32))
    else:
        v = jnp.round(v)  # half to even
    v = v + zp
    inside = (v >= qmin) & (v <= qmax)
    q = jnp.where(scale > 0, jnp.clip(v, qmin, qmax), zp)
    return q, inside | (scale <= 0)


def _decode(q, scale, zp):
    return (q - zp) * scale


def _own_range(xg32, lay: _Layout):
    return (
        jnp.min(xg32, axis=lay.reduce, keepdims=True),
        jnp.max(xg32, axis=lay.reduce, keepdims=True),
    )


@jax.custom_vjp
def _straight_through(x, y, gate):
    """Returns ``y``; the gradient with respect to ``x`` is the incoming gradient times ``gate``."""
    del x, gate
    return y


def _st_fwd(x, y, gate):
    del x
    return y, gate


def _st_bwd(gate, g):
    return (g * gate.astype(g.dtype), jnp.zeros_like(g), jnp.zeros_like(gate))


_straight_through.defvjp(_st_fwd, _st_bwd)


def _prepare(x, bits, symmetric, axis, group_size, group_axis, rounding, key, rng):
    _check_float(x)
    bits = _check_bits(bits)
    _check_choice(rounding, _ROUNDINGS, "rounding")
    _check_key(rounding, key)
    lay = _layout(x.shape, axis, group_size, group_axis)
    lo_hi = _user_range(rng, lay) if rng is not None else None
    _check_finite(x)
    return bits, lay, lo_hi


# The numeric cores are compiled even when called eagerly: XLA turns a division by a constant
# into a multiplication by its reciprocal under jit but not op by op, so only a compiled core
# gives the same last bit jitted and not.
_compiled = functools.partial(jax.jit, static_argnames=("bits", "symmetric", "lay", "rounding"))


def _quantize_core(x, bits, symmetric, lay, lo_hi, rounding, key):
    xg = lay.group(jax.lax.stop_gradient(x)).astype(jnp.float32)
    lo, hi = lo_hi if lo_hi is not None else _own_range(xg, lay)
    # The barrier fixes the float32 scale as stored by `quantize`: without it XLA may fuse the
    # scale's division into its uses and change the last bit, jitted or not.
    scale, zp = jax.lax.optimization_barrier(_scale_zero_point(lo, hi, bits, symmetric))
    q, inside = _codes(xg, scale, zp, bits, symmetric, rounding, key)
    return xg, q, scale, zp, inside


@functools.partial(_compiled, static_argnames=("bits", "symmetric", "lay", "rounding", "clipped"))
def _fake_quant_fwd(x, lo_hi, key, *, bits, symmetric, lay, rounding, clipped):
    _, q, scale, zp, inside = _quantize_core(x, bits, symmetric, lay, lo_hi, rounding, key)
    y = lay.ungroup(_decode(q, scale, zp)).astype(x.dtype)
    return y, (lay.ungroup(inside) if clipped else jnp.ones((), bool))


@_compiled
def _quantize_fwd(x, lo_hi, key, *, bits, symmetric, lay, rounding):
    _, q, scale, zp, _ = _quantize_core(x, bits, symmetric, lay, lo_hi, rounding, key)
    idt = _int_dtype(bits, symmetric)
    to_scale = lambda s: jnp.broadcast_to(s, lay.stat_shape).reshape(lay.scale_shape)
    return lay.ungroup(q).astype(idt), to_scale(scale), to_scale(zp).astype(idt)


def fake_quant(
    x: jax.Array,
    bits: int = 8,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    group_size: int | None = None,
    group_axis: int | None = None,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    ste: str = "identity",
    range: Range | None = None,
) -> jax.Array:
    """Quantizes then dequantizes ``x``; the gradient is a straight-through estimator.

    Args:
      x: floating array of any shape (float32, bfloat16, float16).
      bits: integer width, 2..16.
      symmetric: signed narrow range with no zero point; otherwise unsigned with a zero point.
      axis: the axis that keeps its own scale (-1 for Flax kernels); None: one scale.
      group_size: ``group_size`` consecutive elements along ``group_axis`` share a scale
        (per output channel if ``axis`` is given); must divide that axis.
      group_axis: the axis split into groups; default -2 (a kernel's input axis), 0 for 1-D.
      rounding: ``"nearest"`` (half to even) or ``"stochastic"`` (unbiased; needs ``key``).
      key: PRNG key for stochastic rounding.
      ste: ``"identity"`` passes the gradient unchanged; ``"clipped"`` zeroes it where the
        code was clipped to the integer range.
      range: ``(min, max)``: scalars, ``[x.shape[axis]]`` vectors or scale-shaped arrays,
        used instead of the tensor's own min/max (values outside are clipped).

    Returns:
      An array of ``x``'s shape and dtype equal to ``dequantize(quantize(x, ...))``.

    Raises:
      ValueError / TypeError: bad ``bits``, ``axis``, ``group_size``, ``rounding``, ``ste``,
        a missing key, non-float ``x``, ``range`` with min > max, NaN/inf in a concrete ``x``.

    References:
      Bengio, Léonard & Courville 2013 (straight-through estimator); Jacob et al. 2018
      (integer-arithmetic-only inference, asymmetric quantization with a zero point).
    """
    _check_choice(ste, _STES, "ste")
    bits, lay, lo_hi = _prepare(
        x, bits, symmetric, axis, group_size, group_axis, rounding, key, range
    )
    y, gate = _fake_quant_fwd(
        x,
        lo_hi,
        key,
        bits=bits,
        symmetric=bool(symmetric),
        lay=lay,
        rounding=rounding,
        clipped=ste == "clipped",
    )
    return _straight_through(x, y, gate)


# --------------------------------------------------------------------------- integer tensors


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class QTensor:
    """An integer tensor with its quantization parameters (a pytree).

    Attributes:
      values: integer codes of the tensor's shape, int8/uint8 for <= 8 bits, int16/uint16 above.
      scale: float32 scales, shape `scale_shape` (``()`` per tensor; the tensor's rank with 1 on
        shared axes; ``n_groups`` on the group axis for per-group scales).
      zero_point: codes of 0, values' dtype and scale's shape; None when symmetric.
      bits, symmetric, axis, group_size, group_axis: the static configuration.
      dtype: the dtype `dequantize` returns (the original tensor's).
    """

    values: jax.Array
    scale: jax.Array
    zero_point: jax.Array | None
    bits: int = dataclasses.field(metadata=dict(static=True))
    symmetric: bool = dataclasses.field(metadata=dict(static=True))
    axis: int | None = dataclasses.field(metadata=dict(static=True))
    group_size: int | None = dataclasses.field(metadata=dict(static=True))
    group_axis: int | None = dataclasses.field(metadata=dict(static=True))
    dtype: Any = dataclasses.field(metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def nbytes_packed(self) -> int:
        """Bytes of the codes bit-packed at ``bits`` each, plus float32 scales and zero points."""
        n = math.prod(self.shape)
        extra = math.prod(self.scale.shape) * (4 + (0 if self.symmetric else self.bits / 8))
        return math.ceil(n * self.bits / 8) + math.ceil(extra)


def quantize(
    x: jax.Array,
    bits: int = 8,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    group_size: int | None = None,
    group_axis: int | None = None,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    range: Range | None = None,
) -> QTensor:
    """Quantizes ``x`` to integer codes; arguments as `fake_quant`.

    Returns:
      A `QTensor`; ``dequantize(quantize(x, ...))`` equals ``fake_quant(x, ...)`` bit for bit.
    """
    bits, lay, lo_hi = _prepare(
        x, bits, symmetric, axis, group_size, group_axis, rounding, key, range
    )
    values, scale, zp = _quantize_fwd(
        x, lo_hi, key, bits=bits, symmetric=bool(symmetric), lay=lay, rounding=rounding
    )
    return QTensor(
        values=values,
        scale=scale,
        zero_point=None if symmetric else zp,
        bits=bits,
        symmetric=bool(symmetric),
        axis=lay.axis,
        group_size=lay.group_size,
        group_axis=lay.group_axis,
        dtype=np.dtype(x.dtype),
    )


def dequantize(qt: QTensor) -> jax.Array:
    """``(values - zero_point) * scale`` in float32, cast to the original dtype."""
    if not isinstance(qt, QTensor):
        raise TypeError(f"qt must be a lightcomp.quant.QTensor, got {type(qt).__name__}")
    lay = _layout(qt.values.shape, qt.axis, qt.group_size, qt.group_axis)
    return _dequantize_fwd(qt.values, qt.scale, qt.zero_point, lay=lay, dtype=qt.dtype)


@functools.partial(jax.jit, static_argnames=("lay", "dtype"))
def _dequantize_fwd(values, scale, zero_point, *, lay, dtype):
    scale = lay.stat_from_scale(scale.astype(jnp.float32))
    zp = 0.0 if zero_point is None else lay.stat_from_scale(zero_point.astype(jnp.float32))
    q = lay.group(values).astype(jnp.float32)
    return lay.ungroup(_decode(q, scale, zp)).astype(dtype)


# --------------------------------------------------------------------------- calibration


def _calib_input(x, axis, group_size, group_axis) -> tuple[_Layout, jax.Array]:
    _check_float(x)
    lay = _layout(x.shape, axis, group_size, group_axis)
    _check_finite(x)
    return lay, lay.group(jnp.asarray(x)).astype(jnp.float32)


def _out(lay: _Layout, v: jax.Array) -> jax.Array:
    return jnp.broadcast_to(v, lay.stat_shape).reshape(lay.scale_shape)


def minmax_range(
    x: jax.Array, axis: int | None = None, *, group_size=None, group_axis=None
) -> tuple[jax.Array, jax.Array]:
    """The tensor's own ``(min, max)`` per tensor / channel / group, float32, scale-shaped."""
    lay, xg = _calib_input(x, axis, group_size, group_axis)
    lo, hi = _own_range(xg, lay)
    return _out(lay, lo), _out(lay, hi)


def percentile_range(
    x: jax.Array, q: float, axis: int | None = None, *, group_size=None, group_axis=None
) -> tuple[jax.Array, jax.Array]:
    """``(percentile(x, 100 - q), percentile(x, q))``: clips the ``100 - q`` % tails on each side.

    Args:
      x: floating array.
      q: upper percentile in (50, 100] (e.g. 99.9); linear interpolation as ``np.percentile``.
      axis, group_size, group_axis: as `fake_quant`.

    Returns:
      float32 ``(min, max)``, scale-shaped.
    """
    if not isinstance(q, (int, float)) or not 50.0 < float(q) <= 100.0:
        raise ValueError(f"q must be a percentile in (50, 100], got {q!r}")
    lay, xg = _calib_input(x, axis, group_size, group_axis)
    p = jnp.percentile(xg, jnp.array([100.0 - q, q], jnp.float32), axis=lay.reduce, keepdims=True)
    return _out(lay, p[0]), _out(lay, p[1])


def mse_range(
    x: jax.Array,
    bits: int,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    group_size: int | None = None,
    group_axis: int | None = None,
    num_candidates: int = 100,
) -> tuple[jax.Array, jax.Array]:
    """The clipping range minimising ``||x - fake_quant(x, range=r)||**2`` per scale.

    Candidates are ``r * (min, max)`` for ratios ``r = i / num_candidates``,
    ``i = 1..num_candidates``; each channel / group takes its best ratio (the smallest on
    ties). The search is vectorised over candidates (``lax.map`` in batches) and jittable.

    Returns:
      float32 ``(min, max)``, scale-shaped.

    References:
      Banner, Nahshan & Soudry 2019 (ACIQ, clipping for post-training quantization); Choukroun
      et al. 2019 (minimum mean-squared-error quantization).
    """
    bits = _check_bits(bits)
    if (
        isinstance(num_candidates, bool)
        or not isinstance(num_candidates, int)
        or num_candidates < 1
    ):
        raise ValueError(f"num_candidates must be a positive int, got {num_candidates!r}")
    lay, xg = _calib_input(x, axis, group_size, group_axis)
    lo, hi = _own_range(xg, lay)
    ratios = jnp.arange(1, num_candidates + 1, dtype=jnp.float32) / num_candidates

    def err(r):
        scale, zp = _scale_zero_point(r * lo, r * hi, bits, symmetric)
        q, _ = _codes(xg, scale, zp, bits, symmetric, "nearest", None)
        return jnp.sum((xg - _decode(q, scale, zp)) ** 2, axis=lay.reduce, keepdims=True)

    errs = jax.lax.map(err, ratios, batch_size=min(num_candidates, 16))
    best = ratios[jnp.argmin(errs, axis=0)]
    return _out(lay, best * lo), _out(lay, best * hi)


class EmaRange(NamedTuple):
    """Exponential moving average of a tensor's min and max (float32, scale-shaped).

    Attributes:
      min: running minimum.
      max: running maximum.
      count: int32 number of updates; the first update copies the batch's range.
    """

    min: jax.Array
    max: jax.Array
    count: jax.Array

    @property
    def range(self) -> tuple[jax.Array, jax.Array]:
        """``(min, max)``, to pass as ``range=`` to a quantizer."""
        return self.min, self.max


def ema_range_init(shape: Sequence[int] = ()) -> EmaRange:
    """An empty `EmaRange` for scales of ``shape`` (``()`` per tensor, e.g. ``(1, C)`` per channel)."""
    z = jnp.zeros(tuple(shape), jnp.float32)
    return EmaRange(z, z, jnp.zeros((), jnp.int32))


def ema_range_update(
    state: EmaRange,
    x: jax.Array,
    decay: float = 0.99,
    *,
    axis: int | None = None,
    group_size: int | None = None,
    group_axis: int | None = None,
) -> EmaRange:
    """``ema = decay * ema + (1 - decay) * batch`` for min and max (a pure update).

    The first update (``count == 0``) takes the batch's range as is.

    References:
      Jacob et al. 2018 (EMA of activation ranges during quantization-aware training).
    """
    if not isinstance(state, EmaRange):
        raise TypeError(f"state must be an EmaRange, got {type(state).__name__}")
    if not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be a float in [0, 1), got {decay!r}")
    lo, hi = minmax_range(x, axis, group_size=group_size, group_axis=group_axis)
    if tuple(state.min.shape) != tuple(lo.shape):
        raise ValueError(f"state has range shape {state.min.shape}, the batch gives {lo.shape}")
    first = state.count == 0
    mix = lambda old, new: jnp.where(first, new, decay * old + (1.0 - decay) * new)
    return EmaRange(mix(state.min, lo), mix(state.max, hi), state.count + 1)


# --------------------------------------------------------------------------- learned step size


def _lsq_levels(bits: int, symmetric: bool) -> tuple[float, float]:
    qmin, qmax = qrange(bits, symmetric)
    return float(-qmin), float(qmax)  # (Q_N, Q_P)


def _unbroadcast(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    # Sums a gradient back to a broadcast operand's shape (jax does this inside its own
    # broadcasting rules, but a custom_vjp must do it by hand).
    lead = g.ndim - len(shape)
    g = jnp.sum(g, axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return jnp.sum(g, axis=axes, keepdims=True) if axes else g


def lsq_fake_quant(
    x: jax.Array,
    scale: jax.Array,
    bits: int,
    *,
    symmetric: bool = True,
    axis: int | None = None,
    grad_scale: float | None = None,
) -> jax.Array:
    """Fake quantization with a learned step size ``scale`` (LSQ).

    Forward: ``round(clip(x / s, -Q_N, Q_P)) * s`` with ``Q_N = Q_P = 2**(b-1) - 1`` (symmetric,
    narrow range as the contract) or ``Q_N = 0, Q_P = 2**b - 1`` (unsigned, e.g. after ReLU).
    Backward: ``d/dx = 1`` inside ``(-Q_N, Q_P)``, 0 outside; ``d/ds = -x/s + round(x/s)``
    inside, ``-Q_N`` below, ``Q_P`` above, times ``g = 1 / sqrt(N * Q_P)`` with ``N`` the
    number of elements sharing a scale (or ``grad_scale``).

    Args:
      x: floating array.
      scale: float32 step size(s): a scalar, ``[x.shape[axis]]`` with ``axis``, or broadcastable
        to ``x``; a trainable leaf (wrap it in `lightcomp.Learned` inside a transform state).
        Values below 1e-8 are treated as 1e-8.
      bits: 2..16.
      symmetric: signed narrow range, or unsigned.
      axis: the channel axis when ``scale`` is a vector.
      grad_scale: overrides ``g``.

    Returns:
      ``x``'s shape and dtype.

    References:
      Esser et al. 2019, "Learned Step Size Quantization" (ICLR 2020).
    """
    _check_float(x)
    bits = _check_bits(bits)
    s = jnp.asarray(scale)
    _check_float(s, "scale")
    if axis is not None and s.ndim == 1 and x.ndim > 1:
        ax = _norm_axis(axis, x.ndim)
        if s.shape[0] != x.shape[ax]:
            raise ValueError(f"scale has {s.shape[0]} entries but axis {axis} has {x.shape[ax]}")
        s = s.reshape(tuple(-1 if i == ax else 1 for i in range(x.ndim)))
    try:
        jnp.broadcast_shapes(s.shape, x.shape)
    except ValueError as e:
        raise ValueError(f"scale of shape {s.shape} does not broadcast to x {x.shape}") from e
    _check_finite(x)
    qn, qp = _lsq_levels(bits, symmetric)
    n = math.prod(x.shape) / max(math.prod(s.shape), 1)
    g = float(grad_scale) if grad_scale is not None else 1.0 / math.sqrt(n * qp)
    out = _lsq(x, s.astype(jnp.float32), qn, qp, g)
    return out.reshape(x.shape) if out.shape != x.shape else out


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
    x: jax.Array, bits: int, *, axis: int | None = None, symmetric: bool = True
) -> jax.Array:
    """LSQ's initial step size ``2 * mean|x| / sqrt(Q_P)`` (per channel with ``axis``), float32.

    Returns:
      A scalar, or keepdims (the tensor's rank, 1 on shared axes) with ``axis``.

    References:
      Esser et al. 2019, "Learned Step Size Quantization".
    """
    _check_float(x)
    bits = _check_bits(bits)
    lay = _layout(x.shape, axis)
    _check_finite(x)
    _, qp = _lsq_levels(bits, symmetric)
    m = jnp.mean(jnp.abs(jnp.asarray(x, jnp.float32)), axis=lay.reduce, keepdims=axis is not None)
    return jnp.maximum(2.0 * m / math.sqrt(qp), 1e-8)


# --------------------------------------------------------------------------- binary / ternary


def _ste_gate(x: jax.Array, ste: str) -> jax.Array:
    # "clipped": the hard-tanh straight-through gradient, 1 where |x| <= 1 (Hubara et al. 2016).
    return jnp.abs(x) <= 1 if ste == "clipped" else jnp.ones((), bool)


def binarize(x: jax.Array, axis: int | None = None, *, ste: str = "identity") -> jax.Array:
    """``sign(x) * mean|x|`` with one ``mean|x|`` per tensor (or per channel along ``axis``).

    ``sign(0)`` is +1. The gradient is straight-through: identity, or ``"clipped"`` to
    ``|x| <= 1``.

    Args:
      x: floating array.
      axis: the axis that keeps its own scale (-1 for Flax kernels); None: one scale.
      ste: ``"identity"`` or ``"clipped"``.

    Returns:
      ``x``'s shape and dtype; two values per channel.

    References:
      Rastegari et al. 2016 (XNOR-Net, binary-weight networks); Courbariaux et al. 2015
      (BinaryConnect).
    """
    _check_float(x)
    _check_choice(ste, _STES, "ste")
    lay = _layout(x.shape, axis)
    _check_finite(x)
    x32 = jax.lax.stop_gradient(x).astype(jnp.float32)
    alpha = jnp.mean(jnp.abs(x32), axis=lay.reduce, keepdims=True)
    y = (jnp.where(x32 >= 0, 1.0, -1.0) * alpha).astype(x.dtype)
    return _straight_through(x, y, _ste_gate(x, ste))


def ternarize(
    x: jax.Array, axis: int | None = None, threshold: float = 0.7, *, ste: str = "identity"
) -> jax.Array:
    """Ternary weights ``alpha * sign(x) * [|x| > delta]`` with ``delta = threshold * mean|x|``.

    ``alpha`` is the mean of the kept ``|x|``; both per tensor or per channel along ``axis``.
    The gradient is straight-through (identity, or ``"clipped"`` to ``|x| <= 1``).

    Args:
      x: floating array.
      axis: the axis that keeps its own scale; None: one scale.
      threshold: ``delta / mean|x|``, in [0, 1]; TWN's 0.7 approximates the optimum for
        Gaussian weights.
      ste: ``"identity"`` or ``"clipped"``.

    Returns:
      ``x``'s shape and dtype; values in ``{-alpha, 0, alpha}`` per channel.

    References:
      Li, Zhang & Liu 2016, "Ternary Weight Networks".
    """
    _check_float(x)
    _check_choice(ste, _STES, "ste")
    if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    lay = _layout(x.shape, axis)
    _check_finite(x)
    a = jnp.abs(jax.lax.stop_gradient(x).astype(jnp.float32))
    delta = threshold * jnp.mean(a, axis=lay.reduce, keepdims=True)
    keep = a > delta
    n = jnp.sum(keep, axis=lay.reduce, keepdims=True)
    alpha = jnp.sum(jnp.where(keep, a, 0.0), axis=lay.reduce, keepdims=True) / jnp.maximum(n, 1)
    y = (jnp.sign(x.astype(jnp.float32)) * keep * alpha).astype(x.dtype)
    return _straight_through(x, jax.lax.stop_gradient(y), _ste_gate(x, ste))


# --------------------------------------------------------------------------- float casts

_CASTS = {
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
    "float8_e4m3fn": jnp.float8_e4m3fn,
    "float8_e5m2": jnp.float8_e5m2,
}
_CAST_ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "e4m3": "float8_e4m3fn",
    "float8_e4m3": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
}


def cast(x: jax.Array, dtype: Any, *, saturate: bool = True) -> jax.Array:
    """Rounds ``x`` to a narrower float format and back (fake quantization to a float type).

    Round to nearest even, as ``astype``. The gradient is the identity (straight-through).

    Args:
      x: floating array (float32, bfloat16, float16).
      dtype: ``jnp.bfloat16``, ``jnp.float16``, ``jnp.float8_e4m3fn`` or ``jnp.float8_e5m2``
        (or the names ``"bfloat16"``, ``"float16"``, ``"e4m3"``, ``"e5m2"``).
      saturate: clip to the format's largest finite value first (otherwise float16 / e5m2
        overflow to inf and e4m3fn, which has no inf, to NaN).

    Returns:
      ``x``'s shape and dtype holding values representable in ``dtype``.

    References:
      Micikevicius et al. 2022, "FP8 Formats for Deep Learning" (e4m3 / e5m2).
    """
    _check_float(x)
    name = _CAST_ALIASES.get(dtype, dtype) if isinstance(dtype, str) else None
    if name is None:
        try:
            name = np.dtype(dtype).name
        except TypeError as e:
            raise TypeError(f"dtype must be one of {list(_CASTS)}, got {dtype!r}") from e
    if name not in _CASTS:
        raise ValueError(f"dtype must be one of {list(_CASTS)}, got {dtype!r}")
    target = _CASTS[name]
    _check_finite(x)
    y = jax.lax.stop_gradient(x).astype(jnp.float32)
    if saturate:
        big = float(jnp.finfo(target).max)
        y = jnp.clip(y, -big, big)
    y = y.astype(target).astype(x.dtype)
    return _straight_through(x, y, jnp.ones((), bool))


# --------------------------------------------------------------------------- gradients


def _checked_leaves(tree_: PyTree, argname: str) -> None:
    for path, leaf in _tree.leaves_with_paths(tree_, argname=argname):
        _check_float(leaf, argname, path)
        _check_finite(leaf, argname, path)


def grad_scales(grads: PyTree, bits: int) -> PyTree:
    """Per-leaf symmetric scales ``max|g| / qmax`` (float32 scalars), for `quantize_grads`.

    For an all-reduce every device must use the same scale: take
    ``jax.lax.pmax(grad_scales(grads, bits), axis_name)`` and pass it as ``scales``.
    """
    bits = _check_bits(bits)
    _checked_leaves(grads, "grads")
    return jax.tree.map(lambda g: _amax_scale(g, bits=bits), grads)


@functools.partial(jax.jit, static_argnames=("bits",))
def _amax_scale(g, *, bits):
    return jnp.max(jnp.abs(g)).astype(jnp.float32) / qrange(bits)[1]


@functools.partial(jax.jit, static_argnames=("bits",))
def _grad_codes(g, scale, key, *, bits):
    q, _ = _codes(
        g.astype(jnp.float32), scale, jnp.zeros_like(scale), bits, True, "stochastic", key
    )
    return q.astype(_int_dtype(bits, True))


def quantize_grads(
    grads: PyTree, bits: int, key: jax.Array, *, scales: PyTree | None = None
) -> PyTree:
    """Quantizes each gradient leaf to ``bits`` with one scale and unbiased stochastic rounding.

    ``E[dequantize(q)] = g`` whenever ``|g| <= qmax * scale`` (always true for the leaf's own
    scale, and for a scale taken as the max over devices), so the compressed all-reduce is
    unbiased. The codes of several devices sharing ``scales`` can be summed in int32.

    Args:
      grads: pytree of floating arrays (None leaves are kept).
      bits: 2..16.
      key: PRNG key; each leaf uses ``fold_in(key, leaf_index)``.
      scales: optional tree of float32 scalars mirroring ``grads`` (see `grad_scales`).

    Returns:
      A tree of `QTensor` (symmetric, per tensor) with ``grads``'s structure.

    Raises:
      ValueError: bad ``bits``, a non-float leaf, NaN/inf in a concrete leaf (names its path).

    References:
      Alistarh et al. 2017 (QSGD); Gupta et al. 2015 (stochastic rounding).
    """
    bits = _check_bits(bits)
    if key is None:
        raise ValueError("quantize_grads needs a PRNG key (stochastic rounding)")
    _checked_leaves(grads, "grads")
    if scales is None:
        scales = grad_scales(grads, bits)
    leaves, treedef = jax.tree.flatten(grads)
    try:
        s_leaves = treedef.flatten_up_to(scales)
    except (ValueError, TypeError) as e:
        where = _tree.first_mismatch(grads, scales)
        raise ValueError(f"scales does not mirror grads (first difference: {where!r}): {e}") from e
    paths = [p for p, _ in _tree.leaves_with_paths(grads, argname="grads")]
    out = []
    for i, (path, g, s) in enumerate(zip(paths, leaves, s_leaves, strict=True)):
        s = jnp.asarray(s, jnp.float32)
        if s.shape != ():
            raise ValueError(f"scales leaf {path!r} must be a scalar, got shape {s.shape}")
        values = _grad_codes(g, s, jax.random.fold_in(key, i), bits=bits)
        out.append(QTensor(values, s, None, bits, True, None, None, None, np.dtype(g.dtype)))
    return jax.tree.unflatten(treedef, out)


def dequantize_grads(qgrads: PyTree) -> PyTree:
    """Inverse of `quantize_grads`: a tree of `QTensor` -> a tree of arrays."""
    return jax.tree.map(dequantize, qgrads, is_leaf=lambda x: isinstance(x, QTensor))
