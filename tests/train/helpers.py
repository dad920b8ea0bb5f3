"""Small models and NumPy references shared by the train tests."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

import lightcomp as lc

IN, HIDDEN, CLASSES, BATCH = 64, 32, 10, 32


def np_mlp(sizes, seed):
    rng = np.random.default_rng(seed)
    return {
        f"Dense_{i}": {
            "kernel": (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32),
            "bias": rng.normal(size=b).astype(np.float32),
        }
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    }


def mlp(features, seed):
    """``(apply, params)`` of a `lightcomp.models.MLP` on 64 inputs, params drawn in NumPy.

    (Drawing in NumPy avoids compiling linen's eager initialisers, which would
    dominate this file's run time.)
    """
    model = lc.models.MLP(tuple(features))
    params = jax.tree.map(jnp.asarray, np_mlp((IN, *features), seed))
    for layer in params.values():
        layer["bias"] = jnp.zeros_like(layer["bias"])

    def apply(p, x):
        return model.apply({"params": p}, x)

    return apply, params


def np_forward(params, x):
    """A ReLU MLP over ``Dense_0, Dense_1, ...`` in NumPy."""
    n = len(params)
    for i in range(n):
        layer = params[f"Dense_{i}"]
        x = x @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"])
        if i < n - 1:
            x = np.maximum(x, 0.0)
    return x


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def compress():
    """80% layer pruning + 8-bit per-channel fake quantization."""
    return lc.chain(lc.transform.pruning(0.8), lc.transform.fake_quantization(8, axis=-1))


def masks(state):
    return lc.transform.masks_of(state.comp_state)


def comparable(state):
    """A state whose PRNG key is replaced by its key data (for tree comparisons)."""
    return state.replace(rng=jax.random.key_data(state.rng))
