"""Activation fake quantization for unmodified Flax models, with EMA-calibrated ranges.

linen: `activation_quant` returns an `ActQuant` triple of pure functions that run any callable
using linen modules (``lambda x: model.apply(variables, x)``) under
``flax.linen.intercept_methods``, fake-quantizing the inputs (and optionally the outputs) of
every ``nn.Dense`` / ``nn.Conv`` call. The model's code does not change. The ranges are an
explicit state, a dict ``{"Dense_0": {"inputs": EmaRange, ...}, ...}`` that the caller carries::

    aq = lc.quant.activation_quant(8)
    fn = lambda p, x: model.apply({"params": p}, x)
    act_state = aq.init(fn, params, x)                    # one abstract trace, no compute
    logits, act_state = aq.update(fn, act_state, params, x)   # training: observe, then quantize
    logits = aq.apply(fn, act_state, params, x)           # serving: frozen ranges

nnx: `FakeQuantInputs` wraps a layer and keeps its ranges in ``nnx.BatchStat`` variables (the
nnx form of explicit state: they appear in ``nnx.split(model)``'s state and are updated in
place while training, frozen by ``model.eval()``); `wrap_nnx` wraps every ``nnx.Linear`` /
``nnx.Conv`` of a model::

    model = lc.quant.wrap_nnx(NnxMLP(...), bits=8)
    model.train(); y = model(x)      # ranges follow an EMA of each batch's min / max
    model.eval();  y = model(x)      # ranges frozen

Limitation: the linen interceptor threads the state through one trace, so layers inside
``nn.scan`` / ``nn.remat`` / ``nn.vmap`` lifted transforms are not supported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from lightcomp import quant as _q

__all__ = ["ActQuant", "FakeQuantInputs", "activation_quant", "wrap_nnx"]

PyTree = Any


class ActQuant(NamedTuple):
    """Activation fake quantization of a linen computation: three pure functions.

    Attributes:
      init: ``(fn, *args, **kwargs) -> state``: finds the quantized layers by tracing ``fn``
        abstractly (``jax.eval_shape``); every range starts empty.
      update: ``(fn, state, *args, **kwargs) -> (out, state)``: each layer's range takes an
        EMA step with the current activations, which are then fake-quantized with it.
      apply: ``(fn, state, *args, **kwargs) -> out``: fake-quantizes with the frozen ranges
        (a layer whose range was never updated uses the current tensor's own min/max).
    """

    init: Callable[..., PyTree]
    update: Callable[..., tuple[Any, PyTree]]
    apply: Callable[..., Any]


def _layer_rule(layers: Any) -> Callable[[str, Any], bool]:
    if isinstance(layers, type):
        layers = (layers,)
    if isinstance(layers, tuple) and all(isinstance(t, type) for t in layers):
        return lambda path, mod: isinstance(mod, layers)
    if callable(layers):
        return layers
    raise TypeError(
        "layers must be a module class, a tuple of them, or a predicate (path, module) -> bool; "
        f"got {layers!r}"
    )


def _config(bits, symmetric, axis, decay, ste):
    bits = _q._check_bits(bits)
    _q._check_choice(ste, _q._STES, "ste")
    if not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be a float in [0, 1), got {decay!r}")
    if axis is not None and not isinstance(axis, int):
        raise TypeError(f"axis must be an int or None, got {axis!r}")
    return bits


def _quant_one(x, st: _q.EmaRange, *, bits, symmetric, axis, decay, ste, update: bool):
    """Fake-quantizes one activation with its EMA range; returns ``(x_hat, new_state)``."""
    if update:
        st = _q.ema_range_update(st, x, decay, axis=axis)
        rng = st.range
    else:
        lo, hi = _q.minmax_range(x, axis)
        seen = st.count > 0
        rng = (jnp.where(seen, st.min, lo), jnp.where(seen, st.max, hi))
    return _q.fake_quant(x, bits, symmetric=symmetric, axis=axis, ste=ste, range=rng), st


def activation_quant(
    bits: int = 8,
    *,
    symmetric: bool = False,
    outputs: bool = False,
    layers: Any = (nn.Dense, nn.Conv),
    axis: int | None = None,
    decay: float = 0.99,
    ste: str = "clipped",
) -> ActQuant:
    """Fake quantization of the inputs (and outputs) of linen layers, ranges by EMA.

    Args:
      bits: integer width, 2..16.
      symmetric: signed narrow range; the default (unsigned with a zero point) suits
        activations after ReLU and inputs in [0, 1].
      outputs: also fake-quantize each layer's output.
      layers: module classes whose ``__call__`` is intercepted, or a predicate
        ``(path, module) -> bool`` (path as ``"Block_0/Dense_1"``).
      axis: per-channel activation ranges along this axis (e.g. -1); None: per tensor.
      decay: EMA decay of the ranges, in [0, 1).
      ste: ``"clipped"`` (zero gradient where an activation fell outside its range) or
        ``"identity"``.

    Returns:
      An `ActQuant` ``(init, update, apply)``.

    References:
      Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
      Integer-Arithmetic-Only Inference" (EMA ranges for activations).
    """
    bits = _config(bits, symmetric, axis, decay, ste)
    rule = _layer_rule(layers)
    kinds = ("inputs", "outputs") if outputs else ("inputs",)
    opts = dict(bits=bits, symmetric=symmetric, axis=axis, decay=decay, ste=ste)

    def chosen(context) -> str | None:
        mod = context.module
        if context.method_name != "__call__" or not isinstance(mod, nn.Module):
            return None
        path = "/".join(str(p) for p in mod.path)
        return path if rule(path, mod) else None

    def init(fn, *args, **kwargs):
        found: dict[str, dict[str, tuple[int, ...]]] = {}

        def record(next_fun, a, kw, context):
            path = chosen(context)
            if path is None:
                return next_fun(*a, **kw)
            shapes = {"inputs": _scale_shape(a[0], axis)}
            y = next_fun(*a, **kw)
            if outputs:
                shapes["outputs"] = _scale_shape(y, axis)
            found[path] = shapes
            return y

        def traced(*a, **kw):
            with nn.intercept_methods(record):
                return fn(*a, **kw)

        jax.eval_shape(traced, *args, **kwargs)
        if not found:
            raise ValueError("fn called no layer chosen by `layers`; nothing to quantize")
        return {p: {k: _q.ema_range_init(s[k]) for k in kinds} for p, s in found.items()}

    def run(fn, state, args, kwargs, update: bool):
        if not isinstance(state, dict):
            raise TypeError(f"state must be the dict from init, got {type(state).__name__}")
        new = {p: dict(v) for p, v in state.items()}

        def intercept(next_fun, a, kw, context):
            path = chosen(context)
            if path is None:
                return next_fun(*a, **kw)
            if path not in new:
                raise ValueError(
                    f"layer {path!r} has no range in state (state has {sorted(new)}); "
                    "build the state with init on the same fn"
                )
            x, new[path]["inputs"] = _quant_one(a[0], new[path]["inputs"], update=update, **opts)
            y = next_fun(x, *a[1:], **kw)
            if outputs:
                y, new[path]["outputs"] = _quant_one(y, new[path]["outputs"], update=update, **opts)
            return y

        with nn.intercept_methods(intercept):
            out = fn(*args, **kwargs)
        return out, new

    def update(fn, state, *args, **kwargs):
        return run(fn, state, args, kwargs, True)

    def apply(fn, state, *args, **kwargs):
        return run(fn, state, args, kwargs, False)[0]

    return ActQuant(init, update, apply)


def _scale_shape(x, axis) -> tuple[int, ...]:
    _q._check_float(x, "activation")
    return _q._layout(x.shape, axis).scale_shape


# --------------------------------------------------------------------------- nnx


class FakeQuantInputs(nnx.Module):
    """Wraps an nnx layer: fake-quantizes its input (and optionally output) per tensor.

    The ranges live in ``nnx.BatchStat`` variables (``in_min``, ``in_max``, ``in_count`` and
    ``out_*``), so they are part of the model's state. In training mode each call takes an
    EMA step and quantizes with the new range; with ``use_running_average`` (set by
    ``model.eval()``) the ranges are frozen (an unseen range falls back to the tensor's own).

    Args:
      layer: the wrapped module (called as ``layer(x, ...)``).
      bits, symmetric, outputs, decay, ste: as `activation_quant` (per-tensor ranges).
      use_running_average: freeze the ranges.
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
        use_running_average: bool = False,
    ):
        self.bits = _config(bits, symmetric, None, decay, ste)
        self.layer = layer
        self.symmetric = symmetric
        self.outputs = outputs
        self.decay = decay
        self.ste = ste
        self.use_running_average = use_running_average
        for kind in ("in", "out") if outputs else ("in",):
            empty = _q.ema_range_init()
            setattr(self, f"{kind}_min", nnx.BatchStat(empty.min))
            setattr(self, f"{kind}_max", nnx.BatchStat(empty.max))
            setattr(self, f"{kind}_count", nnx.BatchStat(empty.count))

    def _quant(self, kind: str, x: jax.Array) -> jax.Array:
        lo, hi, n = (getattr(self, f"{kind}_{f}") for f in ("min", "max", "count"))
        st = _q.EmaRange(lo[...], hi[...], n[...])
        y, st = _quant_one(
            x,
            st,
            bits=self.bits,
            symmetric=self.symmetric,
            axis=None,
            decay=self.decay,
            ste=self.ste,
            update=not self.use_running_average,
        )
        if not self.use_running_average:
            lo[...], hi[...], n[...] = st.min, st.max, st.count
        return y

    def __call__(self, x: jax.Array, *args, **kwargs) -> jax.Array:
        y = self.layer(self._quant("in", x), *args, **kwargs)
        return self._quant("out", y) if self.outputs else y


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
      **kwargs: passed to `FakeQuantInputs` (``symmetric``, ``outputs``, ``decay``, ``ste``).

    Returns:
      ``model``, with its layers wrapped.
    """
    if not isinstance(model, nnx.Module) or isinstance(model, layers):
        raise TypeError("model must be an nnx.Module that contains (is not itself) the layers")
    _config(
        bits,
        kwargs.get("symmetric", False),
        None,
        kwargs.get("decay", 0.99),
        kwargs.get("ste", "clipped"),
    )
    count = _wrap(model, bits, layers, kwargs)
    if count == 0:
        raise ValueError(f"model has no sub-module of types {layers}; nothing to wrap")
    return model


def _wrap(parent: nnx.Module, bits, layers, kwargs) -> int:
    count = 0
    for name, child in list(nnx.iter_children(parent)):
        if isinstance(child, FakeQuantInputs):
            continue
        if isinstance(child, layers):
            wrapped = FakeQuantInputs(child, bits, **kwargs)
            if isinstance(name, int):
                parent[name] = wrapped
            else:
                setattr(parent, name, wrapped)
            count += 1
        else:
            count += _wrap(child, bits, layers, kwargs)
    return count
