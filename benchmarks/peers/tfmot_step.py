"""The LeNet-300-100 KD step in TensorFlow + TensorFlow Model Optimization.

(c) follows tfmot's pruning-preserving quantization-aware training (PQAT):
the student is pruned to 50% with ``prune_low_magnitude`` (``ConstantSparsity``,
masks set by tfmot's own pruning step), ``strip_pruning`` bakes the zeros in,
and each Dense layer is wrapped for QAT with a weight quantizer that keeps the
zeros (tfmot's ``PrunePreserveDefaultWeightsQuantizer``) set to 8 bits,
symmetric, narrow range, per output channel (tfmot's default for Dense is one
scale per tensor, so the per-channel setting is passed explicitly). The step is
a ``tf.function`` (graph mode) with ``GradientTape``. Keras 2 (tf-keras), as
tfmot requires.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _protocol as P
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.prune_preserve import (
    prune_preserve_quantize_registry as _pp,
)


class _KernelQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """Quantizes a Dense kernel only (weight fake quant, no activation quant), keeping zeros."""

    def __init__(self):
        self.quantizer = _pp.PrunePreserveDefaultWeightsQuantizer(
            num_bits=P.BITS, per_axis=True, symmetric=True, narrow_range=True
        )

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, self.quantizer)]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


def _mlp(sizes, seed):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((P.IN_FEATURES,))]
    for i, n in enumerate(sizes):
        layers.append(keras.layers.Dense(n, activation="relu" if i < len(sizes) - 1 else None))
    return keras.Sequential(layers)


def _pruned_student(x, y):
    """LeNet-300-100 with a 50% magnitude mask from tfmot's prune_low_magnitude, stripped."""
    base = _mlp(P.STUDENT, P.SEED + 2)
    schedule = tfmot.sparsity.keras.ConstantSparsity(P.SPARSITY, begin_step=0, frequency=1)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(base, pruning_schedule=schedule)
    # one step at learning rate 0: tfmot computes and applies the masks, the weights stay
    pruned.compile(
        optimizer=keras.optimizers.SGD(0.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    pruned.fit(
        x,
        y,
        batch_size=len(x),
        epochs=1,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    for layer in stripped.layers:
        zeros = float(np.mean(layer.get_weights()[0] == 0))
        if abs(zeros - P.SPARSITY) > 0.01:
            raise RuntimeError(f"tfmot pruning left {zeros:.3f} zeros in {layer.name}")
    annotated = keras.Sequential(
        [keras.Input((P.IN_FEATURES,))]
        + [
            tfmot.quantization.keras.quantize_annotate_layer(
                keras.layers.Dense.from_config(layer.get_config()), _KernelQuantizeConfig()
            )
            for layer in stripped.layers
        ]
    )
    for a, s in zip(annotated.layers, stripped.layers, strict=True):
        a.layer.build((None, s.get_weights()[0].shape[0]))
        a.layer.set_weights(s.get_weights())
    with tfmot.quantization.keras.quantize_scope({"_KernelQuantizeConfig": _KernelQuantizeConfig}):
        qat = tfmot.quantization.keras.quantize_apply(annotated)
    return qat


def _kd(s, t, labels):
    t_ = P.TEMPERATURE
    log_ps = tf.nn.log_softmax(s / t_)
    log_pt = tf.nn.log_softmax(t / t_)
    kl = tf.reduce_mean(tf.reduce_sum(tf.exp(log_pt) * (log_pt - log_ps), -1)) * t_**2
    ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, s))
    return (1 - P.ALPHA) * ce + P.ALPHA * kl


XLA = False  # --xla: compile the step with XLA (tf.function(jit_compile=True))


def build(batch: int):
    x_np, y_np = P.batch_arrays(batch)
    x, y = tf.constant(x_np), tf.constant(y_np)
    teacher = _mlp(P.TEACHER, P.SEED + 1)
    teacher.trainable = False

    def make(variant):
        student = _pruned_student(x_np, y_np) if variant == "c" else _mlp(P.STUDENT, P.SEED + 2)
        opt = keras.optimizers.SGD(P.LEARNING_RATE, momentum=P.MOMENTUM)
        variables = student.trainable_variables

        @tf.function(jit_compile=XLA)
        def step(xb, yb):
            if variant != "a":
                t = teacher(xb, training=False)
            with tf.GradientTape() as tape:
                s = student(xb, training=True)
                if variant == "a":
                    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, s))
                else:
                    loss = _kd(s, t, yb)
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables, strict=True))
            return loss

        def run(iters):
            loss = None
            for _ in range(iters):
                loss = step(x, y)
            loss.numpy()

        def effective_kernels():
            # what the forward pass uses: each wrapper's quantizer applied to its kernel
            out = []
            for layer in student.layers:
                for weight, quantizer, qvars in getattr(layer, "_weight_vars", []):
                    out.append(quantizer(weight, training=False, weights=qvars).numpy())
            return out

        return run, effective_kernels

    return P.variants({v: make(v) for v in ("a", "b", "c")})


def versions() -> str:
    return f"tensorflow {tf.__version__}, tfmot {tfmot.__version__}, tf-keras {keras.__version__}"


if __name__ == "__main__":
    args = P.parse_args()
    XLA = args.xla
    P.main(build, versions, args)
