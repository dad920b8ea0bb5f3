"""The (c') step shared by the quantization-aware peers: one KD step of any student forward.

(b) float student; (c') the student's forward with 8-bit symmetric per-channel weights and
8-bit activations, as the peer computes it. The teacher is float, the loss and optimizer
those of `_protocol` (0.5 CE + 0.5 T^2 KL, T = 4; SGD momentum 0.9), one ``jax.jit``.
"""

from __future__ import annotations

import _protocol as P
import jax
import jax.numpy as jnp
import numpy as np
import optax

VARIANTS = ("b", "q")  # (b) float KD step; (c') = "q", the quantized student


def kd_loss(s, t, labels):
    t_ = P.TEMPERATURE
    log_ps = jax.nn.log_softmax(s / t_)
    log_pt = jax.nn.log_softmax(t / t_)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1).mean() * t_**2
    ce = optax.softmax_cross_entropy_with_integer_labels(s, labels).mean()
    return (1 - P.ALPHA) * ce + P.ALPHA * kl


def runner(student_apply, params, teacher_apply, teacher, batch: int):
    """``(run(iters), kernels())``: SGD-momentum KD steps of ``student_apply(params, x)``."""
    x, y = (jnp.asarray(a) for a in P.batch_arrays(batch))
    opt = optax.sgd(P.LEARNING_RATE, momentum=P.MOMENTUM)

    @jax.jit
    def step(state, tp, xb, yb):
        p, o = state

        def loss_fn(p):
            return kd_loss(student_apply(p, xb), jax.lax.stop_gradient(teacher_apply(tp, xb)), yb)

        loss, g = jax.value_and_grad(loss_fn)(p)
        u, o = opt.update(g, o, p)
        return (optax.apply_updates(p, u), o), loss

    holder = [(params, opt.init(params))]

    def run(iters):
        state = holder[0]
        for _ in range(iters):
            state, _ = step(state, teacher, x, y)
        jax.block_until_ready(state)
        holder[0] = state

    def kernels():
        leaves = jax.tree_util.tree_leaves_with_path(holder[0][0])
        return [np.asarray(v) for k, v in leaves if "kernel" in jax.tree_util.keystr(k)]

    return run, kernels


def check(kernels) -> str:
    ks = kernels()
    return f"{len(ks)} student kernels, shapes {[k.shape for k in ks]}"
