"""Leaf paths and the selection of which leaves are compressed.

A path is a string such as ``"Dense_0/kernel"`` built from a leaf's
``jax.tree_util`` key path. Selection decides which leaves the compression
transforms touch: by default, floating-point arrays with ``ndim >= 2``
(kernels and embeddings); biases, scales and norms are left alone.

Trees that mirror a parameter tree (masks, centroids, ranges) hold ``None`` at
unselected leaves. ``None`` is an empty pytree node in JAX, so such trees jit,
shard and checkpoint like the parameters, and ``jax.tree.map(f, params, masks)``
hands ``f`` a ``None`` wherever a leaf was not selected.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Select",
    "as_select",
    "check_mirror",
    "check_shape",
    "default_rule",
    "first_mismatch",
    "is_floating",
    "leaves_with_paths",
    "map_selected",
    "path_str",
    "paths",
    "select",
    "selected_paths",
    "selection",
]

PyTree = Any
Predicate = Callable[[str, Any], bool]


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

    The trailing ``.value`` attribute of a Flax nnx ``Variable`` is dropped, so
    an ``nnx.State`` from ``nnx.split`` gives the same paths as the module's
    attribute names (``"layers/0/kernel"``).
    """
    names = [_key_name(k) for k in key_path]
    if (
        len(key_path) >= 1
        and isinstance(key_path[-1], jax.tree_util.GetAttrKey)
        and key_path[-1].name == "value"
    ):
        names = names[:-1]
    return "/".join(names)


def _is_array_like(leaf: Any) -> bool:
    return hasattr(leaf, "shape") and hasattr(leaf, "dtype")


def _check_leaf(path: str, leaf: Any, argname: str) -> None:
    if _is_array_like(leaf) or isinstance(leaf, (bool, int, float, complex, np.generic)):
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
    return _is_array_like(leaf) and bool(jnp.issubdtype(leaf.dtype, jnp.floating))


def default_rule(path: str, leaf: Any) -> bool:
    """The default selection: floating arrays with ``ndim >= 2`` (kernels, embeddings)."""
    del path
    return is_floating(leaf) and len(leaf.shape) >= 2


@dataclasses.dataclass(frozen=True)
class Select:
    """A static rule saying which leaves are compressed.

    A leaf is selected when ``predicate(path, leaf)`` holds (default
    `default_rule`), its path matches one of ``include`` (if given; ``re.search``)
    and none of ``exclude``. Patterns are compiled when the rule is built, so a
    bad regex fails at once. The rule is hashable and can be a static argument.

    Attributes:
      include: regular expressions; a leaf must match at least one.
      exclude: regular expressions; a leaf matching any is not selected.
      predicate: ``(path, leaf) -> bool``; replaces `default_rule`.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    predicate: Predicate | None = None

    def __post_init__(self):
        for name in ("include", "exclude"):
            pats = getattr(self, name)
            if isinstance(pats, str):
                pats = (pats,)
                object.__setattr__(self, name, pats)
            if not isinstance(pats, tuple) or not all(isinstance(p, str) for p in pats):
                raise TypeError(
                    f"{name} must be a regex string or a sequence of them, got {pats!r}"
                )
            for p in pats:
                try:
                    re.compile(p)
                except re.error as e:
                    raise ValueError(f"{name} pattern {p!r} does not compile: {e}") from e
        if self.predicate is not None and not callable(self.predicate):
            raise TypeError(
                f"predicate must be callable (path, leaf) -> bool, got {self.predicate!r}"
            )

    def __call__(self, path: str, leaf: Any) -> bool:
        rule = self.predicate or default_rule
        try:
            chosen = bool(rule(path, leaf))
        except Exception as e:
            raise ValueError(f"predicate raised on leaf {path!r}: {type(e).__name__}: {e}") from e
        if not chosen:
            return False
        if self.include and not any(re.search(p, path) for p in self.include):
            return False
        return not any(re.search(p, path) for p in self.exclude)


def select(
    include: str | Sequence[str] = (),
    exclude: str | Sequence[str] = (),
    predicate: Predicate | None = None,
) -> Select:
    """Builds a `Select` rule; see its docstring.

    Example:
      >>> rule = lc.tree.select(include=r"Dense_\\d/kernel", exclude=r"Dense_2")
      >>> rule("Dense_0/kernel", jnp.ones((2, 2))), rule("Dense_2/kernel", jnp.ones((2, 2)))
      (True, False)
    """
    inc = (include,) if isinstance(include, str) else tuple(include)
    exc = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    return Select(inc, exc, predicate)


SelectLike = Select | str | Predicate | None


def as_select(rule: SelectLike, *, argname: str = "select") -> Select:
    """Normalises ``None`` (default), a regex string (include), a predicate or a `Select`."""
    if rule is None:
        return Select()
    if isinstance(rule, Select):
        return rule
    if isinstance(rule, str):
        return Select(include=(rule,))
    if callable(rule):
        return Select(predicate=rule)
    raise TypeError(
        f"{argname} must be None, a regex string, a predicate (path, leaf) -> bool "
        f"or lightcomp.tree.Select, got {type(rule).__name__}"
    )


def selection(
    params: PyTree,
    select: SelectLike = None,
    *,
    require_any: bool = False,
    argname: str = "params",
) -> PyTree:
    """Returns a tree of Python bools shaped like ``params``: True where selected.

    Works on concrete and traced arrays (only shapes and dtypes are read), on a
    linen ``params`` dict, an ``nnx.State``, nested containers and registered
    dataclasses.

    Raises:
      TypeError: a leaf is not an array, or the rule selected a non-float leaf.
      ValueError: an ``include`` pattern matches no leaf path (a typo must not
        silently compress nothing), the predicate raised, or ``require_any`` is
        set and nothing was selected (the message lists the paths seen).
    """
    rule = as_select(select)
    items = leaves_with_paths(params, argname=argname)
    all_paths = [p for p, _ in items]
    for pat in rule.include:
        if not any(re.search(pat, p) for p in all_paths):
            raise ValueError(
                f"select include pattern {pat!r} matches no leaf of {argname}; "
                f"paths are: {all_paths}"
            )
    flags = []
    for path, leaf in items:
        chosen = rule(path, leaf)
        if chosen and not is_floating(leaf):
            dtype = getattr(leaf, "dtype", type(leaf).__name__)
            raise TypeError(
                f"select chose leaf {path!r} of {argname}, which is not floating ({dtype})"
            )
        flags.append(chosen)
    if require_any and not any(flags):
        raise ValueError(f"select chose no leaf of {argname}; paths are: {all_paths}")
    treedef = jax.tree.structure(params)
    return jax.tree.unflatten(treedef, flags)


def selected_paths(params: PyTree, select: SelectLike = None) -> list[str]:
    """Paths of the selected leaves, in flattening order."""
    rule = as_select(select)
    flags = jax.tree.leaves(selection(params, rule))
    return [p for (p, _), f in zip(leaves_with_paths(params), flags, strict=True) if f]


def map_selected(
    fn: Callable[..., Any],
    tree: PyTree,
    *rest: PyTree,
    select: SelectLike = None,
    unselected: str = "keep",
    with_path: bool = False,
) -> PyTree:
    """Maps ``fn`` over the selected leaves of ``tree`` (and matching leaves of ``rest``).

    Args:
      fn: ``fn(leaf, *rest_leaves)`` (or ``fn(path, leaf, *rest_leaves)`` with
        ``with_path``) for each selected leaf.
      tree: the parameter tree; selection is decided on it.
      *rest: trees with ``tree``'s structure (or with ``None`` at unselected leaves).
      select: the rule; default `default_rule`.
      unselected: ``"keep"`` returns unselected leaves of ``tree`` untouched;
        ``"none"`` puts ``None`` there (for state trees that mirror params).
      with_path: pass the leaf's path as the first argument.

    Returns:
      A tree with ``tree``'s structure.
    """
    if unselected not in ("keep", "none"):
        raise ValueError(f"unselected must be 'keep' or 'none', got {unselected!r}")
    flags = selection(tree, select)
    path_tree = jax.tree.unflatten(jax.tree.structure(tree), paths(tree))

    def one(flag, path, leaf, *others):
        if not flag:
            return leaf if unselected == "keep" else None
        return fn(path, leaf, *others) if with_path else fn(leaf, *others)

    return jax.tree.map(one, flags, path_tree, tree, *rest)


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
