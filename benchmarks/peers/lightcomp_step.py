"""The LeNet-300-100 KD step in lightcomp: ``lightcomp.train.make_step`` under one ``jax.jit``.

(a) identity transform, cross-entropy loss only, no teacher (``teacher_apply=None``;
    the batch carries constant ``teacher_logits``, which only the metrics read);
(b) identity transform, the default KD loss (0.5 CE + 0.5 T^2 KL, T = 4);
(c) ``chain(pruning(0.5), fake_quantization(8, axis=-1))``: a 50% magnitude mask
fixed at init, 8-bit symmetric per-output-channel weight fake quant with STE,
pruned weights kept at 0 by the step.
"""

from __future__ import annotations

import _protocol as P
import jax
import jax.numpy as jnp
import numpy as np
import optax

import lightcomp as lc


def _ce_only(student_logits, teacher_logits, labels):
    del teacher_logits
    return lc.distill.cross_entropy(student_logits, labels)


def _kd(student_logits, teacher_logits, labels):
    return lc.distill.loss(
        student_logits, teacher_logits, labels, alpha=P.ALPHA, temperature=P.TEMPERATURE
    )


def build(batch: int):
    x, y = P.batch_arrays(batch)
    data = {"inputs": jnp.asarray(x), "labels": jnp.asarray(y)}
    key = jax.random.key(P.SEED)
    teacher_apply, teacher = lc.models.init_mlp(
        P.TEACHER, P.IN_FEATURES, jax.random.fold_in(key, 1)
    )
    optimizer = optax.sgd(P.LEARNING_RATE, momentum=P.MOMENTUM)
    variants = {
        "a": (lc.identity(), _ce_only),
        "b": (lc.identity(), _kd),
        "c": (
            lc.chain(
                lc.transform.pruning(P.SPARSITY),
                lc.transform.fake_quantization(P.BITS, axis=-1),
            ),
            _kd,
        ),
    }

    def make(variant):
        transform, loss = variants[variant]
        student_apply, params = lc.models.init_mlp(
            P.STUDENT, P.IN_FEATURES, jax.random.fold_in(key, 2)
        )
        state = lc.train.init_state(params, optimizer, transform, jax.random.fold_in(key, 3))
        batch = data
        if variant == "a":  # no teacher forward at all
            logits = jnp.zeros((batch["inputs"].shape[0], P.STUDENT[-1]), jnp.float32)
            batch = {**data, "teacher_logits": logits}
        step = jax.jit(
            lc.train.make_step(
                student_apply,
                None if variant == "a" else teacher_apply,
                optimizer,
                transform,
                loss=loss,
            )
        )
        holder = [state]

        def run(iters):
            s = holder[0]
            for _ in range(iters):
                s, _ = step(s, teacher, batch)
            jax.block_until_ready(s)
            holder[0] = s

        def effective_kernels():
            s = holder[0]
            effective = transform.apply(s.params, s.comp_state)
            return [np.asarray(layer["kernel"]) for _, layer in sorted(effective.items())]

        return run, effective_kernels

    return P.variants({v: make(v) for v in ("a", "b", "c")})


def versions() -> str:
    return f"lightcomp {lc.__version__}, jax {jax.__version__}, optax {optax.__version__}"


if __name__ == "__main__":
    P.main(build, versions)
