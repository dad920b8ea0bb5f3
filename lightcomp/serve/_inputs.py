"""A served layer's input, quantized: per tensor, dynamic or from a calibrated range.

Dynamic: each call's own min / max (symmetric: ``max|x| / qmax``). Calibrated: a range
``(min, max)`` carried with the parameters, e.g. the state of
`lightcomp.quant.activation_quant` (an `lightcomp.quant.EmaRange` per layer, or the dict a
packed file gives back, ``{"min", "max", "count"}``); a range never updated (``count == 0``)
falls back to the input's own, as ``activation_quant``'s ``apply`` does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import quant
from lightcomp._checks import check_bool, check_choice


@dataclasses.dataclass(frozen=True)
class InputQuant:
    """How a served layer's input is quantized and contracted (static).

    Attributes:
      bits: 2..8.
      symmetric: signed codes, ``scale = max|x| / qmax``; otherwise unsigned with a zero
        point (suits inputs after a ReLU).
      operands: ``"int8"`` or ``"bfloat16"``: how the codes are contracted, exactly either
        way (`lightcomp.quant.int_dot_general`).
    """

    bits: int = 8
    symmetric: bool = True
    operands: str = "int8"


def input_quant(bits: Any, symmetric: Any, operands: Any = "int8") -> InputQuant:
    """A checked `InputQuant`."""
    return InputQuant(
        quant.check_bits(bits, hi=8),
        check_bool(symmetric, "symmetric"),
        check_choice(operands, ("int8", "bfloat16"), "operands"),
    )


Range = tuple[jax.Array, jax.Array, jax.Array | None]


def as_range(value: Any, path: str) -> Range:
    """A calibrated per-tensor range -> ``(min, max, count or None)``, float32 scalars.

    Accepted: an `lightcomp.quant.EmaRange`, a dict ``{"min", "max"[, "count"]}``, or a
    pair ``(min, max)``.

    Raises:
      TypeError / ValueError: anything else, or bounds that are not scalars (per-channel
        ranges run along a contracted axis: their scales would not factor out).
    """
    if isinstance(value, quant.EmaRange):
        lo, hi, count = value.min, value.max, value.count
    elif isinstance(value, dict) and {"min", "max"} <= set(value):
        lo, hi, count = value["min"], value["max"], value.get("count")
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        (lo, hi), count = value, None
    else:
        raise TypeError(
            f"layer {path!r}: an input range must be an EmaRange, a dict with 'min' and "
            f"'max', or a pair (min, max); got {type(value).__name__}"
        )
    if any(np.shape(v) != () for v in (lo, hi)):
        raise ValueError(
            f"layer {path!r}: integer serving takes one input range per tensor, got min of "
            f"shape {np.shape(lo)} (per-channel ranges run along the contracted axis)"
        )
    as32 = lambda v: jnp.asarray(v, jnp.float32)
    return as32(lo), as32(hi), None if count is None else jnp.asarray(count)


def quantize_inputs(x: Any, act: InputQuant, rng: Range | None, path: str) -> quant.QTensor:
    """``x`` as a per-tensor `lightcomp.quant.QTensor` (dynamic, or with the range ``rng``).

    Raises:
      TypeError: ``x`` is not a floating-point array (names the layer).
    """
    if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"layer {path!r}: inputs of dtype {getattr(x, 'dtype', type(x).__name__)} cannot "
            "be quantized (floating-point inputs only)"
        )
    if rng is None:
        return quant.quantize(x, act.bits, symmetric=act.symmetric)
    lo, hi, count = rng
    if count is not None:
        x32 = x.astype(jnp.float32)
        lo = jnp.where(count > 0, lo, jnp.min(x32))
        hi = jnp.where(count > 0, hi, jnp.max(x32))
    return quant.quantize(x, act.bits, symmetric=act.symmetric, range=(lo, hi))
