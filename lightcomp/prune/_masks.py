"""One `masks` function for every score, scope and granularity; `apply_masks`.

Masks are bool trees mirroring the scores (True = kept, None where a leaf is not
selected). Counts are exact: ``round(sparsity * size)`` weights per leaf (``"layer"``),
over all leaves (``"global"``) or per output channel (``"output"``), ties broken by
index, and a traced sparsity (a schedule's value under ``jit``) never recompiles.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree as lt
from lightcomp._checks import check_bool, check_choice, check_fraction, is_traced
from lightcomp.prune._granularity import NM, Block, Channel, Element, Granularity, as_granularity
from lightcomp.prune._optax import zero_pruned
from lightcomp.prune._ranking import lowest_k, lowest_units, nm_keep

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
      scope: ``"layer"``: each leaf loses exactly ``round(s * size)`` weights (structured
        units: as many whole units as fit in that count); ``"global"``: one threshold over
        all selected leaves, the lowest ``round(s * total)`` weights go; ``"output"``:
        each output channel (last axis) of each leaf loses ``round(s * fan_in)`` weights
        (Wanda's per-output comparison; element granularity only).
      granularity: `Element()` (``"element"``); `Channel()` (``"channel"``: whole output
        channels scored by the L2 norm of their scores); `Block(rows, cols)`
        (``"block"`` with ``block``: tiles of the last two axes, L2 norm); `NM(n, m)`
        (``"n:m"`` with ``n`` and ``m``, or ``"2:4"``: ``n`` weights kept in every ``m``
        consecutive along the input axis ``-2``). See `as_granularity`.
      n: weights kept per group (``"n:m"`` only).
      m: group size (``"n:m"`` only).
      block: int or ``(rows, cols)`` (``"block"`` only).
      keep_one: with ``scope="global"``, a leaf that would lose every unit keeps its best
        one (so no layer is cut off; the total may fall short by that).

    Returns:
      A tree like ``scores``: bool arrays (True = kept) of each leaf's shape, None where
      ``scores`` has None. Ties are broken by index (lower index pruned first). Under jit,
      NaN scores count as the lowest (eagerly they raise).

    Raises:
      ValueError: bad scope / granularity / n / m / block / sparsity, a sparsity tree that
        does not mirror the scores, non-float or NaN scores (naming the leaf).

    Example:
      >>> scores = {"w": jnp.arange(8.0).reshape(4, 2), "b": None}
      >>> lc.prune.masks(scores, 0.25)["w"].tolist()
      [[False, False], [True, True], [True, True], [True, True]]
      >>> lc.prune.masks(scores, None, granularity=lc.prune.NM(1, 2))["w"].tolist()
      [[False, False], [True, True], [False, False], [True, True]]
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
        _check_leaf(path, score, gran, scope)
    treedef = jax.tree.structure(scores)
    leaves = [s for _, s in items]
    if isinstance(gran, NM):
        out = _nm_masks(leaves, sparsity, gran)
    elif scope == "global":
        out = _global_masks(leaves, sparsity, gran, keep_one)
    else:
        per_leaf = _per_leaf_sparsity(sparsity, items)
        out = [
            _leaf_masks(s, leaf_s, gran, scope) for s, leaf_s in zip(leaves, per_leaf, strict=True)
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
      ValueError: ``masks`` does not mirror ``params``, or a mask's shape differs from its
        leaf's (naming the leaf).

    Example:
      >>> params = {"w": jnp.array([[1.0, -3.0], [0.5, 2.0]]), "b": jnp.ones(2)}
      >>> pruned = lc.prune.apply_masks(params, lc.prune.masks(lc.prune.magnitude(params), 0.5))
      >>> pruned["w"]
      Array([[ 0., -3.],
             [ 0.,  2.]], dtype=float32)
    """
    lt.check_mirror(params, masks, "masks")
    return zero_pruned(params, masks)


# ------------------------------------------------------------------------ checks


def _check_leaf(path: str, score: Any, gran: Granularity, scope: str) -> None:
    if not lt.is_floating(score):
        raise ValueError(
            f"scores leaf {path!r} is not floating ({getattr(score, 'dtype', type(score))}); "
            "select only float leaves"
        )
    if not is_traced(score) and np.isnan(np.asarray(score, np.float32)).any():
        raise ValueError(f"scores leaf {path!r} contains NaN")
    shape = tuple(score.shape)
    if not isinstance(gran, Element) and score.ndim < 2:
        raise ValueError(f"granularity={gran!r} needs ndim >= 2, scores leaf {path!r} is {shape}")
    if scope == "output" and score.ndim < 2:
        raise ValueError(f"scope='output' needs ndim >= 2, leaf {path!r} is {shape}")
    if isinstance(gran, NM) and shape[-2] % gran.m:
        raise ValueError(f"m={gran.m} does not divide the input axis (-2) of leaf {path!r} {shape}")
    if isinstance(gran, Block) and (shape[-2] % gran.rows or shape[-1] % gran.cols):
        raise ValueError(
            f"block=({gran.rows}, {gran.cols}) does not divide the last two axes of leaf "
            f"{path!r} {shape}"
        )


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


def _nm_masks(leaves: list, sparsity: Any, gran: NM) -> list:
    if sparsity is not None and not is_traced(sparsity):
        _check_sparsity(sparsity)
        if float(sparsity) != 0.0 and abs(float(sparsity) - gran.sparsity) > 1e-6:
            raise ValueError(
                f"granularity='n:m' with n={gran.n}, m={gran.m} fixes sparsity at "
                f"{gran.sparsity}; got sparsity={float(sparsity)} (pass that value, None, "
                "or 0 for no pruning)"
            )
    on = jnp.asarray(True) if sparsity is None else jnp.asarray(sparsity) > 0
    return [_nm_keep(s, on, gran) for s in leaves]


def _global_masks(leaves: list, sparsity: Any, gran: Granularity, keep_one: bool) -> list:
    _check_not_none(sparsity)
    if not _is_scalar(sparsity):
        raise ValueError("scope='global' needs one scalar sparsity, not a per-leaf tree")
    _check_sparsity(sparsity, allow_one=keep_one)
    total = sum(math.prod(s.shape) for s in leaves)
    return _global_keep(leaves, _num_to_prune(sparsity, total), gran, keep_one)


def _leaf_masks(score: jax.Array, sparsity: Any, gran: Granularity, scope: str) -> jax.Array:
    if scope == "output":
        return _output_keep(score, _num_to_prune(sparsity, math.prod(score.shape[:-1])))
    return _layer_keep(score, _num_to_prune(sparsity, math.prod(score.shape)), gran)


# ------------------------------------------------------------------------ kernels
# Jitted so that an eager `masks` call compiles one fused program per leaf shape instead
# of dispatching a dozen small ops; under an outer jit they are inlined. `k` is a traced
# int, so a new sparsity never recompiles.


def _clean(score: jax.Array) -> jax.Array:
    return jnp.where(jnp.isnan(score), -jnp.inf, score.astype(jnp.float32))


def _units(score: jax.Array, gran: Granularity):
    """Unit scores (flat float32), unit size (weights per unit) and an expander to leaf shape."""
    shape = score.shape
    if isinstance(gran, Element):
        return score.reshape(-1), 1, lambda u: u.reshape(shape)
    if isinstance(gran, Channel):
        c = shape[-1]
        units = jnp.sqrt(jnp.sum(jnp.square(score.reshape(-1, c)), axis=0))
        return units, math.prod(shape[:-1]), lambda u: jnp.broadcast_to(u, shape)
    bi, bo = gran.rows, gran.cols
    lead, i, o = shape[:-2], shape[-2], shape[-1]
    blocks = score.reshape((*lead, i // bi, bi, o // bo, bo))
    units = jnp.sqrt(jnp.sum(jnp.square(blocks), axis=(-3, -1)))

    def expand(u):
        u = u.reshape((*lead, i // bi, 1, o // bo, 1))
        return jnp.broadcast_to(u, (*lead, i // bi, bi, o // bo, bo)).reshape(shape)

    return units.reshape(-1), bi * bo, expand


@functools.partial(jax.jit, static_argnames=("gran",))
def _layer_keep(score, k, gran):
    units, size, expand = _units(_clean(score), gran)
    # equal-size units: as many whole units as fit in k weights
    return expand(jnp.logical_not(lowest_k(units, k // size)))


@jax.jit
def _output_keep(score, k):
    cols = _clean(score).reshape(-1, score.shape[-1])
    return jnp.logical_not(lowest_k(cols, k, axis=0)).reshape(score.shape)


@functools.partial(jax.jit, static_argnames=("gran",))
def _nm_keep(score, on, gran):
    return jnp.logical_or(nm_keep(_clean(score), gran.n, gran.m), jnp.logical_not(on))


@functools.partial(jax.jit, static_argnames=("gran", "keep_one"))
def _global_keep(leaves, k, gran, keep_one):
    parts = [_units(_clean(s), gran) for s in leaves]
    unit_scores = jnp.concatenate([u for u, _, _ in parts])
    if isinstance(gran, Element):
        pruned = lowest_k(unit_scores, k)
    else:  # units of different sizes across leaves
        sizes = jnp.concatenate([jnp.full(u.shape, z, jnp.int32) for u, z, _ in parts])
        pruned = lowest_units(unit_scores, sizes, k)
    out, start = [], 0
    for units, _, expand in parts:  # a loop over leaves, not elements
        p = pruned[start : start + units.shape[0]]
        start += units.shape[0]
        if keep_one:
            best = jnp.argmax(units)
            p = p.at[best].set(p[best] & ~jnp.all(p))
        out.append(expand(jnp.logical_not(p)))
    return out
