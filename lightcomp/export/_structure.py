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

from lightcomp.export._format import MAX_DEPTH


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


def _children(skel: Any, what: str) -> list:
    """The children of one skeleton node (``[]`` for ``None`` and leaves), its form checked."""
    if skel is None:
        return []
    forms = ({"leaf"}, {"dict"}, {"list"}, {"tuple"}, {"node", "keys"})
    if not isinstance(skel, dict) or set(skel) not in forms:
        raise ValueError(f"{what} is not a skeleton node: {str(skel)[:80]}")
    if "leaf" in skel:
        return []
    if "list" in skel or "tuple" in skel:
        items = skel.get("list", skel.get("tuple"))
        if not isinstance(items, list):
            raise ValueError(f"{what} must hold a list")
        return items
    if "node" in skel and not isinstance(skel["node"], str):
        raise ValueError(f"{what}: a node's type name must be a string")
    pairs = skel.get("dict", skel.get("keys"))
    if not isinstance(pairs, list) or not all(
        isinstance(p, list) and len(p) == 2 and type(p[0]) in (str, int) for p in pairs
    ):  # int keys: an nnx State's list of layers holds {0: ..., 1: ...}
        raise ValueError(f"{what} must hold [key, child] pairs with string or integer keys")
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError(f"{what} repeats a key")
    if len({type(k) for k, _ in pairs}) > 1:  # JAX sorts a dict's keys: one type per node
        raise ValueError(f"{what} mixes string and integer keys")
    return [c for _, c in pairs]


def check_structure(skel: Any, nleaves: int) -> None:
    """Checks a skeleton read from a file before `rebuild` trusts it.

    Every node has one of the forms `skeleton` writes, the nesting is at most
    `MAX_DEPTH` deep, keys are strings and unique within their container, and the leaf
    indices are ``0 .. nleaves - 1``, each used exactly once. Iterative: a deep crafted
    skeleton cannot exhaust the interpreter's stack.

    Raises:
      ValueError: what is wrong (a corrupted manifest).
    """
    seen = bytearray(nleaves)
    stack = [(skel, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"the tree structure nests deeper than {MAX_DEPTH} levels")
        stack.extend((c, depth + 1) for c in _children(node, "a tree structure node"))
        if isinstance(node, dict) and "leaf" in node:
            i = node["leaf"]
            if type(i) is not int or not 0 <= i < nleaves:
                raise ValueError(f"the tree structure names leaf {i!r} of {nleaves}")
            if seen[i]:
                raise ValueError(f"the tree structure uses leaf {i} twice")
            seen[i] = 1
    if nleaves and not all(seen):
        raise ValueError(f"the tree structure does not use leaf {seen.index(0)}")


def rebuild(skel: Any, leaves: list) -> Any:
    """The pytree a `skeleton` describes, with ``leaves`` in its numbered places.

    Raises:
      ValueError: the skeleton is not one `skeleton` writes (a corrupted manifest); a
        skeleton read from a file is checked first, by `check_structure`.
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
