"""`nnx`: integer serving of an nnx model, on a copy: the user's model is never modified.

At each call the model's graph is merged with the served parameters into a new model, whose
Linear, LinearGeneral, Einsum and Conv layers are swapped for `Served` layers that run
`lightcomp.serve._layers`. A layer wrapped by `lightcomp.quant.FakeQuantInputs` is served
with that wrapper's calibrated range, bits and symmetry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx as fnnx

from lightcomp import quant, tree
from lightcomp.serve._inputs import InputQuant, input_quant
from lightcomp.serve._layers import check_layer, forward, served_kind
from lightcomp.serve._linen import float_rule
from lightcomp.serve._params import leaf_key


class Served(fnnx.Module):
    """A layer of the served copy: the original layer's attributes, an integer forward.

    Args:
      layer: the copied Flax layer (its kernel a `lightcomp.quant.QTensor`).
      path: its path, for messages.
      act: how its input is quantized.
      ranges: the `lightcomp.quant.FakeQuantInputs` holding its calibrated range, or None.
    """

    def __init__(self, layer, path: str, act: InputQuant, ranges=None):
        self.layer, self.path, self.act, self.ranges = layer, path, act, ranges
        self.kind = check_layer(layer, path)

    def __call__(self, x, *args, **kwargs):
        rng = None
        if self.ranges is not None:
            r = self.ranges
            rng = (r.in_min[...], r.in_max[...], r.in_count[...])
        layer = self.layer
        kernel = layer.kernel.get_value()
        bias = None if layer.bias is None else layer.bias.get_value()
        return forward(self.kind, layer, self.path, x, kernel, bias, self.act, rng, *args, **kwargs)


def _variable_values(state: Any, qparams: Any) -> Any:
    """``state`` with every leaf that ``qparams`` has (same path) replaced by it."""
    is_q = lambda x: isinstance(x, quant.QTensor)
    flat = jax.tree_util.tree_flatten_with_path(qparams, is_leaf=is_q)[0]
    given = {leaf_key(tree.path_str(kp)): v for kp, v in flat}
    known = set()

    def take(kp, v):
        key = tree.path_str(kp)
        known.add(key)
        return given.get(key, v)

    out = jax.tree_util.tree_map_with_path(take, state)
    extra = sorted(set(given) - known)
    if extra:
        raise ValueError(f"qparams has leaves the model does not: {extra[:5]}")
    return out


def _swaps(model, act: InputQuant, in_float) -> list[tuple[Any, Any, Any]]:
    """``[(parent, key, Served)]`` for the model's served layers (nothing changed yet)."""
    nodes = dict(fnnx.iter_graph(model))
    out = []
    for p, node in nodes.items():
        if not isinstance(node, fnnx.Module) or not p:
            continue
        path = "/".join(str(k) for k in p)
        parent = nodes[p[:-1]]
        if isinstance(parent, quant.FakeQuantInputs):
            continue  # served with its wrapper
        inner, ranges, lact = node, None, act
        if isinstance(node, quant.FakeQuantInputs):
            if node.outputs:
                raise ValueError(f"layer {path!r}: output quantization is not served")
            if node.axis is not None:
                raise ValueError(f"layer {path!r}: per-token input ranges are not served")
            inner, ranges = node.layer, (node if node.ranges != "dynamic" else None)
            lact = input_quant(node.bits, node.symmetric, act.operands)
        has_q = any(
            isinstance(v, fnnx.Variable) and isinstance(v.get_value(), quant.QTensor)
            for v in vars(inner).values()
        )
        if served_kind(inner, path, has_q, in_float(path)) is None:
            continue
        out.append((parent, p[-1], Served(inner, path, lact, ranges)))
    return out


def nnx(
    model: fnnx.Module,
    *,
    bits: int = 8,
    symmetric: bool = True,
    float_layers: Sequence[str] = (),
    operands: str = "int8",
) -> Callable[..., Any]:
    """``apply(qparams, inputs, *args, **kwargs)`` running an nnx model on integer matmuls.

    As `lightcomp.serve.linen`, for ``nnx.Linear``, ``nnx.LinearGeneral``, ``nnx.Einsum``
    and ``nnx.Conv``; layers wrapped by `lightcomp.quant.wrap_nnx` use their calibrated
    input ranges. ``model`` is never modified: each call merges its graph with ``qparams``
    into a copy (the non-parameter state, e.g. BatchNorm statistics, comes from ``model``
    as it is now, unless ``qparams`` carries it).

    Args:
      model: an nnx module (set its mode first, e.g. ``model.eval()``).
      bits, symmetric, float_layers, operands: as `lightcomp.serve.linen` (paths as
        ``"layers/0"``).

    Returns:
      ``apply(qparams, inputs, *args, **kwargs) = copy(inputs, *args, **kwargs)``;
      ``qparams``: an ``nnx.State`` of the model (`from_packed` with
      ``like=nnx.state(model, nnx.Param)``) or the nested dict `from_packed` gives without
      ``like``. Pure; jit it.

    Raises:
      TypeError / ValueError: as `lightcomp.serve.linen`, naming the layer path, at the call
        of ``apply``; a ``qparams`` leaf the model does not have.

    Example:
      >>> from flax import nnx
      >>> model = lc.models.NnxMLP((6, 8, 3), rngs=nnx.Rngs(0))
      >>> params = nnx.state(model, nnx.Param)
      >>> fq = jax.tree.map(lambda w: lc.quant.fake_quant(w, 8, axis=-1) if w.ndim == 2 else w,
      ...                   params)
      >>> qparams = lc.serve.from_packed(lc.export.pack(fq), like=params)
      >>> x = jnp.linspace(-1, 1, 12).reshape(2, 6)
      >>> jax.jit(lc.serve.nnx(model))(qparams, x).shape
      (2, 3)
    """
    if not isinstance(model, fnnx.Module):
        raise TypeError(f"model must be a flax.nnx Module, got {type(model).__name__}")
    act = input_quant(bits, symmetric, operands)
    in_float = float_rule(float_layers)
    graphdef, state = fnnx.split(model)

    def apply(qparams, inputs, *args, **kwargs):
        copy = fnnx.merge(graphdef, _variable_values(state, qparams))
        for parent, key, served in _swaps(copy, act, in_float):
            if isinstance(key, int):
                parent[key] = served
            else:
                setattr(parent, key, served)
        return copy(inputs, *args, **kwargs)

    return apply
