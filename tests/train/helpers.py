"""Small models and NumPy references shared by the train tests.

The model families (`family`): tiny models in the style of those people train with JAX,

- ``resnet``: a linen ResNet-style CNN (Flax's ImageNet example): BatchNorm with
  ``axis_name="batch"``, residual blocks, digits 8x8x1;
- ``lm``: a linen Transformer LM (Flax's lm1b): ``nn.Embed``, ``nn.DenseGeneral``
  attention ``[embed, heads, head_dim]``, dropout, token logits, padded sequences;
- ``nnx_cnn``: the nnx MNIST tutorial's CNN: BatchNorm, Dropout without rngs, ``rngs``
  passed at call;
- ``nnx_scan``: an nnx MLP whose blocks are made by ``nnx.vmap`` and run by ``nnx.scan``,
  each holding its own (stacked) dropout rng stream;
- ``linen_scan``: a linen ``nn.scan`` stack of Dense + BatchNorm + Dropout blocks.

Each `family` is built once per process (`functools.cache`): the student's train- and
eval-mode adapters, its params and model state, a teacher of the same architecture
(eval mode, with its own state), a few batches and a pruning transform.
"""

import functools
import itertools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

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


# --------------------------------------------------------------------------- model families

STEPS, VOCAB, LEN = 6, 12, 8


def _norm(train: bool) -> nn.BatchNorm:
    """Flax ResNet's BatchNorm: statistics averaged over the ``"batch"`` axis."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name="batch")


class ResBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x, train: bool):
        y = nn.relu(_norm(train)(nn.Conv(self.features, (3, 3), use_bias=False)(x)))
        y = _norm(train)(nn.Conv(self.features, (3, 3), use_bias=False)(y))
        return nn.relu(x + y)


class ResNet(nn.Module):
    width: int = 8

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = _norm(train)(nn.Conv(self.width, (3, 3), use_bias=False)(x))
        x = ResBlock(self.width)(nn.relu(x), train)
        return nn.Dense(CLASSES)(jnp.mean(x, axis=(1, 2)))


class SelfAttention(nn.Module):
    heads: int
    head_dim: int
    dropout: float

    @nn.compact
    def __call__(self, x, mask, train: bool):
        dense = functools.partial(nn.DenseGeneral, features=(self.heads, self.head_dim))
        q, k, v = dense(name="query")(x), dense(name="key")(x), dense(name="value")(x)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(self.head_dim)
        weights = jax.nn.softmax(jnp.where(mask, logits, -1e9), axis=-1)
        weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
        y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), name="out")(y)


class TransformerLM(nn.Module):
    dim: int = 16
    heads: int = 2
    dropout: float = 0.1

    @nn.compact
    def __call__(self, tokens, train: bool = True):
        x = nn.Embed(VOCAB, self.dim)(tokens)
        x = x + self.param("pos", nn.initializers.normal(0.02), (LEN, self.dim))
        causal = jnp.tril(jnp.ones((LEN, LEN), bool))[None, None]
        drop = nn.Dropout(self.dropout, deterministic=not train)
        y = SelfAttention(self.heads, self.dim // self.heads, self.dropout)(
            nn.LayerNorm()(x), causal, train
        )
        x = x + drop(y)
        y = nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(nn.LayerNorm()(x))))
        x = x + drop(y)
        return nn.Dense(VOCAB)(nn.LayerNorm()(x))


class ScanBlock(nn.Module):
    dropout: float

    @nn.compact
    def __call__(self, x, train: bool):
        x = _norm(train)(nn.Dense(x.shape[-1], use_bias=False)(x))  # BatchNorm has the bias
        return nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x)), None


class LinenScan(nn.Module):
    width: int = 16
    layers: int = 3
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Dense(self.width, use_bias=False)(x.reshape((x.shape[0], -1)))
        stack = nn.scan(
            ScanBlock,
            variable_axes={"params": 0, "batch_stats": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=nn.broadcast,
            length=self.layers,
        )
        x, _ = stack(self.dropout, name="stack")(x, train)
        return nn.Dense(CLASSES)(x)


class NnxCNN(nnx.Module):
    """The nnx MNIST tutorial's shape: ``model(x, rngs=rngs)``, Dropout holding no rngs."""

    def __init__(self, *, rngs: nnx.Rngs, axis_name=None, dropout=0.1):
        self.conv = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.9, axis_name=axis_name, rngs=rngs)
        self.drop = nnx.Dropout(rate=dropout)
        self.head = nnx.Linear(8, CLASSES, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs | None = None):
        x = nnx.relu(self.bn(self.conv(x)))
        x = self.drop(jnp.mean(x, axis=(1, 2)), rngs=rngs)
        return self.head(x)


class NnxBlock(nnx.Module):
    def __init__(self, width, dropout, rngs):
        self.linear = nnx.Linear(width, width, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x):
        return self.drop(nnx.relu(self.linear(x)))


class NnxScanMLP(nnx.Module):
    """Blocks stacked by ``nnx.vmap`` (params ``[layers, ...]``), run by ``nnx.scan``."""

    def __init__(self, *, rngs: nnx.Rngs, width=16, layers=3, dropout=0.1):
        self.embed = nnx.Linear(64, width, rngs=rngs)

        @nnx.split_rngs(splits=layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return NnxBlock(width, dropout, rngs)

        self.blocks = make(rngs)
        self.head = nnx.Linear(width, CLASSES, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(h, block):
            return block(h)

        return self.head(body(nnx.relu(self.embed(x.reshape((x.shape[0], -1)))), self.blocks))


# eps 1e-4, not 1e-8: a bias before a BatchNorm (or an attention key's bias) has a zero
# gradient up to round-off, which a tiny eps would blow up into full-size updates of
# random sign, different on one device and on eight.
OPTIMIZER = optax.adam(1e-2, eps=1e-4)
PRUNE = lc.pruning(0.5, select=r"kernel$")


class Family(NamedTuple):
    name: str
    train_apply: lc.train.StatefulApply
    eval_apply: lc.train.StatefulApply
    params: Any
    model_state: Any
    teacher_params: Any
    teacher_state: Any
    batches: list  # STEPS batches of BATCH rows
    transform: lc.Transform = PRUNE
    optimizer: Any = OPTIMIZER

    def init(self, seed=0):
        return lc.train.init_state(
            self.params,
            self.optimizer,
            self.transform,
            jax.random.key(seed),
            model_state=self.model_state,
            teacher_state=self.teacher_state,
        )

    def step(self, **kwargs):
        return lc.train.make_step(
            self.train_apply, self.eval_apply, self.optimizer, self.transform, **kwargs
        )


def _digit_batches(image: bool):
    d = lc.data.load_digits(seed=0, image=image)
    it = lc.data.batches(d.x_train, d.y_train, BATCH, seed=1)
    return [next(it) for _ in range(STEPS)]


def token_batches(seed=0):
    """Sequences whose next token is ``token + 1 (mod VOCAB)``, padded to ``LEN``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(STEPS):
        tokens = (rng.integers(0, VOCAB, (BATCH, 1)) + np.arange(LEN)) % VOCAB
        pad = np.arange(LEN) < rng.integers(2, LEN + 1, (BATCH, 1))
        labels = ((tokens + 1) % VOCAB).astype(np.int32)
        out.append(
            {"inputs": np.where(pad, tokens, 0).astype(np.int32), "labels": labels, "weights": pad}
        )
    return out


def _linen(name, module, x, batches):
    init = jax.jit(functools.partial(module.init, train=False))  # one compilation, not eager ops
    s_vars, t_vars = init(jax.random.key(1), x), init(jax.random.key(2), x)
    rest = lambda v: {k: c for k, c in v.items() if k != "params"}
    train_apply = lc.train.linen_apply(module, train=True)
    eval_apply = lc.train.linen_apply(module, train=False)
    return Family(
        name,
        train_apply,
        eval_apply,
        s_vars["params"],
        rest(s_vars),
        t_vars["params"],
        rest(t_vars),
        batches,
    )


def _nnx(name, make, batches):
    train_apply, params = lc.train.nnx_apply(make(nnx.Rngs(1)), train=True)
    eval_apply, _ = lc.train.nnx_apply(make(nnx.Rngs(1)), train=False)
    t_apply, t_params = lc.train.nnx_apply(make(nnx.Rngs(2)), train=False)
    return Family(
        name,
        train_apply,
        eval_apply,
        params,
        train_apply.model_state,
        t_params,
        t_apply.model_state,
        batches,
    )


@functools.cache
def run(name: str, dropout: float = 0.1, axis_name: str | None = None) -> tuple[Any, list, list]:
    """The single-device run of a `family`: ``(jitted step, states, metrics)``, one per step."""
    f = family(name, dropout, axis_name)
    inner, traces = f.step(), []

    def counted(*args):
        traces.append(1)
        return inner(*args)

    step = jax.jit(counted)
    state, states, metrics = f.init(), [], []
    for b in f.batches:
        state, m = step(state, f.teacher_params, b)
        states.append(state)
        metrics.append(m)
    assert len(traces) == 1, f"{name}: the step compiled {len(traces)} times"  # never per step
    return step, states, metrics


@functools.cache
def family(name: str, dropout: float = 0.1, axis_name: str | None = None) -> Family:
    """The family ``name``; ``dropout=0.0`` for runs compared across devices bit for bit."""
    if name == "resnet":
        return _linen(name, ResNet(), jnp.zeros((1, 8, 8, 1)), _digit_batches(True))
    if name == "lm":
        return _linen(
            name, TransformerLM(dropout=dropout), jnp.zeros((1, LEN), jnp.int32), token_batches()
        )
    if name == "linen_scan":
        return _linen(name, LinenScan(dropout=dropout), jnp.zeros((1, 64)), _digit_batches(False))
    if name == "nnx_cnn":
        make = functools.partial(NnxCNN, axis_name=axis_name, dropout=dropout)
        return _nnx(name, lambda rngs: make(rngs=rngs), _digit_batches(True))
    if name == "nnx_scan":
        return _nnx(
            name, lambda rngs: NnxScanMLP(rngs=rngs, dropout=dropout), _digit_batches(False)
        )
    raise ValueError(name)


NAMES = ("resnet", "lm", "linen_scan", "nnx_cnn", "nnx_scan")
STATEFUL = ("resnet", "linen_scan", "nnx_cnn")  # the families with BatchNorm statistics


def key_data(tree):
    """``tree`` with typed PRNG keys as their key data (for tree comparisons)."""

    def one(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    return jax.tree.map(one, tree)


# --------------------------------------------------------------------------- token models

FEATS = 6  # a linear token model: logits [batch, len, CLASSES] = inputs [batch, len, FEATS] @ w


def token_apply(params, inputs):
    return inputs @ params["w"] + params["b"]


def token_params(seed):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(FEATS, CLASSES)) / np.sqrt(FEATS), jnp.float32),
        "b": jnp.asarray(rng.normal(size=CLASSES) * 0.1, jnp.float32),
    }


def token_batch(seed, rows=BATCH, length=LEN):
    """Random token features and labels, with a random padding mask (each row >= 1 token)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, (rows, 1))
    return {
        "inputs": rng.normal(size=(rows, length, FEATS)).astype(np.float32),
        "labels": rng.integers(0, CLASSES, (rows, length)).astype(np.int32),
        "weights": np.arange(length) < lengths,
    }
