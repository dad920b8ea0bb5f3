"""The tree skeleton: a pytree's containers as JSON, and the tree rebuilt from it.

Plain dicts (keys sorted, as JAX flattens them), lists, tuples and ``None`` are
recorded as themselves and come back as themselves. Any other node (a NamedTuple, an
``nnx.State``, a ``FrozenDict``, a registered class) is recorded as
``{"node": type name, "keys": [[key, child], ...]}`` and comes back as a dict of its
children; `lightcomp.export.unpack` with ``like=`` restores the exact type.
"""

from __future__ import annotations

from typing import Any

import jax


def _child_key(path: tuple) -> str:
    """A container's key for a child, from its one-entry key path: ``"kernel"``, ``"0"``.

    One level of a path, not a leaf path (those are `lightcomp.tree.path_str`): an nnx
    ``Variable`` keeps its ``"value"`` child here, as in 0.1.0 files, so the rebuilt
    dict has one level per node of the tree.
    """
    return jax.tree_util.keystr(path, simple=True, separator="/")


def skeleton(node: Any, counter: list[int]) -> Any:
    """A JSON form of ``node``'s containers, in JAX's leaf order.

    Args:
      node: a pytree.
      counter: ``[leaves numbered so far]``; each leaf becomes ``{"leaf": i}`` and the
        count grows by one.

    Returns:
      The skeleton: ``None``, ``{"leaf": i}``, ``{"dict": [[k, child], ...]}``,
      ``{"list": [...]}``, ``{"tuple": [...]}`` or ``{"node": name, "keys": [[k, child], ...]}``.
    """
    if node is None:
        return None
    if type(node) is dict:
        return {"dict": [[k, skeleton(node[k], counter)] for k in sorted(node)]}
    if type(node) in (list, tuple):
        return {type(node).__name__: [skeleton(c, counter) for c in node]}
    children, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda c: c is not node)
    if (
        treedef.num_leaves == 1
        and jax.tree_util.treedef_is_leaf(treedef)
        and children[0][1] is node
    ):
        counter[0] += 1
        return {"leaf": counter[0] - 1}
    return {
        "node": type(node).__name__,
        "keys": [[_child_key(path), skeleton(c, counter)] for path, c in children],
    }


def rebuild(skel: Any, leaves: list) -> Any:
    """The pytree a `skeleton` describes, with ``leaves`` in its numbered places.

    Raises:
      ValueError: the skeleton is not one `skeleton` writes (a corrupted manifest).
    """
    if skel is None:
        return None
    if not isinstance(skel, dict) or len(skel) == 0:
        raise ValueError("corrupted tree structure in the manifest")
    if "leaf" in skel:
        return leaves[skel["leaf"]]
    if "dict" in skel:
        return {k: rebuild(c, leaves) for k, c in skel["dict"]}
    if "list" in skel:
        return [rebuild(c, leaves) for c in skel["list"]]
    if "tuple" in skel:
        return tuple(rebuild(c, leaves) for c in skel["tuple"])
    if "node" in skel:
        return {k: rebuild(c, leaves) for k, c in skel["keys"]}
    raise ValueError("corrupted tree structure in the manifest")
