"""The jitted knowledge-distillation step that trains a student through a compression transform.

One call of the step returned by `make_step` is one XLA computation: the
teacher's forward pass (no gradient, or logits read from a cache), the
student's forward pass on ``transform.apply(params, comp_state)``, the loss,
gradients with respect to the raw parameters and the transform's learned
quantities (shared centroids, LSQ step sizes), one optax update of both, pruned
weights kept at exactly zero, ``transform.update`` on its own schedule and the
step's metrics. The training loop (`fit`) lives outside ``jit``.

Also here: adapters that turn linen and nnx models into ``(params, inputs) ->
logits`` functions, helpers that start a smaller student from the teacher's
weights, a teacher-logit cache for fixed datasets, and `evaluate`.

References:
  Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
  Romero et al., "FitNets: Hints for Thin Deep Nets", 2015 (starting a thin student
  from a teacher's weights).
  Sanh et al., "DistilBERT", 2019 (a student initialised from every other teacher layer).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from lightcomp import distill
from lightcomp import transform as _tf
from lightcomp import tree as _tree

__all__ = [
    "DistillState",
    "cached_batches",
    "cast_floating",
    "effective_params",
    "evaluate",
    "fit",
    "init_state",
    "keep_layers",
    "linen_apply",
    "make_step",
    "nnx_apply",
    "slice_channels",
    "teacher_logits",
]

PyTree = Any
Apply = Callable[..., jax.Array]

_TEACHER_LOGITS = "teacher_logits"


@flax.struct.dataclass
class DistillState:
    """Everything a distillation run carries from step to step (a pytree).

    Attributes:
      step: int32 scalar, the number of steps taken.
      params: the student's raw parameters (pruned entries exactly 0).
      opt_state: the optax state over the pair ``(params, learned)``, where
        ``learned, fixed = lightcomp.transform.partition(comp_state)``.
      comp_state: the compression transform's state (masks, ranges, centroids, ...).
      rng: a PRNG key, split once per step (dropout and stochastic rounding draw from it).
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    comp_state: PyTree
    rng: jax.Array


# --------------------------------------------------------------------------- trees


def _is_none(x: Any) -> bool:
    return x is None


def _trainable(tree: PyTree) -> tuple[PyTree, PyTree]:
    """Splits ``tree`` into (floating leaves, other leaves), each with None in the other's place.

    Integer and boolean leaves (counters, assignments) are never differentiated nor
    handed to the optimizer; ``jax.grad`` would reject them.
    """
    leaves, treedef = jax.tree.flatten(tree)
    diff = [x if _tree.is_floating(x) else None for x in leaves]
    rest = [None if _tree.is_floating(x) else x for x in leaves]
    return jax.tree.unflatten(treedef, diff), jax.tree.unflatten(treedef, rest)


def _merge(diff: PyTree, rest: PyTree) -> PyTree:
    """Inverse of `_trainable`."""
    return jax.tree.map(lambda d, r: r if d is None else d, diff, rest, is_leaf=_is_none)


def _apply_masks(tree: PyTree, masks: PyTree) -> PyTree:
    """Zeroes ``tree``'s entries where ``masks`` is False; leaves with a None mask are kept."""
    if masks is None:
        return tree
    return jax.tree.map(
        lambda x, m: x if x is None or m is None else jnp.where(m, x, jnp.zeros((), x.dtype)),
        tree,
        masks,
        is_leaf=_is_none,
    )


def _check_masks(params: PyTree, masks: PyTree) -> None:
    if masks is None:
        return
    bad = _tree.first_mismatch(params, masks)
    if bad is not None:
        raise ValueError(
            f"the compression state does not match params: its masks differ at {bad!r}; "
            "was comp_state built by transform.init on these params?"
        )


def _masks_of(comp_state: PyTree) -> PyTree:
    return _tf.masks_of(comp_state)


def cast_floating(tree: PyTree, dtype: Any) -> PyTree:
    """Casts every floating leaf of ``tree`` to ``dtype`` (e.g. a bfloat16 teacher), once.

    Args:
      tree: a parameter pytree.
      dtype: a floating dtype such as ``jnp.bfloat16``.

    Returns:
      ``tree`` with floating leaves cast; integer and boolean leaves untouched.
    """
    _check_float_dtype(dtype, "dtype")
    return jax.tree.map(lambda x: x.astype(dtype) if _tree.is_floating(x) else x, tree)


def _check_float_dtype(dtype: Any, argname: str) -> None:
    try:
        ok = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"{argname} must be a floating dtype such as jnp.bfloat16, got {dtype!r}")


def effective_params(state: DistillState, transform: _tf.Transform) -> PyTree:
    """The parameters the student computes with: ``transform.apply(state.params, state.comp_state)``."""
    return transform.apply(state.params, state.comp_state)


# --------------------------------------------------------------------------- state


def init_state(
    params: PyTree, optimizer: optax.GradientTransformation, transform: _tf.Transform, key
) -> DistillState:
    """Builds the `DistillState` of a distillation run.

    The transform is initialised on ``params`` with one half of ``key`` (the
    other half becomes ``state.rng``); weights its masks prune are set to 0; the
    optimizer state covers ``(params, learned)``.

    Args:
      params: the student's parameter pytree (linen ``params`` dict, ``nnx.State``, ...).
      optimizer: an optax ``GradientTransformation``.
      transform: a `lightcomp.Transform` (``lightcomp.identity()`` for plain distillation).
      key: a PRNG key (``jax.random.key(0)``).

    Returns:
      `DistillState` with ``step == 0``.
    """
    _check_optimizer(optimizer)
    _check_transform(transform)
    _tree.leaves_with_paths(params, argname="params")
    key_init, key_run = jax.random.split(key)
    comp_state = transform.init(params, key_init)
    masks = _masks_of(comp_state)
    _check_masks(params, masks)
    params = _apply_masks(params, masks)
    learned, _ = _tf.partition(comp_state)
    p_diff, _ = _trainable(params)
    l_diff, _ = _trainable(learned)
    opt_state = optimizer.init((p_diff, l_diff))
    return DistillState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        comp_state=comp_state,
        rng=key_run,
    )


# --------------------------------------------------------------------------- checks


def _check_optimizer(optimizer: Any) -> None:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"optimizer must be an optax GradientTransformation, got {type(optimizer).__name__}"
        )


def _check_transform(transform: Any) -> None:
    if not isinstance(transform, _tf.Transform):
        raise TypeError(
            f"transform must be a lightcomp Transform (use lightcomp.identity() for none), "
            f"got {type(transform).__name__}"
        )


def _check_opt_state(state: DistillState, optimizer, p_diff, l_diff) -> None:
    expected = jax.eval_shape(optimizer.init, (p_diff, l_diff))
    exp_flat, exp_def = jax.tree_util.tree_flatten_with_path(expected)
    got_flat, got_def = jax.tree_util.tree_flatten_with_path(state.opt_state)
    if exp_def != got_def:
        bad = _tree.first_mismatch(expected, state.opt_state) or "<structure>"
        raise ValueError(
            "state.opt_state does not match optimizer.init((params, learned)) for these params "
            f"and this transform (first difference at {bad!r}); rebuild it with init_state"
        )
    for (path, e), (_, g) in zip(exp_flat, got_flat, strict=True):
        if tuple(e.shape) != tuple(jnp.shape(g)):
            raise ValueError(
                f"state.opt_state leaf {_tree.path_str(path)!r} has shape {jnp.shape(g)}, "
                f"expected {tuple(e.shape)} for these params; rebuild it with init_state"
            )


def _batch_parts(batch: Any, *, needs_labels: bool, has_teacher: bool, label_only: bool = False):
    if not isinstance(batch, Mapping):
        raise TypeError(
            f'batch must be a mapping {{"inputs": ..., "labels": ...}}, got {type(batch).__name__}'
        )
    if "inputs" not in batch:
        raise ValueError(f'batch has no "inputs" key; its keys are {sorted(batch)}')
    labels = batch.get("labels")
    if needs_labels and labels is None:
        raise ValueError(
            f'batch has no "labels" key, which the loss needs (alpha < 1 mixes in the label '
            f"loss; use alpha=1.0 for labels-free distillation); its keys are {sorted(batch)}"
        )
    cached = batch.get(_TEACHER_LOGITS)
    if cached is None and not has_teacher and not label_only:
        raise ValueError(
            f'teacher_params is None and batch has no "{_TEACHER_LOGITS}" key: the step needs '
            "one of them"
        )
    inputs = batch["inputs"]
    n = jnp.shape(inputs)[0] if jnp.ndim(inputs) else None
    for name, value in (("labels", labels), (_TEACHER_LOGITS, cached)):
        if value is not None and (jnp.ndim(value) == 0 or jnp.shape(value)[0] != n):
            raise ValueError(
                f'batch["{name}"] has shape {jnp.shape(value)}, but batch["inputs"] has {n} rows'
            )
    if labels is not None and jnp.ndim(labels) != 1:
        raise ValueError(f'batch["labels"] must be int [batch], got shape {jnp.shape(labels)}')
    return inputs, labels, cached


def _check_logits(student: jax.Array, teacher: jax.Array, labels) -> None:
    if jnp.shape(student) != jnp.shape(teacher):
        raise ValueError(
            f"student logits {jnp.shape(student)} and teacher logits {jnp.shape(teacher)} "
            "differ in shape; both must be [batch, classes]"
        )
    if jnp.ndim(student) != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {jnp.shape(student)}")
    if labels is not None and jnp.shape(labels)[0] != jnp.shape(student)[0]:
        raise ValueError(
            f"labels have {jnp.shape(labels)[0]} rows but the logits have {jnp.shape(student)[0]}"
        )


# --------------------------------------------------------------------------- the step


def _split_loss(out: Any) -> tuple[jax.Array, dict]:
    if isinstance(out, tuple):
        if len(out) != 2 or not isinstance(out[1], Mapping):
            raise TypeError("loss must return a scalar or (scalar, dict of scalar metrics)")
        value, parts = out
    else:
        value, parts = out, {}
    if jnp.ndim(value) != 0:
        raise ValueError(f"loss must return a scalar, got shape {jnp.shape(value)}")
    return value, dict(parts)


def _sparsity(params: PyTree, masks: PyTree) -> jax.Array:
    """Fraction of masked-out entries over the leaves that have a mask (0.0 without masks)."""
    if masks is None:
        return jnp.zeros((), jnp.float32)
    pruned, total = [], 0
    for p, m in zip(
        jax.tree.leaves(params, is_leaf=_is_none),
        jax.tree.leaves(masks, is_leaf=_is_none),
        strict=True,
    ):
        if p is None or m is None:
            continue
        keep = jnp.broadcast_to(m, jnp.shape(p))
        pruned.append(jnp.size(p) - jnp.count_nonzero(keep))
        total += int(np.prod(jnp.shape(p)))
    if not total:
        return jnp.zeros((), jnp.float32)
    return (sum(pruned) / total).astype(jnp.float32)


def make_step(
    student_apply: Apply,
    teacher_apply: Apply | None,
    optimizer: optax.GradientTransformation,
    transform: _tf.Transform,
    loss: Callable[..., Any] | None = None,
    *,
    axis_name: str | None = None,
    alpha: float | None = None,
    temperature: float | None = None,
    kind: str | None = None,
    pass_rng: bool = False,
    teacher_dtype: Any = None,
    grad_reduce: Callable[[PyTree, jax.Array], PyTree] | None = None,
) -> Callable[[DistillState, PyTree, Mapping[str, jax.Array]], tuple[DistillState, dict]]:
    """Builds the pure distillation step ``step(state, teacher_params, batch) -> (state, metrics)``.

    Under ``jax.jit`` the whole step is one XLA computation:

    1. teacher logits: ``teacher_apply(teacher_params, inputs)`` under ``stop_gradient``,
       or ``batch["teacher_logits"]`` when the batch carries cached ones (see `teacher_logits`);
    2. student logits on ``transform.apply(params, combine(learned, fixed))``;
    3. gradients of the loss with respect to ``(params, learned)`` (floating leaves only),
       ``lax.pmean``'d over ``axis_name`` when given;
    4. one ``optimizer.update`` of both; updates of pruned weights are masked out, so
       pruned weights stay exactly 0.0 (also with Adam, weight decay, momentum);
    5. ``transform.update(params, comp_state, grads, step)`` with the traced step
       index (0 for the first step): schedules never recompile;
    6. metrics: ``loss``, the loss parts, ``accuracy`` (vs labels, when present),
       ``agreement`` (argmax equal to the teacher's) and ``sparsity`` (fraction of
       entries pruned by the transform's masks), all float32 scalars, ``lax.pmean``'d
       over ``axis_name``.

    Args:
      student_apply: ``(params, inputs) -> logits [batch, classes]``; with ``pass_rng``,
        ``(params, inputs, key) -> logits`` (train mode: dropout etc.). See `linen_apply`
        and `nnx_apply`.
      teacher_apply: ``(teacher_params, inputs) -> logits`` (eval mode); may be None when
        every batch carries ``"teacher_logits"``.
      optimizer: an optax ``GradientTransformation``; the same one given to `init_state`.
      transform: a `lightcomp.Transform`; the same one given to `init_state`.
      loss: ``(student_logits, teacher_logits, labels) -> scalar`` or
        ``-> (scalar, {name: scalar})``; default `lightcomp.distill.loss` with ``alpha``,
        ``temperature`` and ``kind`` (labels may be None when ``alpha == 1``).
      grad_reduce: ``(grads, key) -> grads`` replacing the ``lax.pmean`` of the
        gradients over ``axis_name`` (which it requires), e.g.
        ``lightcomp.parallel.compressed_mean("batch", bits=8)`` for a quantized all-reduce.
      axis_name: the mapped axis (``jax.pmap``/``shard_map``) to average gradients and
        metrics over; the per-device PRNG key is folded with ``lax.axis_index``.
      alpha, temperature, kind: keywords of `lightcomp.distill.loss`; only without ``loss``.
      pass_rng: call ``student_apply(params, inputs, key)`` with a fresh key each step.
      teacher_dtype: run the teacher in this floating dtype (e.g. ``jnp.bfloat16``):
        inputs and floating teacher params are cast (a no-op for params already cast
        with `cast_floating`), logits come back as float32.

    Returns:
      The pure step function; wrap it in ``jax.jit`` (or ``jax.pmap`` with ``axis_name``).

    Raises:
      TypeError, ValueError: bad configuration, here; bad batches, logits shapes and
        states that do not match the params or optimizer, when the step is traced.
    """
    if not callable(student_apply):
        raise TypeError(f"student_apply must be callable, got {type(student_apply).__name__}")
    if teacher_apply is not None and not callable(teacher_apply):
        raise TypeError(
            f"teacher_apply must be callable or None, got {type(teacher_apply).__name__}"
        )
    _check_optimizer(optimizer)
    _check_transform(transform)
    if axis_name is not None and not isinstance(axis_name, str):
        raise TypeError(f"axis_name must be a string or None, got {axis_name!r}")
    if grad_reduce is not None and (axis_name is None or not callable(grad_reduce)):
        raise ValueError("grad_reduce must be a callable (grads, key) -> grads and needs axis_name")
    if teacher_dtype is not None:
        _check_float_dtype(teacher_dtype, "teacher_dtype")
    if loss is None:
        kwargs = {}
        if alpha is not None:
            if not 0.0 <= float(alpha) <= 1.0:
                raise ValueError(f"alpha must be in [0, 1], got {alpha}")
            kwargs["alpha"] = float(alpha)
        if temperature is not None:
            if not float(temperature) > 0.0:
                raise ValueError(f"temperature must be > 0, got {temperature}")
            kwargs["temperature"] = float(temperature)
        if kind is not None:
            kwargs["kind"] = kind
        loss_fn, needs_labels = _default_loss(kwargs)
        # alpha = 0: the plain label loss; no teacher is needed (e.g. to train the teacher)
        label_only = kwargs.get("alpha", 0.5) == 0.0
    else:
        label_only = False
        if not callable(loss):
            raise TypeError(f"loss must be callable, got {type(loss).__name__}")
        if alpha is not None or temperature is not None or kind is not None:
            raise TypeError(
                "alpha, temperature and kind configure the default loss; "
                "with a custom loss, bind them in the loss itself"
            )
        loss_fn, needs_labels = loss, False

    def teacher_forward(teacher_params, inputs):
        if teacher_apply is None:
            raise ValueError('teacher_apply is None, so every batch needs "teacher_logits"')
        if teacher_dtype is not None:
            teacher_params = cast_floating(teacher_params, teacher_dtype)
            if _tree.is_floating(inputs):
                inputs = inputs.astype(teacher_dtype)
        logits = teacher_apply(teacher_params, inputs)
        return lax.stop_gradient(jnp.asarray(logits).astype(jnp.float32))

    def step(state: DistillState, teacher_params: PyTree, batch: Mapping[str, jax.Array]):
        if not isinstance(state, DistillState):
            raise TypeError(f"state must be a DistillState, got {type(state).__name__}")
        inputs, labels, cached = _batch_parts(
            batch,
            needs_labels=needs_labels,
            has_teacher=teacher_params is not None,
            label_only=label_only,
        )
        learned, fixed = _tf.partition(state.comp_state)
        p_diff, p_rest = _trainable(state.params)
        l_diff, l_rest = _trainable(learned)
        _check_opt_state(state, optimizer, p_diff, l_diff)
        masks = _masks_of(state.comp_state)
        _check_masks(state.params, masks)

        next_rng, key = jax.random.split(state.rng)
        if axis_name is not None:
            key = jax.random.fold_in(key, lax.axis_index(axis_name))

        if cached is not None:
            t_logits = lax.stop_gradient(jnp.asarray(cached).astype(jnp.float32))
        elif label_only and (teacher_params is None or teacher_apply is None):
            t_logits = None  # weight 0: the student's own logits stand in below
        else:
            t_logits = teacher_forward(teacher_params, inputs)

        def objective(p_d, l_d):
            params = _merge(p_d, p_rest)
            comp = _tf.combine(_merge(l_d, l_rest), fixed)
            eff = transform.apply(params, comp)
            out = student_apply(eff, inputs, key) if pass_rng else student_apply(eff, inputs)
            s_logits = jnp.asarray(out)
            t_in = lax.stop_gradient(s_logits.astype(jnp.float32)) if t_logits is None else t_logits
            _check_logits(s_logits, t_in, labels)
            s_logits = s_logits.astype(jnp.float32)
            value, parts = _split_loss(loss_fn(s_logits, t_in, labels))
            return value.astype(jnp.float32), (s_logits, t_in, parts)

        (value, (s_logits, t_logits, parts)), (g_p, g_l) = jax.value_and_grad(
            objective, argnums=(0, 1), has_aux=True
        )(p_diff, l_diff)
        if grad_reduce is not None:
            g_p, g_l = grad_reduce((g_p, g_l), jax.random.fold_in(key, 1))
        elif axis_name is not None:
            g_p, g_l = lax.pmean((g_p, g_l), axis_name)

        (u_p, u_l), opt_state = optimizer.update((g_p, g_l), state.opt_state, (p_diff, l_diff))
        u_p = _apply_masks(u_p, masks)
        params = _merge(optax.apply_updates(p_diff, u_p), p_rest)
        learned = _merge(optax.apply_updates(l_diff, u_l), l_rest)
        comp_state = _tf.combine(learned, fixed)
        comp_state = transform.update(params, comp_state, g_p, state.step)
        new_masks = _masks_of(comp_state)
        params = _apply_masks(params, new_masks)

        s_logits = lax.stop_gradient(s_logits)
        s_pred = jnp.argmax(s_logits, axis=-1)
        metrics = {"loss": value}
        metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in parts.items()})
        if labels is not None:
            metrics["accuracy"] = jnp.mean((s_pred == labels).astype(jnp.float32))
        metrics["agreement"] = jnp.mean((s_pred == jnp.argmax(t_logits, -1)).astype(jnp.float32))
        metrics["sparsity"] = _sparsity(params, new_masks)
        if axis_name is not None:
            metrics = lax.pmean(metrics, axis_name)

        new_state = DistillState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            comp_state=comp_state,
            rng=next_rng,
        )
        return new_state, metrics

    return step


def _default_loss(kwargs: dict) -> tuple[Callable, bool]:
    """`lightcomp.distill.loss` with its parts reported as ``distill_loss`` and ``label_loss``."""
    needs_labels = kwargs.get("alpha", 0.5) < 1.0  # distill.loss's default alpha is 0.5

    def fn(s, t, labels):
        parts = distill.loss_parts(s, t, labels, **kwargs)
        metrics = {"distill_loss": parts["distill"]}
        if "label" in parts:
            metrics["label_loss"] = parts["label"]
        return parts["loss"], metrics

    return fn, needs_labels


# --------------------------------------------------------------------------- model adapters


def linen_apply(module: Any, *, rng_collections: Sequence[str] = ("dropout",), **call_kwargs):
    """Wraps a linen module as ``apply(params, inputs, key=None) -> logits``.

    Args:
      module: a ``flax.linen.Module``.
      rng_collections: rng streams fed from ``key`` (each gets ``fold_in(key, i)``).
      **call_kwargs: static keywords of the module's ``__call__``, e.g. ``train=True``.

    Returns:
      ``apply``; use it with ``make_step(..., pass_rng=True)`` for a train-mode student
      and ``linen_apply(module, train=False)`` for the teacher or `evaluate`.
    """
    names = tuple(rng_collections)

    def apply(params, inputs, key=None):
        rngs = None
        if key is not None:
            rngs = {c: jax.random.fold_in(key, i) for i, c in enumerate(names)}
        return module.apply({"params": params}, inputs, rngs=rngs, **call_kwargs)

    return apply


def nnx_apply(module: Any, *, train: bool | None = None):
    """Turns an nnx module into ``(apply, params)`` via ``nnx.split`` / ``nnx.merge``.

    ``params`` is the module's ``nnx.Param`` state; everything else (batch
    statistics, rng streams) is held fixed in the closure. The module itself is
    not modified.

    Args:
      module: a ``flax.nnx.Module``.
      train: True sets train mode (dropout on), False eval mode, None keeps the module's.

    Returns:
      ``(apply, params)`` with ``apply(params, inputs, key=None) -> logits``; a given
      ``key`` reseeds every rng stream of the module (``fold_in(key, i)``), so dropout
      masks change every step under ``make_step(..., pass_rng=True)``.
    """
    from flax import nnx

    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    if train is not None:
        copy = nnx.merge(graphdef, params, rest)
        copy.train() if train else copy.eval()
        graphdef, params, rest = nnx.split(copy, nnx.Param, ...)

    def apply(p, inputs, key=None):
        other = rest
        if key is not None:
            leaves, treedef = jax.tree.flatten(rest)
            leaves = [
                jax.random.fold_in(key, i)
                if jnp.issubdtype(getattr(x, "dtype", None) or np.float32, jax.dtypes.prng_key)
                else x
                for i, x in enumerate(leaves)
            ]
            other = jax.tree.unflatten(treedef, leaves)
        return nnx.merge(graphdef, p, other)(inputs)

    return apply, params


# --------------------------------------------------------------------------- parameter distillation


def _natural_key(name: Any):
    m = re.search(r"(\d+)$", str(name))
    return (re.sub(r"\d+$", "", str(name)), int(m.group(1)) if m else -1, str(name))


def _layer_names(params: Mapping, argname: str) -> list:
    if not isinstance(params, Mapping) or not params:
        raise TypeError(
            f"{argname} must be a non-empty mapping of layers ({{'Dense_0': ..., ...}}), "
            f"got {type(params).__name__}"
        )
    return sorted(params.keys(), key=_natural_key)


def keep_layers(teacher_params: Mapping, keep: Sequence[int | str]) -> dict:
    """Starts a shallower student from a subset of the teacher's layers.

    The layers (top-level entries, in natural order ``Dense_0, Dense_1, ..., Dense_10``)
    listed in ``keep`` are copied and renumbered consecutively (``Dense_0, Dense_2`` ->
    ``Dense_0, Dense_1``), so the result loads into the same model class built with
    fewer layers. Widths must chain: a kept layer's input width must equal the previous
    kept layer's output width.

    Args:
      teacher_params: a mapping of layers, e.g. a linen ``params`` dict.
      keep: positions (ints) or names of the layers to keep, in order.

    Returns:
      A dict of the kept layers (arrays shared with the teacher, not copied).

    Raises:
      ValueError: an unknown or repeated layer, or widths that do not chain.
    """
    names = _layer_names(teacher_params, "teacher_params")
    chosen = []
    for k in keep:
        if isinstance(k, int):
            if not -len(names) <= k < len(names):
                raise ValueError(f"keep index {k} is out of range for {len(names)} layers")
            chosen.append(names[k])
        elif k in teacher_params:
            chosen.append(k)
        else:
            raise ValueError(f"keep names unknown layer {k!r}; layers are {names}")
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"keep must list distinct layers, got {list(keep)}")
    out, prev = {}, None
    for i, name in enumerate(chosen):
        layer = teacher_params[name]
        kernel = layer.get("kernel") if isinstance(layer, Mapping) else None
        if kernel is not None and prev is not None and jnp.shape(kernel)[-2] != prev[1]:
            raise ValueError(
                f"kept layers do not chain: {prev[0]!r} outputs {prev[1]} features but "
                f"{name!r} takes {jnp.shape(kernel)[-2]}"
            )
        if kernel is not None:
            prev = (name, jnp.shape(kernel)[-1])
        new_name = re.sub(r"\d+$", str(i), str(name)) if isinstance(name, str) else i
        out[new_name] = layer
    return out


def slice_channels(teacher_params: Mapping, features: Sequence[int | None]) -> dict:
    """Starts a narrower student by keeping each layer's output channels of largest norm.

    Layers (top-level entries in natural order) must form a chain in which each
    layer's output channels are the next layer's input channels: Dense layers, or
    convolutions followed by global pooling. For each layer, the input rows that the
    previous layer dropped are removed, then the ``features[i]`` output channels with
    the largest L2 norm of (kernel column, bias) are kept, in their original order.
    A channel of norm 0 contributes nothing, so slicing only such channels leaves
    the function unchanged.

    Args:
      teacher_params: ``{"Dense_0": {"kernel": [..., in, out], "bias": [out]}, ...}``.
      features: new output width per layer; None keeps a layer's width. The last
        layer's width (the classes) cannot change.

    Returns:
      A dict with the same layer names and sliced arrays.

    Raises:
      ValueError: wrong number of widths, a width above the teacher's or below 1,
        a changed output width, or a layer without a ``kernel``.
    """
    names = _layer_names(teacher_params, "teacher_params")
    features = list(features)
    if len(features) != len(names):
        raise ValueError(f"features has {len(features)} widths for {len(names)} layers {names}")
    # A one-off host computation on concrete arrays: NumPy, so that no shape compiles.
    out, prev_idx = {}, None
    for i, (name, width) in enumerate(zip(names, features, strict=True)):
        layer = teacher_params[name]
        if not isinstance(layer, Mapping) or "kernel" not in layer:
            raise ValueError(f"layer {name!r} has no 'kernel'; slice_channels needs kernels")
        kernel = np.asarray(layer["kernel"])
        bias = None if layer.get("bias") is None else np.asarray(layer["bias"])
        if prev_idx is not None:
            kernel = np.take(kernel, prev_idx, axis=-2)
        n_out = kernel.shape[-1]
        width = n_out if width is None else int(width)
        if i == len(names) - 1 and width != n_out:
            raise ValueError(f"the last layer {name!r} must keep its {n_out} outputs, got {width}")
        if not 1 <= width <= n_out:
            raise ValueError(f"features[{i}] for {name!r} must be in 1..{n_out}, got {width}")
        sq = np.sum(kernel.astype(np.float32).reshape(-1, n_out) ** 2, axis=0)
        if bias is not None:
            sq = sq + bias.astype(np.float32) ** 2
        idx = np.sort(np.argsort(-sq, kind="stable")[:width])
        new = dict(layer)
        new["kernel"] = jnp.asarray(np.take(kernel, idx, axis=-1))
        if bias is not None:
            new["bias"] = jnp.asarray(np.take(bias, idx, axis=-1))
        out[name] = new
        prev_idx = idx
    return out


# --------------------------------------------------------------------------- teacher-logit cache


def teacher_logits(
    teacher_apply: Apply,
    teacher_params: PyTree,
    inputs: np.ndarray,
    *,
    batch_size: int = 512,
    dtype: Any = None,
) -> np.ndarray:
    """Computes the teacher's logits for a whole fixed (un-augmented) dataset, once.

    Batches from `cached_batches` then carry ``"teacher_logits"`` and the step
    skips the teacher's forward pass (most of a distillation step's cost).

    Args:
      teacher_apply: ``(params, inputs) -> logits``.
      teacher_params: its parameters.
      inputs: ``[n, ...]`` the dataset's inputs.
      batch_size: rows per forward pass (the last chunk is padded, one compilation).
      dtype: run the teacher in this floating dtype (e.g. ``jnp.bfloat16``).

    Returns:
      float32 ``[n, classes]`` as a NumPy array.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if dtype is not None:
        teacher_params = cast_floating(teacher_params, dtype)
    inputs = np.asarray(inputs)
    n = inputs.shape[0]
    if n == 0:
        raise ValueError("inputs is empty")
    bs = min(batch_size, n)

    @jax.jit
    def forward(p, x):
        if dtype is not None and _tree.is_floating(x):
            x = x.astype(dtype)
        return jnp.asarray(teacher_apply(p, x)).astype(jnp.float32)

    chunks = []
    for start in range(0, n, bs):
        x = inputs[start : start + bs]
        rows = x.shape[0]
        if rows < bs:
            x = np.concatenate([x, np.zeros((bs - rows, *x.shape[1:]), x.dtype)])
        chunks.append(np.asarray(forward(teacher_params, x))[:rows])
    return np.concatenate(chunks)


def cached_batches(
    x: np.ndarray,
    y: np.ndarray,
    logits: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    drop_last: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Like `lightcomp.data.batches`, with each batch's cached ``"teacher_logits"`` rows.

    Yields ``{"inputs", "labels", "teacher_logits"}`` forever, reshuffled each epoch
    (the same order as ``lightcomp.data.batches`` with the same seed).
    """
    if not len(x) == len(y) == len(logits):
        raise ValueError(f"x, y and logits differ in length: {len(x)}, {len(y)}, {len(logits)}")
    from lightcomp import data

    index = np.arange(len(x))
    for b in data.batches(index, index, batch_size, seed=seed, drop_last=drop_last):
        idx = b["inputs"]
        yield {"inputs": x[idx], "labels": y[idx], _TEACHER_LOGITS: logits[idx]}


# --------------------------------------------------------------------------- evaluation and the loop


def _batch_counts(apply, params, inputs, labels):
    logits = jnp.asarray(apply(params, inputs)).astype(jnp.float32)
    correct = jnp.sum(jnp.argmax(logits, -1) == labels)
    nll = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return correct, nll


_batch_counts_jit = jax.jit(_batch_counts, static_argnums=0)


def evaluate(
    apply: Apply,
    params: PyTree,
    batches: Iterable[Mapping[str, Any]] | tuple[np.ndarray, np.ndarray],
    *,
    batch_size: int = 512,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``apply(params, inputs)`` over a finite dataset.

    Args:
      apply: ``(params, inputs) -> logits``; for a compressed student pass the
        effective params (`effective_params`).
      params: the parameters.
      batches: a finite iterable of ``{"inputs", "labels"}`` batches, or a pair
        ``(inputs, labels)`` of arrays split into ``batch_size`` rows.
      batch_size: rows per batch when ``batches`` is a pair of arrays.

    Returns:
      ``{"accuracy": float, "loss": float, "count": int}``.
    """
    if isinstance(batches, tuple) and len(batches) == 2 and not isinstance(batches[0], Mapping):
        x, y = batches
        if len(x) != len(y):
            raise ValueError(f"inputs and labels differ in length: {len(x)} != {len(y)}")
        batches = (
            {"inputs": x[i : i + batch_size], "labels": y[i : i + batch_size]}
            for i in range(0, len(x), batch_size)
        )
    correct = nll = 0.0
    count = 0
    for b in batches:
        _batch_parts(b, needs_labels=True, has_teacher=True)
        c, n = _batch_counts_jit(apply, params, b["inputs"], b["labels"])
        correct += float(c)
        nll += float(n)
        count += int(np.shape(b["labels"])[0])
    if count == 0:
        raise ValueError("batches is empty")
    return {"accuracy": correct / count, "loss": nll / count, "count": count}


def fit(
    step: Callable,
    state: DistillState,
    teacher_params: PyTree,
    batches: Iterable[Mapping[str, Any]],
    *,
    steps: int,
    log_every: int = 10,
    eval_fn: Callable[[DistillState], Mapping[str, float]] | None = None,
    eval_every: int | None = None,
    progress: bool = True,
    description: str = "distill",
) -> tuple[DistillState, list[dict[str, float]]]:
    """Runs ``steps`` distillation steps with a live progress bar (the loop outside jit).

    Args:
      step: from `make_step`; jitted here unless it already is.
      state: the starting `DistillState`.
      teacher_params: the teacher's parameters (None with cached teacher logits).
      batches: an iterator of batches (e.g. `lightcomp.data.batches`, `cached_batches`).
      steps: how many steps to run.
      log_every: fetch metrics (a host sync) every this many steps and at the end.
      eval_fn: ``state -> {name: float}`` (e.g. test accuracy via `evaluate`).
      eval_every: call ``eval_fn`` every this many steps (default: only at the end).
      progress: show a ``rich`` progress bar with the latest loss and accuracy.
      description: the bar's label.

    Returns:
      ``(state, history)``; ``history`` is a list of ``{"step": int, metric: float, ...}``
      rows, one per fetch, evaluation results merged into the row of their step.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be >= 1 or None, got {eval_every}")
    run = step if hasattr(step, "lower") else jax.jit(step)
    it = iter(batches)
    history: list[dict[str, float]] = []

    def summary(row):
        keys = ("loss", "accuracy", "agreement", "sparsity", "eval_accuracy")
        return "  ".join(f"{k} {row[k]:.4f}" for k in keys if k in row)

    bar = task = None
    if progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        bar.start()
        task = bar.add_task(description, total=steps, info="")
    try:
        for i in range(1, steps + 1):
            try:
                batch = next(it)
            except StopIteration:
                raise ValueError(f"batches ran out after {i - 1} of {steps} steps") from None
            state, metrics = run(state, teacher_params, batch)
            do_eval = eval_fn is not None and (
                i == steps or (eval_every is not None and i % eval_every == 0)
            )
            if i % log_every == 0 or i == steps or do_eval:
                row = {"step": i}
                row.update({k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()})
                if do_eval:
                    row.update({f"eval_{k}": float(v) for k, v in eval_fn(state).items()})
                history.append(row)
                if bar is not None:
                    bar.update(task, info=summary(row))
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return state, history
