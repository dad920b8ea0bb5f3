"""Shared pieces of the serving tests: models of every served layer kind, fake-quant references."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import lightcomp as lc

LINEN_SERVED = (nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Conv)
NNX_SERVED = (nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Conv)
X = jnp.asarray(np.random.default_rng(0).random((3, 8, 8, 3)).astype(np.float32))


class Mixed(nn.Module):
    """Conv -> DenseGeneral (features (2, 4)) -> Einsum -> DenseGeneral (two axes) -> Dense."""

    @nn.compact
    def __call__(self, x):  # [b, 8, 8, 3]
        x = nn.relu(nn.Conv(6, (3, 3), strides=2)(x))  # [b, 4, 4, 6]
        x = x.reshape(x.shape[0], 16, 6)
        x = nn.DenseGeneral((2, 4))(x)  # [b, 16, 2, 4]
        x = nn.relu(nn.Einsum((2, 4, 5), "btnh,nhd->btd")(x))  # [b, 16, 5]
        x = nn.DenseGeneral(7, axis=(-2, -1))(x)  # [b, 7]
        return nn.Dense(3)(x)


class NnxMixed(nnx.Module):
    """The same layers in nnx: Conv, LinearGeneral, Einsum, Linear."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(3, 6, (3, 3), strides=2, rngs=rngs)
        self.general = nnx.LinearGeneral(6, (2, 4), rngs=rngs)
        self.einsum = nnx.Einsum("btnh,nhd->btd", (2, 4, 5), (5,), rngs=rngs)
        self.out = nnx.Linear(16 * 5, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv(x)).reshape(x.shape[0], 16, 6)
        x = nnx.relu(self.einsum(self.general(x)))
        return self.out(x.reshape(x.shape[0], -1))


def fake_quant_kernels(params, bits: int = 8):
    """Every kernel fake-quantized per output unit (its last axis), the rest unchanged."""

    def one(path, w):
        name = lc.tree.path_str(path).rsplit("/", 1)[-1]
        return lc.quant.fake_quant(w, bits, axis=-1) if name == "kernel" else w

    return jax.tree_util.tree_map_with_path(one, params)


def linen_reference(module, variables, x, *, bits=8, symmetric=True, in_float=()):
    """The float forward with each served layer's input fake-quantized per tensor (dynamic)."""

    def intercept(next_fun, a, kw, context):
        mod = context.module
        path = "/".join(str(p) for p in mod.path) if isinstance(mod, nn.Module) else ""
        if (
            context.method_name == "__call__"
            and isinstance(mod, LINEN_SERVED)
            and path not in in_float
        ):
            a = (lc.quant.fake_quant(a[0], bits, symmetric=symmetric), *a[1:])
        return next_fun(*a, **kw)

    with nn.intercept_methods(intercept):
        return module.apply(variables, x)


def assert_close_to(y, ref):
    """Equal up to float32 accumulation order (relative to the output's magnitude)."""
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=2e-5 * float(jnp.abs(ref).max()))
