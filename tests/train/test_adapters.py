"""Tests for lightcomp.train.linen_apply and nnx_apply."""

import chex
import flax.linen as nn
import jax
import numpy as np
import optax
from flax import nnx

import lightcomp as lc
from lightcomp import train
from tests.train.helpers import CLASSES, HIDDEN, IN


class _DropoutMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(nn.Dense(HIDDEN)(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(CLASSES)(x)


def test_linen_dropout_student_with_rng(teacher, student, batch):
    t_apply, t_params, _ = teacher
    model = _DropoutMLP()
    _, params = student  # the same Dense_0 / Dense_1 shapes
    train_apply = jax.jit(train.linen_apply(model, train=True))
    eval_apply = jax.jit(train.linen_apply(model, train=False))
    opt = optax.sgd(0.1)
    step = jax.jit(train.make_step(train_apply, t_apply, opt, lc.identity(), pass_rng=True))
    s0 = train.init_state(params, opt, lc.identity(), jax.random.key(4))
    s1, m1 = step(s0, t_params, batch)
    s1b, _ = step(s0, t_params, batch)
    chex.assert_trees_all_equal(s1.params, s1b.params)  # same state, same dropout mask
    assert not np.array_equal(jax.random.key_data(s1.rng), jax.random.key_data(s0.rng))
    _, m2 = step(s1, t_params, batch)
    k0 = jax.random.split(s0.rng)[1]
    k1 = jax.random.split(s1.rng)[1]
    out0, out1 = train_apply(params, batch["inputs"], k0), train_apply(params, batch["inputs"], k1)
    assert not np.allclose(out0, out1)  # successive steps draw fresh dropout masks
    det = eval_apply(params, batch["inputs"])
    h = np.maximum(batch["inputs"] @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"], 0)
    expected = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    np.testing.assert_allclose(det, expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(float(m2["loss"])) and np.isfinite(float(m1["loss"]))


def test_nnx_student(teacher, batch):
    t_apply, t_params, _ = teacher
    module = lc.models.NnxMLP((IN, HIDDEN, CLASSES), rngs=nnx.Rngs(0))
    apply, params = train.nnx_apply(module)
    assert lc.tree.paths(params) == [
        "layers/0/bias",
        "layers/0/kernel",
        "layers/1/bias",
        "layers/1/kernel",
    ]
    np.testing.assert_allclose(apply(params, batch["inputs"]), module(batch["inputs"]), rtol=1e-6)
    tr = lc.transform.pruning(0.5)
    opt = optax.adam(1e-2)
    step = jax.jit(train.make_step(apply, t_apply, opt, tr))
    state = train.init_state(params, opt, tr, jax.random.key(0))
    for _ in range(3):
        state, _ = step(state, t_params, batch)
    masks = lc.transform.masks_of(state.comp_state)
    w = np.asarray(state.params["layers"][0]["kernel"])
    assert np.all(w[~np.asarray(masks["layers"][0]["kernel"])] == 0.0)
    nnx.update(module, state.params)
    np.testing.assert_allclose(module(batch["inputs"]), apply(state.params, batch["inputs"]))


def test_nnx_dropout_train_mode(batch):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(IN, CLASSES, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.lin(x))

    module = Net(nnx.Rngs(0, dropout=1))
    apply, params = train.nnx_apply(module, train=True)
    eval_apply, _ = train.nnx_apply(module, train=False)
    apply, eval_apply = jax.jit(apply), jax.jit(eval_apply)
    x = batch["inputs"]
    a, b = apply(params, x, jax.random.key(1)), apply(params, x, jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_allclose(apply(params, x, jax.random.key(1)), a)
    w, bias = np.asarray(params["lin"]["kernel"]), np.asarray(params["lin"]["bias"])
    np.testing.assert_allclose(eval_apply(params, x), x @ w + bias, rtol=1e-5, atol=1e-5)
