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

Ranges (``ranges=``): ``"ema"`` (an EMA of each batch's min / max, updated by ``update``),
``"dynamic"`` (each call's own min / max; no state) or ``"calibrated"`` (fixed ranges from a
calibration run, e.g. an ``"ema"`` quantizer's state; ``update`` leaves them as they are);
per tensor (``axis=None``), per token (``axis="tokens"``: one range per row, every axis but
the last; dynamic only) or per channel (``axis=-1``).

Integer forward (``weight_bits=``): when the kernels are on a symmetric grid of
``weight_bits <= 8`` bits with one scale per output unit (as
`lightcomp.transform.fake_quantization` leaves them) and the activations have ``bits <= 8``,
Dense, DenseGeneral, Conv and Einsum run int8 x int8 -> int32 contractions with one float32
rescale and a straight-through backward in float (`lightcomp.quant._int_forward`): the same
forward as the fake-quantized float one up to float32 accumulation order. ``compute="auto"``
uses it wherever it is exact (activation scales not along a contracted axis) and the float
path elsewhere; ``"int8"`` refuses the float path; ``"float"`` never uses integers.

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
from lightcomp.quant._int_dot import OPERANDS
from lightcomp.quant._int_forward import IntForward, act_layout
from lightcomp.quant._int_layers import LayerOp, call_linen, op_attr
from lightcomp.quant._layout import Layout
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


RANGES = ("ema", "dynamic", "calibrated")
COMPUTES = ("auto", "int8", "float")
TOKENS = "tokens"


def _check_axis(axis: Any) -> Any:
    if isinstance(axis, str) and axis == TOKENS:
        return axis
    return check_opt_int(axis, "axis")


def check_config(
    bits: Any, symmetric: Any, axis: Any, decay: Any, ste: Any, ranges: Any = "ema"
) -> dict[str, Any]:
    """Checks an activation quantizer's configuration; returns the keywords of `quant_one`."""
    opts = dict(
        bits=check_bits(bits),
        symmetric=check_bool(symmetric, "symmetric"),
        axis=_check_axis(axis),
        decay=check_decay(decay),
        clipped=check_choice(ste, STES, "ste") == "clipped",
        mode=check_choice(ranges, RANGES, "ranges"),
    )
    if opts["axis"] == TOKENS and opts["mode"] != "dynamic":
        raise ValueError(
            f"axis='tokens' keeps one range per row, which changes with every batch: it needs "
            f"ranges='dynamic', got ranges={ranges!r}"
        )
    return opts


def activation_layout(x: Any, axis: Any) -> Layout:
    """The layout of an activation's ranges (checks that ``x`` is floating)."""
    check_floating(x, "activation")
    return act_layout(tuple(x.shape), axis)


def observe(
    x: jax.Array, st: Any, lay: Layout, *, mode: str, decay: float, update: bool
) -> tuple[tuple[jax.Array, jax.Array] | None, Any]:
    """The range one activation is quantized with, and the new state.

    ``"dynamic"``: None (the tensor's own), no state. ``"ema"`` with ``update``: the range
    first takes an EMA step with ``x``. Otherwise the state's range, frozen (an empty one,
    ``count == 0``, falls back to ``x``'s own min/max).
    """
    check_finite(x, "activation")  # skipped when traced
    if mode == "dynamic":
        return None, st
    if not isinstance(st, EmaRange):
        raise TypeError(f"state must be an EmaRange, got {type(st).__name__}")
    lo, hi = minmax_of(x, lay)
    if update and mode == "ema":
        check_state_shape(st, lay)
        st = ema_step(st, lo, hi, decay)
        rng = st.range
    else:
        seen = st.count > 0
        rng = (jnp.where(seen, st.min, lo), jnp.where(seen, st.max, hi))
    return check_range(rng, lay), st


def quant_one(
    x: jax.Array,
    st: Any,
    *,
    bits: int,
    symmetric: bool,
    axis: Any,
    decay: float,
    clipped: bool,
    update: bool,
    mode: str = "ema",
) -> tuple[jax.Array, Any]:
    """Fake-quantizes one activation with its range (`observe`); returns ``(x_hat, new_state)``."""
    lay = activation_layout(x, axis)
    lo_hi, st = observe(x, st, lay, mode=mode, decay=decay, update=update)
    clipped = clipped and lo_hi is not None  # a tensor's own range clips nothing
    return fake_quant_in(x, lay, lo_hi, bits=bits, symmetric=symmetric, clipped=clipped), st


def int_spec(
    opts: dict[str, Any], weight_bits: Any, compute: Any, operands: Any = "int8"
) -> IntForward | None:
    """The `IntForward` of a quantizer, or None when its layers run in float."""
    compute = check_choice(compute, COMPUTES, "compute")
    operands = check_choice(operands, OPERANDS, "operands")
    weight_bits = None if weight_bits is None else check_bits(weight_bits, argname="weight_bits")
    if compute == "float":
        return None
    fits = weight_bits is not None and weight_bits <= 8 and opts["bits"] <= 8
    if compute == "int8" and not fits:
        raise ValueError(
            "compute='int8' needs weight_bits <= 8 (the kernels' grid) and bits <= 8, got "
            f"weight_bits={weight_bits}, bits={opts['bits']}"
        )
    if not fits:
        return None
    o = opts
    return IntForward(o["bits"], o["symmetric"], weight_bits, o["axis"], o["clipped"], operands)


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
    axis: int | str | None = None,
    decay: float = 0.99,
    ste: str = "clipped",
    ranges: str = "ema",
    weight_bits: int | None = None,
    compute: str = "auto",
    operands: str = "int8",
) -> ActQuant:
    """Quantization of the inputs (and outputs) of linen layers: EMA, dynamic or fixed ranges.

    Args:
      bits: integer width, 2..16.
      symmetric: signed narrow range; the default (unsigned with a zero point) suits
        activations after ReLU and inputs in [0, 1].
      outputs: also fake-quantize each layer's output (always in float).
      layers: module classes whose ``__call__`` is intercepted, or a predicate
        ``(path, module) -> bool`` (path as ``"Block_0/Dense_1"``).
      axis: None: one range per tensor; ``"tokens"``: one per row (every axis but the last;
        ``ranges="dynamic"`` only); an int: per channel along that axis (e.g. -1).
      decay: EMA decay of the ranges, in [0, 1).
      ste: ``"clipped"`` (zero gradient where an activation fell outside its range) or
        ``"identity"``.
      ranges: ``"ema"``, ``"dynamic"`` or ``"calibrated"`` (see the module docstring).
      weight_bits: the width of the symmetric, per-output-unit grid the intercepted layers'
        kernels are on (``fake_quantization(weight_bits)``); with it (<= 8) the layers run
        integer contractions. The kernel is re-quantized on that grid inside the layer (on a
        kernel already there: its own codes).
      compute: ``"auto"`` (integers where exact), ``"int8"`` (refuse the float path) or
        ``"float"``.
      operands: how the integer path contracts its codes: ``"int8"`` (int32 accumulation) or
        ``"bfloat16"`` (the same exact sums on bfloat16 dot units, faster on some CPUs; up to
        1024 contracted terms, int8 beyond), as `lightcomp.quant.int_dot_general`.

    Returns:
      An `ActQuant` ``(init, update, apply)``.

    Raises:
      ValueError / TypeError: a bad ``bits``, ``symmetric``, ``outputs``, ``axis``, ``decay``,
        ``ste``, ``layers``, ``ranges``, ``weight_bits``, ``compute`` or ``operands``, per-token ranges
        that are not dynamic, or ``compute="int8"`` without ``weight_bits <= 8``.

    References:
      Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
      Integer-Arithmetic-Only Inference" (EMA ranges for activations, integer inference).

    Example:
      >>> model = lc.models.MLP((8, 3))
      >>> x = jnp.linspace(-1, 1, 12).reshape(2, 6)
      >>> params = jax.tree.map(lambda w: lc.quant.fake_quant(w, 8, axis=-1),
      ...                       model.init(jax.random.key(0), x)["params"])
      >>> fn = lambda p, x: model.apply({"params": p}, x)
      >>> aq = lc.quant.activation_quant(8, symmetric=True, ranges="dynamic", weight_bits=8)
      >>> y_int = aq.apply(fn, aq.init(fn, params, x), params, x)       # int8 x int8 -> int32
      >>> fq = lc.quant.activation_quant(8, symmetric=True, ranges="dynamic", compute="float")
      >>> bool(jnp.allclose(y_int, fq.apply(fn, {}, params, x), atol=1e-6))
      True
    """
    opts = check_config(bits, symmetric, axis, decay, ste, ranges)
    spec = int_spec(opts, weight_bits, compute, operands)
    strict = compute == "int8"
    outputs = check_bool(outputs, "outputs")
    rule = _layer_rule(layers)

    def init(fn, *args, **kwargs):
        found = _init_ranges(fn, args, kwargs, rule, opts["axis"], outputs)
        return {} if opts["mode"] == "dynamic" else found

    def run(fn, state, args, kwargs, update):
        return _run(fn, state, args, kwargs, rule, opts, outputs, spec, strict, update=update)

    def update(fn, state, *args, **kwargs):
        return run(fn, state, args, kwargs, True)

    def apply(fn, state, *args, **kwargs):
        return run(fn, state, args, kwargs, False)[0]

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


def _run(fn, state, args, kwargs, rule, opts, outputs, spec, strict, *, update: bool):
    if not isinstance(state, dict):
        raise TypeError(f"state must be the dict from init, got {type(state).__name__}")
    new = {p: dict(v) for p, v in state.items()}
    dynamic = opts["mode"] == "dynamic"
    busy = []  # the integer path calls a clone of the layer: not intercepted again

    def intercept(next_fun, a, kw, context):
        path = _chosen(context, rule)
        if path is None or busy:
            return next_fun(*a, **kw)
        if not dynamic and path not in new:
            raise ValueError(
                f"layer {path!r} has no range in state (state has {sorted(new)}); "
                "build the state with init on the same fn (lightcomp.train.linen_apply reads it "
                "from model_state['act_ranges'])"
            )
        ranges = new.setdefault(path, {}) if not dynamic else {}
        attr = op_attr(context.module) if spec is not None else False
        if attr is False:
            x, ranges["inputs"] = quant_one(a[0], ranges.get("inputs"), update=update, **opts)
            y = next_fun(x, *a[1:], **kw)
        else:
            lay = activation_layout(a[0], opts["axis"])
            keys = dict(mode=opts["mode"], decay=opts["decay"], update=update)
            lo_hi, ranges["inputs"] = observe(a[0], ranges.get("inputs"), lay, **keys)
            busy.append(path)
            try:
                y = call_linen(context.module, attr, LayerOp(spec, lo_hi, strict, path), a, kw)
            finally:
                busy.pop()
        if outputs:
            y, ranges["outputs"] = quant_one(y, ranges.get("outputs"), update=update, **opts)
        return y

    with nn.intercept_methods(intercept):
        out = fn(*args, **kwargs)
    return out, ({} if dynamic else new)
