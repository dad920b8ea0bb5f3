"""One `masks` function for every score, scope and granularity; `apply_masks`.

Masks are bool trees mirroring the scores (True = kept, None where a leaf is not
selected). Counts are exact: ``round(sparsity * size)`` weights per slice of each leaf
(``"layer"``; a leaf without layer axes is one slice), over all leaves (``"global"``) or
per output unit (``"output"``), ties broken by index, and a traced sparsity (a
schedule's value under ``jit``) never recompiles. Where a leaf's structure matters
(layer axes, output units, the input axis of n:m groups and blocks) it comes from the
leaf's `lightcomp.tree.Axes`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree as lt
from lightcomp._checks import check_bool, check_choice, check_fraction, is_traced
from lightcomp.prune._granularity import NM, Block, Element, Granularity, as_granularity
from lightcomp.prune._keep import Plan, global_keep, layer_keep, nm_masks, output_keep, plan
from lightcomp.prune._optax import zero_pruned

PyTree = Any
_SCOPES = ("layer", "global", "output")


def masks(
    scores: PyTree,
    sparsity: Any,
    *,
    scope: str = "layer",
    granularity: Granularity | str = "element",
    n: int | None = None,
    m: int | None = None,
    block: int | tuple[int, int] | None = None,
    keep_one: bool = False,
    axes: PyTree | None = None,
) -> PyTree:
    """Boolean keep-masks from importance scores: the lowest scores are pruned.

    Args:
      scores: float tree; None at unselected leaves (as every score function returns).
      sparsity: fraction of selected weights to zero, in [0, 1): a float (or a traced
        scalar, e.g. a schedule's value under jit), or, with ``scope="layer"``/``"output"``,
        a per-leaf tree or ``{path: float}`` dict (e.g. from `erk`). 1.0 is allowed only
        with ``scope="global"`` and ``keep_one=True``. An n:m granularity fixes the
        sparsity at ``(m - n) / m``: pass that value, None, or 0 (no pruning; a
        schedule's warm-up).
      scope: ``"layer"``: each slice of each leaf (a stacked leaf's layer; the whole leaf
        otherwise) loses exactly ``round(s * slice size)`` weights (structured units: as
        many whole units as fit in that count); ``"global"``: one threshold over all
        selected leaves and slices, the lowest ``round(s * total)`` weights go;
        ``"output"``: each output unit of each slice loses ``round(s * fan_in)`` of its
        inputs (Wanda's per-output comparison; element granularity only).
      granularity: `Element()` (``"element"``); `Channel()` (``"channel"``: whole output
        units, all output axes together, scored by the L2 norm of their scores);
        `Block(rows, cols)` (``"block"`` with ``block``: tiles with rows along the last
        input axis and columns along the last output axis, L2 norm); `NM(n, m)`
        (``"n:m"`` with ``n`` and ``m``, or ``"2:4"``: ``n`` weights kept in every ``m``
        consecutive along the last input axis, `lightcomp.tree.Axes.group_axis`). See
        `as_granularity`.
      n: weights kept per group (``"n:m"`` only).
      m: group size (``"n:m"`` only).
      block: int or ``(rows, cols)`` (``"block"`` only).
      keep_one: with ``scope="global"``, a slice that would lose every unit keeps its
        best one (so no layer is cut off; the total may fall short by that).
      axes: a tree of `lightcomp.tree.Axes` mirroring ``scores`` (from
        `lightcomp.tree.axes` of the parameters, which sees biases and norms too); None:
        derived from ``scores`` (their paths and shapes) with `lightcomp.tree.axes`. For
        a Dense kernel ``[in, out]`` and a Conv kernel ``[..., in, out]`` the masks are
        those of 0.1.0.

    Returns:
      A tree like ``scores``: bool arrays (True = kept) of each leaf's shape, None where
      ``scores`` has None. Ties are broken by index (lower index pruned first). Under jit,
      NaN scores count as the lowest (eagerly they raise).

    Raises:
      ValueError: bad scope / granularity / n / m / block / sparsity, a sparsity or axes
        tree that does not mirror the scores, non-float or NaN scores, a group or tile
        size that does not divide its axis (naming the leaf and the axis), a leaf whose
        axes a granularity needs but cannot be derived.

    Example:
      >>> scores = {"w": jnp.arange(8.0).reshape(4, 2), "b": None}
      >>> lc.prune.masks(scores, 0.25)["w"].tolist()
      [[False, False], [True, True], [True, True], [True, True]]
      >>> lc.prune.masks(scores, None, granularity=lc.prune.NM(1, 2))["w"].tolist()
      [[False, False], [True, True], [False, False], [True, True]]
      >>> stacked = {"layers": {"kernel": jnp.arange(16.0).reshape(2, 4, 2)}}
      >>> mk = lc.prune.masks(stacked, 0.5, axes={"layers": {"kernel": lc.tree.Axes((0,), (1,), (2,))}})
      >>> (~mk["layers"]["kernel"]).sum(axis=(1, 2)).tolist()  # 4 zeros in each layer
      [4, 4]
    """
    check_choice(scope, _SCOPES, "scope")
    gran = as_granularity(granularity, n=n, m=m, block=block)
    keep_one = check_bool(keep_one, "keep_one")
    if scope == "output" and not isinstance(gran, Element):
        raise ValueError("scope='output' works with granularity='element' only")
    if keep_one and scope != "global":
        raise ValueError(f"keep_one is for scope='global', not scope={scope!r}")
    items = lt.leaves_with_paths(scores, argname="scores")
    if not items:
        raise ValueError("scores has no leaves (every leaf is None): nothing to prune")
    for path, score in items:
        _check_values(path, score)
    leaf_axes = leaf_axes_of(scores, axes)
    plans = [
        _checked_plan(path, tuple(score.shape), ax, gran, scope)
        for (path, score), ax in zip(items, leaf_axes, strict=True)
    ]
    treedef = jax.tree.structure(scores)
    leaves = [s for _, s in items]
    if isinstance(gran, NM):
        groups = [ax.group_axis for ax in leaf_axes]
        out = _nm_masks(leaves, groups, sparsity, gran)
    elif scope == "global":
        out = _global_masks(leaves, plans, sparsity, gran, keep_one)
    else:
        per_leaf = _per_leaf_sparsity(sparsity, items)
        out = [
            _leaf_masks(s, pl, leaf_s, gran, scope)
            for s, pl, leaf_s in zip(leaves, plans, per_leaf, strict=True)
        ]
    return jax.tree.unflatten(treedef, out)


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zeroes the pruned weights: ``where(mask, w, 0)`` at each masked leaf, dtype kept.

    Args:
      params: parameter pytree.
      masks: bool tree mirroring params; None (or an all-True array) at leaves that are
        not pruned, which pass through untouched.

    Returns:
      params with pruned weights exactly 0. Idempotent; jittable.

    Raises:
      TypeError: a mask that is not a boolean array (float scores are not masks; naming
        the leaf).
      ValueError: ``masks`` does not mirror ``params``, or a mask's shape differs from its
        leaf's (naming the leaf).

    Example:
      >>> params = {"w": jnp.array([[1.0, -3.0], [0.5, 2.0]]), "b": jnp.ones(2)}
      >>> pruned = lc.prune.apply_masks(params, lc.prune.masks(lc.prune.magnitude(params), 0.5))
      >>> pruned["w"]
      Array([[ 0., -3.],
             [ 0.,  2.]], dtype=float32)
    """
    flat = lt.check_mirror(params, masks, "masks")
    for (path, _), mask in zip(lt.leaves_with_paths(params), flat, strict=True):
        if mask is not None and getattr(mask, "dtype", None) != jnp.bool_:
            dtype = getattr(mask, "dtype", type(mask).__name__)
            raise TypeError(
                f"masks leaf {path!r} must be a boolean array (True = kept), got {dtype}; "
                "scores become masks through lightcomp.prune.masks"
            )
    return zero_pruned(params, masks)


# ------------------------------------------------------------------------ checks


def _check_values(path: str, score: Any) -> None:
    if not lt.is_floating(score):
        raise ValueError(
            f"scores leaf {path!r} is not floating ({getattr(score, 'dtype', type(score))}); "
            "select only float leaves"
        )
    if not is_traced(score) and np.isnan(np.asarray(score, np.float32)).any():
        raise ValueError(f"scores leaf {path!r} contains NaN")


def leaf_axes_of(scores: PyTree, axes: PyTree | None) -> list[lt.Axes]:
    """The `lightcomp.tree.Axes` of each scores leaf: given (checked) or derived."""
    if axes is None:
        return jax.tree.leaves(lt.axes(scores, lambda path, leaf: True))
    flat = lt.check_mirror(scores, axes, "axes", shapes=False)
    out = []
    for (path, score), ax in zip(lt.leaves_with_paths(scores, argname="scores"), flat, strict=True):
        if not isinstance(ax, lt.Axes):
            got = "None" if ax is None else type(ax).__name__
            raise TypeError(
                f"axes must hold a lightcomp.tree.Axes at scores leaf {path!r}, got {got}"
            )
        ax.check(tuple(score.shape), path)
        out.append(ax)
    return out


def _checked_plan(path: str, shape: tuple, ax: lt.Axes, gran: Granularity, scope: str) -> Plan:
    """Checks that ``gran`` and ``scope`` can read a leaf of ``shape`` and ``ax``; its `Plan`."""
    if isinstance(gran, Element) and scope != "output":
        return plan(shape, ax, gran, scope)
    what = f"granularity={gran!r}" if not isinstance(gran, Element) else "scope='output'"
    lt.need_known(ax, path, shape, what)
    if not ax.inputs or not ax.outputs:
        raise ValueError(
            f"{what} needs ndim >= 2 (an input and an output axis besides layer axes); scores "
            f"leaf {path!r} is {shape} with {ax}"
        )
    g, o = ax.group_axis, ax.output_axis
    if isinstance(gran, NM) and shape[g] % gran.m:
        raise ValueError(
            f"m={gran.m} does not divide {ax.describe(g, shape)} of leaf {path!r} {shape}"
        )
    if isinstance(gran, Block):
        for size, axis, what in ((gran.rows, g, "rows"), (gran.cols, o, "cols")):
            if shape[axis] % size:
                raise ValueError(
                    f"block=({gran.rows}, {gran.cols}) does not divide "
                    f"{ax.describe(axis, shape)} (block {what}) of leaf {path!r} {shape}"
                )
    return plan(shape, ax, gran, scope)


def _check_sparsity(value: Any, *, allow_one: bool = False, path: str | None = None) -> None:
    try:
        check_fraction(value, "sparsity", allow_one=allow_one, path=path)
    except ValueError as e:
        if allow_one:
            raise
        hint = (
            "1.0 is allowed only with scope='global' and keep_one=True, which keeps each "
            "leaf's best unit alive"
        )
        raise ValueError(f"{e} ({hint})") from None


def _is_scalar(x: Any) -> bool:
    """A Python or NumPy number, or a 0-d array (concrete or traced)."""
    return isinstance(x, (int, float, np.generic)) or (hasattr(x, "shape") and tuple(x.shape) == ())


def _check_not_none(sparsity: Any) -> None:
    if sparsity is None:
        raise ValueError("sparsity=None is for an n:m granularity only; pass a fraction")


def _per_leaf_sparsity(sparsity: Any, items: list) -> list:
    """A sparsity for each selected leaf: a scalar broadcast, or a per-leaf tree / path dict."""
    _check_not_none(sparsity)
    if _is_scalar(sparsity):
        _check_sparsity(sparsity)
        return [sparsity] * len(items)
    try:
        flat, _ = jax.tree_util.tree_flatten_with_path(sparsity)
    except Exception as e:
        raise TypeError(f"sparsity must be a float or a per-leaf tree of floats: {e}") from e
    if len(flat) == 1 and not flat[0][0]:  # a leaf, but not a number
        raise TypeError(f"sparsity must be a float or a per-leaf tree of floats, got {sparsity!r}")
    given = {lt.path_str(k): v for k, v in flat}
    wanted = [p for p, _ in items]
    for p in given:
        if p not in wanted:
            raise ValueError(
                f"sparsity has an entry for {p!r}, which is not a selected leaf of scores; "
                f"selected leaves are {wanted}"
            )
    for p in wanted:
        if p not in given:
            raise ValueError(f"sparsity has no entry for selected leaf {p!r}")
        _check_sparsity(given[p], path=p)
    return [given[p] for p in wanted]


def _num_to_prune(s: Any, total: int) -> Any:
    """``round(s * total)``: exact Python rounding (half to even) when ``s`` is concrete."""
    if is_traced(s):
        return jnp.round(jnp.asarray(s, jnp.float32) * total).astype(jnp.int32)
    return round(float(s) * total)


# ------------------------------------------------------------------------ per scope


def _nm_masks(leaves: list, groups: list, sparsity: Any, gran: NM) -> list:
    if sparsity is not None and not is_traced(sparsity):
        _check_sparsity(sparsity)
        if float(sparsity) != 0.0 and abs(float(sparsity) - gran.sparsity) > 1e-6:
            raise ValueError(
                f"granularity='n:m' with n={gran.n}, m={gran.m} fixes sparsity at "
                f"{gran.sparsity}; got sparsity={float(sparsity)} (pass that value, None, "
                "or 0 for no pruning)"
            )
    on = jnp.asarray(True) if sparsity is None else jnp.asarray(sparsity) > 0
    return [nm_masks(s, on, gran.n, gran.m, g) for s, g in zip(leaves, groups, strict=True)]


def _global_masks(leaves: list, plans: list, sparsity: Any, gran: Granularity, keep_one: bool):
    _check_not_none(sparsity)
    if not _is_scalar(sparsity):
        raise ValueError("scope='global' needs one scalar sparsity, not a per-leaf tree")
    _check_sparsity(sparsity, allow_one=keep_one)
    total = sum(math.prod(s.shape) for s in leaves)
    return global_keep(leaves, _num_to_prune(sparsity, total), tuple(plans), gran, keep_one)


def _leaf_masks(score: jax.Array, pl: Plan, sparsity: Any, gran: Granularity, scope: str):
    if scope == "output":
        return output_keep(score, _num_to_prune(sparsity, pl.slice_shape[0]), pl)
    return layer_keep(score, _num_to_prune(sparsity, math.prod(pl.slice_shape)), pl, gran)
