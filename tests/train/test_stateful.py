"""Tests for lightcomp.train.StatefulApply: model state threaded through the step.

The slot is generic: a custom forward that keeps an EMA range of its inputs (the shape
activation-quantization ranges take) is carried and updated inside the jitted step.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import lightcomp as lc
from lightcomp import train
from tests.train.helpers import BATCH, CLASSES, family, mlp

DECAY = 0.9


def _ema_forward(apply):
    """A stateful forward: logits of ``apply`` and an EMA of the batch's max |input|."""

    def forward(params, state, inputs, key):
        del key
        seen = jnp.max(jnp.abs(inputs))
        return apply(params, inputs), {"range": DECAY * state["range"] + (1 - DECAY) * seen}

    return forward


def test_custom_state_is_carried_and_updated_every_step(teacher, student, digits):
    t_apply, t_params, _ = teacher
    s_apply, s_params = student
    fwd = train.StatefulApply(_ema_forward(s_apply), {"range": jnp.float32(0.0)}, train=True)
    opt = optax.sgd(0.1)
    step = jax.jit(chex.assert_max_traces(train.make_step(fwd, t_apply, opt, lc.identity()), n=1))
    state = train.init_state(
        s_params, opt, lc.identity(), jax.random.key(0), model_state=fwd.model_state
    )
    plain = jax.jit(train.make_step(s_apply, t_apply, opt, lc.identity()))
    ref = train.init_state(s_params, opt, lc.identity(), jax.random.key(0))
    it = lc.data.batches(digits.x_train, digits.y_train, BATCH, seed=5)
    expected = 0.0
    for _ in range(3):
        b = next(it)
        state, m = step(state, t_params, b)
        ref, m_ref = plain(ref, t_params, b)
        expected = DECAY * expected + (1 - DECAY) * float(np.abs(b["inputs"]).max())
    np.testing.assert_allclose(state.model_state["range"], expected, rtol=1e-6)
    # the state rides along: params and metrics are those of the stateless step, exactly
    chex.assert_trees_all_equal(state.params, ref.params)
    chex.assert_trees_all_equal(m, m_ref)
    np.testing.assert_array_equal(fwd(s_params, b["inputs"]), s_apply(s_params, b["inputs"]))


def test_axis_name_is_bound_under_jit_and_is_the_device_axis_under_pmap():
    """A forward reducing over "batch": size 1 under jit, all devices under pmap."""

    def forward(params, state, inputs, key):
        del key
        mean = lax.pmean(jnp.mean(inputs, axis=0), "batch")
        return inputs - mean, {"mean": mean}

    fwd = train.StatefulApply(forward, {"mean": jnp.zeros(3)}, axis_names=("batch",))
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    out, st = jax.jit(fwd.run)({}, fwd.model_state, x)
    np.testing.assert_allclose(st["mean"], x.mean(0), rtol=1e-6)
    n = 4
    pmapped = jax.pmap(
        lambda s, x: fwd.run({}, s, x, device_axis="batch"),
        axis_name="batch",
        in_axes=(None, 0),
        out_axes=(0, None),
        devices=jax.local_devices()[:n],
    )
    out_p, st_p = pmapped(fwd.model_state, x.reshape(n, -1, 3))
    np.testing.assert_allclose(st_p["mean"], x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out_p).reshape(8, 3), out, rtol=1e-5, atol=1e-6)


def test_a_state_of_another_structure_or_dtype_is_refused(teacher, student, batch):
    t_apply, t_params, _ = teacher
    s_apply, s_params = student
    opt = optax.sgd(0.1)

    def renamed(params, state, inputs, key):
        return s_apply(params, inputs), {"other": state["range"]}

    def widened(params, state, inputs, key):
        return s_apply(params, inputs), {"range": state["range"].astype(jnp.float16)}

    start = {"range": jnp.float32(0.0)}
    state = train.init_state(s_params, opt, lc.identity(), jax.random.key(0), model_state=start)
    for fn, match in ((renamed, "another structure"), (widened, "leaf 'range' as float16")):
        step = train.make_step(train.StatefulApply(fn, start), t_apply, opt, lc.identity())
        with pytest.raises(ValueError, match=match):
            jax.jit(step)(state, t_params, batch)


def test_batchnorm_that_would_not_synchronise_is_refused():
    """Under a device axis: a BatchNorm over another axis, or over none, is a clear error."""
    n = 2
    for name, axis, match in (
        ("resnet", "data", r"axis_name='batch', but the step maps over 'data'.*make_step"),
        ("nnx_cnn", "batch", r"BatchNorm 'bn' has axis_name=None.*data_parallel"),
    ):
        f = family(name)
        step = jax.pmap(
            f.step(axis_name=axis),
            axis_name=axis,
            in_axes=(None, None, 0),
            out_axes=(None, 0),
            devices=jax.local_devices()[:n],
        )
        b = lc.parallel.shard_batch(f.batches[0], n)
        with pytest.raises(ValueError, match=match):
            step(f.init(), f.teacher_params, b)


def test_missing_or_mismatched_model_state_and_modes_are_clear_errors():
    f = family("resnet")
    opt = optax.sgd(0.1)
    bare = train.init_state(f.params, opt, lc.identity(), jax.random.key(0))  # no batch_stats
    step = jax.jit(train.make_step(f.train_apply, f.eval_apply, opt, lc.identity()))
    with pytest.raises(ValueError, match=r"model_state=\{'batch_stats'"):
        step(bare.replace(teacher_state=f.teacher_state), f.teacher_params, f.batches[0])
    g = family("nnx_cnn")
    wrong = train.init_state(
        g.params, opt, lc.identity(), jax.random.key(0), model_state={"x": jnp.zeros(2)}
    )
    with pytest.raises(ValueError, match=r"apply\.model_state"):
        jax.jit(train.make_step(g.train_apply, None, opt, lc.identity(), alpha=0.0))(
            wrong, None, g.batches[0]
        )
    with pytest.raises(ValueError, match="teacher_apply is a train-mode"):
        train.make_step(f.train_apply, f.train_apply, opt, lc.identity())
    with pytest.raises(ValueError, match="eval-mode"):
        train.evaluate(f.train_apply, f.params, f.batches[:1], model_state=f.model_state)
    with pytest.raises(TypeError, match="forward must be callable"):
        train.StatefulApply(None)
    with pytest.raises(TypeError, match="axis_names"):
        train.StatefulApply(lambda *a: a, axis_names="batch")
    with pytest.raises(TypeError, match="train must be"):
        train.StatefulApply(lambda *a: a, train="yes")
    with pytest.raises(TypeError, match=r"flax\.linen\.Module"):
        train.linen_apply(lambda x: x)
    with pytest.raises(TypeError, match=r"flax\.nnx\.Module"):
        train.nnx_apply(mlp((CLASSES,), 0)[0])
