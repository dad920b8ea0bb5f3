"""Small models in the style of each Flax family, and their parameters drawn in NumPy.

Each family gives a parameter tree from the model's own ``init`` traced with
``jax.eval_shape`` (no initialiser is compiled), with values drawn in NumPy, and the paths
of the leaves the default selection must pick. Shapes are tiny; heads and layers distinct
so that an axis mixed up shows.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LAYERS, HEADS, HEAD_DIM, EMBED, VOCAB = 3, 2, 4, 8, 11


def draw(shapes, seed=0):
    """Random float32 arrays (normal) of a tree of shapes; integer leaves stay zeros."""
    rng = np.random.default_rng(seed)

    def one(s):
        if jnp.issubdtype(s.dtype, jnp.floating):
            return jnp.asarray(rng.normal(size=s.shape), s.dtype)
        return jnp.zeros(s.shape, s.dtype)

    return jax.tree.map(one, shapes)


def linen_params(module, *inputs):
    """The ``params`` collection of ``module``'s init, as shapes."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))["params"]


# ----------------------------------------------------------------------------- linen


class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(6)(x)))


class ResBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(self.features, (3, 3), use_bias=False)(x)
        y = nn.relu(nn.BatchNorm(use_running_average=True)(y))
        y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
        y = nn.BatchNorm(use_running_average=True)(y)
        return nn.relu(x + y)


class ResNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), use_bias=False, name="conv_init")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn_init")(x)
        x = ResBlock(4)(x)
        return nn.Dense(5)(jnp.mean(x, axis=(1, 2)))


class EncoderBlock(nn.Module):
    """A Transformer block: DenseGeneral attention (MultiHeadDotProductAttention), MLP."""

    @nn.compact
    def __call__(self, x, _=None):
        y = nn.LayerNorm()(x)
        y = nn.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=HEADS * HEAD_DIM)(y, y)
        x = x + y
        y = nn.LayerNorm()(x)
        y = nn.Dense(EMBED)(nn.gelu(nn.Dense(2 * EMBED)(y)))
        return x + y, None


class TransformerLM(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(VOCAB, EMBED)(tokens)
        x, _ = EncoderBlock()(x)
        return nn.Dense(VOCAB, name="logits")(nn.LayerNorm()(x))


class ViT(nn.Module):
    """A ViT block: patch Conv, class token, position embeddings, attention with biases."""

    @nn.compact
    def __call__(self, img):
        x = nn.Conv(EMBED, (2, 2), strides=(2, 2), name="embedding")(img)
        x = x.reshape((x.shape[0], -1, EMBED))
        cls = self.param("cls", nn.initializers.zeros, (1, 1, EMBED))
        x = jnp.concatenate([jnp.tile(cls, (x.shape[0], 1, 1)), x], axis=1)
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], EMBED))
        x, _ = EncoderBlock()(x + pos)
        return nn.Dense(5, name="head")(x[:, 0])


class ScannedLM(nn.Module):
    """An Embed, a linen ``nn.scan`` stack of `LAYERS` encoder blocks, a head."""

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(VOCAB, EMBED)(tokens)
        stack = nn.scan(
            EncoderBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=LAYERS,
        )
        x, _ = stack(name="layers")(x, None)
        return nn.Dense(VOCAB, use_bias=False, name="head")(x)


class ScannedMlpBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _=None):
        dense = lambda f: nn.Dense(
            f,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("embed", "mlp")
            ),
        )
        return x + dense(EMBED)(nn.relu(dense(EMBED)(x))), None


class PartitionedStack(nn.Module):
    """An ``nn.scan`` stack with logical partitioning names and a named layer axis."""

    @nn.compact
    def __call__(self, x):
        stack = nn.scan(
            ScannedMlpBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=LAYERS,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = stack(name="blocks")(x, None)
        return x


def linen_families():
    """``{name: (params shapes, selected paths)}`` of the linen models."""
    img, tok = jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 5), jnp.int32)
    att = ["key", "out", "query", "value"]
    block = [f"MultiHeadDotProductAttention_0/{m}/kernel" for m in att]
    block += ["Dense_0/kernel", "Dense_1/kernel"]
    return {
        "mlp": (linen_params(Mlp(), jnp.zeros((1, 4))), ["Dense_0/kernel", "Dense_1/kernel"]),
        "resnet": (
            linen_params(ResNet(), img),
            [
                "Dense_0/kernel",
                "ResBlock_0/Conv_0/kernel",
                "ResBlock_0/Conv_1/kernel",
                "conv_init/kernel",
            ],
        ),
        "transformer": (
            linen_params(TransformerLM(), tok),
            ["Embed_0/embedding", *(f"EncoderBlock_0/{p}" for p in sorted(block)), "logits/kernel"],
        ),
        "vit": (
            linen_params(ViT(), img),
            [*(f"EncoderBlock_0/{p}" for p in sorted(block)), "embedding/kernel", "head/kernel"],
        ),
        "scan": (
            linen_params(ScannedLM(), tok),
            ["Embed_0/embedding", "head/kernel", *(f"layers/{p}" for p in sorted(block))],
        ),
    }


# ----------------------------------------------------------------------------- nnx


class NnxCnn(nnx.Module):
    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(4, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.linear = nnx.Linear(4, 5, rngs=rngs)


class NnxBlock(nnx.Module):
    def __init__(self, rngs):
        self.norm = nnx.LayerNorm(EMBED, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=HEADS,
            in_features=EMBED,
            qkv_features=HEADS * HEAD_DIM,
            decode=False,
            rngs=rngs,
        )
        self.mlp = nnx.Linear(EMBED, EMBED, rngs=rngs)


class NnxScanned(nnx.Module):
    """An Embed and `LAYERS` blocks made by ``nnx.vmap`` (or ``nnx.scan``), stacked."""

    def __init__(self, rngs, how="vmap"):
        self.embed = nnx.Embed(VOCAB, EMBED, rngs=rngs)

        def make(key):
            return NnxBlock(nnx.Rngs(key))

        keys = jax.random.split(jax.random.key(0), LAYERS)
        if how == "vmap":
            self.blocks = nnx.vmap(make, in_axes=0, out_axes=0)(keys)
        else:
            self.blocks = nnx.scan(
                lambda c, k: (c, make(k)), in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0)
            )(0, keys)[1]


def nnx_state(make):
    """The ``nnx.State`` of ``make(rngs)`` as shapes (``nnx.eval_shape``)."""
    return nnx.split(nnx.eval_shape(lambda: make(nnx.Rngs(0))))[1]


def nnx_families():
    """``{name: (state shapes, selected paths)}`` of the nnx models."""
    att = [f"blocks/attn/{m}/kernel" for m in ("key", "out", "query", "value")]
    stacked = ["blocks/mlp/kernel", *att, "embed/embedding"]
    return {
        "cnn": (nnx_state(NnxCnn), ["conv1/kernel", "linear/kernel"]),
        "vmap": (nnx_state(lambda r: NnxScanned(r, "vmap")), sorted(stacked)),
        "scan": (nnx_state(lambda r: NnxScanned(r, "scan")), sorted(stacked)),
    }
