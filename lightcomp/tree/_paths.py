"""Leaf paths: ``"Dense_0/kernel"`` from a ``jax.tree_util`` key path, and the leaves with them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _key_name(key: Any) -> str:
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return str(key.name)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_str(key_path: Sequence[Any]) -> str:
    """Turns a ``jax.tree_util`` key path into ``"Dense_0/kernel"``.

    The trailing ``.value`` attribute of a Flax nnx ``Variable`` (or of a linen
    ``nn.Partitioned`` box) is dropped, so an ``nnx.State`` from ``nnx.split`` gives the
    same paths as the module's attribute names (``"layers/0/kernel"``).
    """
    names = [_key_name(k) for k in key_path]
    if (
        len(key_path) >= 1
        and isinstance(key_path[-1], jax.tree_util.GetAttrKey)
        and key_path[-1].name == "value"
    ):
        names = names[:-1]
    return "/".join(names)


def is_array_like(leaf: Any) -> bool:
    """Has a ``shape`` and a ``dtype`` (an array, a tracer, a ``ShapeDtypeStruct``)."""
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


def _check_leaf(path: str, leaf: Any, argname: str) -> None:
    if is_array_like(leaf) or isinstance(leaf, (bool, int, float, complex, np.generic)):
        return
    raise TypeError(
        f"{argname} must be a pytree of arrays; leaf {path!r} is a {type(leaf).__name__}"
    )


def leaves_with_paths(tree: PyTree, *, argname: str = "params") -> list[tuple[str, Any]]:
    """Returns ``[(path, leaf), ...]`` in flattening order, checking every leaf is an array.

    Raises:
      TypeError: a leaf is not an array or a number (names ``argname`` and the path).
    """
    try:
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    except Exception as e:  # an unflattenable object is a user error, not an XLA trace
        raise TypeError(f"{argname} is not a pytree: {e}") from e
    out = []
    for key_path, leaf in flat:
        path = path_str(key_path)
        _check_leaf(path, leaf, argname)
        out.append((path, leaf))
    return out


def paths(tree: PyTree) -> list[str]:
    """All leaf paths of ``tree`` in flattening order."""
    return [p for p, _ in leaves_with_paths(tree, argname="tree")]


def is_floating(leaf: Any) -> bool:
    """True for a floating-point array (float16, bfloat16, float32, float64, float8)."""
    # jnp.issubdtype, not np.issubdtype: it knows bfloat16 and the float8 types of ml_dtypes.
    return is_array_like(leaf) and bool(jnp.issubdtype(leaf.dtype, jnp.floating))
