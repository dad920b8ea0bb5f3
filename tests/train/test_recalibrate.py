"""Tests for lightcomp.train.recalibrate: BatchNorm statistics recomputed for new weights."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lightcomp import train
from tests.train.helpers import family

ROWS, FEATURES, WIDTH = 40, 5, 4


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        calls = self.variable("counters", "calls", lambda: jnp.zeros((), jnp.int32))
        if train and not self.is_initializing():
            calls.value += 1  # state that is not a statistic: recalibrate leaves it alone
        h = nn.Dense(WIDTH)(x)
        return nn.BatchNorm(use_running_average=not train, momentum=0.8)(h)


class _NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(FEATURES, WIDTH, rngs=rngs)
        self.bn = nnx.BatchNorm(WIDTH, momentum=0.7, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.dense(x))


def _np_expected(h, batch_size):
    """Row-weighted averages of the per-batch mean and (biased) variance of ``h``."""
    means, variances, rows = [], [], []
    for i in range(0, len(h), batch_size):
        b = h[i : i + batch_size]
        means.append(b.mean(0))
        variances.append(b.var(0))
        rows.append(len(b))
    w = np.asarray(rows, np.float64)[:, None] / sum(rows)
    return (w * np.asarray(means)).sum(0), (w * np.asarray(variances)).sum(0)


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(0).normal(2.0, 3.0, (ROWS, FEATURES)).astype(np.float32)


def test_linen_statistics_match_numpy_and_other_state_is_kept(inputs):
    model = _LinenNet()
    variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), inputs, train=False)
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}
    state["counters"] = {"calls": jnp.int32(5)}
    apply = train.linen_apply(model, train=True)
    new = train.recalibrate(apply, params, inputs, model_state=state, batch_size=16)
    h = inputs.astype(np.float64) @ np.asarray(params["Dense_0"]["kernel"]) + np.asarray(
        params["Dense_0"]["bias"]
    )
    mean, var = _np_expected(h, 16)
    chex.assert_trees_all_equal_structs(new, state)
    np.testing.assert_allclose(
        new["batch_stats"]["BatchNorm_0"]["mean"], mean, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(new["batch_stats"]["BatchNorm_0"]["var"], var, rtol=1e-4)
    assert int(new["counters"]["calls"]) == 5
    # a list of batch mappings gives the same statistics
    batches = [{"inputs": inputs[i : i + 16]} for i in range(0, ROWS, 16)]
    again = train.recalibrate(apply, params, batches, model_state=state)
    chex.assert_trees_all_close(again, new, rtol=1e-6)


def test_nnx_statistics_match_numpy_and_the_module_is_untouched(inputs):
    module = _NnxNet(nnx.Rngs(0))
    apply, params = train.nnx_apply(module, train=True)
    new = train.recalibrate(apply, params, inputs, batch_size=20)
    k, b = np.asarray(module.dense.kernel[...]), np.asarray(module.dense.bias[...])
    mean, var = _np_expected(inputs.astype(np.float64) @ k + b, 20)
    np.testing.assert_allclose(new["bn"]["mean"][...], mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new["bn"]["var"][...], var, rtol=1e-4)
    np.testing.assert_array_equal(module.bn.mean[...], np.zeros(WIDTH))  # never modified
    np.testing.assert_array_equal(apply.model_state["bn"]["mean"][...], np.zeros(WIDTH))


@pytest.mark.parametrize("name", ["resnet", "linen_scan", "nnx_cnn"])
def test_recalibrated_eval_equals_train_mode_on_the_same_batch(name):
    """Calibrated on one batch, running statistics are its batch statistics: every
    BatchNorm layer of a deep model (residual, scanned) then gives eval == train output."""
    f = family(name, dropout=0.0)
    x = f.batches[0]["inputs"]
    corrupt = jax.tree.map(lambda s: s * 3.0 + 1.0 if s.dtype == jnp.float32 else s, f.model_state)
    new = train.recalibrate(f.train_apply, f.params, [x], model_state=corrupt)
    chex.assert_trees_all_equal_structs(new, f.model_state)
    train_out, _ = jax.jit(f.train_apply.run)(f.params, f.model_state, x, jax.random.key(0))
    eval_out = jax.jit(f.eval_apply.run)(f.params, new, x)[0]
    stale = jax.jit(f.eval_apply.run)(f.params, corrupt, x)[0]
    np.testing.assert_allclose(eval_out, train_out, rtol=2e-3, atol=2e-3)
    assert not np.allclose(stale, train_out, atol=1e-2)


def test_bad_arguments(inputs):
    model = _LinenNet()
    variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), inputs, train=False)
    state = {k: v for k, v in variables.items() if k != "params"}
    with pytest.raises(ValueError, match="train-mode"):
        train.recalibrate(
            train.linen_apply(model, train=False), variables["params"], inputs, model_state=state
        )
    with pytest.raises(TypeError, match="StatefulApply"):
        train.recalibrate(lambda p, x: x, variables["params"], inputs)
    apply = train.linen_apply(model, train=True)
    with pytest.raises(ValueError, match="empty"):
        train.recalibrate(apply, variables["params"], [], model_state=state)
    with pytest.raises(ValueError, match="no running statistics"):
        train.recalibrate(apply, variables["params"], inputs, model_state={})
    with pytest.raises(ValueError, match="batch_size"):
        train.recalibrate(apply, variables["params"], inputs, model_state=state, batch_size=0)
