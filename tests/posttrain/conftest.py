"""Small linen and nnx models with every layer type the calibration knows, and their data."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx


class Zoo(nn.Module):
    """Conv (SAME, strided VALID), DenseGeneral (two output axes, two input axes), Einsum (with a
    stacked letter), Dense: ``[B, 6, 6, 3] -> [B, 3]``."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
        x = nn.Conv(4, (2, 2), strides=2, padding="VALID")(x)
        x = x.reshape(x.shape[0], 9, 4)
        x = nn.DenseGeneral((2, 4))(x)
        x = nn.tanh(nn.Einsum((2, 4, 8), "bthd,hdf->btf")(x))
        x = nn.Einsum((9, 8, 8), "btf,tfg->btg")(x)
        x = nn.DenseGeneral(8, axis=(-2, -1))(x)
        return nn.Dense(3)(nn.relu(x))


class NnxZoo(nnx.Module):
    """The nnx counterparts: Conv, LinearGeneral, Einsum, Linear."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), padding="SAME", rngs=rngs)
        self.proj = nnx.LinearGeneral(4, (2, 4), rngs=rngs)
        self.mix = nnx.Einsum("bthd,hdf->btf", (2, 4, 8), (8,), rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv(x))
        x = x.reshape(x.shape[0], 36, 4)
        x = jnp.tanh(self.mix(self.proj(x)))
        return self.out(x.mean(axis=1))


@pytest.fixture(scope="session")
def zoo():
    """``(apply, params, batches)`` of the linen `Zoo`."""
    model = Zoo()
    xs = jax.random.normal(jax.random.key(0), (3, 8, 6, 6, 3))
    params = model.init(jax.random.key(1), xs[0])["params"]
    return (lambda p, x: model.apply({"params": p}, x)), params, list(xs)


@pytest.fixture(scope="session")
def nnx_zoo():
    """``(apply, params, batches)`` of the nnx `NnxZoo` (split once; the module is not touched)."""
    graphdef, params, rest = nnx.split(NnxZoo(nnx.Rngs(0)), nnx.Param, ...)
    xs = jax.random.normal(jax.random.key(2), (2, 8, 6, 6, 3))
    return (lambda p, x: nnx.merge(graphdef, p, rest)(x)), params, list(xs)


@pytest.fixture(scope="session")
def mlp_task():
    """A small MLP trained for a moment on a fixed regression-like classification task."""
    import optax

    import lightcomp as lc

    rng = np.random.default_rng(0)
    mix = rng.normal(size=(16, 16)) / 4 + np.eye(16)
    x = jnp.asarray((rng.normal(size=(512, 16)) * rng.uniform(0.3, 2, 16)) @ mix, jnp.float32)
    y = jnp.asarray(np.argmax(np.asarray(x) @ rng.normal(size=(16, 4)), axis=1))
    model = lc.models.MLP((32, 32, 4))
    params = model.init(jax.random.key(0), x[:1])["params"]
    apply = lambda p, x: model.apply({"params": p}, x)
    opt = optax.adam(3e-3)

    @jax.jit
    def step(p, s, x, y):
        _loss, g = jax.value_and_grad(lambda p: lc.distill.cross_entropy(apply(p, x), y))(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    s = opt.init(params)
    for _ in range(150):
        params, s = step(params, s, x, y)
    return apply, params, x, y
