"""`pruning`: masks of the lowest-scoring weights, recomputed on a schedule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from lightcomp import _checks, prune, tree
from lightcomp.transform import _axes
from lightcomp.transform._base import Transform, check_state, fingerprint
from lightcomp.transform._sharding import follow_params

PyTree = Any


@struct.dataclass
class PruningState:
    """State of `pruning` (arrays only; the configuration is in the transform's closure).

    Attributes:
      masks: bool tree mirroring params (True = kept), None at unselected leaves.
      sparsity: float32 ``[]``, the target sparsity the masks were computed for.
      fingerprint: the static configuration it was built under (pytree aux data).
    """

    masks: PyTree
    sparsity: jax.Array
    fingerprint: str = struct.field(pytree_node=False, default="")


def _as_schedule(sparsity: Any) -> tuple[Callable[[jax.Array], jax.Array], bool]:
    """A float or a ``step -> sparsity`` function -> (jittable schedule, is_constant)."""
    if callable(sparsity):
        try:
            out = jax.eval_shape(sparsity, jax.ShapeDtypeStruct((), jnp.int32))
        except Exception as e:
            raise TypeError(
                "sparsity_or_schedule must be a jittable step -> sparsity function; calling "
                f"it on a traced int32 step failed: {type(e).__name__}: {e}"
            ) from e
        if not hasattr(out, "shape") or tuple(out.shape) != ():
            raise ValueError(f"sparsity_or_schedule must return a scalar, got {out}")
        return (lambda step: jnp.asarray(sparsity(step), jnp.float32)), False
    try:
        s = _checks.check_fraction(sparsity, "sparsity_or_schedule")
    except TypeError:
        raise TypeError(
            "sparsity_or_schedule must be a float in [0, 1) or a step -> sparsity function "
            f"(e.g. lightcomp.prune.polynomial_schedule(...)), got {type(sparsity).__name__}"
        ) from None
    return (lambda step: jnp.full((), s, jnp.float32)), True


def _nm_sparsity(sparsity: Any, granularity: prune.NM) -> Any:
    """n:m fixes the sparsity: None means it; a number must be it or 0 (dense)."""
    fixed = granularity.sparsity
    if sparsity is None:
        return fixed
    if not callable(sparsity):
        s = _checks.check_fraction(sparsity, "sparsity_or_schedule")
        if s not in (0.0, fixed):
            raise ValueError(
                f"granularity {granularity} fixes the sparsity at {fixed}; "
                f"got sparsity_or_schedule={s} (pass None)"
            )
    return sparsity


def pruning(
    sparsity_or_schedule: float | Callable[[jax.Array], jax.Array] | None = None,
    *,
    score: str | Callable[..., PyTree] = "magnitude",
    scope: str = "layer",
    granularity: Any = "element",
    n: int | None = None,
    m: int | None = None,
    block: int | tuple[int, int] | None = None,
    update_every: int | None = None,
    begin_step: int = 0,
    end_step: int | None = None,
    select: tree.SelectLike = None,
    axes: dict[str, tree.Axes] | None = None,
    stacked: Any = None,
) -> Transform:
    """Masks the lowest-scoring weights of the selected leaves (they become exactly 0.0).

    Masks come from `lightcomp.prune.masks` over a score tree. At ``init`` (when
    ``begin_step == 0`` and the score needs no gradients) they are computed at the
    schedule's sparsity at step 0, so a constant sparsity prunes at once; otherwise
    nothing is pruned until ``update`` decides to. ``update`` recomputes the masks inside
    ``[begin_step, end_step]``: with ``update_every=None`` whenever the scheduled sparsity
    differs from the masks' (never again for a constant one); with ``update_every=k``
    every ``k`` steps from ``begin_step`` (gradient scores and regrowth need this). The
    decision is a ``lax.cond`` on the traced step: ``update`` compiles once. Each leaf's
    layer, input and output axes (`lightcomp.tree.axes`, resolved from the params at
    ``init``) go to `lightcomp.prune.masks`: every slice of a stacked leaf gets the
    sparsity exactly, and n:m groups run along the true input axis.

    Args:
      sparsity_or_schedule: fraction of the selected weights set to zero, in ``[0, 1)``,
        or a jittable ``step -> sparsity`` (`lightcomp.prune.polynomial_schedule`, ...).
        With an n:m granularity: None (its fixed sparsity ``(m - n) / m``), that value, or
        a schedule whose value is 0 (dense) or that value.
      score: a score function - `lightcomp.prune.magnitude` (``|w|``), ``gradient``
        (``|g|``), ``taylor`` (``|w g|``) or your own ``(params, grads) -> scores`` (float
        arrays shaped like the selected leaves); the names ``"magnitude"``,
        ``"gradient"``, ``"taylor"`` are aliases. Lowest scores go first.
      scope: ``"layer"`` (each slice of each leaf gets the sparsity), ``"global"`` (one
        threshold over all selected leaves) or ``"output"`` (per output unit).
      granularity: ``lightcomp.prune.Element()``, ``Channel()``, ``Block(rows, cols)``,
        ``NM(n, m)``, or the strings ``"element"``, ``"channel"``, ``"block"`` (with
        ``block=``) and ``"n:m"`` (with ``n=``, ``m=``).
      n, m, block: for the string forms of ``"n:m"`` and ``"block"``.
      update_every: see above; None or an int >= 1.
      begin_step: first step at which masks may change (before it nothing is pruned
        unless ``begin_step == 0``).
      end_step: last step at which masks may change (None: no end).
      select: which leaves (`lightcomp.tree.as_select`).
      axes: ``{path_regex: lightcomp.tree.Axes}`` for leaves whose axes cannot be derived
        (as `lightcomp.tree.axes`'s ``overrides``).
      stacked: layer axes the tree does not show (as `lightcomp.tree.axes`).

    Returns:
      A `Transform` whose state is a `PruningState`.

    Raises:
      ValueError / TypeError: bad static configuration (raised here), or at ``init``
        a selection that picks no leaf, or a leaf the granularity cannot tile or whose axes
        it needs but cannot be derived (naming the leaf and the axis).

    References:
      Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
      Networks"; Zhu & Gupta 2017, "To prune, or not to prune" (gradual schedules).
    """
    _checks.check_choice(scope, ("layer", "global", "output"), "scope")
    gran = prune.as_granularity(granularity, n=n, m=m, block=block)
    if isinstance(gran, prune.NM):
        sparsity_or_schedule = _nm_sparsity(sparsity_or_schedule, gran)
    elif sparsity_or_schedule is None:
        raise ValueError(
            f"sparsity_or_schedule is None, but granularity {gran} needs a sparsity "
            "(a float in [0, 1) or a schedule)"
        )
    if scope == "output" and not isinstance(gran, prune.Element):
        raise ValueError("scope='output' works with element granularity only")
    schedule, constant = _as_schedule(sparsity_or_schedule)
    score_fn = prune.as_score(score)
    update_every = _checks.check_opt_int(update_every, "update_every", lo=1)
    begin_step = _checks.check_int(begin_step, "begin_step", lo=0)
    end_step = _checks.check_opt_int(end_step, "end_step", lo=0)
    if end_step is not None and end_step < begin_step:
        raise ValueError(f"end_step ({end_step}) must be >= begin_step ({begin_step})")
    rule = tree.as_select(select)
    opts = _axes.options(axes, stacked)
    # the axes resolved at each leaf join this in the state's fingerprint (`_axes`)
    config = fingerprint("pruning", scope=scope, granularity=gran)
    one_shot = constant and update_every is None and begin_step == 0
    one_shot = one_shot and not score_fn.needs_grads

    def target(step):
        return jnp.where(step < begin_step, 0.0, schedule(step)).astype(jnp.float32)

    def masks_of(scores, sparsity, leaf_axes):
        return prune.masks(scores, sparsity, scope=scope, granularity=gran, axes=leaf_axes)

    def compute(params, grads, sparsity, leaf_axes):
        return masks_of(score_fn.fn(params, grads, rule), sparsity, leaf_axes)

    def resolved(params):
        leaf_axes = _axes.resolve(params, rule, opts)
        return leaf_axes, _axes.with_digest(config, _axes.digest(params, rule, leaf_axes))

    def check(params, state):
        if isinstance(state, PruningState):  # a tree of another model: name its first path
            tree.check_mirror(params, state.masks, "pruning state masks")
        leaf_axes, fp = resolved(params)
        check_state(state, PruningState, fp)
        return leaf_axes

    def init(params, key):
        _checks.check_key(key)
        tree.selection(params, rule, require_any=True)
        leaf_axes, fp = resolved(params)
        if begin_step == 0 and not score_fn.needs_grads:
            s0 = target(jnp.zeros((), jnp.int32))
            return PruningState(compute(params, None, s0, leaf_axes), s0, fp)
        _check_computable(params, rule, lambda sc, s: masks_of(sc, s, leaf_axes))
        ones = tree.map_selected(
            lambda w: jnp.ones(w.shape, bool), params, select=rule, unselected="none"
        )
        return PruningState(ones, jnp.zeros((), jnp.float32), fp)

    def apply(params, state):
        check(params, state)
        return prune.zero_pruned(params, state.masks)

    def update(params, state, grads, step):
        leaf_axes = check(params, state)
        if score_fn.needs_grads:
            if grads is None:
                raise ValueError("pruning with a gradient score needs grads in update")
            tree.check_mirror(params, grads, "grads")
        if one_shot:
            return state  # pruned at init; nothing can change
        step = jnp.asarray(step, jnp.int32)
        s = target(step)
        due = step >= begin_step
        if end_step is not None:
            due &= step <= end_step
        if update_every is None:
            due &= s != state.sparsity
        else:
            due &= (step - begin_step) % update_every == 0
        masks = jax.lax.cond(due, lambda: compute(params, grads, s, leaf_axes), lambda: state.masks)
        return state.replace(masks=masks, sparsity=jnp.where(due, s, state.sparsity))

    return follow_params(Transform(init, apply, update))


def _check_computable(params: PyTree, rule: tree.Select, masks_fn) -> None:
    """Masks computed later (``begin_step > 0``, gradient scores): check now, on shapes
    alone, that they can be (a granularity that cannot tile a leaf raises, naming it)."""
    shapes = tree.map_selected(
        lambda w: jax.ShapeDtypeStruct(w.shape, jnp.float32),
        params,
        select=rule,
        unselected="none",
    )
    jax.eval_shape(masks_fn, shapes, jnp.zeros(()))


def masks_of(comp_state: PyTree) -> PyTree | None:
    """The AND of every pruning mask in a (possibly chained, nested) transform state.

    Args:
      comp_state: a transform state (a `PruningState`, a chain's tuple, nested tuples).

    Returns:
      A bool tree mirroring params (None at leaves no pruning transform selects),
      or None when the state holds no `PruningState`.
    """
    found = [
        s
        for s in jax.tree.leaves(comp_state, is_leaf=lambda x: isinstance(x, PruningState))
        if isinstance(s, PruningState)
    ]
    if not found:
        return None

    def both(a, b):
        if a is None:
            return b
        if b is None:
            return a
        return jnp.logical_and(a, b)

    out = found[0].masks
    for s in found[1:]:
        out = jax.tree.map(both, out, s.masks, is_leaf=lambda x: x is None)
    return out
