"""Activation fake quantization of unmodified linen models, with EMA-calibrated ranges.

`activation_quant` returns an `ActQuant` triple of pure functions that run any callable
using linen modules (``lambda p, x: model.apply({"params": p}, x)``) under
``flax.linen.intercept_methods``, fake-quantizing the inputs (and optionally the outputs) of
every ``nn.Dense`` / ``nn.Conv`` call. The model's code does not change. The ranges are an
explicit state, a dict ``{"Dense_0": {"inputs": EmaRange, ...}, ...}`` that the caller
carries::

    aq = lc.quant.activation_quant(8)
    fn = lambda p, x: model.apply({"params": p}, x)
    act_state = aq.init(fn, params, x)                         # one abstract trace, no compute
    logits, act_state = aq.update(fn, act_state, params, x)    # training: observe, then quantize
    logits = aq.apply(fn, act_state, params, x)                # serving: frozen ranges

Limitation: the interceptor threads the state through one trace, so layers inside
``nn.scan`` / ``nn.remat`` / ``nn.vmap`` lifted transforms are not supported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightcomp._checks import (
    check_bool,
    check_choice,
    check_finite,
    check_floating,
    check_opt_int,
)
from lightcomp.quant._calibration import (
    EmaRange,
    check_decay,
    check_range,
    check_state_shape,
    ema_range_init,
    ema_step,
    minmax_of,
)
from lightcomp.quant._fake_quant import fake_quant_in
from lightcomp.quant._layout import Layout, layout
from lightcomp.quant._numerics import check_bits
from lightcomp.quant._ste import STES

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


def check_config(bits: Any, symmetric: Any, axis: Any, decay: Any, ste: Any) -> dict[str, Any]:
    """Checks an activation quantizer's configuration; returns the keywords of `quant_one`."""
    return dict(
        bits=check_bits(bits),
        symmetric=check_bool(symmetric, "symmetric"),
        axis=check_opt_int(axis, "axis"),
        decay=check_decay(decay),
        clipped=check_choice(ste, STES, "ste") == "clipped",
    )


def activation_layout(x: Any, axis: int | None) -> Layout:
    """The layout of an activation's ranges (checks that ``x`` is floating)."""
    check_floating(x, "activation")
    return layout(x.shape, axis)


def quant_one(
    x: jax.Array,
    st: EmaRange,
    *,
    bits: int,
    symmetric: bool,
    axis: int | None,
    decay: float,
    clipped: bool,
    update: bool,
) -> tuple[jax.Array, EmaRange]:
    """Fake-quantizes one activation with its EMA range; returns ``(x_hat, new_state)``.

    With ``update`` the range first takes an EMA step with ``x``; otherwise it is frozen (an
    empty range, ``count == 0``, falls back to ``x``'s own min/max).
    """
    if not isinstance(st, EmaRange):
        raise TypeError(f"state must be an EmaRange, got {type(st).__name__}")
    lay = activation_layout(x, axis)
    check_finite(x, "activation")
    lo, hi = minmax_of(x, lay)
    if update:
        check_state_shape(st, lay)
        st = ema_step(st, lo, hi, decay)
        rng = st.range
    else:
        seen = st.count > 0
        rng = (jnp.where(seen, st.min, lo), jnp.where(seen, st.max, hi))
    lo_hi = check_range(rng, lay)
    return fake_quant_in(x, lay, lo_hi, bits=bits, symmetric=symmetric, clipped=clipped), st


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

    Raises:
      ValueError / TypeError: a bad ``bits``, ``symmetric``, ``outputs``, ``axis``, ``decay``,
        ``ste`` or ``layers``.

    References:
      Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
      Integer-Arithmetic-Only Inference" (EMA ranges for activations).
    """
    opts = check_config(bits, symmetric, axis, decay, ste)
    outputs = check_bool(outputs, "outputs")
    rule = _layer_rule(layers)

    def init(fn, *args, **kwargs):
        return _init_ranges(fn, args, kwargs, rule, opts["axis"], outputs)

    def update(fn, state, *args, **kwargs):
        return _run(fn, state, args, kwargs, rule, opts, outputs, update=True)

    def apply(fn, state, *args, **kwargs):
        return _run(fn, state, args, kwargs, rule, opts, outputs, update=False)[0]

    return ActQuant(init, update, apply)


def _chosen(context, rule) -> str | None:
    """The path of an intercepted layer call that ``rule`` chooses, or None."""
    mod = context.module
    if context.method_name != "__call__" or not isinstance(mod, nn.Module):
        return None
    path = "/".join(str(p) for p in mod.path)
    return path if rule(path, mod) else None


def _init_ranges(fn, args, kwargs, rule, axis, outputs) -> dict[str, dict[str, EmaRange]]:
    found: dict[str, dict[str, tuple[int, ...]]] = {}

    def record(next_fun, a, kw, context):
        path = _chosen(context, rule)
        if path is None:
            return next_fun(*a, **kw)
        shapes = {"inputs": activation_layout(a[0], axis).scale_shape}
        y = next_fun(*a, **kw)
        if outputs:
            shapes["outputs"] = activation_layout(y, axis).scale_shape
        found[path] = shapes
        return y

    def traced(*a, **kw):
        with nn.intercept_methods(record):
            return fn(*a, **kw)

    jax.eval_shape(traced, *args, **kwargs)
    if not found:
        raise ValueError("fn called no layer chosen by `layers`; nothing to quantize")
    return {p: {k: ema_range_init(shape) for k, shape in s.items()} for p, s in found.items()}


def _run(fn, state, args, kwargs, rule, opts, outputs, *, update: bool):
    if not isinstance(state, dict):
        raise TypeError(f"state must be the dict from init, got {type(state).__name__}")
    new = {p: dict(v) for p, v in state.items()}

    def intercept(next_fun, a, kw, context):
        path = _chosen(context, rule)
        if path is None:
            return next_fun(*a, **kw)
        if path not in new:
            raise ValueError(
                f"layer {path!r} has no range in state (state has {sorted(new)}); "
                "build the state with init on the same fn"
            )
        x, new[path]["inputs"] = quant_one(a[0], new[path]["inputs"], update=update, **opts)
        y = next_fun(x, *a[1:], **kw)
        if outputs:
            y, new[path]["outputs"] = quant_one(y, new[path]["outputs"], update=update, **opts)
        return y

    with nn.intercept_methods(intercept):
        out = fn(*args, **kwargs)
    return out, new
