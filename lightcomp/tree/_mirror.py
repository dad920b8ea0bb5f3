"""Mirror checks: a tree of masks, codes, scores or grads must have the parameters' structure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lightcomp.tree._paths import leaves_with_paths, path_str

PyTree = Any


def first_mismatch(reference: PyTree, other: PyTree) -> str | None:
    """The first path where ``other`` does not mirror ``reference``'s structure, or None.

    ``other`` may hold ``None`` where ``reference`` has a leaf (state trees), and where
    ``reference`` itself holds ``None``.
    """
    is_none = lambda x: x is None
    try:
        ref_flat, _ = jax.tree_util.tree_flatten_with_path(reference, is_leaf=is_none)
        oth_flat, _ = jax.tree_util.tree_flatten_with_path(other, is_leaf=is_none)
    except Exception as e:
        return f"<not a pytree: {e}>"
    ref = {path_str(k): v is None for k, v in ref_flat}
    oth = [(path_str(k), v) for k, v in oth_flat]
    for p, v in oth:
        if p not in ref or (ref[p] and v is not None):
            return p
    seen = {p for p, _ in oth}
    for p in (path_str(k) for k, _ in ref_flat):
        if p not in seen:
            return p
    return None


def check_mirror(
    reference: PyTree,
    other: PyTree,
    what: str,
    shape_fn: Callable[[Any], tuple[int, ...]] | None = None,
    *,
    shapes: bool = True,
) -> list[Any]:
    """Checks that ``other`` mirrors ``reference`` (None allowed at leaves) with matching shapes.

    Args:
      reference: the parameter tree.
      other: a tree with ``reference``'s structure (masks, codes, scores, grads), None at
        leaves it does not cover.
      what: how the message names ``other`` (e.g. ``"masks"``).
      shape_fn: ``leaf -> shape`` an entry must have (default: the leaf's own shape).
      shapes: also check the shapes (False: the structure only).

    Returns:
      ``other``'s entries aligned with ``reference``'s leaves (None where uncovered).

    Raises:
      ValueError: naming ``what`` and the first path where the structure or a shape differs.
    """
    bad = first_mismatch(reference, other)
    if bad is not None:
        raise ValueError(f"{what} does not mirror params: mismatch at leaf {bad!r}")
    items = leaves_with_paths(reference)
    flat = jax.tree.structure(reference).flatten_up_to(other)
    if not shapes:
        return flat
    for (path, leaf), entry in zip(items, flat, strict=True):
        if entry is not None:
            check_shape(path, leaf, entry, what, shape_fn)
    return flat


def check_shape(
    path: str,
    leaf: Any,
    entry: Any,
    what: str,
    shape_fn: Callable[[Any], tuple[int, ...]] | None = None,
) -> None:
    """Raises ValueError unless ``entry`` (of ``what`` at ``path``) has the shape it must have.

    Args:
      path: the leaf path, for the message.
      leaf: the parameter leaf.
      entry: the mirroring tree's entry at ``path``.
      what: how the message names the mirroring tree.
      shape_fn: ``leaf -> shape`` the entry must have (default: the leaf's shape).
    """
    want = tuple(shape_fn(leaf) if shape_fn else leaf.shape)
    got = tuple(jnp.shape(entry))
    if got != want:
        expected = f"expected {want}" if shape_fn else f"params has {want}"
        raise ValueError(f"{what} leaf {path!r} has shape {got}, {expected}")
