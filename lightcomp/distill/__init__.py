"""Knowledge-distillation losses.

Every loss takes logits (or features) with a leading batch dimension, computes in
float32 whatever the input dtype (bfloat16 and float16 logits are upcast), works in
log space (``jax.nn.log_softmax``: no ``log(0)``), and returns a float32 scalar: the
mean over the batch and over any other leading axes (the tokens of a sequence model,
``[batch, len, vocab]``), weighted by ``weights`` ``[batch, len]`` (a padding mask or
per-token weights) where given. Shapes are checked when the function is traced and a
mismatch is a ``ValueError`` naming both shapes.

The teacher's outputs are used as given; the distillation step runs the teacher
without gradient, so nothing here stops gradients.

References:
  Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
"""

from lightcomp.distill._features import attention_transfer, feature_mse, init_feature_projection
from lightcomp.distill._logits import (
    KINDS,
    TEMPERATURE_RANGE,
    cross_entropy,
    hard_ce,
    mse,
    soft_kl,
)
from lightcomp.distill._mix import loss, loss_parts
from lightcomp.distill._weights import check_weights, weighted_mean

__all__ = [
    "KINDS",
    "TEMPERATURE_RANGE",
    "attention_transfer",
    "check_weights",
    "cross_entropy",
    "feature_mse",
    "hard_ce",
    "init_feature_projection",
    "loss",
    "loss_parts",
    "mse",
    "soft_kl",
    "weighted_mean",
]
