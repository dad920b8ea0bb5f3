"""`axes`: the `Axes` of every selected leaf, derived from Flax's layer layouts.

Derivation reads a leaf's path, its shape, its siblings' shapes and Flax's partitioning
names; nothing else. Layouts (Flax's own, ``flax/linen/linear.py``, ``attention.py``,
``flax/nnx/nn/linear.py``, ``attention.py``):

========================================  ==================================  =============
leaf                                      shape                               in / out
========================================  ==================================  =============
Dense / nnx.Linear ``kernel``             ``[in, out]``                       0 / 1
attention query, key, value ``kernel``    ``[embed, heads, head_dim]``        0 / (1, 2)
attention out ``kernel``                  ``[heads, head_dim, embed]``        (0, 1) / 2
Conv, ConvTranspose ``kernel``            ``[*window, in, out]``              window, in / out
Embed ``embedding``                       ``[vocab, features]``               1 / 0
========================================  ==================================  =============

A scanned stack (``nn.scan``, ``nnx.scan``, ``nnx.vmap``) puts layer axes in front. They
are found from (first match): ``overrides``; ``stacked``; a partitioning name of the leaf
(``nn.Partitioned`` / ``nn.with_logical_partitioning`` names, nnx ``out_sharding`` /
``sharding_names`` metadata) in `LAYER_NAMES`; a rank that is more than the layer's own
(a Dense kernel of rank 3, a bias or norm scale of rank 2, an attention kernel of rank 4;
a bias only when its kernel agrees); otherwise the nearest enclosing module whose leaves
with such evidence all agree (so a bias-less Conv kernel in a scanned block takes the
block's layer axes from a sibling norm scale).

Not derived (inputs and outputs None; an operation that needs them raises and says what to
pass): ``nn.Einsum`` kernels, DenseGeneral kernels outside attention, a 3-D kernel outside
attention and not under a conv-named module. A kernel of rank 4 or more outside attention
and without layer axes is read as a Conv (``[*window, in, out]``). Not visible in a tree:
``ConvTranspose(transpose_kernel=True)`` kernels are ``[*window, out, in]`` (pass
``overrides``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx
from flax.core import meta

from lightcomp.tree._axes import Axes
from lightcomp.tree._options import AxesOptions
from lightcomp.tree._paths import is_array_like, leaves_with_paths, path_str
from lightcomp.tree._select import SelectLike, as_select, selection

PyTree = Any

_ATTENTION = ("query", "key", "value", "out")
_NORM = frozenset({"scale", "bias", "mean", "var"})
_CONV = re.compile(r"conv(?!local)", re.IGNORECASE)
_DENSE = re.compile(r"(dense|linear|lin|fc|mlp)_?\d*", re.IGNORECASE)
_WINDOW = {1: ("width",), 2: ("height", "width"), 3: ("depth", "height", "width")}
# The rank of a leaf outside a stack, by kind (None: not known from the kind alone).
_RANK = {"embed": 2, "attn_in": 3, "attn_out": 3, "attn_in_bias": 2, "attn_out_bias": 1}
_RANK |= {"dense": 2, "bias": 1, "norm": 1}


@dataclasses.dataclass(frozen=True)
class _Leaf:
    path: str
    parts: tuple[str, ...]
    shape: tuple[int, ...]
    names: tuple[Any, ...] | None  # partitioning names, one per axis


@dataclasses.dataclass(frozen=True)
class _Stack:
    axes: tuple[int, ...]
    sizes: tuple[int, ...]
    source: str


def _is_box(x: Any) -> bool:
    return isinstance(x, (meta.AxisMetadata, nnx.Variable))


def _box_names(box: Any) -> tuple[Any, ...] | None:
    if isinstance(box, nnx.Variable):
        md = box.get_metadata()
        names = next((md[k] for k in ("out_sharding", "sharding_names") if md.get(k)), None)
    else:
        names = getattr(box, "names", None)
    return tuple(names) if isinstance(names, (tuple, list)) else None


def _leaves(params: PyTree) -> list[_Leaf]:
    boxed, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_box)
    names = {path_str(k): _box_names(b) for k, b in boxed if _is_box(b)}
    out = []
    for path, leaf in leaves_with_paths(params):
        shape = tuple(getattr(leaf, "shape", ()))
        nm = names.get(path)
        out.append(
            _Leaf(path, tuple(path.split("/")), shape, nm if nm and len(nm) == len(shape) else None)
        )
    return out


class _Modules:
    """Leaves by module (their path without the last part)."""

    def __init__(self, leaves: list[_Leaf]):
        self.children: dict[tuple[str, ...], dict[str, _Leaf]] = {}
        for lf in leaves:
            self.children.setdefault(lf.parts[:-1], {})[lf.parts[-1]] = lf

    def attention(self, parts: tuple[str, ...]) -> bool:
        """``parts`` is a leaf of a query/key/value/out module of an attention layer."""
        if len(parts) < 2 or parts[-2] not in _ATTENTION:
            return False
        kernels = [self.children.get((*parts[:-2], m), {}).get("kernel") for m in _ATTENTION]
        return all(k is not None for k in kernels) and len({len(k.shape) for k in kernels}) == 1

    def kind(self, lf: _Leaf) -> str:
        name, mod = lf.parts[-1], (lf.parts[-2] if len(lf.parts) > 1 else "")
        siblings = self.children[lf.parts[:-1]]
        if name == "embedding":
            return "embed"
        if name in ("kernel", "bias") and self.attention(lf.parts):
            where = "out" if mod == "out" else "in"
            return f"attn_{where}" + ("_bias" if name == "bias" else "")
        if name == "kernel":
            if _CONV.search(mod):
                return "conv"
            return "dense" if _DENSE.fullmatch(mod) else "kernel"
        if name == "bias" and "kernel" in siblings:
            return "bias"
        if name in _NORM and set(siblings) <= _NORM:
            return "norm"
        return "other"


def _own_stack(lf: _Leaf, kind: str, mods: _Modules, layer_names) -> _Stack | None:
    """The layer axes this leaf shows by itself (names, or a rank above its layer's)."""
    if lf.names is not None:
        found = tuple(i for i, n in enumerate(lf.names) if n in layer_names)
        if found:
            return _Stack(found, tuple(lf.shape[a] for a in found), lf.path)
    rank = _RANK.get(kind)
    n = len(lf.shape) - rank if rank is not None else -1
    if n < 0:
        return None
    if kind == "bias":  # only when its kernel agrees: [*layers, ..., out] and [*layers, out]
        kernel = mods.children[lf.parts[:-1]]["kernel"].shape
        if len(kernel) < n + 2 or kernel[:n] != lf.shape[:n] or kernel[-1] != lf.shape[-1]:
            return None
    return _Stack(tuple(range(n)), lf.shape[:n], lf.path)


def _siblings_agree(evidence: dict[str, _Stack], leaves: list[_Leaf]) -> None:
    """Within a module, every leaf with layer axes stacks the same number of layers."""
    first: dict[tuple[str, ...], _Stack] = {}
    for lf in leaves:
        st = evidence.get(lf.path)
        if st is None or not st.axes:
            continue
        ref = first.setdefault(lf.parts[:-1], st)
        if ref.sizes != st.sizes:
            raise ValueError(
                f"stacked leaf {lf.path!r} {lf.shape} has {st.sizes} layers along axes "
                f"{st.axes}, but its sibling {ref.source!r} has {ref.sizes}; pass stacked= or "
                "overrides= to say which axes are layers"
            )


def _fits(lf: _Leaf, st: _Stack) -> bool:
    return all(a < len(lf.shape) for a in st.axes) and (
        tuple(lf.shape[a] for a in st.axes) == st.sizes
    )


def _adopted(lf: _Leaf, kind: str, by_prefix) -> _Stack | None:
    """The layer axes of the nearest enclosing module whose evidence is unanimous.

    A leaf's own module (its siblings) must agree with it; a module further out lends
    its layer axes only where they fit the leaf's shape and leave a layout it can have.
    """
    own = lf.parts[:-1]
    for k in range(len(own), -1, -1):
        found = by_prefix.get(lf.parts[:k])
        if not found:
            continue
        if len({(s.axes, s.sizes) for s in found}) > 1:
            return None  # the modules around disagree: assume no layer axes
        st = found[0]
        if k == len(own) and not _fits(lf, st):
            raise ValueError(
                f"stacked leaf {lf.path!r} {lf.shape} does not have the {st.sizes} layers along "
                f"axes {st.axes} of its sibling {st.source!r}; pass stacked= or overrides= to "
                "say which axes are layers"
            )
        rest = [a for a in range(len(lf.shape)) if a not in st.axes]
        if not _fits(lf, st) or _layout(kind, rest, st.axes) is None:
            return None
        return st
    return None


def _stacks(leaves, mods, kinds, opts) -> dict[str, tuple[int, ...]]:
    evidence = {}
    for lf in leaves:
        n = opts.stacked_of(lf.path)
        if n is not None:
            if n > len(lf.shape):
                raise ValueError(
                    f"stacked={n} is more than the rank of leaf {lf.path!r} {lf.shape}"
                )
            st = _Stack(tuple(range(n)), lf.shape[:n], lf.path)
        else:
            st = _own_stack(lf, kinds[lf.path], mods, opts.layer_names)
        if st is not None:
            evidence[lf.path] = st
    _siblings_agree(evidence, leaves)
    by_prefix: dict[tuple[str, ...], list[_Stack]] = {}
    for lf in leaves:
        if lf.path in evidence:
            for k in range(len(lf.parts)):
                by_prefix.setdefault(lf.parts[:k], []).append(evidence[lf.path])
    out = {}
    for lf in leaves:
        st = evidence.get(lf.path) or _adopted(lf, kinds[lf.path], by_prefix)
        out[lf.path] = st.axes if st is not None else ()
    return out


def _layout(kind: str, rest: list[int], stacked: tuple[int, ...]):
    """``(inputs, outputs, names of rest)`` of a leaf's non-layer axes; None if unknown."""
    r = len(rest)
    fixed = {
        ("embed", 2): ((1,), (0,), ("vocab", "features")),
        ("attn_in", 3): ((0,), (1, 2), ("embed", "heads", "head_dim")),
        ("attn_out", 3): ((0, 1), (2,), ("heads", "head_dim", "embed")),
        ("attn_in_bias", 2): ((), (0, 1), ("heads", "head_dim")),
    }
    if (kind, r) in fixed:
        i, o, names = fixed[(kind, r)]
    elif kind in ("conv", "kernel", "dense") and (
        r == 2 or (r >= 2 and kind == "conv") or (r >= 4 and kind == "kernel" and not stacked)
    ):
        i, o = tuple(range(r - 1)), (r - 1,)
        names = (*_WINDOW.get(r - 2, tuple(f"window_{j}" for j in range(r - 2))), "in", "out")
    elif kind in ("conv", "kernel", "dense", "embed", "attn_in", "attn_out", "attn_in_bias"):
        return None
    else:  # biases, norms and plain arrays: the last axis is the output unit
        i, o = tuple(range(r - 1)), ((r - 1,) if r else ())
        names = None if r != 1 else ("features",)
    return tuple(rest[a] for a in i), tuple(rest[a] for a in o), names


def _axes_of(lf: _Leaf, kind: str, stacked: tuple[int, ...]) -> Axes:
    rest = [a for a in range(len(lf.shape)) if a not in stacked]
    found = _layout(kind, rest, stacked)
    if lf.names is not None:
        names = tuple("?" if n is None else str(n) for n in lf.names)
    elif found is not None and found[2] is not None:
        names = ["layers"] * len(lf.shape)
        for a, n in zip(rest, found[2], strict=True):
            names[a] = n
        names = tuple(names)
    else:
        names = None
    if found is None:
        return Axes(stacked, None, None, names)
    return Axes(stacked, found[0], found[1], names)


def axes(
    params: PyTree,
    select: SelectLike = None,
    *,
    overrides: Mapping[str, Axes] | None = None,
    stacked: int | str | Mapping[str, int] | None = None,
) -> PyTree:
    """The `Axes` (layer, input and output axes) of every selected leaf.

    Args:
      params: a parameter tree (linen ``params``, possibly with ``nn.Partitioned`` boxes;
        an ``nnx.State``; any pytree of arrays), or a tree with its paths and shapes at the
        selected leaves (scores, grads).
      select: which leaves (`as_select`); default by role, see `lightcomp.tree`.
      overrides: ``{path_regex: Axes}``: the axes of the leaves whose path matches
        (``re.search``, first pattern wins), used as given.
      stacked: the layer axes where the tree does not show them: an int ``n`` (the
        leading ``n`` axes of every leaf; 0: none), ``{path_regex: n}``, or the
        partitioning name of the layer axis (default `LAYER_NAMES`).

    Returns:
      A tree with ``params``' structure: an `Axes` at each selected leaf (inputs and
      outputs None where they cannot be derived: an operation that needs them raises,
      naming the leaf), None elsewhere.

    Raises:
      ValueError: a leaf whose layer count disagrees with its siblings' or its block's, an
        override that does not fit its leaf or matches no selected leaf, bad patterns.
      TypeError: ``overrides`` or ``stacked`` of the wrong type.

    Example:
      >>> params = {"Dense_0": {"kernel": jnp.zeros((3, 8, 4)), "bias": jnp.zeros((3, 4))}}
      >>> lc.tree.axes(params)["Dense_0"]["kernel"]
      Axes(stacked=(0,), inputs=(1,), outputs=(2,))
    """
    return resolve_axes(params, select, AxesOptions(overrides, stacked))


def resolve_axes(params: PyTree, select: SelectLike, opts: AxesOptions) -> PyTree:
    """`axes` of ``params`` under checked options (the transforms keep theirs).

    The result depends on the tree's structure (paths, partitioning metadata), shapes and
    dtypes only, so it is remembered for each of those: a transform resolving its axes at
    every ``apply`` pays the derivation once.
    """
    rule = as_select(select)
    leaves, treedef = jax.tree.flatten(params)
    specs = tuple((tuple(x.shape), x.dtype) if is_array_like(x) else (type(x), x) for x in leaves)
    try:
        flat = _resolved(treedef, specs, rule, opts)
    except TypeError as e:
        if "unhashable" not in str(e):
            raise
        flat = _resolve_flat(params, rule, opts)  # a leaf or a predicate that cannot be a key
    return jax.tree.unflatten(treedef, list(flat))


@functools.lru_cache(maxsize=256)
def _resolved(treedef, specs, rule, opts) -> tuple[Axes | None, ...]:
    shapes = [jax.ShapeDtypeStruct(s[0], s[1]) if isinstance(s[0], tuple) else s[1] for s in specs]
    return _resolve_flat(jax.tree.unflatten(treedef, shapes), rule, opts)


def _resolve_flat(params: PyTree, rule, opts: AxesOptions) -> tuple[Axes | None, ...]:
    flags = jax.tree.leaves(selection(params, rule))
    leaves = _leaves(params)
    mods = _Modules(leaves)
    kinds = {lf.path: mods.kind(lf) for lf in leaves}
    stacks = _stacks(leaves, mods, kinds, opts)
    chosen = [lf for lf, f in zip(leaves, flags, strict=True) if f]
    for pat, _ in opts.overrides:
        if not any(re.search(pat, lf.path) for lf in chosen):
            raise ValueError(
                f"overrides pattern {pat!r} matches no selected leaf; selected leaves are "
                f"{[lf.path for lf in chosen]}"
            )
    out = []
    for lf, f in zip(leaves, flags, strict=True):
        if not f:
            out.append(None)
            continue
        ax = next((a for p, a in opts.overrides if re.search(p, lf.path)), None)
        if ax is None:
            ax = _axes_of(lf, kinds[lf.path], stacks[lf.path])
        ax.check(lf.shape, lf.path)
        out.append(ax)
    return tuple(out)
