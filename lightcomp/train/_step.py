"""`make_step`: the jitted distillation step through a compression transform.

The step reads: split ``(params, comp_state)`` once into the trainable part and the
rest -> gradients of the loss -> one optimizer update (pruned weights get neither a
gradient nor an update: `lightcomp.prune.keep_pruned`) -> join -> refresh the
compression state (``transform.update``) -> constrain (the new masks zero the pruned
weights: `lightcomp.prune.zero_pruned`).
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
        kwargs["temperature"] = _checks.check_number(
            temperature, "temperature", lo=0.0, lo_open=True
        )
    if kind is not None:
        kwargs["kind"] = _checks.check_choice(kind, distill.KINDS, "kind")
    a = kwargs.get("alpha", 0.5)  # distill.loss's default alpha

    def fn(s, t, labels):
        parts = distill.loss_parts(s, t, labels, **kwargs)
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


def _metrics(value, parts, s_logits, t_logits, labels, sparsity) -> dict[str, jax.Array]:
    s_pred = jnp.argmax(lax.stop_gradient(s_logits), axis=-1)
    metrics = {"loss": value}
    metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in parts.items()})
    if labels is not None:
        metrics["accuracy"] = jnp.mean((s_pred == labels).astype(jnp.float32))
    metrics["agreement"] = jnp.mean((s_pred == jnp.argmax(t_logits, -1)).astype(jnp.float32))
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

    1. teacher logits: ``teacher_apply(teacher_params, inputs)`` under ``stop_gradient``,
       or ``batch["teacher_logits"]`` when the batch carries cached ones;
    2. student logits on ``transform.apply(params, comp_state)``;
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

    Args:
      student_apply: ``(params, inputs) -> logits [batch, classes]``; with ``pass_rng``,
        ``(params, inputs, key) -> logits`` (train mode: dropout etc.). See `linen_apply`
        and `nnx_apply`.
      teacher_apply: ``(teacher_params, inputs) -> logits`` (eval mode); may be None when
        every batch carries ``"teacher_logits"`` or the loss needs no teacher (``alpha=0``).
      optimizer: an optax ``GradientTransformation``; the same one given to `init_state`.
      transform: a `lightcomp.Transform`; the same one given to `init_state`.
      loss: ``(student_logits, teacher_logits, labels) -> scalar`` or
        ``-> (scalar, {name: scalar})``; default `lightcomp.distill.loss` with ``alpha``,
        ``temperature`` and ``kind`` (labels may be None when ``alpha == 1``).
      axis_name: the mapped axis (``jax.pmap``/``shard_map``) to average gradients and
        metrics over; the per-device PRNG key is folded with ``lax.axis_index``.
      alpha, temperature, kind: keywords of `lightcomp.distill.loss`; only without ``loss``.
      pass_rng: call ``student_apply(params, inputs, key)`` with a fresh key each step.
      teacher_dtype: run the teacher in this floating dtype (e.g. ``jnp.bfloat16``):
        inputs and floating teacher params are cast, logits come back as float32.
      grad_reduce: ``(grads, key) -> grads`` replacing the ``lax.pmean`` of the gradients
        over ``axis_name`` (which it requires), e.g.
        ``lightcomp.parallel.compressed_mean("batch", bits=8)``.

    Returns:
      The pure step function; wrap it in ``jax.jit`` (or ``jax.pmap`` with ``axis_name``).

    Raises:
      TypeError, ValueError: bad configuration, here; bad batches, logits shapes and
        states that do not match the params or optimizer, when the step is traced.
    """
    t = transform
    _check_step_args(
        student_apply, teacher_apply, optimizer, t, axis_name, grad_reduce, teacher_dtype
    )
    if loss is None:
        loss_fn, needs_labels, label_only = _default_loss(alpha, temperature, kind)
    else:
        _checks.check_callable(loss, "loss")
        if alpha is not None or temperature is not None or kind is not None:
            raise TypeError(
                "alpha, temperature and kind configure the default loss; "
                "with a custom loss, bind them in the loss itself"
            )
        loss_fn, needs_labels, label_only = loss, False, False

    def teacher_forward(teacher_params, inputs, cached):
        if cached is not None:
            return lax.stop_gradient(jnp.asarray(cached).astype(jnp.float32))
        if label_only and (teacher_params is None or teacher_apply is None):
            return None  # weight 0: the student's own logits stand in
        if teacher_apply is None:
            raise ValueError('teacher_apply is None, so every batch needs "teacher_logits"')
        if teacher_dtype is not None:
            teacher_params = cast_floating(teacher_params, teacher_dtype)
            if tree.is_floating(inputs):
                inputs = inputs.astype(teacher_dtype)
        logits = teacher_apply(teacher_params, inputs)
        return lax.stop_gradient(jnp.asarray(logits).astype(jnp.float32))

    def reduce(grads, key):
        if grad_reduce is not None:
            return grad_reduce(grads, jax.random.fold_in(key, 1))
        return grads if axis_name is None else lax.pmean(grads, axis_name)

    def step(state: DistillState, teacher_params: PyTree, batch: Mapping[str, jax.Array]):
        if not isinstance(state, DistillState):
            raise TypeError(f"state must be a DistillState, got {type(state).__name__}")
        inputs, labels, cached = batch_parts(
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
        t_logits = teacher_forward(teacher_params, inputs, cached)

        def objective(trainable):
            eff = t.apply(*join(trainable, rest))
            out = student_apply(eff, inputs, key) if pass_rng else student_apply(eff, inputs)
            s_logits = jnp.asarray(out)
            t_in = lax.stop_gradient(s_logits.astype(jnp.float32)) if t_logits is None else t_logits
            check_logits(s_logits, t_in, labels)
            s_logits = s_logits.astype(jnp.float32)
            value, parts = _split_loss(loss_fn(s_logits, t_in, labels))
            return value.astype(jnp.float32), (s_logits, t_in, parts)

        (value, (s_logits, t_in, parts)), grads = jax.value_and_grad(objective, has_aux=True)(
            trainable
        )
        grads = reduce(grads, key)
        updates, opt_state = _optimizer_update(optimizer, grads, state.opt_state, trainable, masks)
        params, comp_state = join(optax.apply_updates(trainable, updates), rest)
        comp_state = t.update(params, comp_state, grads[0], state.step)
        params = constrain(params, comp_state)
        sparsity = _sparsity(masks_of(comp_state))
        metrics = _metrics(value, parts, s_logits, t_in, labels, sparsity)
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
