"""Small Flax models for the built-in task and the benchmarks."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["CNN", "MLP", "DigitsCNN", "NnxMLP", "init_cnn", "init_mlp"]


class MLP(nn.Module):
    """A ReLU multilayer perceptron; the last entry of ``features`` is the number of classes.

    Input ``[batch, ...]`` (flattened), output logits ``[batch, features[-1]]``.
    Layers are named ``Dense_0``, ``Dense_1``, ...
    """

    features: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for i, f in enumerate(self.features):
            x = nn.Dense(f)(x)
            if i < len(self.features) - 1:
                x = nn.relu(x)
        return x


class CNN(nn.Module):
    """A small convolutional net for ``[batch, 8, 8, 1]`` digits: two 3x3 convs, then Dense.

    With ``batch_norm=True`` each conv (then without bias) is followed by a BatchNorm
    whose statistics are averaged over ``axis_name="batch"`` (as in Flax's ResNet): train
    it with ``lightcomp.train.linen_apply(model, train=True)`` and carry the
    ``"batch_stats"`` collection as the model state.
    """

    channels: Sequence[int] = (16, 32)
    num_classes: int = 10
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for c in self.channels:
            x = nn.Conv(c, (3, 3), use_bias=not self.batch_norm)(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name="batch")(x)
            x = nn.relu(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


class DigitsCNN(nn.Module):
    """The demo's CNN for ``[batch, 8, 8, 1]`` digits: conv, pool, conv, flatten, Dense.

    ``Conv(c0, 3x3) -> [BatchNorm] -> ReLU -> avg_pool 2x2 -> Conv(c1, 3x3) -> [BatchNorm]
    -> ReLU -> flatten [batch, 4 * 4 * c1] -> Dense(num_classes)``, in the layout of Flax's
    MNIST example. With ``batch_norm=True`` the convs have no bias and each BatchNorm
    averages its statistics over ``axis_name="batch"``; `lightcomp.prune.fold_batchnorm`
    (``keep_norm=False``, pairs ``Conv_i -> BatchNorm_i``) turns its variables into the
    parameters of the same net with ``batch_norm=False``. Layers: ``Conv_0``, ``Conv_1``,
    ``Dense_0`` (and ``BatchNorm_0``, ``BatchNorm_1``).
    """

    channels: Sequence[int] = (16, 32)
    num_classes: int = 10
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, c in enumerate(self.channels):
            x = nn.Conv(c, (3, 3), use_bias=not self.batch_norm)(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name="batch")(x)
            x = nn.relu(x)
            if i == 0:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


class NnxMLP(nnx.Module):
    """The same perceptron as `MLP`, written with Flax nnx (``layers/0/kernel``, ...)."""

    def __init__(self, sizes: Sequence[int], *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = nnx.relu(x)
        return x


def init_mlp(features: Sequence[int], in_features: int, key: jax.Array):
    """Builds an `MLP` and its ``params`` dict; returns ``(apply, params)``.

    ``apply(params, inputs) -> logits`` is the ``(params, inputs)`` form that
    `lightcomp.train.make_step` takes.
    """
    model = MLP(tuple(features))
    params = model.init(key, jnp.zeros((1, in_features), jnp.float32))["params"]

    def apply(p, x):
        return model.apply({"params": p}, x)

    return apply, params


def init_cnn(channels: Sequence[int], key: jax.Array, *, batch_norm: bool = True):
    """Builds a `DigitsCNN` for ``[batch, 8, 8, 1]``; returns ``(module, params, model_state)``.

    ``model_state`` is ``{"batch_stats": ...}`` with ``batch_norm`` (``{}`` without): the
    variables `lightcomp.train.linen_apply` carries.
    """
    module = DigitsCNN(tuple(channels), batch_norm=batch_norm)
    variables = jax.jit(module.init)(key, jnp.zeros((1, 8, 8, 1), jnp.float32))
    params = variables["params"]
    return module, params, {k: v for k, v in variables.items() if k != "params"}
