"""`DistillState`: everything a distillation run carries from step to step."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lightcomp import _checks, prune, tree
from lightcomp.transform import Transform, masks_of, split_trainable

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DistillState:
    """Everything a distillation run carries from step to step (a pytree).

    Attributes:
      step: int32 ``[]``, the number of steps taken.
      params: the student's raw parameters (pruned entries exactly 0).
      opt_state: the optax state over the trainable part of ``(params, comp_state)``
        (`lightcomp.split_trainable`): floating params and `Learned` leaves.
      comp_state: the compression transform's state (masks, ranges, centroids, ...).
      rng: a PRNG key, split once per step (dropout and stochastic rounding draw from it).
      model_state: the student's non-parameter state, replaced by the new one every step:
        linen collections such as ``{"batch_stats": ...}`` (every collection of
        ``module.init``'s variables but ``"params"``), an nnx module's non-``Param``
        state (``BatchStat`` statistics, other variables), activation-quantization
        ranges; ``{}`` (no leaves) for a stateless student. Checkpointed with the rest.
      teacher_state: the teacher's non-parameter state (e.g. its BatchNorm running
        statistics), read by its eval-mode forward pass and never changed; ``{}`` for a
        stateless teacher.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    comp_state: PyTree
    rng: jax.Array
    model_state: PyTree = dataclasses.field(default_factory=dict)
    teacher_state: PyTree = dataclasses.field(default_factory=dict)

    def replace(self, **changes: Any) -> DistillState:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


_FIELDS = ("step", "params", "opt_state", "comp_state", "rng")
_MODEL_FIELDS = ("model_state", "teacher_state")


def _flatten_with_keys(state: DistillState):
    """The fields as children; an empty model state (``{}``, None) is no child at all.

    So a stateless run has the tree (and the checkpoint) of 0.1.0, which had no model
    state: its checkpoints restore into it, and its leaf paths stay. Emptiness is read
    from the structure, not the leaves, so ``jax.tree.map(lambda x: None, state)`` keeps
    the structure of ``state``.
    """
    children = [(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in _FIELDS]
    empty = []  # (False, None) for a child; (True, its structure) for an empty container
    for name in _MODEL_FIELDS:
        value = getattr(state, name)
        if jax.tree.structure(value).num_nodes > 1:
            children.append((jax.tree_util.GetAttrKey(name), value))
            empty.append((False, None))
        else:
            empty.append((True, jax.tree.structure(value)))
    return children, tuple(empty)


def _unflatten(empty: tuple, children) -> DistillState:
    children = list(children)
    fields = dict(zip(_FIELDS, children[: len(_FIELDS)], strict=True))
    rest = iter(children[len(_FIELDS) :])
    for name, (leafless, structure) in zip(_MODEL_FIELDS, empty, strict=True):
        fields[name] = jax.tree.unflatten(structure, []) if leafless else next(rest)
    return DistillState(**fields)


def _flatten(state: DistillState):
    keyed, empty = _flatten_with_keys(state)
    return [c for _, c in keyed], empty


jax.tree_util.register_pytree_with_keys(DistillState, _flatten_with_keys, _unflatten, _flatten)


def check_optimizer(optimizer: Any) -> None:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}"
        )


def check_transform(t: Any) -> None:
    if not isinstance(t, Transform):
        raise TypeError(
            "transform must be a lightcomp Transform (use lightcomp.identity() for none), "
            f"got {type(t).__name__}"
        )


def check_float_dtype(dtype: Any, argname: str) -> None:
    try:
        ok = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"{argname} must be a floating dtype such as jnp.bfloat16, got {dtype!r}")


def cast_floating(params: PyTree, dtype: Any) -> PyTree:
    """Casts every floating leaf of ``params`` to ``dtype`` (e.g. a bfloat16 teacher), once.

    Args:
      params: a parameter pytree.
      dtype: a floating dtype such as ``jnp.bfloat16``.

    Returns:
      ``params`` with floating leaves cast; integer and boolean leaves untouched.
    """
    check_float_dtype(dtype, "dtype")
    return jax.tree.map(lambda x: x.astype(dtype) if tree.is_floating(x) else x, params)


def effective_params(state: DistillState, t: Transform) -> PyTree:
    """The parameters the student computes with: ``t.apply(state.params, state.comp_state)``."""
    return t.apply(state.params, state.comp_state)


def init_state(
    params: PyTree,
    optimizer: optax.GradientTransformation,
    transform: Transform,
    key,
    *,
    model_state: PyTree = None,
    teacher_state: PyTree = None,
) -> DistillState:
    """Builds the `DistillState` of a distillation run.

    The transform is initialised on ``params`` with one half of ``key`` (the other half
    becomes ``state.rng``); weights its masks prune are set to 0; the optimizer state
    covers the trainable part of ``(params, comp_state)``. The model states are carried
    as given (they are not trained and not compressed).

    Args:
      params: the student's parameter pytree (linen ``params`` dict, ``nnx.State``, ...).
      optimizer: an optax ``GradientTransformation``.
      transform: a `lightcomp.Transform` (``lightcomp.identity()`` for plain distillation).
      key: a PRNG key (``jax.random.key(0)``).
      model_state: the student's non-parameter state: linen, ``module.init``'s variables
        but ``"params"`` (``{"batch_stats": ...}``); nnx, ``apply.model_state`` of
        `nnx_apply`. None for a stateless student (stored as ``{}``).
      teacher_state: the same for the teacher, read in eval mode and never updated.

    Returns:
      `DistillState` with ``step == 0``.

    Raises:
      TypeError: a bad optimizer, transform or key, or a leaf of a tree that is not an
        array (names the leaf).
      ValueError: ``params`` without leaves, NaN or inf in a concrete floating leaf of
        ``params`` (names the leaf);
        float16 optimizer state (float16 params with ``optax.adam``: NaN from step 2;
        the message says what to do: float32 params, a float16 forward pass).
    """
    check_optimizer(optimizer)
    check_transform(transform)
    _checks.check_key(key)
    leaves = tree.leaves_with_paths(params, argname="params")
    if not leaves:
        raise ValueError(f"params has no leaves (got {params!r}): there is nothing to train")
    for path, leaf in leaves:
        if tree.is_floating(leaf):
            _checks.check_finite(leaf, "params", path=path, why="training would start from NaN")
    model_state = {} if model_state is None else model_state
    teacher_state = {} if teacher_state is None else teacher_state
    tree.leaves_with_paths(model_state, argname="model_state")
    tree.leaves_with_paths(teacher_state, argname="teacher_state")
    key_init, key_run = jax.random.split(key)
    comp_state = transform.init(params, key_init)
    params = constrain(params, comp_state)
    trainable, _ = split_trainable(params, comp_state)
    opt_state = optimizer.init(trainable)
    _check_moments(opt_state)
    return DistillState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        comp_state=comp_state,
        rng=key_run,
        model_state=model_state,
        teacher_state=teacher_state,
    )


def _check_moments(opt_state: PyTree) -> None:
    """Refuses float16 optimizer state: Adam's squared gradients flush to 0 in float16 and
    its ``eps = 1e-8`` rounds to 0, so the first update is 0 / 0 (NaN at step 2)."""
    for path, leaf in tree.leaves_with_paths(opt_state, argname="opt_state"):
        if getattr(leaf, "dtype", None) == jnp.float16:
            raise ValueError(
                f"params are float16 and the optimizer keeps float16 state (opt_state leaf "
                f"{path!r}): optax.adam's moments underflow in float16 and the loss is NaN "
                "from step 2. Keep float32 params (the master weights) and cast in the "
                "forward pass: apply16 = lambda p, x: apply(lc.train.cast_floating(p, "
                "jnp.float16), x.astype(jnp.float16)) (benchmarks/bench_float16.py: the "
                "float32 run's accuracy)"
            )


def constrain(params: PyTree, comp_state: PyTree) -> PyTree:
    """Pruned weights exactly 0: the masks of ``comp_state`` applied to ``params``."""
    masks = masks_of(comp_state)
    if masks is None:
        return params
    tree.check_mirror(params, masks, "the compression state's masks")
    return prune.zero_pruned(params, masks)
