"""Selection: which leaves of a tree the compression functions touch.

Two default rules, chosen per tree: a tree with a Flax-named leaf (a last path part
``kernel`` or ``embedding``) selects its kernels and embeddings by that name
(`default_rule`); any other pytree of arrays selects its floating leaves with
``ndim >= 2`` (`array_rule`). See `lightcomp.tree` for examples.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from lightcomp.tree._paths import is_floating, leaves_with_paths, paths

PyTree = Any
Predicate = Callable[[str, Any], bool]

# The last path part of the leaves Flax's layers train as weights: Dense, DenseGeneral,
# Conv, ConvTranspose, Einsum and attention kernels (linen and nnx), Embed tables.
ROLE_NAMES = ("kernel", "embedding")
# A module holding position embeddings (``pos_embedding``, ``posembed_input``, ...).
_POSITION = re.compile(r"(^|_)pos", re.IGNORECASE)


def role_named(path: str) -> bool:
    """True when the last part of ``path`` is a Flax weight name (``kernel``, ``embedding``)."""
    return path.rsplit("/", 1)[-1] in ROLE_NAMES


def default_rule(path: str, leaf: Any) -> bool:
    """Selection by role: a floating Flax kernel or embedding, by its name.

    True when the last part of ``path`` is ``kernel`` or ``embedding`` (except an
    embedding under a module whose name starts a word with ``pos``: position
    embeddings), whatever the leaf's rank. Biases, norm scales, attention biases, class
    tokens and position embeddings are left alone. This is the rule of a tree with at
    least one such name; other trees use `array_rule`.

    Example:
      >>> k = jnp.zeros((2, 3))
      >>> lc.tree.default_rule("Dense_0/kernel", k), lc.tree.default_rule("Dense_0/bias", k)
      (True, False)
      >>> lc.tree.default_rule("pos_embed/embedding", k)
      False
    """
    if not is_floating(leaf) or not role_named(path):
        return False
    parts = path.split("/")
    return not (parts[-1] == "embedding" and len(parts) > 1 and _POSITION.search(parts[-2]))


def array_rule(path: str, leaf: Any) -> bool:
    """Selection by rank: floating arrays with ``ndim >= 2``, for trees without Flax names.

    Example:
      >>> lc.tree.array_rule("w", jnp.zeros((2, 3))), lc.tree.array_rule("b", jnp.zeros(3))
      (True, False)
    """
    del path
    return is_floating(leaf) and len(leaf.shape) >= 2


@dataclasses.dataclass(frozen=True)
class Select:
    """A static rule saying which leaves are compressed.

    A leaf is selected when ``predicate(path, leaf)`` holds (by default `default_rule` in
    a tree with a Flax-named leaf, `array_rule` in any other), its path matches one of
    ``include`` (if given; ``re.search``) and none of ``exclude``. Patterns are compiled when the rule is built, so a
    bad regex fails at once. The rule is hashable and can be a static argument.

    Attributes:
      include: regular expressions; a leaf must match at least one.
      exclude: regular expressions; a leaf matching any is not selected.
      predicate: ``(path, leaf) -> bool``; replaces the default rules.
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

    def __call__(self, path: str, leaf: Any, *, by_role: bool = True) -> bool:
        """Whether the leaf at ``path`` is selected; ``by_role=False``: the tree has no
        Flax-named leaf, so the default is `array_rule`."""
        rule = self.predicate or (default_rule if by_role else array_rule)
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

    Args:
      include: a regex string or a list/tuple of them (not a dict: a parameter tree is
        not a pattern).
      exclude: the same.
      predicate: ``(path, leaf) -> bool`` or None.

    Returns:
      A `Select`.

    Raises:
      TypeError: ``include`` or ``exclude`` neither a string nor a list/tuple of strings,
        a ``predicate`` that is not callable.
      ValueError: a pattern that does not compile.

    Example:
      >>> rule = lc.tree.select(include=r"Dense_\\d/kernel", exclude=r"Dense_2")
      >>> rule("Dense_0/kernel", jnp.ones((2, 2))), rule("Dense_2/kernel", jnp.ones((2, 2)))
      (True, False)
    """
    return Select(_patterns(include, "include"), _patterns(exclude, "exclude"), predicate)


def _patterns(value: Any, argname: str) -> tuple[str, ...]:
    """A regex string or a list/tuple of them, as a tuple; a dict or a number is refused."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Mapping) or not isinstance(value, (list, tuple)):
        hint = (
            " (a dict is not a pattern: pass its paths as strings)"
            if isinstance(value, Mapping)
            else ""
        )
        raise TypeError(
            f"{argname} must be a regex string or a list/tuple of them, got "
            f"{type(value).__name__}{hint}"
        )
    bad = [p for p in value if not isinstance(p, str)]
    if bad:
        raise TypeError(f"{argname} must hold regex strings only, got {bad[0]!r}")
    return tuple(value)


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
    by_role = any(role_named(p) for p in all_paths)
    for pat in rule.include:
        if not any(re.search(pat, p) for p in all_paths):
            raise ValueError(
                f"select include pattern {pat!r} matches no leaf of {argname}; "
                f"paths are: {all_paths}"
            )
    flags = []
    for path, leaf in items:
        chosen = rule(path, leaf, by_role=by_role)
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
      select: the rule; default `default_rule` (`array_rule` without Flax names).
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
