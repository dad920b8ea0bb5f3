"""`make_step`: the jitted distillation step through a compression transform.

The step reads: split ``(params, comp_state)`` once into the trainable part and the
rest -> gradients of the loss (the student's forward pass also returns its new model
state) -> one optimizer update (pruned weights get neither a gradient nor an update:
`lightcomp.prune.keep_pruned`) -> join -> refresh the compression state
(``transform.update``) -> constrain (the new masks zero the pruned weights:
`lightcomp.prune.zero_pruned`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from lightcomp import _checks, distill, prune, tree
from lightcomp.train._batch import batch_parts, check_logits
from lightcomp.train._state import (
    DistillState,
    cast_floating,
    check_float_dtype,
    check_optimizer,
    check_transform,
    constrain,
)
from lightcomp.train._stateful import StatefulApply, as_stateful, check_model_state
from lightcomp.transform import Transform, join, masks_of, split_trainable

PyTree = Any
Apply = Callable[..., jax.Array]
Step = Callable[[DistillState, PyTree, Mapping[str, jax.Array]], tuple[DistillState, dict]]


def _default_loss(alpha, temperature, kind) -> tuple[Callable, bool, bool]:
    """`lightcomp.distill.loss` reporting ``distill_loss`` / ``label_loss``; needs labels; label-only."""
    kwargs = {}
    if alpha is not None:
        kwargs["alpha"] = _checks.check_number(alpha, "alpha", lo=0.0, hi=1.0)
    if temperature is not None:
        lo, hi = distill.TEMPERATURE_RANGE
        kwargs["temperature"] = _checks.check_number(temperature, "temperature", lo=lo, hi=hi)
    if kind is not None:
        kwargs["kind"] = _checks.check_choice(kind, distill.KINDS, "kind")
    a = kwargs.get("alpha", 0.5)  # distill.loss's default alpha

    def fn(s, t, labels, weights=None):
        parts = distill.loss_parts(s, t, labels, weights=weights, **kwargs)
        metrics = {"distill_loss": parts["distill"]}
        if "label" in parts:
            metrics["label_loss"] = parts["label"]
        return parts["loss"], metrics

    # alpha = 0: the plain label loss; no teacher is needed (e.g. to train the teacher)
    return fn, a < 1.0, a == 0.0


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


def _check_opt_state(opt_state: PyTree, optimizer, trainable: PyTree) -> None:
    """At trace time: ``opt_state`` must be ``optimizer.init`` of these trainable leaves."""
    expected = jax.eval_shape(optimizer.init, trainable)
    exp_flat, exp_def = jax.tree_util.tree_flatten_with_path(expected)
    got_flat, got_def = jax.tree_util.tree_flatten_with_path(opt_state)
    if exp_def != got_def:
        bad = tree.first_mismatch(expected, opt_state) or "<structure>"
        raise ValueError(
            "state.opt_state does not match optimizer.init for these params and this "
            f"transform (first difference at {bad!r}); rebuild it with init_state"
        )
    for (path, e), (_, g) in zip(exp_flat, got_flat, strict=True):
        if tuple(e.shape) != tuple(jnp.shape(g)):
            raise ValueError(
                f"state.opt_state leaf {tree.path_str(path)!r} has shape {jnp.shape(g)}, "
                f"expected {tuple(e.shape)} for these params; rebuild it with init_state"
            )


def _sparsity(masks: PyTree) -> jax.Array:
    """Fraction of masked-out entries over the leaves that have a mask (0.0 without masks)."""
    leaves = jax.tree.leaves(masks)
    total = sum(m.size for m in leaves)
    if not total:
        return jnp.zeros((), jnp.float32)
    kept = sum(jnp.count_nonzero(m) for m in leaves)
    return ((total - kept) / total).astype(jnp.float32)


def _token_share(weights: jax.Array | None, axis_name: str | None) -> jax.Array | None:
    """This device's token weight over the mean device's (None without weights or devices).

    A weighted mean on each device, times this share, then ``lax.pmean``'d, is the
    weighted mean over the global batch, however the padding falls across devices.
    """
    if weights is None or axis_name is None:
        return None
    total = jnp.sum(weights)
    mean = lax.pmean(total, axis_name)
    return jnp.where(mean > 0, total / jnp.where(mean > 0, mean, 1.0), 0.0)


def _metrics(value, parts, s_logits, t_logits, labels, weights, share, sparsity):
    """The step's metrics: loss and parts, accuracy and agreement over (weighted) tokens."""

    def mean(x):
        m = distill.weighted_mean(x.astype(jnp.float32), weights)
        return m if share is None else m * share

    s_pred = jnp.argmax(lax.stop_gradient(s_logits), axis=-1)
    metrics = {"loss": value}
    for k, v in parts.items():
        v = jnp.asarray(v, jnp.float32)
        metrics[k] = v if share is None else v * share
    if labels is not None:
        metrics["accuracy"] = mean(s_pred == labels)
    metrics["agreement"] = mean(s_pred == jnp.argmax(t_logits, -1))
    metrics["sparsity"] = sparsity
    return metrics


def _optimizer_update(optimizer, grads, opt_state, trainable, masks):
    """One optax update; with masks, through `prune.keep_pruned` (no gradient, no update)."""
    if masks is None:
        return optimizer.update(grads, opt_state, trainable)
    comp_none = jax.tree.map(lambda _: None, trainable[1])
    return prune.keep_pruned(optimizer).update(
        grads, opt_state, trainable, masks=(masks, comp_none)
    )


def _check_step_args(student_apply, teacher_apply, optimizer, t, axis_name, grad_reduce, dtype):
    _checks.check_callable(student_apply, "student_apply")
    _checks.check_callable(teacher_apply, "teacher_apply", optional=True)
    check_optimizer(optimizer)
    check_transform(t)
    if axis_name is not None and not isinstance(axis_name, str):
        raise TypeError(f"axis_name must be a string or None, got {axis_name!r}")
    if grad_reduce is not None and (axis_name is None or not callable(grad_reduce)):
        raise ValueError("grad_reduce must be a callable (grads, key) -> grads and needs axis_name")
    if dtype is not None:
        check_float_dtype(dtype, "teacher_dtype")
    if isinstance(teacher_apply, StatefulApply) and teacher_apply.train:
        raise ValueError(
            "teacher_apply is a train-mode forward (train=True): the teacher is frozen and "
            "reads its running statistics; build it with train=False"
        )


def _pick_loss(loss, alpha, temperature, kind) -> tuple[Callable, bool, bool]:
    """``(loss_fn, needs_labels, label_only)`` of the default or a custom loss."""
    if loss is None:
        return _default_loss(alpha, temperature, kind)
    _checks.check_callable(loss, "loss")
    if alpha is not None or temperature is not None or kind is not None:
        raise TypeError(
            "alpha, temperature and kind configure the default loss; "
            "with a custom loss, bind them in the loss itself"
        )
    return loss, False, False


def _teacher_forward(teacher: StatefulApply | None, dtype, label_only: bool, axis_name):
    """``(teacher_params, teacher_state, inputs, cached) -> float32 logits or None``."""

    def forward(teacher_params, teacher_state, inputs, cached):
        if cached is not None:
            return lax.stop_gradient(jnp.asarray(cached).astype(jnp.float32))
        if label_only and (teacher_params is None or teacher is None):
            return None  # weight 0: the student's own logits stand in
        if teacher is None:
            raise ValueError('teacher_apply is None, so every batch needs "teacher_logits"')
        if dtype is not None:
            teacher_params = cast_floating(teacher_params, dtype)
            if tree.is_floating(inputs):
                inputs = inputs.astype(dtype)
        logits, _ = teacher.run(teacher_params, teacher_state, inputs, device_axis=axis_name)
        return lax.stop_gradient(jnp.asarray(logits).astype(jnp.float32))

    return forward


def _objective(t, student, loss_fn, rest, state, parts, t_logits, key, axis_name):
    """The loss of the trainable leaves, with ``(s_logits, t_logits, parts, model_state,
    weights, share)`` as its auxiliary output."""

    def objective(trainable):
        eff = t.apply(*join(trainable, rest))
        out, model_state = student.run(
            eff, state.model_state, parts.inputs, key, device_axis=axis_name
        )
        s_logits = jnp.asarray(out)
        t_in = lax.stop_gradient(s_logits.astype(jnp.float32)) if t_logits is None else t_logits
        w = check_logits(s_logits, t_in, parts.labels, parts.weights)
        s_logits = s_logits.astype(jnp.float32)
        if w is None:
            value, loss_parts = _split_loss(loss_fn(s_logits, t_in, parts.labels))
        else:
            value, loss_parts = _split_loss(loss_fn(s_logits, t_in, parts.labels, weights=w))
        value = value.astype(jnp.float32)
        share = _token_share(w, axis_name)
        if share is not None:
            value = value * share
        return value, (s_logits, t_in, loss_parts, model_state, w, share)

    return objective


def make_step(
    student_apply: Apply,
    teacher_apply: Apply | None,
    optimizer: optax.GradientTransformation,
    transform: Transform,
    loss: Callable[..., Any] | None = None,
    *,
    axis_name: str | None = None,
    alpha: float | None = None,
    temperature: float | None = None,
    kind: str | None = None,
    pass_rng: bool = False,
    teacher_dtype: Any = None,
    grad_reduce: Callable[[PyTree, jax.Array], PyTree] | None = None,
) -> Step:
    """Builds the pure distillation step ``step(state, teacher_params, batch) -> (state, metrics)``.

    Under ``jax.jit`` the whole step is one XLA computation:

    1. teacher logits: ``teacher_apply(teacher_params, inputs)`` under ``stop_gradient``
       (a `StatefulApply` teacher reads ``state.teacher_state``, in eval mode), or
       ``batch["teacher_logits"]`` when the batch carries cached ones;
    2. student logits on ``transform.apply(params, comp_state)``; a `StatefulApply`
       student (`linen_apply`, `nnx_apply`) also reads ``state.model_state`` and returns
       the new one (BatchNorm statistics), and gets a fresh PRNG key for dropout;
    3. gradients of the loss with respect to the trainable part of ``(params,
       comp_state)`` (floating params and `Learned` leaves), ``lax.pmean``'d over
       ``axis_name`` when given;
    4. one ``optimizer.update``; pruned weights get no gradient and no update
       (`lightcomp.prune.keep_pruned`), so they stay exactly 0.0 with any optimizer;
    5. ``transform.update(params, comp_state, grads, step)`` with the traced step index
       (0 for the first step) and the raw parameter gradients: schedules never recompile;
       the new masks then zero the newly pruned weights;
    6. metrics: ``loss``, the loss parts, ``accuracy`` (vs labels, when present),
       ``agreement`` (argmax equal to the teacher's) and ``sparsity`` (fraction of
       entries pruned by the transform's masks), float32 scalars, ``lax.pmean``'d over
       ``axis_name``.

    Sequence models: logits ``[batch, ..., classes]``, labels ``[batch, ...]`` and
    ``batch["weights"]`` ``[batch, ...]`` (a padding mask or per-token weights, optional):
    the loss, accuracy and agreement are means over the weighted tokens. Under a device
    axis each device's weighted means are scaled by its share of the token weight, so the
    result is the global batch's, however the padding falls (a custom loss must then be a
    weighted mean, as `lightcomp.distill.loss` is).

    BatchNorm statistics: the student's BatchNorm ``axis_name`` (Flax's ResNet:
    ``"batch"``) is bound on every path: as a size-1 axis under ``jax.jit`` and
    `lightcomp.parallel.data_parallel` (statistics of the global batch), as the device
    axis when the step's ``axis_name`` is the same name (`pmap_step`, `shard_map_step`).

    Args:
      student_apply: ``(params, inputs) -> logits [batch, ..., classes]``; with
        ``pass_rng``, ``(params, inputs, key) -> logits``; or a `StatefulApply`
        (`linen_apply`, `nnx_apply`), which always gets the step's key.
      teacher_apply: ``(teacher_params, inputs) -> logits`` or an eval-mode
        `StatefulApply`; may be None when every batch carries ``"teacher_logits"`` or the
        loss needs no teacher (``alpha=0``).
      optimizer: an optax ``GradientTransformation``; the same one given to `init_state`.
      transform: a `lightcomp.Transform`; the same one given to `init_state`.
      loss: ``(student_logits, teacher_logits, labels) -> scalar`` or
        ``-> (scalar, {name: scalar})``, called with ``weights=`` too when the batch has
        them; default `lightcomp.distill.loss` with ``alpha``, ``temperature`` and
        ``kind`` (labels may be None when ``alpha == 1``).
      axis_name: the mapped axis (``jax.pmap``/``shard_map``) to average gradients and
        metrics over; the per-device PRNG key is folded with ``lax.axis_index``.
      alpha, temperature, kind: keywords of `lightcomp.distill.loss`; only without ``loss``.
      pass_rng: call a plain ``student_apply(params, inputs, key)`` with a fresh key each step.
      teacher_dtype: run the teacher in this floating dtype (e.g. ``jnp.bfloat16``):
        inputs and floating teacher params are cast, logits come back as float32.
      grad_reduce: ``(grads, key) -> grads`` replacing the ``lax.pmean`` of the gradients
        over ``axis_name`` (which it requires), e.g.
        ``lightcomp.parallel.compressed_mean("batch", bits=8)``.

    Returns:
      The pure step function (its ``axis_name`` attribute says the axis it averages
      over); wrap it in ``jax.jit``, `lightcomp.parallel.pmap_step`, `data_parallel` or
      `shard_map_step`.

    Raises:
      TypeError, ValueError: bad configuration (a train-mode teacher), here; bad batches,
        logits, labels or weights shapes, BatchNorm layers that would not synchronise and
        states that do not match the params, optimizer or model, when the step is traced.
    """
    t = transform
    _check_step_args(
        student_apply, teacher_apply, optimizer, t, axis_name, grad_reduce, teacher_dtype
    )
    loss_fn, needs_labels, label_only = _pick_loss(loss, alpha, temperature, kind)
    student = as_stateful(student_apply, pass_rng)
    teacher = None if teacher_apply is None else as_stateful(teacher_apply, False)
    teacher_forward = _teacher_forward(teacher, teacher_dtype, label_only, axis_name)

    def reduce(grads, key):
        if grad_reduce is not None:
            return grad_reduce(grads, jax.random.fold_in(key, 1))
        return grads if axis_name is None else lax.pmean(grads, axis_name)

    def step(state: DistillState, teacher_params: PyTree, batch: Mapping[str, jax.Array]):
        if not isinstance(state, DistillState):
            raise TypeError(f"state must be a DistillState, got {type(state).__name__}")
        parts = batch_parts(
            batch,
            needs_labels=needs_labels,
            has_teacher=teacher_params is not None,
            label_only=label_only,
        )
        trainable, rest = split_trainable(state.params, state.comp_state)
        _check_opt_state(state.opt_state, optimizer, trainable)
        masks = masks_of(state.comp_state)
        next_rng, key = jax.random.split(state.rng)
        if axis_name is not None:
            key = jax.random.fold_in(key, lax.axis_index(axis_name))
        t_logits = teacher_forward(teacher_params, state.teacher_state, parts.inputs, parts.cached)
        objective = _objective(t, student, loss_fn, rest, state, parts, t_logits, key, axis_name)
        (value, aux), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        s_logits, t_in, loss_parts, model_state, weights, share = aux
        if model_state is not state.model_state:
            check_model_state(model_state, state.model_state, "the student's apply")
        grads = reduce(grads, key)
        updates, opt_state = _optimizer_update(optimizer, grads, state.opt_state, trainable, masks)
        params, comp_state = join(optax.apply_updates(trainable, updates), rest)
        comp_state = t.update(params, comp_state, grads[0], state.step)
        params = constrain(params, comp_state)
        sparsity = _sparsity(masks_of(comp_state))
        metrics = _metrics(
            value, loss_parts, s_logits, t_in, parts.labels, weights, share, sparsity
        )
        if axis_name is not None:
            metrics = lax.pmean(metrics, axis_name)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            comp_state=comp_state,
            rng=next_rng,
            model_state=model_state,
        )
        return new_state, metrics

    step.axis_name = axis_name
    return step
