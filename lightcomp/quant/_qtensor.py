"""Integer tensors: `QTensor`, `quantize` and `dequantize`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp.quant._calibration import Range
from lightcomp.quant._fake_quant import checked_args
from lightcomp.quant._layout import Layout, layout
from lightcomp.quant._numerics import decode, encode, int_dtype


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class QTensor:
    """An integer tensor with its quantization parameters (a pytree).

    Attributes:
      values: integer codes of the tensor's shape, int8/uint8 for <= 8 bits, int16/uint16 above.
      scale: float32 scales of `Layout.scale_shape` (``()`` per tensor; the tensor's rank with
        1 on shared axes; ``n_groups`` on the group axis for per-group scales).
      zero_point: codes of 0, values' dtype and scale's shape; None when symmetric.
      bits, symmetric, axis, group_size, group_axis: the static configuration (``axis`` an
        int for one kept axis, a tuple for several, as `lightcomp.quant.Layout.axis`).
      dtype: the dtype `dequantize` returns (the original tensor's).
    """

    values: jax.Array
    scale: jax.Array
    zero_point: jax.Array | None
    bits: int = dataclasses.field(metadata=dict(static=True))
    symmetric: bool = dataclasses.field(metadata=dict(static=True))
    axis: int | tuple[int, ...] | None = dataclasses.field(metadata=dict(static=True))
    group_size: int | None = dataclasses.field(metadata=dict(static=True))
    group_axis: int | None = dataclasses.field(metadata=dict(static=True))
    dtype: Any = dataclasses.field(metadata=dict(static=True))

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape."""
        return tuple(self.values.shape)

    @property
    def layout(self) -> Layout:
        """The `Layout` of the tensor's scales."""
        return layout(self.values.shape, self.axis, self.group_size, self.group_axis)


@functools.partial(jax.jit, static_argnames=("bits", "symmetric", "lay", "rounding"))
def _quantize_fwd(x, lo_hi, key, *, bits, symmetric, lay, rounding):
    q, scale, zp, _ = encode(x, bits, symmetric, lay, lo_hi, rounding, key)
    idt = int_dtype(bits, symmetric)
    return (
        lay.unview(q).astype(idt),
        lay.scale_from_view(scale),
        lay.scale_from_view(zp).astype(idt),
    )


def quantize(
    x: jax.Array,
    bits: int = 8,
    *,
    symmetric: bool = True,
    axis: int | tuple[int, ...] | None = None,
    group_size: int | None = None,
    group_axis: int | tuple[int, ...] | None = None,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    range: Range | None = None,
) -> QTensor:
    """Quantizes ``x`` to integer codes; arguments as `lightcomp.quant.fake_quant`.

    Returns:
      A `QTensor`; ``dequantize(quantize(x, ...))`` equals ``fake_quant(x, ...)`` bit for bit.

    Raises:
      ValueError / TypeError: as `lightcomp.quant.fake_quant`.

    Example:
      >>> qt = lc.quant.quantize(jnp.array([[0.7, -2.1], [0.2, 0.9]]), 4, axis=-1)
      >>> qt.values, qt.scale.shape
      (Array([[ 7, -7],
             [ 2,  3]], dtype=int8), (1, 2))
    """
    bits, symmetric, lay, lo_hi = checked_args(
        x, bits, symmetric, axis, group_size, group_axis, rounding, key, range
    )
    values, scale, zp = _quantize_fwd(
        x, lo_hi, key, bits=bits, symmetric=symmetric, lay=lay, rounding=rounding
    )
    return QTensor(
        values=values,
        scale=scale,
        zero_point=None if symmetric else zp,
        bits=bits,
        symmetric=symmetric,
        axis=lay.axis,
        group_size=lay.group_size,
        group_axis=lay.group_axis,
        dtype=np.dtype(x.dtype),
    )


def dequantize(qt: QTensor) -> jax.Array:
    """``(values - zero_point) * scale`` in float32, cast to the original dtype.

    Args:
      qt: a `QTensor`.

    Returns:
      An array of ``qt.shape`` and ``qt.dtype``.

    Raises:
      TypeError: ``qt`` is not a `QTensor`.
    """
    if not isinstance(qt, QTensor):
        raise TypeError(f"qt must be a lightcomp.quant.QTensor, got {type(qt).__name__}")
    return _dequantize_fwd(qt.values, qt.scale, qt.zero_point, lay=qt.layout, dtype=qt.dtype)


@functools.partial(jax.jit, static_argnames=("lay", "dtype"))
def _dequantize_fwd(values, scale, zero_point, *, lay, dtype):
    scale = lay.scale_to_view(scale.astype(jnp.float32))
    zp = 0.0 if zero_point is None else lay.scale_to_view(zero_point.astype(jnp.float32))
    q = lay.view(values).astype(jnp.float32)
    return lay.unview(decode(q, scale, zp)).astype(dtype)
