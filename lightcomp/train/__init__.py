"""The jitted knowledge-distillation step that trains a student through a compression transform.

One call of the step returned by `make_step` is one XLA computation: the teacher's
forward pass (no gradient, or logits read from a cache), the student's forward pass on
``transform.apply(params, comp_state)``, the loss, gradients with respect to the raw
parameters and the transform's learned quantities (shared centroids, LSQ step sizes),
one optax update of both, pruned weights kept at exactly zero, ``transform.update`` on
its own schedule and the step's metrics. The training loop (`fit`) lives outside ``jit``.

Model state: a student with BatchNorm (or any other non-parameter state) runs through a
`StatefulApply` (`linen_apply`, `nnx_apply`); the step carries its state in
`DistillState.model_state` and replaces it every step, with BatchNorm's ``axis_name``
bound on one device and many; the teacher's frozen state is `DistillState.teacher_state`.
`recalibrate` recomputes BatchNorm statistics after compression. Sequence models: logits
``[batch, len, vocab]``, labels ``[batch, len]`` and ``batch["weights"]`` (padding):
losses and metrics average over the weighted tokens.

Also here: helpers that start a smaller student from the teacher's weights, a
teacher-logit cache for fixed datasets, and `evaluate`.

References:
  Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
"""

from lightcomp.train._adapters import linen_apply, nnx_apply
from lightcomp.train._loop import evaluate, fit
from lightcomp.train._optax_wrap import (
    CompressionState,
    effective,
    find_compression_state,
    wrap_optax,
)
from lightcomp.train._recalibrate import recalibrate
from lightcomp.train._state import DistillState, cast_floating, effective_params, init_state
from lightcomp.train._stateful import StatefulApply
from lightcomp.train._step import make_step
from lightcomp.train._student_init import keep_layers, slice_channels
from lightcomp.train._teacher_cache import cached_batches, teacher_logits

__all__ = [
    "CompressionState",
    "DistillState",
    "StatefulApply",
    "cached_batches",
    "cast_floating",
    "effective",
    "effective_params",
    "evaluate",
    "find_compression_state",
    "fit",
    "init_state",
    "keep_layers",
    "linen_apply",
    "make_step",
    "nnx_apply",
    "recalibrate",
    "slice_channels",
    "teacher_logits",
    "wrap_optax",
]
