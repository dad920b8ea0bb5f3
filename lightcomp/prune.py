"""Pruning: importance scores, masks at every granularity and scope, schedules,
penalties, mask-preserving optimizers and dynamic sparse training.

Everything works on parameter pytrees (a linen ``params`` dict, an ``nnx.State``,
any pytree of arrays). Trees that mirror the parameters (scores, masks,
per-leaf sparsities, input norms) hold ``None`` at leaves that are not
selected (by default: floating arrays with ``ndim >= 2``, see
`lightcomp.tree`). The algorithm is its score: every score function feeds the
one `masks` function, which ranks with sort/argsort (ties broken by index, so
results are deterministic) and works under ``jax.jit`` with a traced sparsity.

Conventions:
  * ``sparsity`` is the fraction of selected weights set to zero; the lowest
    scores go first.
  * Flax kernels are ``(in, out)`` (Dense) or ``(h, w, in, out)`` (Conv): the
    output channel is the last axis, the input axis is ``-2``.
  * Scores and statistics are float32; masks are ``bool`` arrays of the leaf's
    shape; `apply_masks` keeps each leaf's dtype.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lightcomp import tree as lt

__all__ = [
    "SqGrads",
    "apply_masks",
    "constant",
    "cosine_fraction",
    "erk",
    "fisher",
    "gradient",
    "group_lasso_penalty",
    "input_norms",
    "iterative",
    "keep_pruned",
    "l1_penalty",
    "magnitude",
    "masks",
    "movement",
    "one_shot",
    "one_shot_prune",
    "polynomial_schedule",
    "prune_and_regrow",
    "random",
    "reset_moments",
    "shrink",
    "sparsity_report",
    "sparsity_table",
    "sq_grads_init",
    "sq_grads_update",
    "taylor",
    "wanda",
]

PyTree = Any
_F32 = jnp.float32
_GRANULARITIES = ("element", "channel", "block", "n:m")
_SCOPES = ("layer", "global", "output")


# ----------------------------------------------------------------------------- internals


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_mirror(params: PyTree, other: PyTree, argname: str) -> None:
    """Raises a ValueError naming ``argname`` and the path where ``other`` stops mirroring."""
    bad = lt.first_mismatch(params, other)
    if bad is not None:
        raise ValueError(f"{argname} does not mirror params: mismatch at leaf {bad!r}")


def _check_same_shape(path: str, a: Any, b: Any, argname: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{argname} leaf {path!r} has shape {tuple(b.shape)}, params has {tuple(a.shape)}"
        )


def _map_scores(fn, params, *others, select, names) -> PyTree:
    """Maps ``fn(path, w, *others)`` over selected leaves; None elsewhere. Validates ``others``."""
    for other, name in zip(others, names, strict=True):
        _check_mirror(params, other, name)

    def one(path, w, *rest):
        for r, name in zip(rest, names, strict=True):
            if r is None:
                raise ValueError(f"{name} has no value at selected leaf {path!r}")
            _check_same_shape(path, w, r, name)
        return fn(path, w, *rest)

    return lt.map_selected(one, params, *others, select=select, unselected="none", with_path=True)


# ----------------------------------------------------------------------------- scores


def magnitude(params: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """Magnitude scores ``|w|`` (Han et al. 2015).

    Args:
      params: parameter pytree.
      select: which leaves; default `lightcomp.tree.default_rule`.

    Returns:
      float32 tree, each selected leaf's shape; None at unselected leaves.

    Example:
      >>> m = masks(magnitude(params), 0.9)
    """
    return _map_scores(lambda _, w: jnp.abs(w).astype(_F32), params, select=select, names=())


def gradient(params: PyTree, grads: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """Gradient scores ``|g|``: weights where the loss is insensitive go first.

    Args:
      params: parameter pytree (decides selection).
      grads: gradients, the structure and shapes of ``params``.

    Returns:
      float32 tree; None at unselected leaves.

    Example:
      >>> s = gradient(params, jax.grad(loss)(params))
    """
    fn = lambda _, w, g: jnp.abs(g).astype(_F32)
    return _map_scores(fn, params, grads, select=select, names=("grads",))


def taylor(params: PyTree, grads: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """First-order Taylor saliency ``|w * g|``.

    Args:
      params: parameter pytree (decides selection).
      grads: gradients, the structure and shapes of ``params``.
      select: which leaves.

    Returns:
      float32 tree, each selected leaf's shape; None at unselected leaves.

    References:
      Molchanov et al., "Pruning Convolutional Neural Networks for Resource
      Efficient Inference", 2017.

    Example:
      >>> s = taylor(params, jax.grad(loss)(params))
    """
    fn = lambda _, w, g: jnp.abs(w.astype(_F32) * g.astype(_F32))
    return _map_scores(fn, params, grads, select=select, names=("grads",))


def fisher(params: PyTree, sq_grads: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """Diagonal-Fisher (Optimal Brain Damage) saliency ``0.5 * w**2 * F``.

    ``F`` is the running mean of squared per-batch gradients, from
    `sq_grads_init` / `sq_grads_update` (pass ``acc.mean``) or any tree of the
    params' shapes (None allowed at unselected leaves).

    Args:
      params: parameter pytree.
      sq_grads: mean squared gradients, params' shapes.
      select: which leaves.

    Returns:
      float32 tree, each selected leaf's shape; None at unselected leaves.

    References:
      LeCun, Denker & Solla, "Optimal Brain Damage", 1990; Theis et al.,
      "Faster gaze prediction with dense networks and Fisher pruning", 2018.

    Example:
      >>> acc = sq_grads_init(params)
      >>> for b in batches: acc = sq_grads_update(acc, grad_fn(params, b))
      >>> s = fisher(params, acc.mean)
    """
    fn = lambda _, w, f: 0.5 * jnp.square(w.astype(_F32)) * f.astype(_F32)
    return _map_scores(fn, params, sq_grads, select=select, names=("sq_grads",))


class SqGrads(NamedTuple):
    """Running mean of squared gradients (the diagonal empirical Fisher).

    Attributes:
      count: int32 scalar, batches seen.
      mean: float32 tree of the params' shapes; None at unselected leaves.
    """

    count: jax.Array
    mean: PyTree


def sq_grads_init(params: PyTree, *, select: lt.SelectLike = None) -> SqGrads:
    """An empty `SqGrads` accumulator for the selected leaves of ``params``.

    Args:
      params: parameter pytree (shapes only).
      select: which leaves.

    Returns:
      ``SqGrads(count=0, mean=zeros)``, float32 zeros of each selected leaf's shape.

    Example:
      >>> acc = sq_grads_init(params)
      >>> acc = sq_grads_update(acc, jax.grad(loss)(params, batch))
    """
    zeros = lt.map_selected(
        lambda w: jnp.zeros(w.shape, _F32), params, select=select, unselected="none"
    )
    return SqGrads(jnp.zeros((), jnp.int32), zeros)


def sq_grads_update(acc: SqGrads, grads: PyTree) -> SqGrads:
    """Adds one batch's gradients: ``mean += (g**2 - mean) / (count + 1)``. Jittable.

    Args:
      acc: the accumulator so far.
      grads: one batch's gradients, params' structure.

    Returns:
      The updated `SqGrads`.

    Example:
      >>> acc = jax.jit(sq_grads_update)(acc, grads)
    """
    count = acc.count + 1
    inv = 1.0 / count.astype(_F32)

    def one(g, m):
        if m is None:
            return None
        return m + (jnp.square(g.astype(_F32)) - m) * inv

    return SqGrads(count, jax.tree.map(one, grads, acc.mean))


def movement(params: PyTree, grads_accum: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """Movement scores ``-w * G`` with ``G`` the gradient accumulated over training steps.

    Weights moving away from zero score high and are kept; weights the
    optimizer pushes towards zero go first.

    Args:
      params: parameter pytree.
      grads_accum: gradients summed over the steps so far, params' shapes.
      select: which leaves.

    Returns:
      float32 tree, each selected leaf's shape; None at unselected leaves.

    References:
      Sanh, Wolf & Rush, "Movement Pruning: Adaptive Sparsity by Fine-Tuning", 2020.

    Example:
      >>> s = movement(params, summed_grads)
    """
    fn = lambda _, w, g: -(w.astype(_F32) * g.astype(_F32))
    return _map_scores(fn, params, grads_accum, select=select, names=("grads_accum",))


def random(key: jax.Array, params: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """Uniform random scores in [0, 1) (the random-pruning baseline); one key per leaf.

    Args:
      key: a PRNG key.
      params: parameter pytree (shapes only).
      select: which leaves.

    Returns:
      float32 tree, each selected leaf's shape; None at unselected leaves.

    Example:
      >>> m = masks(random(jax.random.key(0), params), 0.5)
    """
    flags = jax.tree.leaves(lt.selection(params, select))
    keys = iter(jax.random.split(key, max(1, len(flags))))
    return _map_scores(
        lambda _, w: jax.random.uniform(next(keys), w.shape, _F32), params, select=select, names=()
    )


def wanda(params: PyTree, input_norms: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """Wanda scores ``|W_ij| * ||X_i||_2``: weight magnitude times input-feature norm.

    Args:
      params: parameter pytree; kernels ``(..., in, out)``.
      input_norms: a tree mirroring params with a float ``[in]`` vector at each
        selected kernel (see `input_norms`), None elsewhere.

    Returns:
      float32 scores; None at unselected leaves. The paper compares weights per
      output: use ``masks(..., scope="output")``.

    References:
      Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large
      Language Models", 2023.

    Example:
      >>> norms = input_norms(model, params, calibration_batches)
      >>> m = masks(wanda(params, norms), 0.5, scope="output")
    """
    _check_mirror(params, input_norms, "input_norms")

    def one(path, w, norm):
        if norm is None:
            raise ValueError(f"input_norms has no value at selected leaf {path!r}")
        if w.ndim < 2 or tuple(norm.shape) != (w.shape[-2],):
            raise ValueError(
                f"input_norms leaf {path!r} has shape {tuple(norm.shape)}, "
                f"expected ({w.shape[-2] if w.ndim >= 2 else '?'},) for kernel {tuple(w.shape)}"
            )
        return jnp.abs(w.astype(_F32)) * norm.astype(_F32)[:, None]

    return lt.map_selected(
        one, params, input_norms, select=select, unselected="none", with_path=True
    )


def input_norms(
    model: nn.Module,
    params: PyTree,
    batches: Iterable[Any],
    *,
    method: str | Callable | None = None,
) -> PyTree:
    """Per-input-feature L2 norms of the inputs of every ``nn.Dense`` of a linen model.

    The calibration batches run through ``model.apply`` (jitted) while
    ``flax.linen.intercept_methods`` records ``sum(x**2)`` over all rows of
    each Dense input; the norms are ``sqrt`` of the sums over all batches.

    Args:
      model: a linen module.
      params: its ``params`` collection.
      batches: an iterable of input arrays, or of dicts with an ``"inputs"`` key.
      method: passed to ``model.apply`` (default ``__call__``).

    Returns:
      A tree mirroring ``params`` with a float32 ``[in]`` vector at each Dense
      ``kernel`` and None elsewhere (for `wanda`).

    Raises:
      ValueError: ``batches`` is empty, or the model has no Dense layer.

    Example:
      >>> norms = input_norms(lc.models.MLP((64, 10)), params, [x[:128], x[128:256]])
    """
    collection = "_lightcomp_input_sq"

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            x = jnp.asarray(args[0]).astype(_F32)
            sq = jnp.sum(jnp.square(x).reshape(-1, x.shape[-1]), axis=0)
            context.module.sow(collection, "sq", sq)
        return next_fun(*args, **kwargs)

    @jax.jit
    def one_batch(p, x):
        with nn.intercept_methods(interceptor):
            _, state = model.apply({"params": p}, x, mutable=[collection], method=method)
        return state.get(collection, {})

    total = None
    for batch in batches:
        x = batch["inputs"] if isinstance(batch, Mapping) else batch
        sums = one_batch(params, x)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if total is None:
        raise ValueError("batches is empty: input_norms needs at least one calibration batch")
    by_module: dict[str, jax.Array] = {}
    for path, leaf in lt.leaves_with_paths(total, argname="intermediates"):
        module = path.rsplit("/sq/", 1)[0]
        by_module[module] = by_module.get(module, 0.0) + leaf
    if not by_module:
        raise ValueError("model has no nn.Dense layer: input_norms found no input to record")
    ptree = jax.tree.unflatten(jax.tree.structure(params), lt.paths(params))

    def one(path):
        module, _, name = path.rpartition("/")
        if name == "kernel" and module in by_module:
            return jnp.sqrt(by_module[module])
        return None

    return jax.tree.map(one, ptree)


# ----------------------------------------------------------------------------- masks


def _check_fraction(value: Any, argname: str, *, allow_one: bool, where: str = "") -> None:
    if _is_traced(value):
        return  # a traced sparsity (a schedule under jit) cannot be checked here
    try:
        s = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{argname}{where} must be a float, got {type(value).__name__}") from e
    upper_ok = s <= 1.0 if allow_one else s < 1.0
    if not (math.isfinite(s) and s >= 0.0 and upper_ok):
        rng = "[0, 1]" if allow_one else "[0, 1)"
        hint = (
            ""
            if allow_one
            else " (1.0 is allowed only with scope='global' and keep_one=True, which keeps "
            "each leaf's best unit alive)"
        )
        raise ValueError(f"{argname}{where} must be in {rng}, got {s}{hint}")


def _per_leaf_sparsity(sparsity, items, allow_one) -> list:
    """A sparsity for each selected leaf: a scalar broadcast, or a per-leaf tree / path dict."""
    if (
        _is_traced(sparsity)
        or isinstance(sparsity, (int, float, np.generic))
        or (hasattr(sparsity, "shape") and tuple(sparsity.shape) == ())
    ):
        _check_fraction(sparsity, "sparsity", allow_one=allow_one)
        return [sparsity] * len(items)
    try:
        flat, _ = jax.tree_util.tree_flatten_with_path(sparsity)
    except Exception as e:
        raise TypeError(f"sparsity must be a float or a per-leaf tree of floats: {e}") from e
    given = {lt.path_str(k): v for k, v in flat}
    wanted = [p for p, _ in items]
    for p in given:
        if p not in wanted:
            raise ValueError(
                f"sparsity has an entry for {p!r}, which is not a selected leaf of scores; "
                f"selected leaves are {wanted}"
            )
    out = []
    for p in wanted:
        if p not in given:
            raise ValueError(f"sparsity has no entry for selected leaf {p!r}")
        _check_fraction(given[p], "sparsity", allow_one=allow_one, where=f" at leaf {p!r}")
        out.append(given[p])
    return out


def _num_to_prune(s: Any, total: int) -> Any:
    """``round(s * total)``: exact Python rounding (half to even) when ``s`` is concrete."""
    if _is_traced(s):
        return jnp.round(jnp.asarray(s, _F32) * total).astype(jnp.int32)
    return round(float(s) * total)


def _units(score: jax.Array, granularity: str, block: tuple[int, int] | None):
    """Unit scores (flat float32), unit size (weights per unit) and an expander to leaf shape."""
    shape = score.shape
    if granularity == "element":
        return score.reshape(-1), 1, lambda u: u.reshape(shape)
    if granularity == "channel":
        c = shape[-1]
        units = jnp.sqrt(jnp.sum(jnp.square(score.reshape(-1, c)), axis=0))
        return units, math.prod(shape[:-1]), lambda u: jnp.broadcast_to(u, shape)
    bi, bo = block
    lead, i, o = shape[:-2], shape[-2], shape[-1]
    blocks = score.reshape((*lead, i // bi, bi, o // bo, bo))
    units = jnp.sqrt(jnp.sum(jnp.square(blocks), axis=(-3, -1)))

    def expand(u):
        u = u.reshape((*lead, i // bi, 1, o // bo, 1))
        return jnp.broadcast_to(u, (*lead, i // bi, bi, o // bo, bo)).reshape(shape)

    return units.reshape(-1), bi * bo, expand


def _sortable_bits(x: jax.Array) -> jax.Array:
    """float32 -> int32 keys in the same order (-0.0 counted as +0.0; -inf < ... < +inf)."""
    x = jnp.where(x == 0, jnp.zeros((), x.dtype), x)
    i = jax.lax.bitcast_convert_type(x, jnp.int32)
    return jnp.where(i < 0, i ^ jnp.int32(0x7FFFFFFF), i)


def _kth_smallest_key(keys: jax.Array, k: jax.Array, axis: int) -> jax.Array:
    """The k-th smallest key along ``axis`` (k >= 1), by bisection over the int32 range.

    32 counting passes instead of a sort: XLA's sort is a comparator sort that is
    ~20x slower than this on CPU for a few hundred thousand weights, and
    ``lax.top_k`` needs a static k. Keeps ``axis`` with size 1.
    """
    lo = jnp.min(keys, axis=axis, keepdims=True)
    hi = jnp.max(keys, axis=axis, keepdims=True)

    def body(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        enough = jnp.sum(keys <= mid, axis=axis, keepdims=True, dtype=jnp.int32) >= k
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return lo


def _lowest_k(x: jax.Array, k: Any, axis: int = -1) -> jax.Array:
    """True for the ``k`` lowest entries along ``axis``; ties go to the lower index first.

    The same set as the first ``k`` of a stable ascending argsort: the k-th smallest
    value is the threshold, every entry below it is chosen, and of the entries equal
    to it the first ``k - (number below)`` in index order (a cumsum). ``k`` may be traced.
    """
    size = x.shape[axis]
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, size)
    keys = _sortable_bits(x.astype(_F32))
    thr = _kth_smallest_key(keys, jnp.maximum(k, 1), axis)
    less = keys < thr
    n_less = jnp.sum(less, axis=axis, keepdims=True, dtype=jnp.int32)
    eq = keys == thr
    chosen = less | (eq & (jnp.cumsum(eq, axis=axis, dtype=jnp.int32) <= k - n_less))
    return chosen & (k > 0)


def _lowest_units(unit_scores: jax.Array, unit_sizes: jax.Array, k: Any) -> jax.Array:
    """True for the lowest-scoring units whose sizes add up to at most ``k`` weights.

    One ascending stable argsort: equal scores go in index order (lower index first),
    so the result is deterministic; with unit size 1 exactly ``k`` units are chosen.
    """
    order = jnp.argsort(unit_scores, stable=True)
    chosen_sorted = jnp.cumsum(unit_sizes[order]) <= k
    return jnp.zeros(unit_scores.shape, bool).at[order].set(chosen_sorted)


def _nm_mask(score: jax.Array, n: int, m: int) -> jax.Array:
    """Keeps the ``n`` best of every ``m`` consecutive weights along the input axis (-2)."""
    moved = jnp.moveaxis(score, -2, -1)  # (..., out, in)
    groups = moved.reshape((*moved.shape[:-1], moved.shape[-1] // m, m))
    if m <= 16:
        # small groups: each weight's rank by pairwise comparison inside its group
        # (m * m compares per group; cheaper to compile and run than a search)
        keys = _sortable_bits(groups)
        a, b = keys[..., :, None], keys[..., None, :]
        before = jnp.tril(jnp.ones((m, m), bool), k=-1)  # j < i
        rank = jnp.sum((b < a) | ((b == a) & before), axis=-1)
        keep = (rank >= m - n).reshape(moved.shape)
    else:
        keep = jnp.logical_not(_lowest_k(groups, m - n, axis=-1)).reshape(moved.shape)
    return jnp.moveaxis(keep, -1, -2)


def _check_structure(path, score, granularity, n, m, block, scope) -> None:
    if not lt.is_floating(score):
        raise ValueError(
            f"scores leaf {path!r} is not floating ({getattr(score, 'dtype', type(score))}); "
            "select only float leaves"
        )
    if not _is_traced(score) and np.isnan(np.asarray(score, np.float32)).any():
        raise ValueError(f"scores leaf {path!r} contains NaN")
    if granularity != "element" and score.ndim < 2:
        raise ValueError(
            f"granularity={granularity!r} needs ndim >= 2, scores leaf {path!r} has shape "
            f"{tuple(score.shape)}"
        )
    if scope == "output" and score.ndim < 2:
        raise ValueError(f"scope='output' needs ndim >= 2, leaf {path!r} is {tuple(score.shape)}")
    if granularity == "n:m" and score.shape[-2] % m:
        raise ValueError(
            f"m={m} does not divide the input axis (-2) of leaf {path!r} {tuple(score.shape)}"
        )
    if granularity == "block" and (score.shape[-2] % block[0] or score.shape[-1] % block[1]):
        raise ValueError(
            f"block={block} does not divide the last two axes of leaf {path!r} {tuple(score.shape)}"
        )


def masks(
    scores: PyTree,
    sparsity: Any,
    *,
    scope: str = "layer",
    granularity: str = "element",
    n: int | None = None,
    m: int | None = None,
    block: int | tuple[int, int] | None = None,
    keep_one: bool = False,
) -> PyTree:
    """Boolean keep-masks from importance scores: the lowest scores are pruned.

    Args:
      scores: float tree; None at unselected leaves (as every score function returns).
      sparsity: fraction of selected weights to zero, in [0, 1): a float (or a
        traced scalar, e.g. a schedule's value under jit), or, with
        ``scope="layer"``/``"output"``, a per-leaf tree or ``{path: float}`` dict
        (e.g. from `erk`). 1.0 is allowed only with ``scope="global"`` and
        ``keep_one=True``. For ``"n:m"`` the sparsity is fixed at ``(m - n) / m``:
        pass that value, None, or 0 (no pruning; a schedule's warm-up).
      scope: ``"layer"``: each leaf loses exactly ``round(s * size)`` weights
        (structured units: as many whole units as fit in that count);
        ``"global"``: one threshold over all selected leaves, the lowest
        ``round(s * total)`` weights go; ``"output"``: each output channel
        (last axis) of each leaf loses ``round(s * fan_in)`` weights (Wanda's
        per-output comparison; element granularity only).
      granularity: ``"element"``; ``"channel"`` (whole output channels scored
        by the L2 norm of their scores); ``"block"`` (``block`` x ``block``
        tiles of the last two axes, L2 norm); ``"n:m"`` (``n`` weights kept in
        every ``m`` consecutive along the input axis ``-2``).
      n: weights kept per group (``"n:m"`` only).
      m: group size (``"n:m"`` only).
      block: int or ``(rows, cols)`` (``"block"`` only).
      keep_one: with ``scope="global"``, a leaf that would lose every unit keeps
        its best one (so no layer is cut off; the total may fall short by that).

    Returns:
      A tree like ``scores``: bool arrays (True = kept) of each leaf's shape, None
      where ``scores`` has None. Ties are broken by index (lower index pruned
      first). Under jit, NaN scores count as the lowest (eagerly they raise).

    Raises:
      ValueError: bad scope / granularity / n / m / block / sparsity, a sparsity
        tree that does not mirror the scores, non-float or NaN scores (naming the leaf).

    Example:
      >>> m = masks(magnitude(params), 0.8, scope="global")
      >>> m = masks(magnitude(params), None, granularity="n:m", n=2, m=4)
    """
    if scope not in _SCOPES:
        raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
    if granularity not in _GRANULARITIES:
        raise ValueError(f"granularity must be one of {_GRANULARITIES}, got {granularity!r}")
    if scope == "output" and granularity != "element":
        raise ValueError("scope='output' works with granularity='element' only")
    if keep_one and scope != "global":
        raise ValueError(f"keep_one is for scope='global', not scope={scope!r}")
    if granularity == "n:m":
        if not (isinstance(n, int) and isinstance(m, int) and 1 <= n and m >= 1):
            raise ValueError(f"granularity='n:m' needs ints n >= 1 and m >= 1, got n={n}, m={m}")
        if n > m:
            raise ValueError(f"n (weights kept, {n}) must be <= m (group size, {m})")
    elif n is not None or m is not None:
        raise ValueError(f"n and m are for granularity='n:m', not {granularity!r}")
    if granularity == "block":
        if isinstance(block, int):
            block = (block, block)
        if not (
            isinstance(block, tuple)
            and len(block) == 2
            and all(isinstance(b, int) and b >= 1 for b in block)
        ):
            raise ValueError(
                f"granularity='block' needs block = int >= 1 or (rows, cols), got {block}"
            )
    elif block is not None:
        raise ValueError(f"block is for granularity='block', not {granularity!r}")
    items = lt.leaves_with_paths(scores, argname="scores")
    if not items:
        raise ValueError("scores has no leaves (every leaf is None): nothing to prune")
    for path, score in items:
        _check_structure(path, score, granularity, n, m, block, scope)
    treedef = jax.tree.structure(scores)
    leaves = [s for _, s in items]

    if granularity == "n:m":
        if sparsity is not None and not _is_traced(sparsity):
            _check_fraction(sparsity, "sparsity", allow_one=False)
            if float(sparsity) != 0.0 and abs(float(sparsity) - (m - n) / m) > 1e-6:
                raise ValueError(
                    f"granularity='n:m' with n={n}, m={m} fixes sparsity at {(m - n) / m}; "
                    f"got sparsity={float(sparsity)} (pass that value, None, or 0 for no pruning)"
                )
        on = jnp.asarray(True) if sparsity is None else jnp.asarray(sparsity) > 0
        return jax.tree.unflatten(treedef, [_nm_keep(s, on, n, m) for s in leaves])

    if scope == "global":
        if not _is_scalar(sparsity):
            raise ValueError("scope='global' needs one scalar sparsity, not a per-leaf tree")
        _check_fraction(sparsity, "sparsity", allow_one=keep_one)
        total = sum(math.prod(s.shape) for s in leaves)
        k = _num_to_prune(sparsity, total)
        return jax.tree.unflatten(treedef, _global_keep(leaves, k, granularity, block, keep_one))

    per_leaf = _per_leaf_sparsity(sparsity, items, allow_one=False)
    out = []
    for s, leaf_sparsity in zip(leaves, per_leaf, strict=True):
        if scope == "output":
            k = _num_to_prune(leaf_sparsity, math.prod(s.shape[:-1]))
            out.append(_output_keep(s, k))
        else:
            k = _num_to_prune(leaf_sparsity, math.prod(s.shape))
            out.append(_layer_keep(s, k, granularity, block))
    return jax.tree.unflatten(treedef, out)


# The kernels below are jitted so that an eager `masks` call compiles one fused
# program per leaf shape instead of dispatching a dozen small ops; under an outer
# jit they are inlined. `k` is a traced int, so a new sparsity never recompiles.


def _clean(score: jax.Array) -> jax.Array:
    return jnp.where(jnp.isnan(score), -jnp.inf, score.astype(_F32))


@functools.partial(jax.jit, static_argnames=("granularity", "block"))
def _layer_keep(score, k, granularity, block):
    units, size, expand = _units(_clean(score), granularity, block)
    # equal-size units: as many whole units as fit in k weights
    return expand(jnp.logical_not(_lowest_k(units, k // size)))


@jax.jit
def _output_keep(score, k):
    cols = _clean(score).reshape(-1, score.shape[-1])
    return jnp.logical_not(_lowest_k(cols, k, axis=0)).reshape(score.shape)


@functools.partial(jax.jit, static_argnames=("n", "m"))
def _nm_keep(score, on, n, m):
    return jnp.logical_or(_nm_mask(_clean(score), n, m), jnp.logical_not(on))


@functools.partial(jax.jit, static_argnames=("granularity", "block", "keep_one"))
def _global_keep(leaves, k, granularity, block, keep_one):
    parts = [_units(_clean(s), granularity, block) for s in leaves]
    unit_scores = jnp.concatenate([u for u, _, _ in parts])
    if granularity == "element":
        pruned = _lowest_k(unit_scores, k)
    else:  # units of different sizes across leaves
        sizes = jnp.concatenate([jnp.full(u.shape, z, jnp.int32) for u, z, _ in parts])
        pruned = _lowest_units(unit_scores, sizes, k)
    out, start = [], 0
    for units, _, expand in parts:  # a loop over leaves, not elements
        p = pruned[start : start + units.shape[0]]
        start += units.shape[0]
        if keep_one:
            best = jnp.argmax(units)
            p = p.at[best].set(p[best] & ~jnp.all(p))
        out.append(expand(jnp.logical_not(p)))
    return out


def _is_scalar(x: Any) -> bool:
    return (
        _is_traced(x)
        or isinstance(x, (int, float, np.generic))
        or (hasattr(x, "shape") and tuple(x.shape) == ())
    )


def erk(
    params: PyTree, sparsity: float, *, select: lt.SelectLike = None, power: float = 1.0
) -> PyTree:
    """Erdős–Rényi-Kernel per-layer sparsities whose weighted mean is ``sparsity``.

    A layer's density is proportional to ``sum(shape) / prod(shape)`` (raised to
    ``power``), so small layers stay denser; layers that would exceed density 1
    are kept dense and the rest rescaled, as in RigL's implementation.

    Args:
      params: parameter pytree (only shapes are read).
      sparsity: overall fraction of selected weights to prune, in [0, 1).
      select: which leaves.
      power: exponent on the ERK ratio (1.0 = ERK).

    Returns:
      A tree mirroring params with a Python float sparsity at each selected leaf,
      None elsewhere; pass it to `masks` (``scope="layer"``).

    References:
      Mocanu et al., 2018 (Erdős–Rényi); Evci et al., "Rigging the Lottery:
      Making All Tickets Winners" (RigL), 2020 (ERK).

    Example:
      >>> m = masks(magnitude(params), erk(params, 0.9))
    """
    _check_fraction(sparsity, "sparsity", allow_one=False)
    flags = jax.tree.leaves(lt.selection(params, select, require_any=True))
    shapes = [tuple(w.shape) for w, f in zip(jax.tree.leaves(params), flags, strict=True) if f]
    sizes = np.array([math.prod(s) for s in shapes], np.float64)
    raw = np.array([(sum(s) / math.prod(s)) ** power for s in shapes], np.float64)
    dense = np.zeros(len(shapes), bool)
    target = (1.0 - sparsity) * sizes.sum()
    density = np.ones(len(shapes))
    while not dense.all():  # at most one pass per layer (a loop over layers, not elements)
        budget = target - sizes[dense].sum()
        eps = budget / np.sum(raw[~dense] * sizes[~dense])
        density = np.where(dense, 1.0, eps * raw)
        over = (~dense) & (density > 1.0)
        if not over.any():
            break
        dense |= over
    values = iter(float(np.clip(1.0 - d, 0.0, 1.0 - 1e-12)) for d in density)
    return jax.tree.map(
        lambda w, f: next(values) if f else None, params, lt.selection(params, select)
    )


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
    """Zeroes the pruned weights: ``where(mask, w, 0)`` at each masked leaf, dtype kept.

    Args:
      params: parameter pytree.
      masks: bool tree mirroring params; None (or an all-True array) at leaves
        that are not pruned, which pass through untouched.

    Returns:
      params with pruned weights exactly 0. Idempotent; jittable.

    Example:
      >>> pruned = apply_masks(params, masks(magnitude(params), 0.5))
    """
    _check_mirror(params, masks, "masks")

    def one(path, w, mk):
        if mk is None:
            return w
        _check_same_shape(path, w, mk, "masks")
        return jnp.where(mk, w, jnp.zeros((), w.dtype))

    ptree = jax.tree.unflatten(jax.tree.structure(params), lt.paths(params))
    return jax.tree.map(one, ptree, params, masks)


# ----------------------------------------------------------------------------- shrink


def _get(tree: Mapping, path: str, argname: str):
    node = tree
    for name in path.split("/"):
        if not isinstance(node, Mapping) or name not in node:
            raise ValueError(f"{argname} has no layer {path!r}")
        node = node[name]
    return node


def _set(tree: dict, path: str, value) -> None:
    *head, last = path.split("/")
    node = tree
    for name in head:
        node = node[name]
    node[last] = value


def _copy(tree: Any) -> Any:
    """A nested-dict copy of a Mapping tree with NumPy leaves."""
    if isinstance(tree, Mapping):
        return {k: _copy(v) for k, v in tree.items()}
    return np.asarray(tree)


def shrink(
    params: Mapping,
    masks: PyTree,
    order: Sequence[str],
    *,
    activation: Callable[[jax.Array], jax.Array] | None = None,
) -> dict:
    """Physically removes pruned output channels from a sequential MLP/CNN.

    For each layer in ``order`` but the last, the output channels whose kernel
    mask is all-False are deleted (kernel columns ``[..., c]`` and ``bias[c]``)
    together with the matching input rows (axis ``-2``) of the next layer's
    kernel. The next layer's input axis must index this layer's output
    channels: Dense -> Dense, Conv -> Conv, Conv -> global pooling -> Dense.
    Runs eagerly (the new shapes depend on the mask values).

    A pruned channel still outputs the constant ``activation(bias)``. With
    ``activation`` given, that constant's contribution is folded into the next
    layer's bias, so the result computes exactly the masked model's function
    when the next layer is Dense (or sees the channel through global pooling).
    Without it, pruned channels' biases are dropped: the result equals the
    masked model with those biases zeroed too.

    Args:
      params: nested dict (linen params; ``nnx.State.to_pure_dict()``).
      masks: channel masks from ``masks(..., granularity="channel")`` (None where
        a layer is not pruned). Weights masked inside kept channels are zeroed.
      order: layer paths in forward order, e.g. ``["Dense_0", "Dense_1", "Dense_2"]``;
        each holds ``kernel`` and optionally ``bias``.
      activation: the elementwise activation between layers, for bias folding.

    Returns:
      A new, smaller nested dict of dense params.

    Raises:
      ValueError: a layer is missing, a kernel mask is not channel-structured, or
        the next layer's input axis does not match.

    Example:
      >>> m = masks(magnitude(params), 0.5, granularity="channel")
      >>> small = shrink(params, m, ["Dense_0", "Dense_1", "Dense_2"], activation=jax.nn.relu)
    """
    if isinstance(order, str) or len(order) < 1:
        raise ValueError(f"order must be a sequence of layer paths, got {order!r}")
    _check_mirror(params, masks, "masks")
    # Host-side NumPy: the output shapes depend on mask values, so this cannot jit.
    out = _copy(params)
    for path, mk in lt.leaves_with_paths(masks, argname="masks"):
        w = _get(out, path, "params")
        _check_same_shape(path, w, mk, "masks")
        _set(out, path, np.where(np.asarray(mk), w, np.zeros((), w.dtype)))
    for layer in order:
        if "kernel" not in _get(out, layer, "params"):
            raise ValueError(f"layer {layer!r} in order has no 'kernel'")
    for i, layer in enumerate(order[:-1]):
        nxt = order[i + 1]
        node, nnode = _get(out, layer, "params"), _get(out, nxt, "params")
        kernel, nkernel = node["kernel"], nnode["kernel"]
        mk = _get(masks, layer + "/kernel", "masks") if _has(masks, layer) else None
        if mk is None:
            continue
        mk = np.asarray(mk).reshape(-1, kernel.shape[-1])
        alive = mk.any(axis=0)
        if not np.array_equal(mk, np.broadcast_to(alive, mk.shape)):
            raise ValueError(
                f"masks at {layer + '/kernel'!r} are not channel-structured (some output channels "
                "are partly pruned); use masks(..., granularity='channel')"
            )
        if nkernel.shape[-2] != kernel.shape[-1]:
            raise ValueError(
                f"layer {nxt!r} kernel input axis ({nkernel.shape[-2]}) does not match the "
                f"{kernel.shape[-1]} output channels of {layer!r}"
            )
        keep = np.flatnonzero(alive)
        drop = np.flatnonzero(~alive)
        if activation is not None and "bias" in node and drop.size and "bias" in nnode:
            const = np.asarray(activation(jnp.asarray(node["bias"][drop], _F32)), np.float32)
            rows = nkernel[..., drop, :].astype(np.float32)
            contrib = np.einsum("c,...co->o", const, rows)
            nbias = nnode["bias"]
            nnode["bias"] = (nbias.astype(np.float32) + contrib).astype(nbias.dtype)
        node["kernel"] = np.take(kernel, keep, axis=-1)
        if "bias" in node:
            node["bias"] = np.take(node["bias"], keep, axis=-1)
        nnode["kernel"] = np.take(nkernel, keep, axis=-2)
    return jax.tree.map(jnp.asarray, out)


def _has(masks: PyTree, layer: str) -> bool:
    try:
        _get(masks, layer + "/kernel", "masks")
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------- reports


def sparsity_report(params_or_masks: PyTree, *, select: lt.SelectLike = None) -> dict:
    """Per-leaf and total zero counts of a params tree or a masks tree.

    For a params tree, the selected leaves are counted (zeros = entries equal
    to 0); for a masks tree, every bool leaf (zeros = False entries). Reads
    values on the host: call it outside jit.

    Returns:
      ``{"leaves": {path: {"shape", "size", "zeros", "sparsity"}}, "total":
      {"size", "zeros", "sparsity"}}`` with Python ints and floats.

    Example:
      >>> rep = sparsity_report(pruned_params); rep["total"]["sparsity"]
      0.5
      >>> rich.print(sparsity_table(rep))
    """
    items = lt.leaves_with_paths(params_or_masks, argname="params_or_masks")
    is_mask = bool(items) and all(getattr(w, "dtype", None) == jnp.bool_ for _, w in items)
    if is_mask:
        chosen = items
    else:
        flags = jax.tree.leaves(lt.selection(params_or_masks, select, argname="params_or_masks"))
        chosen = [it for it, f in zip(items, flags, strict=True) if f]
    leaves, total_size, total_zeros = {}, 0, 0
    for path, w in chosen:
        arr = np.asarray(w)
        size = int(arr.size)
        zeros = int(size - np.count_nonzero(arr))
        leaves[path] = {
            "shape": tuple(arr.shape),
            "size": size,
            "zeros": zeros,
            "sparsity": zeros / size if size else 0.0,
        }
        total_size += size
        total_zeros += zeros
    total = {
        "size": total_size,
        "zeros": total_zeros,
        "sparsity": total_zeros / total_size if total_size else 0.0,
    }
    return {"leaves": leaves, "total": total}


def sparsity_table(report: Mapping, *, title: str = "sparsity"):
    """A printable ``rich.table.Table`` of a `sparsity_report`.

    Args:
      report: what `sparsity_report` returned.
      title: the table's title.

    Returns:
      A ``rich.table.Table``: one row per leaf (shape, size, zeros, sparsity) and a total.

    Example:
      >>> rich.print(sparsity_table(sparsity_report(params)))
    """
    from rich.table import Table  # imported here: only reports need rich

    table = Table(title=title)
    for col, just in (
        ("leaf", "left"),
        ("shape", "left"),
        ("size", "right"),
        ("zeros", "right"),
        ("sparsity", "right"),
    ):
        table.add_column(col, justify=just)
    for path, row in report["leaves"].items():
        table.add_row(
            path,
            str(row["shape"]),
            f"{row['size']:,}",
            f"{row['zeros']:,}",
            f"{row['sparsity']:.2%}",
        )
    t = report["total"]
    table.add_row(
        "total", "", f"{t['size']:,}", f"{t['zeros']:,}", f"{t['sparsity']:.2%}", style="bold"
    )
    return table


# ----------------------------------------------------------------------------- schedules


def constant(sparsity: float) -> Callable[[jax.Array], jax.Array]:
    """``step -> sparsity`` for every step (float32).

    Args:
      sparsity: in [0, 1).

    Returns:
      A jittable schedule ``step -> float32`` (``step`` an int scalar or array).

    Example:
      >>> constant(0.5)(10)
      Array(0.5, dtype=float32)
    """
    _check_fraction(sparsity, "sparsity", allow_one=False)

    def schedule(step):
        return jnp.full(jnp.shape(step), sparsity, _F32)

    return schedule


def one_shot(sparsity: float, at_step: int) -> Callable[[jax.Array], jax.Array]:
    """``step -> 0`` before ``at_step``, ``sparsity`` from then on.

    Args:
      sparsity: in [0, 1).
      at_step: the step pruning happens at.

    Returns:
      A jittable schedule ``step -> float32``.

    Example:
      >>> one_shot(0.8, 100)(jnp.array([99, 100]))
      Array([0. , 0.8], dtype=float32)
    """
    _check_fraction(sparsity, "sparsity", allow_one=False)
    if not isinstance(at_step, (int, np.integer)) or at_step < 0:
        raise ValueError(f"at_step must be an int >= 0, got {at_step!r}")

    def schedule(step):
        return jnp.where(jnp.asarray(step) >= at_step, _F32(sparsity), _F32(0.0))

    return schedule


def polynomial_schedule(
    initial: float,
    final: float,
    begin_step: int,
    end_step: int,
    power: float = 3,
    frequency: int = 1,
) -> Callable[[jax.Array], jax.Array]:
    """Gradual pruning: ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))**power``.

    ``t`` advances in multiples of ``frequency`` from ``begin_step`` (the value
    is updated every ``frequency`` steps) and is clipped to ``[begin_step,
    end_step]``: the result is ``initial`` up to ``begin_step`` and exactly
    ``final`` from ``end_step`` on. float32.

    Args:
      initial: sparsity ``s_i`` at ``begin_step``, in [0, 1).
      final: sparsity ``s_f`` at ``end_step``, in [0, 1).
      begin_step: ``t0``.
      end_step: ``t0 + n dt``, > ``begin_step``.
      power: the exponent (3 in the paper).
      frequency: ``dt``, steps between updates.

    Returns:
      A jittable schedule ``step -> float32``.

    References:
      Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning
      for model compression", 2017.

    Example:
      >>> sched = polynomial_schedule(0.0, 0.9, 0, 1000, frequency=100)
      >>> jax.jit(sched)(500)
    """
    for name, v in (("initial", initial), ("final", final)):
        _check_fraction(v, name, allow_one=False)
    for name, v in (("begin_step", begin_step), ("end_step", end_step)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be > begin_step ({begin_step})")
    if not (isinstance(power, (int, float)) and power > 0):
        raise ValueError(f"power must be > 0, got {power!r}")
    if not isinstance(frequency, (int, np.integer)) or frequency < 1:
        raise ValueError(f"frequency must be an int >= 1, got {frequency!r}")
    span = float(end_step - begin_step)

    def schedule(step):
        step = jnp.asarray(step, jnp.int32)
        t = jnp.clip(step, begin_step, end_step) - begin_step
        t = (t // frequency) * frequency
        frac = 1.0 - t.astype(_F32) / span
        value = (final + (initial - final) * frac**power).astype(_F32)
        # final from end_step on, even when the span is not a multiple of frequency
        return jnp.where(step >= end_step, _F32(final), value)

    return schedule


def iterative(
    levels: Sequence[float], every: int, *, begin_step: int = 0
) -> Callable[[jax.Array], jax.Array]:
    """Iterative pruning (prune, retrain, prune more): ``levels[i]`` during round ``i``.

    ``0`` before ``begin_step``; round ``i`` covers steps ``[begin_step + i *
    every, begin_step + (i + 1) * every)``; the last level holds afterwards.

    Args:
      levels: non-decreasing sparsities in [0, 1).
      every: steps per round.
      begin_step: the first round's first step.

    Returns:
      A jittable schedule ``step -> float32``.

    References:
      Han, Pool, Tran & Dally, "Learning both Weights and Connections for
      Efficient Neural Networks", 2015.

    Example:
      >>> sched = iterative([0.5, 0.75, 0.875], every=1000)
    """
    levels = tuple(levels)
    if not levels:
        raise ValueError("levels must be a non-empty sequence of sparsities")
    for i, v in enumerate(levels):
        _check_fraction(v, "levels", allow_one=False, where=f"[{i}]")
    if any(b < a for a, b in itertools.pairwise(levels)):
        raise ValueError(f"levels must be non-decreasing, got {levels}")
    if not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    table = np.asarray(levels, np.float32)

    def schedule(step):
        step = jnp.asarray(step, jnp.int32)
        idx = jnp.clip((step - begin_step) // every, 0, len(levels) - 1)
        return jnp.where(step >= begin_step, jnp.asarray(table)[idx], _F32(0.0))

    return schedule


def cosine_fraction(alpha: float, end_step: int) -> Callable[[jax.Array], jax.Array]:
    """RigL's drop fraction ``alpha / 2 * (1 + cos(pi * t / end_step))``, 0 after ``end_step``.

    Args:
      alpha: the initial drop fraction, in [0, 1].
      end_step: the step mask updates stop at.

    Returns:
      A jittable schedule ``step -> float32`` for `prune_and_regrow`'s ``fraction``.

    References:
      Evci et al., "Rigging the Lottery: Making All Tickets Winners", 2020.

    Example:
      >>> frac = cosine_fraction(0.3, end_step=7500)
      >>> params, m, opt_state = prune_and_regrow(params, m, grads, frac(step), opt_state=opt_state)
    """
    _check_fraction(alpha, "alpha", allow_one=True)
    if not isinstance(end_step, (int, np.integer)) or end_step < 1:
        raise ValueError(f"end_step must be an int >= 1, got {end_step!r}")

    def schedule(step):
        t = jnp.asarray(step, _F32)
        value = 0.5 * alpha * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, end_step) / end_step))
        return jnp.where(t < end_step, value, 0.0).astype(_F32)

    return schedule


# ----------------------------------------------------------------------------- penalties


def l1_penalty(params: PyTree, *, select: lt.SelectLike = None) -> jax.Array:
    """``sum |w|`` over the selected leaves (float32 scalar); add ``lam * l1`` to the loss.

    Args:
      params: parameter pytree.
      select: which leaves.

    Returns:
      float32 scalar; differentiable (subgradient ``sign(w)``).

    Example:
      >>> loss = ce + 1e-4 * l1_penalty(params)
    """
    flags = jax.tree.leaves(lt.selection(params, select))
    leaves = [w for w, f in zip(jax.tree.leaves(params), flags, strict=True) if f]
    return sum((jnp.sum(jnp.abs(w.astype(_F32))) for w in leaves), jnp.zeros((), _F32))


def _safe_norm(x: jax.Array, axes) -> jax.Array:
    """L2 norm with a zero (not NaN) gradient at 0; optax.safe_norm adds a floor to the value."""
    sq = jnp.sum(jnp.square(x), axis=axes)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def group_lasso_penalty(
    params: PyTree, *, axis: int = -1, select: lt.SelectLike = None, scale: bool = False
) -> jax.Array:
    """Group lasso ``sum_g ||w_g||_2``; a group is one index of ``axis`` (-1: output channels).

    Drives whole channels to zero, ready for ``granularity="channel"`` masks and `shrink`.

    Args:
      params: parameter pytree.
      axis: the axis whose indices are the groups; the norm runs over all others.
      select: which leaves.
      scale: multiply each group's norm by ``sqrt(group size)`` (Yuan & Lin 2006).

    Returns:
      float32 scalar.

    References:
      Yuan & Lin, "Model selection and estimation in regression with grouped
      variables", 2006; Wen et al., "Learning Structured Sparsity in Deep Neural
      Networks", 2016.

    Example:
      >>> loss = ce + 1e-3 * group_lasso_penalty(params)
    """
    flags = jax.tree.leaves(lt.selection(params, select))
    total = jnp.zeros((), _F32)
    for (path, w), f in zip(lt.leaves_with_paths(params), flags, strict=True):
        if not f:
            continue
        if not -w.ndim <= axis < w.ndim:
            raise ValueError(f"axis={axis} is out of range for leaf {path!r} {tuple(w.shape)}")
        ax = axis % w.ndim
        others = tuple(a for a in range(w.ndim) if a != ax)
        norms = _safe_norm(w.astype(_F32), others)
        if scale:
            norms = norms * math.sqrt(math.prod(w.shape[a] for a in others))
        total = total + jnp.sum(norms)
    return total


# ----------------------------------------------------------------------------- training


def _mask_updates(updates: PyTree, masks: PyTree, params: PyTree | None) -> PyTree:
    """Pruned positions get ``-params`` (so ``params + update == 0`` exactly) or 0."""

    def one(u, mk, *p):
        if mk is None or u is None:
            return u
        fill = -p[0].astype(u.dtype) if p and p[0] is not None else jnp.zeros((), u.dtype)
        return jnp.where(mk, u, fill)

    if params is None:
        return jax.tree.map(one, updates, masks)
    return jax.tree.map(one, updates, masks, params)


def keep_pruned(
    optimizer: optax.GradientTransformation,
    masks_fn: Callable[[PyTree], PyTree] | PyTree | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optax optimizer so pruned weights stay exactly 0.0 step after step.

    The gradients of pruned weights are zeroed before the inner optimizer (so
    momentum and Adam moments never build up there), and the outgoing updates
    at pruned positions are ``-w`` (so ``optax.apply_updates`` lands on exactly
    0.0, even for a weight not yet zeroed or just pruned by a new mask).

    Args:
      optimizer: any optax transformation.
      masks_fn: ``params -> masks``, a fixed masks tree, or None; a ``masks=``
        keyword to ``update`` overrides it (dynamic sparse training, masks in
        the train state).

    Returns:
      A ``GradientTransformationExtraArgs``; ``update(grads, state, params,
      masks=None, **extra)`` needs ``params``.

    Example:
      >>> tx = keep_pruned(optax.adam(1e-3), m)
      >>> updates, opt_state = tx.update(grads, opt_state, params)
      >>> params = optax.apply_updates(params, updates)
    """
    inner = optax.with_extra_args_support(optimizer)

    def init(params):
        return inner.init(params)

    def update(updates, state, params=None, *, masks=None, **extra_args):
        if params is None:
            raise ValueError("keep_pruned.update needs params (the current weights)")
        if masks is None:
            if masks_fn is None:
                raise ValueError("keep_pruned needs masks: give masks_fn or pass masks= to update")
            masks = masks_fn(params) if callable(masks_fn) else masks_fn
        _check_mirror(params, masks, "masks")  # at trace time only: no per-step cost
        grads = _mask_updates(updates, masks, None)
        new_updates, state = inner.update(grads, state, params, **extra_args)
        return _mask_updates(new_updates, masks, params), state

    return optax.GradientTransformationExtraArgs(init, update)


def reset_moments(opt_state: PyTree, params: PyTree, reset: PyTree) -> PyTree:
    """Zeroes optimizer-state entries at ``reset`` positions in every params-shaped subtree.

    Walks the optimizer state and treats each subtree whose structure and leaf
    shapes equal ``params``'s (momentum, Adam's ``mu`` and ``nu``, ...) as
    per-weight moments; counts, step sizes and anything else pass through. No
    ``isinstance`` on optimizer state types, so any optax chain works.

    Args:
      opt_state: an optax state.
      params: the parameter tree the state was built for.
      reset: bool tree mirroring params (None where nothing is reset).

    Returns:
      The optimizer state with moments at reset positions set to 0.

    Example:
      >>> changed = jax.tree.map(lambda a, b: a != b, old_masks, new_masks)
      >>> opt_state = reset_moments(opt_state, params, changed)
    """
    pdef = jax.tree.structure(params)
    pshapes = [jnp.shape(x) for x in jax.tree.leaves(params)]

    def zero(mom, r):
        if r is None:
            return mom
        return jnp.where(r, jnp.zeros((), mom.dtype), mom)

    def walk(node):
        if node is None:
            return None
        try:
            if (
                jax.tree.structure(node) == pdef
                and [jnp.shape(x) for x in jax.tree.leaves(node)] == pshapes
            ):
                return jax.tree.map(zero, node, reset)
        except (TypeError, ValueError):
            pass
        children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
        if treedef.num_leaves == 1 and treedef.num_nodes == 1:
            return node  # a leaf
        return jax.tree.unflatten(treedef, [walk(c) for c in children])

    return walk(opt_state)


@jax.jit
def _regrow_leaf(w, mk, g, fraction):
    """RigL on one leaf (jitted: an eager call compiles once per shape)."""
    flat_m = mk.reshape(-1)
    active = jnp.sum(flat_m.astype(jnp.int32))
    k = jnp.round(jnp.asarray(fraction, _F32) * active.astype(_F32)).astype(jnp.int32)
    mag = jnp.where(flat_m, jnp.abs(w.reshape(-1).astype(_F32)), jnp.inf)
    kept = flat_m & jnp.logical_not(_lowest_k(mag, k))
    grow_score = jnp.where(kept, -jnp.inf, jnp.abs(g.reshape(-1).astype(_F32)))
    grown = jnp.logical_not(kept) & _lowest_k(-grow_score, k)
    return (kept | grown).reshape(mk.shape)


def prune_and_regrow(
    params: PyTree,
    masks: PyTree,
    grads: PyTree,
    fraction: Any,
    *,
    opt_state: PyTree = None,
) -> tuple[PyTree, PyTree, PyTree]:
    """One RigL mask update: drop the weakest active weights, regrow by gradient magnitude.

    In each masked leaf, ``k = round(fraction * active)`` active weights with the
    smallest ``|w|`` are dropped and the ``k`` inactive weights with the largest
    ``|g|`` are grown (a just-dropped weight may come back), so the number of
    active weights is unchanged. Grown weights start at 0, and the optimizer's
    per-weight moments are reset (`reset_moments`) wherever the mask changed.
    Jittable; ``fraction`` may be traced (`cosine_fraction`). Ties by index.

    Args:
      params: parameter pytree.
      masks: current bool masks (None at unselected leaves).
      grads: dense gradients (computed at the masked params), params' structure.
      fraction: drop fraction in [0, 1].
      opt_state: optional optax state to reset.

    Returns:
      ``(params, masks, opt_state)``: params zeroed outside the new masks.

    References:
      Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All
      Tickets Winners", 2020.

    Example:
      >>> params, m, opt_state = prune_and_regrow(params, m, grads, 0.3, opt_state=opt_state)
    """
    _check_fraction(fraction, "fraction", allow_one=True)
    _check_mirror(params, masks, "masks")
    _check_mirror(params, grads, "grads")

    def one(w, mk, g):
        return None if mk is None else _regrow_leaf(w, mk, g, fraction)

    new_masks = jax.tree.map(one, params, masks, grads)
    changed = jax.tree.map(lambda a, b: None if b is None else a != b, masks, new_masks)
    new_params = apply_masks(params, new_masks)
    if opt_state is not None:
        opt_state = reset_moments(opt_state, params, changed)
    return new_params, new_masks, opt_state


# ----------------------------------------------------------------------------- one-shot


def one_shot_prune(
    params: PyTree,
    sparsity: Any,
    *,
    score: str | PyTree = "magnitude",
    input_norms: PyTree = None,
    scope: str | None = None,
    granularity: str = "element",
    n: int | None = None,
    m: int | None = None,
    block: int | tuple[int, int] | None = None,
    keep_one: bool = False,
    select: lt.SelectLike = None,
) -> tuple[PyTree, PyTree]:
    """Prunes a trained model to ``sparsity`` in one call (no training loop).

    Args:
      params: trained parameters.
      sparsity: as in `masks` (a float, a per-leaf tree such as `erk`'s, or None for n:m).
      score: ``"magnitude"``, ``"wanda"`` (needs ``input_norms``) or a scores tree.
      input_norms: from `input_norms`, for ``score="wanda"``.
      scope: as in `masks`; default ``"output"`` for Wanda's element pruning
        (the paper's per-output comparison), else ``"layer"``.
      granularity, n, m, block, keep_one: as in `masks`.
      select: which leaves.

    Returns:
      ``(pruned params, masks)``.

    Example:
      >>> norms = input_norms(model, params, calibration)
      >>> pruned, m = one_shot_prune(params, 0.5, score="wanda", input_norms=norms)
    """
    if isinstance(score, str):
        if score == "magnitude":
            scores = magnitude(params, select=select)
        elif score == "wanda":
            if input_norms is None:
                raise ValueError(
                    "score='wanda' needs input_norms= (see lightcomp.prune.input_norms)"
                )
            scores = wanda(params, input_norms, select=select)
        else:
            raise ValueError(f"score must be 'magnitude', 'wanda' or a scores tree, got {score!r}")
    else:
        _check_mirror(params, score, "score")
        scores = score
    if scope is None:
        wanda_element = isinstance(score, str) and score == "wanda" and granularity == "element"
        scope = "output" if wanda_element else "layer"
    mk = masks(
        scores,
        sparsity,
        scope=scope,
        granularity=granularity,
        n=n,
        m=m,
        block=block,
        keep_one=keep_one,
    )
    return apply_masks(params, mk), mk
