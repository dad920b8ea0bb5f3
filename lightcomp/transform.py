"""Compression transforms that compose like optax's gradient transformations.

A `Transform` is a NamedTuple of three pure functions:

- ``init(params, key) -> state``
- ``apply(params, state) -> effective params`` (differentiable; STE where rounding happens)
- ``update(params, state, grads, step) -> state`` (refresh masks, ranges, assignments)

The constructors `pruning`, `weight_sharing` and `fake_quantization` wrap
`lightcomp.prune`, `lightcomp.cluster` and `lightcomp.quant`; `chain` composes
them (prune -> share -> quantize is the Deep Compression order; any order works
and pruned weights stay exactly 0.0 through every later stage). Their states are
registered dataclasses whose static configuration (bits, k, granularity, ...) is
part of the tree structure, so they jit, shard, checkpoint and print well.

Learned compression quantities (shared centroids, LSQ step sizes) are wrapped
in `Learned` inside a transform's state. `partition` splits a state into the
learned part and the fixed part (masks, assignments), so a training step
differentiates with respect to ``(params, learned)`` and one optax optimizer
updates both; `combine` puts them back together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lightcomp import cluster, prune, quant, tree

__all__ = [
    "FakeQuantState",
    "Learned",
    "PruningState",
    "Transform",
    "WeightSharingState",
    "chain",
    "combine",
    "fake_quantization",
    "identity",
    "masks_of",
    "partition",
    "pruning",
    "weight_sharing",
]

PyTree = Any


class Transform(NamedTuple):
    """A compression step: a triple of pure functions over a parameter pytree.

    Attributes:
      init: ``(params, key) -> state``.
      apply: ``(params, state) -> effective params``, same structure, shapes and dtypes.
      update: ``(params, state, grads, step) -> state``; ``grads`` are the gradients
        with respect to the raw params (for gradient-based scores; None is accepted by
        transforms that do not need them), ``step`` an int32 scalar (may be traced).
    """

    init: Callable[[PyTree, jax.Array], PyTree]
    apply: Callable[[PyTree, PyTree], PyTree]
    update: Callable[[PyTree, PyTree, PyTree, jax.Array], PyTree]


@jax.tree_util.register_pytree_node_class
class Learned:
    """Marks a trainable leaf (or subtree) inside a transform's state.

    `partition` finds these markers; everything else in a state is fixed.
    """

    __slots__ = ("value",)

    def __init__(self, value: PyTree):
        self.value = value

    def tree_flatten(self):
        return (self.value,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux
        return cls(children[0])

    def __repr__(self) -> str:
        return f"Learned({self.value!r})"


def _is_learned(x: Any) -> bool:
    return isinstance(x, Learned)


def partition(state: PyTree) -> tuple[PyTree, PyTree]:
    """Splits a transform state into ``(learned, fixed)``.

    Both have the state's structure with `Learned` nodes kept: ``learned`` holds
    the learned values and ``None`` in every other leaf; ``fixed`` holds the other
    leaves and ``Learned(None)`` where a learned value was.
    """

    def learned_part(x):
        return x if _is_learned(x) else None

    def fixed_part(x):
        return Learned(jax.tree.map(lambda _: None, x.value)) if _is_learned(x) else x

    learned = jax.tree.map(learned_part, state, is_leaf=_is_learned)
    fixed = jax.tree.map(fixed_part, state, is_leaf=_is_learned)
    return learned, fixed


def combine(learned: PyTree, fixed: PyTree) -> PyTree:
    """Inverse of `partition`: ``combine(*partition(s))`` equals ``s``."""

    def pick(f, lv):
        return lv if _is_learned(f) else f

    return jax.tree.map(pick, fixed, learned, is_leaf=lambda x: _is_learned(x) or x is None)


def identity() -> Transform:
    """The transform that changes nothing; its state is an empty tuple."""

    def init(params, key):
        del params, key
        return ()

    def apply(params, state):
        del state
        return params

    def update(params, state, grads, step):
        del params, grads, step
        return state

    return Transform(init, apply, update)


def chain(*transforms: Transform) -> Transform:
    """Applies ``transforms`` in order, keeping their states as a tuple (as ``optax.chain``).

    ``chain(pruning(...), weight_sharing(...), fake_quantization(...))`` is the
    Deep Compression order; any order works. Each transform's ``init`` and
    ``update`` see the parameters as the transforms before it left them (so
    weight sharing clusters the pruned weights); ``grads`` are passed unchanged.
    """
    for i, t in enumerate(transforms):
        if not isinstance(t, Transform):
            raise TypeError(
                f"chain argument {i} must be a lightcomp Transform, got {type(t).__name__}"
            )

    def init(params, key):
        keys = jax.random.split(key, max(len(transforms), 1))
        states = []
        current = params
        for t, k in zip(transforms, keys, strict=False):
            s = t.init(current, k)
            states.append(s)
            current = t.apply(current, s)
        return tuple(states)

    def apply(params, state):
        _check_chain_state(state, len(transforms))
        for t, s in zip(transforms, state, strict=True):
            params = t.apply(params, s)
        return params

    def update(params, state, grads, step):
        _check_chain_state(state, len(transforms))
        new_states = []
        current = params
        for t, s in zip(transforms, state, strict=True):
            s = t.update(current, s, grads, step)
            new_states.append(s)
            current = t.apply(current, s)
        return tuple(new_states)

    return Transform(init, apply, update)


def _check_chain_state(state: Any, n: int) -> None:
    if not isinstance(state, tuple) or len(state) != n:
        got = f"a tuple of {len(state)}" if isinstance(state, tuple) else type(state).__name__
        raise ValueError(
            f"state of a chain of {n} transforms must be a tuple of {n} states, got {got}"
        )


# --------------------------------------------------------------------------- validation


def _check_int(value: Any, argname: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argname} must be a Python int, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{argname} must be {bound}, got {value}")
    return int(value)


def _check_opt_int(value: Any, argname: str, lo: int) -> int | None:
    return None if value is None else _check_int(value, argname, lo)


def _check_bool(value: Any, argname: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{argname} must be True or False, got {value!r}")
    return bool(value)


def _check_choice(value: Any, choices: tuple[str, ...], argname: str) -> str:
    if value not in choices:
        raise ValueError(f"{argname} must be one of {list(choices)}, got {value!r}")
    return value


def _check_state_type(state: Any, cls: type, name: str) -> None:
    if not isinstance(state, cls):
        raise TypeError(
            f"{name} expects a {cls.__name__} (from its init), got {type(state).__name__}"
        )


def _check_mirror(params: PyTree, mirror: PyTree, what: str, shape_fn=None) -> list[Any]:
    """Checks ``mirror`` has ``params``'s structure (None allowed at leaves) and shapes.

    Returns the mirror's entries aligned with ``params``'s leaves. ``shape_fn(leaf)`` gives
    the shape an entry must have (default: the leaf's shape).
    """
    bad = tree.first_mismatch(params, mirror)
    if bad is not None:
        raise ValueError(
            f"{what} does not match params: first mismatching path {bad!r} "
            "(was the state built by init on these params?)"
        )
    items = tree.leaves_with_paths(params)
    flat = jax.tree.structure(params).flatten_up_to(mirror)
    for (path, leaf), m in zip(items, flat, strict=True):
        if m is None:
            continue
        want = tuple(shape_fn(leaf) if shape_fn else leaf.shape)
        if tuple(m.shape) != want:
            raise ValueError(
                f"{what} does not match params at {path!r}: shape {tuple(m.shape)}, "
                f"expected {want} for a leaf of shape {tuple(leaf.shape)}"
            )
    return flat


def _with_path(path: str, fn: Callable[[], Any]) -> Any:
    """Runs ``fn``, prefixing a ValueError/TypeError with the leaf path."""
    try:
        return fn()
    except (ValueError, TypeError) as e:
        raise type(e)(f"leaf {path!r}: {e}") from e


def _true_masks(params: PyTree, rule: tree.Select) -> PyTree:
    return tree.map_selected(
        lambda w: jnp.ones(w.shape, bool), params, select=rule, unselected="none"
    )


# --------------------------------------------------------------------------- pruning


@struct.dataclass
class PruningState:
    """State of `pruning`.

    Attributes:
      masks: bool tree mirroring params (True = kept), None at unselected leaves.
      sparsity: float32 scalar, the target sparsity the masks were computed for.
      scope, granularity, n, m, block: the static configuration.
    """

    masks: PyTree
    sparsity: jax.Array
    scope: str = struct.field(pytree_node=False, default="layer")
    granularity: str = struct.field(pytree_node=False, default="element")
    n: int | None = struct.field(pytree_node=False, default=None)
    m: int | None = struct.field(pytree_node=False, default=None)
    block: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)


_SCOPES = ("layer", "global", "output")
_GRANULARITIES = ("element", "channel", "block", "n:m")
_GRAD_SCORES = {"gradient": prune.gradient, "taylor": prune.taylor}


def _as_schedule(sparsity: Any) -> tuple[Callable[[jax.Array], jax.Array], bool]:
    """A float or a ``step -> sparsity`` function -> (jittable schedule, is_constant)."""
    if isinstance(sparsity, (int, float, np.floating, np.integer)) and not isinstance(
        sparsity, bool
    ):
        s = float(sparsity)
        if not (math.isfinite(s) and 0.0 <= s < 1.0):
            raise ValueError(f"sparsity_or_schedule must be in [0, 1), got {s}")
        return (lambda step: jnp.full((), s, jnp.float32)), True
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
    raise TypeError(
        "sparsity_or_schedule must be a float in [0, 1) or a step -> sparsity function "
        f"(e.g. lightcomp.prune.polynomial_schedule(...)), got {type(sparsity).__name__}"
    )


def _as_score(score: Any) -> tuple[Callable[[PyTree, PyTree, tree.Select], PyTree], bool]:
    """A score name or ``(params, grads) -> scores`` -> (``(params, grads, rule)``, needs grads)."""
    if score == "magnitude":
        return (lambda params, grads, rule: prune.magnitude(params, select=rule)), False
    if isinstance(score, str):
        if score not in _GRAD_SCORES:
            names = ["magnitude", *_GRAD_SCORES]
            raise ValueError(
                f"score must be one of {names} or a function (params, grads) -> scores, "
                f"got {score!r}"
            )
        fn = _GRAD_SCORES[score]
        return (lambda params, grads, rule: fn(params, grads, select=rule)), True
    if not callable(score):
        raise TypeError(f"score must be a name or callable, got {type(score).__name__}")

    def custom(params, grads, rule):
        scores = score(params, grads)
        _check_mirror(params, scores, "score function output")

        def one(path, w, sc):
            if sc is None:
                raise ValueError(f"score function gave None at selected leaf {path!r}")
            return jnp.asarray(sc, jnp.float32)

        return tree.map_selected(
            one, params, scores, select=rule, unselected="none", with_path=True
        )

    return custom, True


def _check_block(block: Any) -> tuple[int, int]:
    if isinstance(block, (int, np.integer)) and not isinstance(block, bool):
        b = _check_int(block, "block", 1)
        return (b, b)
    if not isinstance(block, (tuple, list)) or len(block) != 2:
        raise TypeError(f"block must be an int or a pair (rows, cols), got {block!r}")
    return tuple(_check_int(b, "block entry", 1) for b in block)


def pruning(
    sparsity_or_schedule: float | Callable[[jax.Array], jax.Array] | None,
    *,
    score: str | Callable[[PyTree, PyTree], PyTree] = "magnitude",
    scope: str = "layer",
    granularity: str = "element",
    n: int | None = None,
    m: int | None = None,
    block: int | tuple[int, int] | None = None,
    update_every: int | None = None,
    begin_step: int = 0,
    end_step: int | None = None,
    select: tree.SelectLike = None,
) -> Transform:
    """Masks the lowest-scoring weights of the selected leaves (they become exactly 0.0).

    Masks are computed by `lightcomp.prune.masks` from a score tree. At ``init``
    (when ``begin_step == 0`` and the score needs no gradients) the masks are
    computed at the schedule's sparsity at step 0, so a constant sparsity prunes at
    once (one shot); otherwise nothing is pruned until ``update`` decides to.
    ``update`` recomputes the masks inside ``[begin_step, end_step]``:

    - ``update_every=None``: whenever the scheduled sparsity differs from the one
      the masks were computed for (never again for a constant sparsity);
    - ``update_every=k``: every ``k`` steps from ``begin_step`` (gradient scores and
      regrowth need this).

    The decision is a ``lax.cond`` on the traced step: ``update`` compiles once and
    computes scores only on the steps where masks change.

    Args:
      sparsity_or_schedule: fraction of the selected weights set to zero, in
        ``[0, 1)``, or a jittable ``step -> sparsity`` (`lightcomp.prune`'s
        ``constant``, ``one_shot``, ``polynomial_schedule``, ``iterative``). For
        ``"n:m"``: None (or ``(m - n) / m``) for that fixed sparsity, or a schedule
        whose value is 0 (dense) or ``(m - n) / m``.
      score: ``"magnitude"`` (``|w|``), ``"gradient"`` (``|g|``), ``"taylor"``
        (``|w g|``), or a function ``(params, grads) -> scores`` (float arrays shaped
        like the selected leaves; ``grads`` from ``update``). Lowest scores go first.
      scope: ``"layer"`` (each leaf gets the sparsity), ``"global"`` (one threshold
        over all selected leaves) or ``"output"`` (per output channel).
      granularity: ``"element"``, ``"channel"`` (whole output channels), ``"block"``
        (``block``-shaped tiles of the last two axes) or ``"n:m"`` (``n`` kept of every
        ``m`` consecutive weights along the input axis).
      n, m: for ``"n:m"``.
      block: tile size for ``"block"``: an int or ``(rows, cols)``.
      update_every: see above; None or an int >= 1.
      begin_step: first step at which masks may change (before it, the target
        sparsity is 0 unless ``begin_step == 0``).
      end_step: last step at which masks may change (None: no end).
      select: which leaves (`lightcomp.tree.as_select`); default: float arrays with ndim >= 2.

    Returns:
      A `Transform` whose state is a `PruningState`.

    Raises:
      ValueError / TypeError: bad static configuration (raised here), or at ``init``
        a selection that picks no leaf or a leaf the granularity cannot tile (naming it).

    References:
      Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
      Networks"; Zhu & Gupta 2017, "To prune, or not to prune" (gradual schedules).
    """
    _check_choice(scope, _SCOPES, "scope")
    _check_choice(granularity, _GRANULARITIES, "granularity")
    if granularity == "n:m":
        if n is None or m is None:
            raise ValueError("granularity='n:m' needs n and m (e.g. n=2, m=4)")
        m = _check_int(m, "m", 2)
        n = _check_int(n, "n", 1, m)
        if sparsity_or_schedule is None:
            sparsity_or_schedule = (m - n) / m
        elif isinstance(sparsity_or_schedule, (int, float)) and sparsity_or_schedule not in (
            0,
            (m - n) / m,
        ):
            raise ValueError(
                f"granularity='n:m' with n={n}, m={m} fixes the sparsity at {(m - n) / m}; "
                f"got sparsity_or_schedule={sparsity_or_schedule} (pass None)"
            )
    elif n is not None or m is not None:
        raise ValueError(f"n and m are only meaningful with granularity='n:m', not {granularity!r}")
    if granularity == "block":
        if block is None:
            raise ValueError("granularity='block' needs block=size or (rows, cols)")
        block = _check_block(block)
    elif block is not None:
        raise ValueError(f"block is only meaningful with granularity='block', not {granularity!r}")
    if scope == "output" and granularity != "element":
        raise ValueError("scope='output' works with granularity='element' only")
    schedule, constant = _as_schedule(sparsity_or_schedule)
    score_fn, needs_grads = _as_score(score)
    update_every = _check_opt_int(update_every, "update_every", 1)
    begin_step = _check_int(begin_step, "begin_step", 0)
    end_step = _check_opt_int(end_step, "end_step", 0)
    if end_step is not None and end_step < begin_step:
        raise ValueError(f"end_step ({end_step}) must be >= begin_step ({begin_step})")
    rule = tree.as_select(select)

    def target(step):
        return jnp.where(step < begin_step, 0.0, schedule(step)).astype(jnp.float32)

    def compute(params, grads, sparsity):
        scores = score_fn(params, grads, rule)
        return prune.masks(
            scores, sparsity, scope=scope, granularity=granularity, n=n, m=m, block=block
        )

    def make_state(masks, sparsity):
        return PruningState(masks, sparsity, scope, granularity, n, m, block)

    def init(params, key):
        del key
        tree.selection(params, rule, require_any=True)
        if begin_step == 0 and not needs_grads:
            s0 = target(jnp.zeros((), jnp.int32))
            return make_state(compute(params, None, s0), s0)
        return make_state(_true_masks(params, rule), jnp.zeros((), jnp.float32))

    def apply(params, state):
        _check_state_type(state, PruningState, "pruning.apply")
        _check_mirror(params, state.masks, "pruning state masks")
        return prune.apply_masks(params, state.masks)

    def update(params, state, grads, step):
        _check_state_type(state, PruningState, "pruning.update")
        _check_mirror(params, state.masks, "pruning state masks")
        if needs_grads:
            if grads is None:
                raise ValueError("pruning with a gradient score needs grads in update")
            _check_mirror(params, grads, "grads")
        if constant and update_every is None and begin_step == 0 and not needs_grads:
            return state  # one shot at init; nothing can change
        step = jnp.asarray(step, jnp.int32)
        s = target(step)
        due = step >= begin_step
        if end_step is not None:
            due &= step <= end_step
        if update_every is None:
            due &= s != state.sparsity
        else:
            due &= (step - begin_step) % update_every == 0
        masks = jax.lax.cond(due, lambda: compute(params, grads, s), lambda: state.masks)
        return state.replace(masks=masks, sparsity=jnp.where(due, s, state.sparsity))

    return Transform(init, apply, update)


def masks_of(cstate: PyTree) -> PyTree | None:
    """The AND of every pruning mask in a (possibly chained, nested) transform state.

    Args:
      cstate: a transform state (a `PruningState`, a chain's tuple, nested tuples).

    Returns:
      A bool tree mirroring params (None at leaves no pruning transform selects),
      or None when the state holds no `PruningState`.
    """
    found = [
        s
        for s in jax.tree.leaves(cstate, is_leaf=lambda x: isinstance(x, PruningState))
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


# --------------------------------------------------------------------------- weight sharing


@struct.dataclass
class WeightSharingState:
    """State of `weight_sharing`.

    Attributes:
      centroids: `Learned` tree of float32 codebooks, ``[k]`` per leaf (``[c, k]``
        with ``axis``), None at unselected leaves.
      assignments: tree of integer codes (uint8 for k <= 256) shaped like the leaves.
      k, axis, preserve_zeros: the static configuration.
    """

    centroids: Learned
    assignments: PyTree
    k: int = struct.field(pytree_node=False, default=16)
    axis: int | None = struct.field(pytree_node=False, default=None)
    preserve_zeros: bool = struct.field(pytree_node=False, default=True)


@jax.custom_vjp
def _pass_through(w, y):
    """Returns ``y``; the incoming gradient goes both to ``w`` (STE) and to ``y``."""
    del w
    return y


def _pass_through_fwd(w, y):
    del w
    return y, None


def _pass_through_bwd(res, g):
    del res
    return g, g


_pass_through.defvjp(_pass_through_fwd, _pass_through_bwd)


def weight_sharing(
    k: int,
    *,
    init: str = "density",
    preserve_zeros: bool = True,
    recluster_every: int | None = None,
    axis: int | None = None,
    iters: int | None = None,
    select: tree.SelectLike = None,
) -> Transform:
    """Replaces each selected weight by its cluster's centroid (k-means weight sharing).

    ``init`` clusters every selected leaf with `lightcomp.cluster.kmeans`; ``apply``
    gathers the (trainable, `Learned`) centroids by the fixed assignments. The
    backward pass gives each centroid the sum of its weights' gradients and passes
    the gradient straight through to the raw weights, so ``update`` can re-cluster
    them every ``recluster_every`` steps (warm-started from the trained centroids);
    between re-clusterings the assignments stay fixed.

    With ``preserve_zeros`` (the default), exact zeros (pruned weights) take no part in
    clustering and stay exactly 0.0, whatever their assignment.

    Args:
      k: number of shared values per leaf (per channel with ``axis``), 2..65536.
      init: centroid initialisation, as `lightcomp.cluster.kmeans`.
      preserve_zeros: keep exact zeros at 0.0 and out of the clustering.
      recluster_every: re-run k-means every this many steps (None: never).
      axis: cluster each slice along this axis separately (per output channel: -1).
      iters: the most Lloyd steps (None: `lightcomp.cluster.kmeans`'s default, which runs
        to the fixed point).
      select: which leaves; default: float arrays with ndim >= 2.

    Returns:
      A `Transform` whose state is a `WeightSharingState`.

    References:
      Han, Mao & Dally 2016, "Deep Compression"; Wu et al. 2018, "Deep k-Means".
    """
    k = _check_int(k, "k", 2, 65536)
    preserve_zeros = _check_bool(preserve_zeros, "preserve_zeros")
    recluster_every = _check_opt_int(recluster_every, "recluster_every", 1)
    iters = _check_opt_int(iters, "iters", 1)
    if axis is not None:
        _check_int(axis, "axis", -(2**31))
    if init not in cluster.INITS:
        raise ValueError(f"init must be one of {list(cluster.INITS)}, got {init!r}")
    rule = tree.as_select(select)

    def cluster_leaf(path, w, key, warm=None):
        kw = {} if iters is None else {"iters": iters}
        c, a = cluster.kmeans(
            w,
            k,
            init=init if warm is None else warm,
            key=key,
            preserve_zeros=preserve_zeros,
            axis=axis,
            name=path,
            **kw,
        )
        return c.astype(jnp.float32), a

    def centroid_shape(leaf):
        if axis is None:
            return (k,)
        return (leaf.shape[axis], k)

    def check(params, state):
        _check_state_type(state, WeightSharingState, "weight_sharing")
        _check_mirror(params, state.assignments, "weight_sharing state assignments")
        _check_mirror(params, state.centroids.value, "weight_sharing centroids", centroid_shape)

    def init_fn(params, key):
        paths = tree.selected_paths(params, rule)
        if not paths:
            tree.selection(params, rule, require_any=True)  # raises, listing the paths
        keys = dict(zip(paths, jax.random.split(key, len(paths)), strict=True))

        def one(path, w):
            if axis is not None and not -w.ndim <= axis < w.ndim:
                raise ValueError(f"leaf {path!r}: axis={axis} out of range for shape {w.shape}")
            return cluster_leaf(path, w, keys[path])

        pairs = tree.map_selected(one, params, select=rule, unselected="none", with_path=True)
        is_pair = lambda x: isinstance(x, tuple) or x is None
        cents = jax.tree.map(lambda p: None if p is None else p[0], pairs, is_leaf=is_pair)
        assign = jax.tree.map(lambda p: None if p is None else p[1], pairs, is_leaf=is_pair)
        return WeightSharingState(Learned(cents), assign, k, axis, preserve_zeros)

    def apply(params, state):
        check(params, state)

        def one(w, c, a):
            y = cluster.share(c, a, axis=axis, preserve_zeros=preserve_zeros, dtype=w.dtype)
            if preserve_zeros:  # also zeros pruned after the last re-clustering
                y = jnp.where(w == 0, jnp.zeros((), w.dtype), y)
            return _pass_through(w, y)

        return tree.map_selected(one, params, state.centroids.value, state.assignments, select=rule)

    def update(params, state, grads, step):
        del grads
        check(params, state)
        if recluster_every is None:
            return state
        step = jnp.asarray(step, jnp.int32)
        due = (step > 0) & (step % recluster_every == 0)

        def recluster():
            pairs = tree.map_selected(
                lambda path, w, c: cluster_leaf(path, jax.lax.stop_gradient(w), None, warm=c),
                params,
                state.centroids.value,
                select=rule,
                unselected="none",
                with_path=True,
            )
            is_pair = lambda x: isinstance(x, tuple) or x is None
            cents = jax.tree.map(lambda p: None if p is None else p[0], pairs, is_leaf=is_pair)
            assign = jax.tree.map(lambda p: None if p is None else p[1], pairs, is_leaf=is_pair)
            return Learned(cents), assign

        cents, assign = jax.lax.cond(due, recluster, lambda: (state.centroids, state.assignments))
        return state.replace(centroids=cents, assignments=assign)

    return Transform(init_fn, apply, update)


# --------------------------------------------------------------------------- fake quantization


@struct.dataclass
class FakeQuantState:
    """State of `fake_quantization`.

    Attributes:
      scales: with ``learned_scale``, a `Learned` tree of float32 LSQ step sizes (keepdims:
        the leaf's rank with 1 on shared axes; per group, the group axis split in two),
        None at unselected leaves; otherwise None.
      bits, axis, symmetric, group_size: the static configuration.
    """

    scales: Learned | None
    bits: int = struct.field(pytree_node=False, default=8)
    axis: int | None = struct.field(pytree_node=False, default=-1)
    symmetric: bool = struct.field(pytree_node=False, default=True)
    group_size: int | None = struct.field(pytree_node=False, default=None)


def _lsq_view(shape: tuple[int, ...], axis: int | None, group_size: int | None):
    """(view shape, scale shape) of a leaf for LSQ: the group axis split in two with groups.

    ``lightcomp.quant.lsq_fake_quant`` takes a scale that broadcasts to its input; per-group
    step sizes need the grouped view, which quant keeps private, so it is rebuilt here with
    quant's conventions (groups along axis -2 for rank >= 2, 0 for vectors).
    """
    ndim = len(shape)
    ax = None if axis is None else axis % ndim
    if group_size is None:
        scale = tuple(d if i == ax else 1 for i, d in enumerate(shape))
        return tuple(shape), scale
    ga = ndim - 2 if ndim >= 2 else 0
    view = (*shape[:ga], shape[ga] // group_size, group_size, *shape[ga + 1 :])
    keep = {ga} | ({ax + (ax > ga)} if ax is not None else set())
    scale = tuple(d if i in keep else 1 for i, d in enumerate(view))
    return view, scale


def fake_quantization(
    bits: int = 8,
    *,
    axis: int | None = -1,
    symmetric: bool = True,
    group_size: int | None = None,
    learned_scale: bool = False,
    select: tree.SelectLike = None,
) -> Transform:
    """Fake-quantizes the selected leaves in the forward pass (straight-through backward).

    Without ``learned_scale`` every call uses the leaf's own range
    (`lightcomp.quant.fake_quant`); with it, the step sizes are `Learned` and trained
    with the weights (`lightcomp.quant.lsq_fake_quant`), initialised by LSQ's rule.
    Zero maps to zero in every mode, so pruned weights stay exactly 0.0.

    Args:
      bits: integer width, 2..16.
      axis: the axis that keeps its own scale (-1: output channels of Flax kernels);
        None for one scale per tensor.
      symmetric: signed narrow range (contract); False for unsigned with a zero point
        (not with ``learned_scale``: LSQ's unsigned range is for non-negative activations).
      group_size: consecutive elements along the input axis (-2) sharing a scale.
      learned_scale: train the step sizes (LSQ).
      select: which leaves; default: float arrays with ndim >= 2.

    Returns:
      A `Transform` whose state is a `FakeQuantState`.

    References:
      Jacob et al. 2018 (quantization-aware training); Esser et al. 2019, "Learned Step
      Size Quantization".
    """
    bits = _check_int(bits, "bits", 2, 16)
    symmetric = _check_bool(symmetric, "symmetric")
    learned_scale = _check_bool(learned_scale, "learned_scale")
    if axis is not None:
        _check_int(axis, "axis", -(2**31))
    group_size = _check_opt_int(group_size, "group_size", 1)
    if learned_scale and not symmetric:
        raise ValueError(
            "learned_scale=True needs symmetric=True: LSQ's unsigned range [0, 2**bits - 1] "
            "would clip every negative weight"
        )
    rule = tree.as_select(select)
    qp = float(quant.qrange(bits, symmetric)[1])

    def validate_leaf(path, w):
        fn = lambda x: quant.fake_quant(
            x, bits, symmetric=symmetric, axis=axis, group_size=group_size
        )
        _with_path(path, lambda: jax.eval_shape(fn, jax.ShapeDtypeStruct(w.shape, w.dtype)))

    def scale_shape(leaf):
        return _lsq_view(tuple(leaf.shape), axis, group_size)[1]

    def check(params, state):
        _check_state_type(state, FakeQuantState, "fake_quantization")
        if learned_scale:
            if not isinstance(state.scales, Learned):
                raise ValueError("fake_quantization(learned_scale=True) state has no scales")
            _check_mirror(params, state.scales.value, "fake_quantization scales", scale_shape)

    def init(params, key):
        del key
        tree.selection(params, rule, require_any=True)
        tree.map_selected(validate_leaf, params, select=rule, with_path=True)
        scales = None
        if learned_scale:

            def init_scale(w):
                view, sshape = _lsq_view(tuple(w.shape), axis, group_size)
                a = jnp.abs(w.astype(jnp.float32)).reshape(view)
                red = tuple(i for i, d in enumerate(sshape) if d == 1)
                m = jnp.mean(a, axis=red, keepdims=True).reshape(sshape)
                return jnp.maximum(2.0 * m / math.sqrt(qp), 1e-8)  # LSQ's initial step size

            scales = Learned(tree.map_selected(init_scale, params, select=rule, unselected="none"))
        return FakeQuantState(scales, bits, axis, symmetric, group_size)

    def apply(params, state):
        check(params, state)
        if not learned_scale:
            return tree.map_selected(
                lambda w: quant.fake_quant(
                    w, bits, symmetric=symmetric, axis=axis, group_size=group_size
                ),
                params,
                select=rule,
            )

        def one(w, s):
            view, _ = _lsq_view(tuple(w.shape), axis, group_size)
            y = quant.lsq_fake_quant(w.reshape(view), s, bits, symmetric=symmetric)
            return y.reshape(w.shape)

        return tree.map_selected(one, params, state.scales.value, select=rule)

    def update(params, state, grads, step):
        del grads, step
        check(params, state)
        return state

    return Transform(init, apply, update)
