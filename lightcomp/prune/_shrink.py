"""Physically smaller layers: `shrink` removes pruned output channels of a sequential net."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree as lt
from lightcomp.prune import _layer_tree as layers

PyTree = Any


@dataclasses.dataclass(frozen=True)
class _Cut:
    """What removing ``layer``'s pruned channels does to it and to ``nxt``."""

    layer: str
    nxt: str
    keep: np.ndarray  # int [kept], the kept output channels of ``layer``
    spatial: int  # 0: ``nxt``'s input axis -2 indexes the channels; P: flattened [P, C]
    bias_add: np.ndarray | None  # float32 [nxt outputs]: the pruned channels' constant output


def _check_order(order: Any) -> list[str]:
    if isinstance(order, str) or not isinstance(order, Sequence) or len(order) < 1:
        raise ValueError(f"order must be a sequence of layer paths, got {order!r}")
    for p in order:
        if not isinstance(p, str) or not p:
            raise TypeError(f"order: layer paths must be non-empty strings, got {p!r}")
    return list(order)


def _alive(layer: str, kernel: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """bool ``[C]``: output channels with a kept weight; the mask must be channel-structured."""
    mk = mask.reshape(-1, kernel.shape[-1])
    alive = mk.any(axis=0)
    if not np.array_equal(mk, np.broadcast_to(alive, mk.shape)):
        raise ValueError(
            f"masks at {layer + '/kernel'!r} are not channel-structured (some output channels "
            "are partly pruned); use masks(..., granularity='channel')"
        )
    if not alive.any():
        raise ValueError(f"every output channel of {layer!r} is pruned: nothing would be left")
    return alive


def _spatial(layer: str, nxt: str, kernel, nkernel) -> int:
    """0 when ``nxt``'s input axis -2 indexes ``layer``'s channels, P when it is a flattened
    ``[P, C]`` (Conv -> flatten -> Dense, row-major as ``x.reshape(batch, -1)``)."""
    c, rows = kernel.shape[-1], nkernel.shape[-2] if nkernel.ndim >= 2 else None
    if rows == c:
        return 0
    if rows is not None and nkernel.ndim == 2 and kernel.ndim >= 3 and rows % c == 0:
        return rows // c
    raise ValueError(
        f"layer {nxt!r} kernel input axis ({rows}) does not match the {c} output channels of "
        f"{layer!r} (directly, or flattened from [positions, {c}])"
    )


def _rows(nkernel: np.ndarray, spatial: int, idx: np.ndarray) -> np.ndarray:
    """The next kernel's input rows of channels ``idx``: ``[..., len(idx), out]``."""
    if spatial == 0:
        return np.take(nkernel, idx, axis=-2)
    c = nkernel.shape[0] // spatial
    return nkernel.reshape(spatial, c, -1)[:, idx, :]


def _plan(tree: dict, layer: str, nxt: str, mask, activation) -> _Cut:
    node, nnode = layers.layer(tree, layer, "params"), layers.layer(tree, nxt, "params")
    kernel, nkernel = node["kernel"], nnode["kernel"]
    alive = _alive(layer, kernel, np.asarray(mask))
    spatial = _spatial(layer, nxt, kernel, nkernel)
    keep, drop = np.flatnonzero(alive), np.flatnonzero(~alive)
    bias_add = None
    if activation is not None and drop.size:
        b = node["bias"][drop] if "bias" in node else np.zeros(drop.size, kernel.dtype)
        const = np.asarray(activation(jnp.asarray(b, jnp.float32)), np.float32)
        rows = _rows(nkernel, spatial, drop).astype(np.float32)
        rows = rows.reshape(-1, drop.size, rows.shape[-1]).sum(axis=0)  # every tap / position
        bias_add = const @ rows
        if "bias" not in nnode and np.any(bias_add != 0):
            raise ValueError(
                f"layer {nxt!r} has no bias to take the constant output activation(bias) of "
                f"{layer!r}'s pruned channels; shrink without activation= to drop it"
            )
    return _Cut(layer, nxt, keep, spatial, bias_add)


def _cut(tree: dict, cut: _Cut) -> None:
    node, nnode = layers.layer(tree, cut.layer, "params"), layers.layer(tree, cut.nxt, "params")
    if cut.bias_add is not None and "bias" in nnode:
        nbias = nnode["bias"]
        nnode["bias"] = (nbias.astype(np.float32) + cut.bias_add).astype(nbias.dtype)
    node["kernel"] = np.take(node["kernel"], cut.keep, axis=-1)
    if "bias" in node:
        node["bias"] = np.take(node["bias"], cut.keep, axis=-1)
    rows = _rows(nnode["kernel"], cut.spatial, cut.keep)
    nnode["kernel"] = rows if cut.spatial == 0 else rows.reshape(-1, rows.shape[-1])


def shrink(
    params: PyTree,
    masks: PyTree,
    order: Sequence[str],
    *,
    activation: Callable[[jax.Array], jax.Array] | None = None,
) -> PyTree:
    """Physically removes pruned output channels from a sequential MLP/CNN.

    For each layer in ``order`` but the last, the output channels whose kernel mask is
    all-False are deleted (kernel ``[..., c]`` and ``bias[c]``) together with the matching
    input rows of the next layer's kernel: its axis ``-2`` (Dense -> Dense, Conv -> Conv,
    Conv -> pooling -> Dense), or the rows ``p * C + c`` of a Dense fed with the flattened
    ``[..., positions, C]`` activations (Conv -> flatten -> Dense, Flax's MNIST CNN). Runs
    eagerly on the host (the new shapes depend on the mask values).

    A pruned channel still outputs the constant ``activation(bias)``. With ``activation``
    given, that constant's contribution is folded into the next layer's bias, so the
    result computes exactly the masked model's function when the next layer is Dense
    (after flattening or pooling too) or a ``VALID``-padded Conv; a ``SAME``-padded Conv
    sees zeros beyond the border where the constant was, so there the fold is exact when
    the constant is 0 (e.g. ReLU of a non-positive bias) and otherwise only away from the
    border. Without ``activation``, pruned channels' biases are dropped: the result
    equals the masked model with those biases zeroed too.

    Args:
      params: linen params (a nested dict) or an nnx ``Param`` state.
      masks: channel masks from ``masks(..., granularity=Channel())`` (None where a layer
        is not pruned). Weights masked inside kept channels are zeroed.
      order: layer paths in forward order, e.g. ``["Conv_0", "Conv_1", "Dense_0"]`` or
        nnx's ``["layers/0", "layers/1"]``; each holds ``kernel`` and optionally ``bias``,
        the output channels on the kernel's last axis.
      activation: the elementwise activation between layers, for bias folding.

    Returns:
      The smaller parameters, of the type of ``params`` (an ``nnx.State`` stays one), as
      JAX arrays in their dtypes. `smaller_module` builds the module that runs them.

    Raises:
      ValueError: a layer is missing, a kernel mask is not channel-structured, every
        channel of a layer is pruned, the next layer's input axis does not match, or the
        next layer has no bias to fold into; ``params`` and ``masks`` are never changed.

    Example:
      >>> model = lc.models.MLP((8, 2))
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
      >>> m = lc.prune.masks(lc.prune.magnitude(params), 0.5, granularity=lc.prune.Channel())
      >>> small = lc.prune.shrink(params, m, ["Dense_0", "Dense_1"], activation=jax.nn.relu)
      >>> small["Dense_0"]["kernel"].shape, small["Dense_1"]["kernel"].shape
      ((4, 4), (4, 2))
    """
    order = _check_order(order)
    if activation is not None and not callable(activation):
        raise TypeError(f"activation must be callable or None, got {type(activation).__name__}")
    lt.check_mirror(params, masks, "masks")
    out = layers.as_nested(params, "params")
    by_path = dict(lt.leaves_with_paths(masks, argname="masks"))
    for path, mk in by_path.items():
        *head, name = path.split("/")
        node = layers.layer(out, "/".join(head), "params") if head else out
        node[name] = np.where(np.asarray(mk), node[name], np.zeros((), node[name].dtype))
    for layer in order:
        if "kernel" not in layers.layer(out, layer, "params"):
            raise ValueError(f"layer {layer!r} in order has no 'kernel'")
    for layer, nxt in itertools.pairwise(order):  # on the copy: in order, as
        if layer + "/kernel" in by_path:  # a layer's bias takes the fold of the one before
            _cut(out, _plan(out, layer, nxt, by_path[layer + "/kernel"], activation))
    return layers.like(out, params)
