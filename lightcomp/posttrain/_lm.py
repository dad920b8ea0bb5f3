"""A small character-level Transformer LM to compress: the model, its training, its perplexity.

Its attention is flax's ``nn.MultiHeadDotProductAttention`` (query, key, value and output
projections are ``nn.DenseGeneral``), its MLP two ``nn.Dense``; blocks are unrolled
(``Block_0``, ``Block_1``, ...) or, with ``scan=True``, one ``nn.scan`` over a stack
(``Blocks/Block/...`` kernels ``[layers, ...]``, each slice a layer of its own).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lightcomp import distill
from lightcomp._checks import check_int
from lightcomp.posttrain._text import VOCAB, windows

PyTree = Any


class Block(nn.Module):
    """Pre-norm Transformer block: causal self-attention, then a GELU MLP of ``4 * d``."""

    heads: int

    @nn.compact
    def __call__(self, x, mask):
        d = x.shape[-1]
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(self.heads, name="attn")(h, mask=mask)
        h = nn.LayerNorm()(x)
        return x + nn.Dense(d, name="fc2")(nn.gelu(nn.Dense(4 * d, name="fc1")(h)))


class _Scanned(nn.Module):
    """`Block` as the body of ``nn.scan``: ``(x, mask) -> (x, None)``."""

    heads: int

    @nn.compact
    def __call__(self, x, mask):
        return Block(self.heads, name="Block")(x, mask), None


class CharLM(nn.Module):
    """Character-level Transformer language model: ``int [batch, T] -> logits [batch, T, 128]``.

    Attributes:
      d_model: width.
      heads: attention heads.
      layers: blocks.
      max_len: the longest sequence (learned positions).
      scan: one ``nn.scan`` over stacked blocks (``Blocks/Block/...``, parameters
        ``[layers, ...]``) instead of ``Block_0``, ``Block_1``, ...
    """

    d_model: int = 128
    heads: int = 4
    layers: int = 2
    max_len: int = 128
    scan: bool = False

    @nn.compact
    def __call__(self, tokens):
        t = tokens.shape[-1]
        pos = self.param("pos", nn.initializers.normal(0.02), (self.max_len, self.d_model))
        x = nn.Embed(VOCAB, self.d_model)(tokens) + pos[:t]
        mask = nn.make_causal_mask(tokens)
        if self.scan:
            stack = nn.scan(
                _Scanned,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=nn.broadcast,
                length=self.layers,
            )
            x, _ = stack(self.heads, name="Blocks")(x, mask)
        for i in range(0 if self.scan else self.layers):
            x = Block(self.heads, name=f"Block_{i}")(x, mask)
        return nn.Dense(VOCAB, name="head")(nn.LayerNorm()(x))


def train_char_lm(
    tokens: np.ndarray,
    model: CharLM | None = None,
    *,
    steps: int = 1000,
    batch: int = 32,
    seq_len: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
) -> tuple[Callable, PyTree]:
    """Trains `CharLM` on next-character prediction over random windows of ``tokens``.

    Args:
      tokens: int ``[n]`` byte tokens (`lightcomp.posttrain.stdlib_text` then ``encode``).
      model: the model (default ``CharLM()``).
      steps, batch, seq_len: optimisation steps, windows per step, window length.
      lr: peak AdamW learning rate (warm-up, then cosine decay).
      seed: initialisation and window order.

    Returns:
      ``(apply_fn, params)`` with ``apply_fn(params, tokens) -> logits``.
    """
    model = model or CharLM(max_len=seq_len)
    steps = check_int(steps, "steps", lo=1)
    key = jax.random.key(seed)
    params = jax.jit(model.init)(key, jnp.zeros((1, seq_len), jnp.int32))["params"]
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 20, 1), steps, lr / 20)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.01))

    @jax.jit
    def step(p, s, w):
        loss, g = jax.value_and_grad(lambda p: next_char_loss(apply_fn, p, w))(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    state = opt.init(params)
    data = windows(tokens, seq_len, steps * batch, seed=seed).reshape(steps, batch, -1)
    for i in range(steps):
        params, state, _ = step(params, state, jnp.asarray(data[i]))
    return apply_fn, params


def next_char_loss(apply_fn: Callable, params: PyTree, w: jax.Array) -> jax.Array:
    """Mean cross-entropy of predicting ``w[:, 1:]`` from ``w[:, :-1]``."""
    logits = apply_fn(params, w[:, :-1])
    return distill.cross_entropy(logits.reshape(-1, VOCAB), w[:, 1:].reshape(-1))


@functools.lru_cache(maxsize=8)
def _jitted_loss(apply_fn: Callable) -> Callable:
    """One compiled `next_char_loss` per ``apply_fn`` (perplexities of many results share it)."""
    return jax.jit(lambda p, w: next_char_loss(apply_fn, p, w))


def perplexity(
    apply_fn: Callable, params: PyTree, tokens: np.ndarray, *, seq_len: int = 128, batch: int = 64
) -> float:
    """``exp`` of the mean next-character cross-entropy over consecutive windows of ``tokens``.

    Args:
      apply_fn: ``(params, tokens) -> logits``.
      params: the parameters.
      tokens: int ``[n]`` held-out tokens (``n > seq_len``).
      seq_len: window length.
      batch: windows per forward pass.

    Returns:
      The perplexity (a float: this runs eagerly, outside any jitted step).
    """
    n = (len(tokens) - 1) // seq_len
    w = np.stack([tokens[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)])
    loss = _jitted_loss(apply_fn)
    total = 0.0
    for i in range(0, n, batch):
        part = w[i : i + batch]
        total += float(loss(params, jnp.asarray(part))) * len(part)
    return float(np.exp(total / n))
