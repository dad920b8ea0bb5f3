"""The LeNet-300-100 KD step written by hand in JAX + optax, one ``jax.jit`` per variant."""

from __future__ import annotations

import _protocol as P
import jax
import jax.numpy as jnp
import numpy as np
import optax


def _init(sizes, key):
    params, fan_in = [], P.IN_FEATURES
    for i, n in enumerate(sizes):
        k = jax.random.fold_in(key, i)
        w = jax.random.normal(k, (fan_in, n), jnp.float32) * jnp.sqrt(1.0 / fan_in)
        params.append({"kernel": w, "bias": jnp.zeros((n,), jnp.float32)})
        fan_in = n
    return params


def _forward(params, x):
    for i, layer in enumerate(params):
        x = x @ layer["kernel"] + layer["bias"]
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def _ce(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _kd(s, t, labels):
    t_ = P.TEMPERATURE
    log_ps = jax.nn.log_softmax(s / t_)
    log_pt = jax.nn.log_softmax(t / t_)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1).mean() * t_**2
    return (1 - P.ALPHA) * _ce(s, labels) + P.ALPHA * kl


def _fake_quant(w):
    # symmetric per-output-channel (last axis), round half to even, straight-through gradient
    qmax = 2 ** (P.BITS - 1) - 1
    scale = jnp.max(jnp.abs(w), axis=0, keepdims=True) / qmax
    scale = jnp.where(scale == 0, 1.0, scale)
    q = jnp.clip(jnp.round(w / scale), -qmax, qmax) * scale
    return w + jax.lax.stop_gradient(q - w)


def _magnitude_masks(params):
    masks = []
    for layer in params:
        w = jnp.abs(layer["kernel"]).ravel()
        k = round(P.SPARSITY * w.size)
        order = jnp.argsort(w, stable=True)
        m = jnp.ones(w.size, bool).at[order[:k]].set(False)
        masks.append(m.reshape(layer["kernel"].shape))
    return masks


def build(batch: int):
    key = jax.random.key(P.SEED)
    x, y = (jnp.asarray(a) for a in P.batch_arrays(batch))
    teacher = _init(P.TEACHER, jax.random.fold_in(key, 1))
    opt = optax.sgd(P.LEARNING_RATE, momentum=P.MOMENTUM)

    def make(variant):
        params = _init(P.STUDENT, jax.random.fold_in(key, 2))
        masks = _magnitude_masks(params)
        if variant == "c":
            params = [{**p, "kernel": p["kernel"] * m} for p, m in zip(params, masks, strict=True)]

        def loss_fn(p, tp, xb, yb):
            if variant == "c":
                p = [
                    {**layer, "kernel": _fake_quant(layer["kernel"] * m)}
                    for layer, m in zip(p, masks, strict=True)
                ]
            s = _forward(p, xb)
            if variant == "a":
                return _ce(s, yb)
            return _kd(s, _forward(tp, xb), yb)

        @jax.jit
        def step(state, tp, xb, yb):
            p, o = state
            loss, g = jax.value_and_grad(loss_fn)(p, tp, xb, yb)
            u, o = opt.update(g, o, p)
            if variant == "c":  # keep pruned weights at exactly 0
                u = [
                    {**layer, "kernel": layer["kernel"] * m}
                    for layer, m in zip(u, masks, strict=True)
                ]
            return (optax.apply_updates(p, u), o), loss

        holder = [(params, opt.init(params))]

        def run(iters):
            state = holder[0]
            for _ in range(iters):
                state, _ = step(state, teacher, x, y)
            jax.block_until_ready(state)
            holder[0] = state

        def effective_kernels():
            return [
                np.asarray(_fake_quant(layer["kernel"] * m))
                for layer, m in zip(holder[0][0], masks, strict=True)
            ]

        return run, effective_kernels

    return P.variants({v: make(v) for v in ("a", "b", "c")})


def versions() -> str:
    return f"jax {jax.__version__}, optax {optax.__version__}"


if __name__ == "__main__":
    P.main(build, versions)
