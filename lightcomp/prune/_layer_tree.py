"""Layers of a parameter tree by path: a nested-dict view of linen params or an ``nnx.State``.

`shrink` and `fold_batchnorm` change the shapes of a few layers' leaves on the host; they
read and write layers by their path (``"Conv_0"``, ``"layers/0"``) in a nested dict of
NumPy arrays, and hand the result back as the type they were given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def as_nested(tree: Any, argname: str) -> dict:
    """A nested-dict copy with NumPy leaves of a Mapping tree or an ``nnx.State``.

    Raises:
      TypeError: ``tree`` is neither.
    """
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    if not isinstance(tree, Mapping):
        raise TypeError(
            f"{argname} must be a nested dict (linen params) or an nnx.State, "
            f"got {type(tree).__name__}"
        )
    return _copy(tree)


def _copy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _copy(v) for k, v in tree.items()}
    return np.asarray(tree)


def like(nested: dict, template: Any) -> Any:
    """``nested`` as JAX arrays, in the type of ``template`` (an ``nnx.State`` stays one)."""
    out = jax.tree.map(jnp.asarray, nested)
    if isinstance(template, nnx.State):
        state = jax.tree.map(lambda x: x, template)  # new Variables: the template is untouched
        nnx.replace_by_pure_dict(state, out)
        return state
    return out


def _key(node: Mapping, name: str) -> Any:
    """``name``, or its int when the node's keys are ints (``nnx.List`` layers: ``0, 1``)."""
    if name in node:
        return name
    if name.lstrip("-").isdigit() and int(name) in node:
        return int(name)
    return None


def layer(tree: Mapping, path: str, argname: str) -> dict:
    """The sub-dict of ``tree`` at ``path`` (``"/"``-separated).

    Raises:
      ValueError: no such layer in ``argname``.
    """
    if not isinstance(path, str) or not path:
        raise TypeError(f"layer paths must be non-empty strings, got {path!r}")
    node: Any = tree
    for name in path.split("/"):
        key = _key(node, name) if isinstance(node, Mapping) else None
        if key is None:
            raise ValueError(f"{argname} has no layer {path!r}")
        node = node[key]
    if not isinstance(node, Mapping):
        raise ValueError(f"{argname}: {path!r} is a leaf, not a layer")
    return node


def has_layer(tree: Mapping, path: str) -> bool:
    """Whether ``tree`` holds a layer at ``path``."""
    try:
        layer(tree, path, "tree")
    except ValueError:
        return False
    return True


def remove(tree: dict, path: str) -> None:
    """Deletes the layer at ``path`` (and parents left empty)."""
    *head, last = path.split("/")
    nodes = [tree]
    for name in head:
        nodes.append(nodes[-1][_key(nodes[-1], name)])
    del nodes[-1][_key(nodes[-1], last)]
    for parent, node, name in zip(nodes[-2::-1], nodes[:0:-1], head[::-1], strict=True):
        if not node:
            del parent[_key(parent, name)]
