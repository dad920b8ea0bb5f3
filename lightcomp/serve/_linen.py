"""`linen`: integer serving of an unmodified linen module, by method interception.

``flax.linen.intercept_methods`` sees every module call (as
`lightcomp.quant.activation_quant` uses it); the calls of Dense, DenseGeneral, Einsum and
Conv are answered by `lightcomp.serve._layers` with the layer's `QTensor` kernel, every other
call runs as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn

from lightcomp import quant
from lightcomp.serve._inputs import InputQuant, as_range, input_quant
from lightcomp.serve._layers import forward, served_kind

RANGES = "act_ranges"  # the collection of calibrated input ranges in a served tree


def float_rule(float_layers: Any) -> Callable[[str], bool]:
    """``float_layers`` (regular expressions, ``re.search``) -> ``path -> runs in float``."""
    if isinstance(float_layers, str):
        float_layers = (float_layers,)
    if not isinstance(float_layers, Sequence) or not all(isinstance(p, str) for p in float_layers):
        raise TypeError(f"float_layers must be regex strings, got {float_layers!r}")
    pats = [re.compile(p) for p in float_layers]
    return lambda path: any(p.search(path) for p in pats)


def split_served(qparams: Any) -> tuple[dict, dict]:
    """``(variables, ranges)``: a params tree, or variable collections with ``"params"``."""
    if isinstance(qparams, Mapping) and "params" in qparams:
        variables = {k: v for k, v in qparams.items() if k != RANGES}
        ranges = qparams.get(RANGES) or {}
    else:
        variables, ranges = {"params": qparams}, {}
    if not isinstance(ranges, Mapping):
        raise TypeError(f"qparams[{RANGES!r}] must be a dict layer path -> ranges")
    return variables, dict(ranges)


def layer_range(ranges: dict, path: str):
    """The calibrated input range of a layer, or None (dynamic)."""
    entry = ranges.get(path)
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or set(entry) != {"inputs"}:
        raise ValueError(
            f"layer {path!r}: ranges must be {{'inputs': range}} (output quantization is not "
            f"served), got keys {sorted(entry) if isinstance(entry, Mapping) else entry!r}"
        )
    return as_range(entry["inputs"], path)


def _own_params(mod: nn.Module) -> dict:
    params = mod.variables.get("params", {}) if mod.scope is not None else {}
    return {k: v for k, v in params.items() if not isinstance(v, Mapping)}


def linen(
    module: nn.Module,
    *,
    bits: int = 8,
    symmetric: bool = True,
    float_layers: Sequence[str] = (),
    operands: str = "int8",
) -> Callable[..., Any]:
    """``apply(qparams, inputs, *args, **kwargs)`` running ``module`` on integer matmuls.

    Every ``nn.Dense``, ``nn.DenseGeneral``, ``nn.Einsum`` and ``nn.Conv`` call quantizes
    its input per tensor (from the call's own range, or a calibrated one) and contracts the
    integer codes with its `lightcomp.quant.QTensor` kernel in int32, rescaled once in
    float32; the model's code is unchanged. Equal to the fake-quantized float forward up to
    float32 accumulation order.

    Args:
      module: a linen module (not bound).
      bits: input width, 2..8.
      symmetric: signed input codes (``scale = max|x| / qmax``); False: unsigned with a zero
        point (as `lightcomp.quant.activation_quant`'s default, for calibrated ranges from it).
      float_layers: regular expressions (``re.search``) of layer paths (``"Dense_2"``) that
        run in float with a float kernel.
      operands: ``"int8"`` (int32 accumulation) or ``"bfloat16"``: the same codes and exact
        sums on bfloat16 dot units, faster on some CPUs, for up to 1024 contracted terms
        (`lightcomp.quant.int_dot_general`).

    Returns:
      ``apply(qparams, inputs, *args, **kwargs)``: ``qparams`` is a params tree (from
      `from_packed`), or a dict of variable collections with ``"params"`` (and e.g.
      ``"batch_stats"``), optionally ``"act_ranges"``: ``{layer path: {"inputs": range}}``,
      per-tensor calibrated ranges (the state of `lightcomp.quant.activation_quant`).
      ``args`` and ``kwargs`` go to ``module.apply``. Pure; jit it.

    Raises:
      TypeError / ValueError: at the call of ``apply`` (while tracing, before compiling),
        naming the layer path: a float kernel where a QTensor is needed, a kernel whose
        shape, bits or scale axes do not fit its layer, a QTensor in an unsupported layer,
        a layer with a custom op, inputs that are not floating point, a range for no layer.
        Bad ``bits``, ``symmetric``, ``float_layers`` or ``operands`` here, at once.

    Example:
      >>> model = lc.models.MLP((8, 3))
      >>> x = jnp.linspace(-1, 1, 12).reshape(2, 6)
      >>> params = model.init(jax.random.key(0), x)["params"]
      >>> fq = jax.tree.map(lambda w: lc.quant.fake_quant(w, 8, axis=-1) if w.ndim == 2 else w,
      ...                   params)
      >>> qparams = lc.serve.from_packed(lc.export.pack(fq))
      >>> y = jax.jit(lc.serve.linen(model))(qparams, x)
      >>> y.shape, bool(jnp.allclose(y, model.apply({"params": fq}, x), atol=0.05))
      ((2, 3), True)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a flax.linen Module, got {type(module).__name__}")
    act = input_quant(bits, symmetric, operands)
    in_float = float_rule(float_layers)

    def apply(qparams, inputs, *args, **kwargs):
        variables, ranges = split_served(qparams)
        used: set[str] = set()

        def intercept(next_fun, a, kw, context):
            mod = context.module
            if context.method_name != "__call__" or not isinstance(mod, nn.Module):
                return next_fun(*a, **kw)
            path = "/".join(str(p) for p in mod.path)
            return _serve_call(mod, path, next_fun, a, kw, act, in_float, ranges, used)

        with nn.intercept_methods(intercept):
            out = module.apply(variables, inputs, *args, **kwargs)
        unused = sorted(set(ranges) - used)
        if unused:
            raise ValueError(f"act_ranges name layers that were not served: {unused}")
        return out

    return apply


def _serve_call(mod, path, next_fun, a, kw, act: InputQuant, in_float, ranges, used):
    own = _own_params(mod)
    has_q = any(isinstance(v, quant.QTensor) for v in own.values())
    kind = served_kind(mod, path, has_q, in_float(path))
    if kind is None:
        return next_fun(*a, **kw)
    rng = layer_range(ranges, path)
    used.add(path)
    return forward(
        kind, mod, path, a[0], own.get("kernel"), own.get("bias"), act, rng, *a[1:], **kw
    )
