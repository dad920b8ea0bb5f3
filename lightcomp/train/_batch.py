"""What a batch holds, checked once when a step or an evaluation is traced."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

TEACHER_LOGITS = "teacher_logits"


def batch_parts(batch: Any, *, needs_labels: bool, has_teacher: bool, label_only: bool = False):
    """``(inputs, labels or None, cached teacher logits or None)`` of a batch mapping.

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
    inputs = batch["inputs"]
    n = jnp.shape(inputs)[0] if jnp.ndim(inputs) else None
    for name, value in (("labels", labels), (TEACHER_LOGITS, cached)):
        if value is not None and (jnp.ndim(value) == 0 or jnp.shape(value)[0] != n):
            raise ValueError(
                f'batch["{name}"] has shape {jnp.shape(value)}, but batch["inputs"] has {n} rows'
            )
    if labels is not None and jnp.ndim(labels) != 1:
        raise ValueError(f'batch["labels"] must be int [batch], got shape {jnp.shape(labels)}')
    return inputs, labels, cached


def check_logits(student: Any, teacher: Any, labels: Any) -> None:
    """Student and teacher logits ``[batch, classes]`` of one shape, rows matching labels."""
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
