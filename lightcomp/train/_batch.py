"""What a batch holds, checked once when a step or an evaluation is traced.

A batch is ``{"inputs": [batch, ...], "labels": [batch, ...] (int, optional),
"weights": [batch, ...] (optional), "teacher_logits": [batch, ..., classes]
(optional)}``. A classifier has logits ``[batch, classes]`` and labels ``[batch]``; a
sequence model logits ``[batch, len, vocab]``, labels ``[batch, len]`` and, for padded
sequences, ``weights`` ``[batch, len]`` (a padding mask or per-token weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp

from lightcomp import distill

TEACHER_LOGITS = "teacher_logits"
WEIGHTS = "weights"


class BatchParts(NamedTuple):
    inputs: Any
    labels: Any
    cached: Any  # the batch's "teacher_logits", or None
    weights: Any


def batch_parts(
    batch: Any, *, needs_labels: bool, has_teacher: bool, label_only: bool = False
) -> BatchParts:
    """``(inputs, labels, cached teacher logits, weights)`` of a batch mapping (None if absent).

    Raises:
      TypeError: ``batch`` is not a mapping.
      ValueError: a key the step needs is missing, or rows disagree.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(
            f'batch must be a mapping {{"inputs": ..., "labels": ...}}, got {type(batch).__name__}'
        )
    if "inputs" not in batch:
        raise ValueError(f'batch has no "inputs" key; its keys are {sorted(batch)}')
    labels = batch.get("labels")
    if needs_labels and labels is None:
        raise ValueError(
            'batch has no "labels" key, which the loss needs (alpha < 1 mixes in the label '
            f"loss; use alpha=1.0 for labels-free distillation); its keys are {sorted(batch)}"
        )
    cached = batch.get(TEACHER_LOGITS)
    if cached is None and not has_teacher and not label_only:
        raise ValueError(
            f'teacher_params is None and batch has no "{TEACHER_LOGITS}" key: the step needs '
            "one of them"
        )
    inputs, weights = batch["inputs"], batch.get(WEIGHTS)
    n = jnp.shape(inputs)[0] if jnp.ndim(inputs) else None
    for name, value in (("labels", labels), (TEACHER_LOGITS, cached), (WEIGHTS, weights)):
        if value is not None and (jnp.ndim(value) == 0 or jnp.shape(value)[0] != n):
            raise ValueError(
                f'batch["{name}"] has shape {jnp.shape(value)}, but batch["inputs"] has {n} rows'
            )
    return BatchParts(inputs, labels, cached, weights)


def check_logits(student: Any, teacher: Any, labels: Any, weights: Any = None):
    """Student and teacher logits ``[batch, ..., classes]`` of one shape, labels and weights
    ``[batch, ...]`` (the logits' shape without the class axis).

    Returns:
      The weights as float32 (`lightcomp.distill.check_weights`), or None.
    """
    if jnp.shape(student) != jnp.shape(teacher):
        raise ValueError(
            f"student logits {jnp.shape(student)} and teacher logits {jnp.shape(teacher)} "
            "differ in shape; both must be [batch, ..., classes]"
        )
    if jnp.ndim(student) < 2:
        raise ValueError(
            f"logits must be [batch, classes] or [batch, ..., classes], got shape "
            f"{jnp.shape(student)}"
        )
    tokens = tuple(jnp.shape(student)[:-1])
    if labels is not None and tuple(jnp.shape(labels)) != tokens:
        raise ValueError(
            f'batch["labels"] must be int {list(tokens)} (the logits {jnp.shape(student)} '
            f"without the class axis), got shape {jnp.shape(labels)}"
        )
    return distill.check_weights(weights, tokens, f'batch["{WEIGHTS}"]')
