"""`evaluate` and `fit`: the loop outside ``jit``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lightcomp import _checks
from lightcomp.train._batch import batch_parts, check_logits
from lightcomp.train._state import DistillState
from lightcomp.train._stateful import StatefulApply, as_stateful

PyTree = Any
Apply = Callable[..., jax.Array]


def _batch_counts(apply, params, model_state, inputs, labels, weights):
    """(weighted) correct tokens, summed cross-entropy, the token weight of one batch and its
    count of labels outside ``[0, classes)``."""
    out, _ = as_stateful(apply, False).run(params, model_state, inputs)
    logits = jnp.asarray(out).astype(jnp.float32)
    w = check_logits(logits, logits, labels, weights)
    correct = jnp.argmax(logits, -1) == labels
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    outside = jnp.sum((labels < 0) | (labels >= logits.shape[-1]))
    if w is None:
        return jnp.sum(correct), jnp.sum(nll), correct.size, outside
    return jnp.sum(w * correct), jnp.sum(w * nll), jnp.sum(w), outside


_batch_counts_jit = jax.jit(_batch_counts, static_argnums=0)


def _as_batches(batches, batch_size):
    """``(inputs, labels)`` arrays as batches of ``batch_size`` rows; batches as they are."""
    if isinstance(batches, tuple) and len(batches) == 2 and not isinstance(batches[0], Mapping):
        x, y = batches
        if len(x) != len(y):
            raise ValueError(f"inputs and labels differ in length: {len(x)} != {len(y)}")
        return (
            {"inputs": x[i : i + batch_size], "labels": y[i : i + batch_size]}
            for i in range(0, len(x), batch_size)
        )
    return batches


def evaluate(
    apply: Apply,
    params: PyTree,
    batches: Iterable[Mapping[str, Any]] | tuple[np.ndarray, np.ndarray],
    *,
    batch_size: int = 512,
    model_state: PyTree = None,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``apply(params, inputs)`` over a finite dataset.

    Both are means over tokens for a sequence model (logits ``[batch, ..., classes]``,
    labels ``[batch, ...]``), weighted by ``batch["weights"]`` where batches carry them.

    Args:
      apply: ``(params, inputs) -> logits`` or an eval-mode `StatefulApply`
        (``linen_apply(module, train=False)``: running statistics read, not updated);
        for a compressed student pass the effective params (`effective_params`).
      params: the parameters.
      batches: a finite iterable of ``{"inputs", "labels"[, "weights"]}`` batches, or a
        pair ``(inputs, labels)`` of arrays split into ``batch_size`` rows.
      batch_size: rows per batch when ``batches`` is a pair of arrays.
      model_state: the model's state (``state.model_state``); default the adapter's own.

    Returns:
      ``{"accuracy": float, "loss": float, "count": int}`` (``count``: rows).

    Raises:
      TypeError: ``batch_size`` not an int, ``apply`` not callable.
      ValueError: ``batch_size < 1``, a train-mode `StatefulApply`, an empty dataset, bad
        batches, labels outside ``[0, classes)`` or a NaN/inf loss (naming the batch; read
        at the sync the loop makes anyway).
    """
    batch_size = _checks.check_int(batch_size, "batch_size", lo=1)
    _checks.check_callable(apply, "apply")
    if isinstance(apply, StatefulApply):
        if apply.train:
            raise ValueError(
                "evaluate needs an eval-mode apply (train=False): a train-mode one would "
                "normalise with batch statistics and drop units"
            )
        model_state = apply.model_state if model_state is None else model_state
    model_state = {} if model_state is None else model_state
    if not isinstance(batches, (Iterable, tuple)):
        raise TypeError(
            "batches must be an iterable of {'inputs', 'labels'} batches or a pair "
            f"(inputs, labels), got {type(batches).__name__}"
        )
    correct = nll = total = 0.0
    count = 0
    for i, b in enumerate(_as_batches(batches, batch_size)):
        parts = batch_parts(b, needs_labels=True, has_teacher=True)
        c, n, w, outside = jax.device_get(
            _batch_counts_jit(apply, params, model_state, parts.inputs, parts.labels, parts.weights)
        )
        if outside:
            raise ValueError(
                f"evaluate: batch {i} (counting from 0) has {int(outside)} labels outside "
                "[0, classes) (a label -1 would wrap to the last class)"
            )
        correct += float(c)
        if not math.isfinite(float(n)):
            raise ValueError(
                f"evaluate: the loss is {float(n)} on batch {i} (counting from 0): the "
                "params or the inputs hold NaN/inf, or the model overflows its dtype"
            )
        nll += float(n)
        total += float(w)
        count += int(np.shape(parts.labels)[0])
    if count == 0:
        raise ValueError("batches is empty")
    total = total if total > 0 else 1.0
    return {"accuracy": correct / total, "loss": nll / total, "count": count}


def _fetch_row(i: int, metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of step ``i`` on the host (the loop's one sync); a non-finite loss raises."""
    row: dict[str, float] = {"step": i}
    row.update({k: float(np.mean(v)) for k, v in jax.device_get(metrics).items()})
    if "loss" in row and not math.isfinite(row["loss"]):
        raise ValueError(
            f"the loss is {row['loss']} at step {i} (it was finite at the previous fetch, if "
            "any): lower the learning rate, check the inputs, or train float16 params with "
            "float32 master weights and a float16 forward pass (see init_state)"
        )
    return row


def _check_host_labels(batch: Any, i: int) -> None:
    """Integer NumPy labels (on the host: no device sync) must be >= 0; labels >= the class
    count make the loss NaN, which the next fetch reports."""
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu" and labels.size:
        low = int(labels.min())
        if low < 0:
            raise ValueError(
                f"batch of step {i} has label {low}: labels must be in [0, classes) "
                "(a label -1 would wrap to the last class)"
            )


def _summary(row: Mapping[str, float]) -> str:
    keys = ("loss", "accuracy", "agreement", "sparsity", "eval_accuracy")
    return "  ".join(f"{k} {row[k]:.4f}" for k in keys if k in row)


def _progress_bar(description: str, steps: int):
    """A started ``rich`` progress bar and its task."""
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
    return bar, bar.add_task(description, total=steps, info="")


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

    Raises:
      TypeError: ``steps``, ``log_every`` or ``eval_every`` not an int (a bool or 2.5 is
        not), ``step`` or ``eval_fn`` not callable, ``progress`` not a bool.
      ValueError: ``steps < 0``, ``log_every`` or ``eval_every < 1``, batches running out,
        a negative label in a NumPy batch, or a NaN/inf loss at a fetch (every
        ``log_every`` steps; the message names the step; labels >= the class count show
        up here). The check reads the metrics the loop fetches anyway: no extra host sync.
    """
    steps = _checks.check_int(steps, "steps", lo=0)
    log_every = _checks.check_int(log_every, "log_every", lo=1)
    eval_every = _checks.check_opt_int(eval_every, "eval_every", lo=1)
    _checks.check_callable(step, "step")
    _checks.check_callable(eval_fn, "eval_fn", optional=True)
    progress = _checks.check_bool(progress, "progress")
    if not isinstance(description, str):
        raise TypeError(f"description must be a string, got {type(description).__name__}")
    run = step if hasattr(step, "lower") else jax.jit(step)
    it = iter(batches)
    history: list[dict[str, float]] = []
    bar = _progress_bar(description, steps) if progress else None
    try:
        for i in range(1, steps + 1):
            try:
                batch = next(it)
            except StopIteration:
                raise ValueError(f"batches ran out after {i - 1} of {steps} steps") from None
            _check_host_labels(batch, i)
            state, metrics = run(state, teacher_params, batch)
            do_eval = eval_fn is not None and (
                i == steps or (eval_every is not None and i % eval_every == 0)
            )
            if i % log_every == 0 or i == steps or do_eval:
                row = _fetch_row(i, metrics)
                if do_eval:
                    row.update({f"eval_{k}": float(v) for k, v in eval_fn(state).items()})
                history.append(row)
                if bar is not None:
                    bar[0].update(bar[1], info=_summary(row))
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()
    return state, history
