"""Small Flax models for the built-in task and the benchmarks."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["CNN", "MLP", "NnxMLP", "init_mlp"]


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
