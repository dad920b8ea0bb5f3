"""A teacher-logit cache for fixed (un-augmented) datasets: the teacher runs once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import data, tree
from lightcomp.train._batch import TEACHER_LOGITS, WEIGHTS
from lightcomp.train._state import cast_floating
from lightcomp.train._stateful import as_stateful

PyTree = Any
Apply = Callable[..., jax.Array]


def teacher_logits(
    teacher_apply: Apply,
    teacher_params: PyTree,
    inputs: np.ndarray,
    *,
    batch_size: int = 512,
    dtype: Any = None,
    model_state: PyTree = None,
) -> np.ndarray:
    """Computes the teacher's logits for a whole fixed (un-augmented) dataset, once.

    Batches from `cached_batches` then carry ``"teacher_logits"`` and the step
    skips the teacher's forward pass (most of a distillation step's cost).

    Args:
      teacher_apply: ``(params, inputs) -> logits`` or an eval-mode `StatefulApply`.
      teacher_params: its parameters.
      inputs: ``[n, ...]`` the dataset's inputs.
      batch_size: rows per forward pass (the last chunk is padded, one compilation).
      dtype: run the teacher in this floating dtype (e.g. ``jnp.bfloat16``).
      model_state: the teacher's state (its BatchNorm statistics); default the
        adapter's own.

    Returns:
      float32 ``[n, ..., classes]`` as a NumPy array (token logits for a sequence model).

    Raises:
      ValueError: ``batch_size`` < 1, no inputs, or a train-mode `StatefulApply`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    teacher = as_stateful(teacher_apply, False)
    if teacher.train:
        raise ValueError("teacher_apply must be an eval-mode forward (train=False)")
    if model_state is None:
        model_state = teacher.model_state
    if dtype is not None:
        teacher_params = cast_floating(teacher_params, dtype)
    inputs = np.asarray(inputs)
    n = inputs.shape[0]
    if n == 0:
        raise ValueError("inputs is empty")
    bs = min(batch_size, n)

    @jax.jit
    def forward(p, state, x):
        if dtype is not None and tree.is_floating(x):
            x = x.astype(dtype)
        return jnp.asarray(teacher.run(p, state, x)[0]).astype(jnp.float32)

    chunks = []
    for start in range(0, n, bs):
        x = inputs[start : start + bs]
        rows = x.shape[0]
        if rows < bs:
            x = np.concatenate([x, np.zeros((bs - rows, *x.shape[1:]), x.dtype)])
        chunks.append(np.asarray(forward(teacher_params, model_state, x))[:rows])
    return np.concatenate(chunks)


def cached_batches(
    x: np.ndarray,
    y: np.ndarray,
    logits: np.ndarray,
    batch_size: int,
    *,
    weights: np.ndarray | None = None,
    seed: int = 0,
    drop_last: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Like `lightcomp.data.batches`, with each batch's cached ``"teacher_logits"`` rows.

    Yields ``{"inputs", "labels", "teacher_logits"}`` (and ``"weights"`` when given: the
    padding mask or token weights ``[n, ...]`` of a sequence dataset) forever,
    reshuffled each epoch (the same order as ``lightcomp.data.batches`` with the same seed).
    """
    sizes = [len(a) for a in (x, y, logits) + (() if weights is None else (weights,))]
    if len(set(sizes)) != 1:
        raise ValueError(f"x, y, logits (and weights) differ in length: {sizes}")

    index = np.arange(len(x))
    for b in data.batches(index, index, batch_size, seed=seed, drop_last=drop_last):
        idx = b["inputs"]
        out = {"inputs": x[idx], "labels": y[idx], TEACHER_LOGITS: logits[idx]}
        if weights is not None:
            out[WEIGHTS] = weights[idx]
        yield out
