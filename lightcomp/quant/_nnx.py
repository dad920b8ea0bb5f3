"""Activation fake quantization of nnx models: a wrapper layer with its ranges as state.

`FakeQuantInputs` wraps a layer and keeps its ranges in ``nnx.BatchStat`` variables (the
nnx form of explicit state: they appear in ``nnx.split(model)``'s state and are updated in
place while training, frozen by ``model.eval()``); `wrap_nnx` wraps every ``nnx.Linear`` /
``nnx.Conv`` of a model::

    model = lc.quant.wrap_nnx(NnxMLP(...), bits=8)
    model.train(); y = model(x)      # ranges follow an EMA of each batch's min / max
    model.eval();  y = model(x)      # ranges frozen

With ``weight_bits`` (the kernels' grid, <= 8 bits) the wrapped layer runs its contraction on
int8 codes (int32 accumulation, one float32 rescale, straight-through backward in float), as
`lightcomp.quant.activation_quant` does for linen; ``ranges="dynamic"`` quantizes with each
call's own range (per tensor, or per token with ``axis="tokens"``) and keeps no state.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from lightcomp._checks import check_bool
from lightcomp.quant._activations import (
    activation_layout,
    check_config,
    int_spec,
    observe,
    quant_one,
)
from lightcomp.quant._calibration import EmaRange, ema_range_init
from lightcomp.quant._int_layers import LayerOp, call_nnx, op_attr


class FakeQuantInputs(nnx.Module):
    """Wraps an nnx layer: quantizes its input (and optionally output) per tensor or token.

    The ranges live in ``nnx.BatchStat`` variables (``in_min``, ``in_max``, ``in_count`` and
    ``out_*``), so they are part of the model's state. In training mode each call takes an
    EMA step and quantizes with the new range; with ``use_running_average`` (set by
    ``model.eval()``) the ranges are frozen (an unseen range falls back to the tensor's own).

    Args:
      layer: the wrapped module (called as ``layer(x, ...)``).
      bits, symmetric, outputs, decay, ste, ranges, weight_bits, compute, operands: as
        `lightcomp.quant.activation_quant`.
      axis: None (one range per tensor) or ``"tokens"`` (one per row; dynamic ranges).
      use_running_average: freeze the ranges.

    Raises:
      ValueError / TypeError: a bad ``bits``, ``symmetric``, ``outputs``, ``decay``, ``ste``,
        ``axis``, ``ranges``, ``weight_bits``, ``compute``, ``operands`` or ``use_running_average``.
    """

    def __init__(
        self,
        layer: nnx.Module,
        bits: int = 8,
        *,
        symmetric: bool = False,
        outputs: bool = False,
        decay: float = 0.99,
        ste: str = "clipped",
        axis: str | None = None,
        ranges: str = "ema",
        weight_bits: int | None = None,
        compute: str = "auto",
        operands: str = "int8",
        use_running_average: bool = False,
    ):
        if axis not in (None, "tokens"):
            raise ValueError(f"axis must be None or 'tokens' for an nnx wrapper, got {axis!r}")
        opts = check_config(bits, symmetric, axis, decay, ste, ranges)
        self.spec = int_spec(opts, weight_bits, compute, operands)
        self.strict = compute == "int8"
        self.axis, self.ranges = opts["axis"], opts["mode"]
        self.layer = layer
        self.bits = opts["bits"]
        self.symmetric = opts["symmetric"]
        self.outputs = check_bool(outputs, "outputs")
        self.decay = opts["decay"]
        self.ste = ste
        self.use_running_average = check_bool(use_running_average, "use_running_average")
        kinds = ("in", "out") if self.outputs else ("in",)
        for kind in kinds if self.ranges != "dynamic" else ():
            empty = ema_range_init()
            setattr(self, f"{kind}_min", nnx.BatchStat(empty.min))
            setattr(self, f"{kind}_max", nnx.BatchStat(empty.max))
            setattr(self, f"{kind}_count", nnx.BatchStat(empty.count))

    def _state(self, kind: str) -> EmaRange | None:
        if self.ranges == "dynamic":
            return None
        lo, hi, n = (getattr(self, f"{kind}_{f}") for f in ("min", "max", "count"))
        return EmaRange(lo[...], hi[...], n[...])

    def _store(self, kind: str, st: EmaRange | None) -> None:
        if st is not None and not self.use_running_average and self.ranges == "ema":
            for f, v in zip(("min", "max", "count"), st, strict=True):
                getattr(self, f"{kind}_{f}")[...] = v

    def _quant(self, kind: str, x: jax.Array) -> jax.Array:
        y, st = quant_one(
            x,
            self._state(kind),
            bits=self.bits,
            symmetric=self.symmetric,
            axis=self.axis,
            decay=self.decay,
            clipped=self.ste == "clipped",
            update=not self.use_running_average,
            mode=self.ranges,
        )
        self._store(kind, st)
        return y

    def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:
        """``layer(x_hat, ...)`` with ``x_hat`` the quantized input (and output)."""
        attr = op_attr(self.layer) if self.spec is not None else False
        if not attr:
            y = self.layer(self._quant("in", x), *args, **kwargs)
        else:
            lay = activation_layout(x, self.axis)
            update = not self.use_running_average
            lo_hi, st = observe(
                x, self._state("in"), lay, mode=self.ranges, decay=self.decay, update=update
            )
            self._store("in", st)
            op = LayerOp(self.spec, lo_hi, self.strict, type(self.layer).__name__)
            y = call_nnx(self.layer, attr, op, (x, *args), kwargs)
        return self._quant("out", y) if self.outputs else y


def _targets(parent: nnx.Module, layers) -> list[tuple[nnx.Module, Any, nnx.Module]]:
    found = []
    for name, child in list(nnx.iter_children(parent)):
        if isinstance(child, FakeQuantInputs):
            continue
        if isinstance(child, layers):
            found.append((parent, name, child))
        elif isinstance(child, nnx.Module):  # variables (parameters, statistics) are leaves
            found.extend(_targets(child, layers))
    return found


def wrap_nnx(
    model: nnx.Module, bits: int = 8, *, layers: Any = (nnx.Linear, nnx.Conv), **kwargs: Any
) -> nnx.Module:
    """Wraps every sub-module of ``model`` that is an instance of ``layers`` in `FakeQuantInputs`.

    nnx modules are mutable Python objects, so the wrapping is done in place (once, when the
    model is built; ``model`` is returned for chaining). Parameters keep their values; their
    paths gain a ``layer/`` level (``layers/0/kernel`` -> ``layers/0/layer/kernel``).

    Args:
      model: an nnx module (not itself one of ``layers``).
      bits: integer width, 2..16.
      layers: the layer classes to wrap.
      **kwargs: passed to `FakeQuantInputs` (``symmetric``, ``outputs``, ``decay``, ``ste``,
        ``axis``, ``ranges``, ``weight_bits``, ``compute``, ``operands``).

    Returns:
      ``model``, with its layers wrapped.

    Raises:
      TypeError / ValueError: ``model`` is not an nnx module or is one of ``layers``, it has
        no such layer, or a bad configuration (as `FakeQuantInputs`); ``model`` is then
        left unchanged.
    """
    if not isinstance(model, nnx.Module) or isinstance(model, layers):
        raise TypeError("model must be an nnx.Module that contains (is not itself) the layers")
    targets = _targets(model, layers)
    if not targets:
        raise ValueError(f"model has no sub-module of types {layers}; nothing to wrap")
    wrapped = [FakeQuantInputs(child, bits, **kwargs) for _, _, child in targets]
    for (parent, name, _), w in zip(targets, wrapped, strict=True):
        if isinstance(name, int):
            parent[name] = w
        else:
            setattr(parent, name, w)
    return model
