"""Physically smaller layers: `shrink` removes pruned output channels of a sequential net."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree as lt

PyTree = Any


def _get(tree: Mapping, path: str, argname: str):
    node = tree
    for name in path.split("/"):
        if not isinstance(node, Mapping) or name not in node:
            raise ValueError(f"{argname} has no layer {path!r}")
        node = node[name]
    return node


def _set(tree: dict, path: str, value) -> None:
    *head, last = path.split("/")
    node = tree
    for name in head:
        node = node[name]
    node[last] = value


def _copy(tree: Any) -> Any:
    """A nested-dict copy of a Mapping tree with NumPy leaves."""
    if isinstance(tree, Mapping):
        return {k: _copy(v) for k, v in tree.items()}
    return np.asarray(tree)


def shrink(
    params: Mapping,
    masks: PyTree,
    order: Sequence[str],
    *,
    activation: Callable[[jax.Array], jax.Array] | None = None,
) -> dict:
    """Physically removes pruned output channels from a sequential MLP/CNN.

    For each layer in ``order`` but the last, the output channels whose kernel
    mask is all-False are deleted (kernel columns ``[..., c]`` and ``bias[c]``)
    together with the matching input rows (axis ``-2``) of the next layer's
    kernel. The next layer's input axis must index this layer's output
    channels: Dense -> Dense, Conv -> Conv, Conv -> global pooling -> Dense.
    Runs eagerly (the new shapes depend on the mask values).

    A pruned channel still outputs the constant ``activation(bias)``. With
    ``activation`` given, that constant's contribution is folded into the next
    layer's bias, so the result computes exactly the masked model's function
    when the next layer is Dense (or sees the channel through global pooling).
    Without it, pruned channels' biases are dropped: the result equals the
    masked model with those biases zeroed too.

    Args:
      params: nested dict (linen params; ``nnx.State.to_pure_dict()``).
      masks: channel masks from ``masks(..., granularity=Channel())`` (None where
        a layer is not pruned). Weights masked inside kept channels are zeroed.
      order: layer paths in forward order, e.g. ``["Dense_0", "Dense_1", "Dense_2"]``;
        each holds ``kernel`` and optionally ``bias``.
      activation: the elementwise activation between layers, for bias folding.

    Returns:
      A new, smaller nested dict of dense params.

    Raises:
      ValueError: a layer is missing, a kernel mask is not channel-structured, or
        the next layer's input axis does not match.

    Example:
      >>> model = lc.models.MLP((8, 2))
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
      >>> m = lc.prune.masks(lc.prune.magnitude(params), 0.5, granularity=lc.prune.Channel())
      >>> small = lc.prune.shrink(params, m, ["Dense_0", "Dense_1"], activation=jax.nn.relu)
      >>> small["Dense_0"]["kernel"].shape, small["Dense_1"]["kernel"].shape
      ((4, 4), (4, 2))
    """
    if isinstance(order, str) or len(order) < 1:
        raise ValueError(f"order must be a sequence of layer paths, got {order!r}")
    lt.check_mirror(params, masks, "masks")
    # Host-side NumPy: the output shapes depend on mask values, so this cannot jit.
    out = _copy(params)
    for path, mk in lt.leaves_with_paths(masks, argname="masks"):
        w = _get(out, path, "params")
        _set(out, path, np.where(np.asarray(mk), w, np.zeros((), w.dtype)))
    for layer in order:
        if "kernel" not in _get(out, layer, "params"):
            raise ValueError(f"layer {layer!r} in order has no 'kernel'")
    for i, layer in enumerate(order[:-1]):
        nxt = order[i + 1]
        node, nnode = _get(out, layer, "params"), _get(out, nxt, "params")
        kernel, nkernel = node["kernel"], nnode["kernel"]
        mk = _get(masks, layer + "/kernel", "masks") if _has(masks, layer) else None
        if mk is None:
            continue
        mk = np.asarray(mk).reshape(-1, kernel.shape[-1])
        alive = mk.any(axis=0)
        if not np.array_equal(mk, np.broadcast_to(alive, mk.shape)):
            raise ValueError(
                f"masks at {layer + '/kernel'!r} are not channel-structured (some output channels "
                "are partly pruned); use masks(..., granularity='channel')"
            )
        if nkernel.shape[-2] != kernel.shape[-1]:
            raise ValueError(
                f"layer {nxt!r} kernel input axis ({nkernel.shape[-2]}) does not match the "
                f"{kernel.shape[-1]} output channels of {layer!r}"
            )
        keep = np.flatnonzero(alive)
        drop = np.flatnonzero(~alive)
        if activation is not None and "bias" in node and drop.size and "bias" in nnode:
            const = np.asarray(activation(jnp.asarray(node["bias"][drop], jnp.float32)), np.float32)
            rows = nkernel[..., drop, :].astype(np.float32)
            contrib = np.einsum("c,...co->o", const, rows)
            nbias = nnode["bias"]
            nnode["bias"] = (nbias.astype(np.float32) + contrib).astype(nbias.dtype)
        node["kernel"] = np.take(kernel, keep, axis=-1)
        if "bias" in node:
            node["bias"] = np.take(node["bias"], keep, axis=-1)
        nnode["kernel"] = np.take(nkernel, keep, axis=-2)
    return jax.tree.map(jnp.asarray, out)


def _has(masks: PyTree, layer: str) -> bool:
    try:
        _get(masks, layer + "/kernel", "masks")
    except ValueError:
        return False
    return True
