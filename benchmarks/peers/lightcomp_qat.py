"""The (c') KD step in lightcomp: ``make_step`` with weight and activation quantization.

(b) identity transform, the default KD loss; (c') ``fake_quantization(8)`` (symmetric, one
scale per output channel) and ``activation_quant(8, symmetric=True, ranges="dynamic",
weight_bits=8)`` around the student (``linen_apply(..., act_quant=...)``): every Dense
input quantized per tensor from its own range. ``--compute int8`` (default) runs the student's
Dense layers as int8 x int8 -> int32 dot_generals with a straight-through backward in float;
``--compute float`` the same numbers by float fake quantization; ``--act tokens`` one range
per row (as qwix and AQT do by default); ``--operands bfloat16`` the same codes and exact
sums on bfloat16 dot units; ``--weights layer`` no ``fake_quantization`` transform: the
intercepted layers quantize their kernels themselves (``weight_bits``), as qwix and AQT do.
"""

from __future__ import annotations

import argparse
import sys

import _protocol as P
import _qat as Q
import jax
import jax.numpy as jnp
import optax

import lightcomp as lc


def _kd(student_logits, teacher_logits, labels):
    return lc.distill.loss(
        student_logits, teacher_logits, labels, alpha=P.ALPHA, temperature=P.TEMPERATURE
    )


def build(batch, compute="int8", act="tensor", operands="int8", weights="transform"):
    x, y = P.batch_arrays(batch)
    data = {"inputs": jnp.asarray(x), "labels": jnp.asarray(y)}
    key = jax.random.key(P.SEED)
    teacher_apply, teacher = lc.models.init_mlp(
        P.TEACHER, P.IN_FEATURES, jax.random.fold_in(key, 1)
    )
    optimizer = optax.sgd(P.LEARNING_RATE, momentum=P.MOMENTUM)
    model = lc.models.MLP(P.STUDENT)
    aq = lc.quant.activation_quant(
        P.BITS,
        symmetric=True,
        ranges="dynamic",
        axis="tokens" if act == "tokens" else None,
        weight_bits=P.BITS,
        compute=compute,
        operands=operands,
    )

    def make(variant):
        quantized = variant == "q"
        by_transform = quantized and weights == "transform"
        transform = lc.transform.fake_quantization(P.BITS) if by_transform else lc.identity()
        student = lc.train.linen_apply(model, act_quant=aq if quantized else None)
        _, params = lc.models.init_mlp(P.STUDENT, P.IN_FEATURES, jax.random.fold_in(key, 2))
        holder = [lc.train.init_state(params, optimizer, transform, jax.random.fold_in(key, 3))]
        step = jax.jit(lc.train.make_step(student, teacher_apply, optimizer, transform, loss=_kd))

        def run(iters):
            s = holder[0]
            for _ in range(iters):
                s, _ = step(s, teacher, data)
            jax.block_until_ready(s)
            holder[0] = s

        def kernels():
            s = holder[0]
            eff = transform.apply(s.params, s.comp_state)
            return [layer["kernel"] for _, layer in sorted(eff.items())]

        return run, kernels

    made = {v: make(v) for v in Q.VARIANTS}
    return {v: run for v, (run, _) in made.items()}, lambda: Q.check(made["q"][1])


def versions() -> str:
    return f"lightcomp {lc.__version__}, jax {jax.__version__}, optax {optax.__version__}"


if __name__ == "__main__":
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--compute", default="int8", choices=("int8", "float"))
    extra.add_argument("--act", default="tensor", choices=("tensor", "tokens"))
    extra.add_argument("--operands", default="int8", choices=("int8", "bfloat16"))
    extra.add_argument("--weights", default="transform", choices=("transform", "layer"))
    opts, rest = extra.parse_known_args()
    sys.argv = [sys.argv[0], *rest]
    args = P.parse_args()
    P.main(lambda b: build(b, opts.compute, opts.act, opts.operands, opts.weights), versions, args)
