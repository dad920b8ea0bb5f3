"""The leaf axes a transform reads: resolved from the parameters, named in its fingerprint.

A transform takes ``axes={path_regex: lightcomp.tree.Axes}`` and ``stacked=`` as
`lightcomp.tree.axes` does, checks them in its constructor and resolves them from the
parameters' paths and shapes. Resolution is a pure function of the tree's structure, so
``init`` and every ``apply``/``update`` see the same axes. The state's fingerprint names
what the transform resolved from them at every selected leaf (its layouts, codebook axes
or axes; a digest), so two configurations that read every leaf the same way share states,
and a state is never applied by a transform that would read a leaf differently.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax

from lightcomp import _checks, tree

PyTree = Any


def _as_axes_argument(fn, *args):
    """Runs ``fn``; its errors name the transform's argument ``axes``, not ``overrides``."""
    try:
        return fn(*args)
    except (TypeError, ValueError) as e:
        raise type(e)(str(e).replace("overrides", "axes")) from None


def options(axes: Any, stacked: Any) -> tree.AxesOptions:
    """The checked `lightcomp.tree.AxesOptions` of a transform's ``axes=`` and ``stacked=``."""
    return _as_axes_argument(tree.AxesOptions, axes, stacked)


def resolve(params: PyTree, rule: tree.Select, opts: tree.AxesOptions) -> PyTree:
    """The selected leaves' `lightcomp.tree.Axes` (None elsewhere), errors naming ``axes``."""
    return _as_axes_argument(tree.resolve_axes, params, rule, opts)


def digest(params: PyTree, rule: tree.Select, resolved: PyTree) -> str:
    """A short name for what a transform resolved at each selected leaf (static values).

    ``resolved`` mirrors ``params``; its entries say how a leaf is read, not its shape, so
    a state applied to a tree of other shapes gets a message naming the leaf.
    """
    flat = jax.tree.structure(params).flatten_up_to(resolved)
    described = [
        (path, entry)
        for (path, _), entry, chosen in zip(
            tree.leaves_with_paths(params),
            flat,
            jax.tree.leaves(tree.selection(params, rule)),
            strict=True,
        )
        if chosen
    ]
    return hashlib.sha1(repr(described).encode()).hexdigest()[:12]


def with_digest(fingerprint: str, digest: str) -> str:
    """``"name(..., leaf_axes='<digest>')"``: a fingerprint that also names the resolved axes."""
    return f"{fingerprint[:-1]}, leaf_axes={digest!r})"


def check_resolved(params, other, resolved, what: str, shape_of) -> None:
    """``other`` mirrors ``params``, each entry of ``shape_of(leaf, resolved entry)``.

    Raises:
      ValueError: naming ``what`` and the first leaf whose structure or shape differs.
    """
    flat = tree.check_mirror(params, other, what, shapes=False)
    per_leaf = jax.tree.structure(params).flatten_up_to(resolved)
    for (path, w), entry, r in zip(tree.leaves_with_paths(params), flat, per_leaf, strict=True):
        if entry is not None and r is not None:
            tree.check_shape(path, w, entry, what, lambda leaf: shape_of(leaf, r))


def check_axis(axis: Any) -> int | tuple[int, ...] | None:
    """A transform's ``axis=``: None, an int or a tuple of ints (checked, a tuple kept)."""
    if isinstance(axis, (tuple, list)):
        return tuple(_checks.check_int(a, "axis") for a in axis)
    return _checks.check_opt_int(axis, "axis")


def with_layers(axis: Any, ax: tree.Axes, path: str, ndim: int) -> tuple[int, ...]:
    """The user's ``axis`` (None, an int or a tuple) and the leaf's layer axes, sorted."""
    given = axis if isinstance(axis, tuple) else (() if axis is None else (axis,))
    own = {_checks.norm_axis(a, ndim, path=path) for a in given}
    return tuple(sorted(own | set(ax.stacked)))
