"""Tests for lightcomp/transform/_sharding.py on 8 host devices: state sharded like params.

FSDP (``P("data", ...)``), tensor-parallel (``P(None, "model")``) and mixed layouts on a
4 x 2 mesh: after init, apply, update and a jitted step, every mask, assignment and
effective parameter has its parameter's sharding, and the numbers equal one device's.
"""

import chex
import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lightcomp as lc
from lightcomp import parallel

SPECS = {
    "Dense_0": {"kernel": P("data", "model"), "bias": P("model")},  # FSDP + tensor parallel
    "Dense_1": {"kernel": P("data", None), "bias": P()},  # FSDP
    "Dense_2": {"kernel": P(None, "model"), "bias": P()},  # tensor parallel
}
SHAPES = {
    "Dense_0": {"kernel": (64, 32), "bias": (32,)},
    "Dense_1": {"kernel": (32, 16), "bias": (16,)},
    "Dense_2": {"kernel": (16, 10), "bias": (10,)},
}


def _is_shape(x):
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def _params():
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: rng.standard_normal(s).astype(np.float32) * 0.3, SHAPES, is_leaf=_is_shape
    )


def _apply(params, x):
    h = x
    for i in range(3):
        h = h @ params[f"Dense_{i}"]["kernel"] + params[f"Dense_{i}"]["bias"]
        h = jax.nn.relu(h) if i < 2 else h
    return h


def _transform():
    return lc.chain(
        lc.transform.pruning(lc.prune.polynomial_schedule(0.3, 0.6, 0, 2), update_every=1),
        lc.transform.weight_sharing(4, recluster_every=2, iters=1),
        lc.transform.fake_quantization(4, axis=-1),
    )


T = _transform()  # one instance: its jitted functions compile once for the module


@pytest.fixture(scope="module")
def mesh():
    return parallel.make_mesh(4, 2)


@pytest.fixture(scope="module")
def sharded(mesh):
    return jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), _params(), SPECS)


def _kernel_specs(state_tree):
    """``{path: spec}`` of the kernel-shaped leaves of a mask / assignment tree."""
    return {p: x.sharding.spec for p, x in lc.tree.leaves_with_paths(state_tree, argname="state")}


def _assert_like_params(state):
    masks, assignments = state[0].masks, state[1].assignments
    for i in range(3):
        name = f"Dense_{i}"
        assert masks[name]["kernel"].sharding.spec == SPECS[name]["kernel"], name
        assert assignments[name]["kernel"].sharding.spec == SPECS[name]["kernel"], name
    for c in jax.tree.leaves(state[1].centroids):  # [k] per leaf: replicated, same mesh
        assert c.sharding.spec == P() and len(c.sharding.device_set) == 8


def test_init_apply_update_keep_the_params_layout_and_values(sharded):
    t = T
    key = jax.random.key(1)
    state = t.init(sharded, key)
    _assert_like_params(state)
    eff = t.apply(sharded, state)
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x.sharding.spec, eff), SPECS)
    grads = jax.tree.map(lambda x: x * 0.1, sharded)
    new = t.update(sharded, state, grads, np.int32(2))
    _assert_like_params(new)
    # equal to one device (jitted there too: the same XLA computation)
    one = jax.device_put(_params(), jax.devices()[0])
    ref_state = jax.jit(t.init)(one, key)
    chex.assert_trees_all_equal(state[0].masks, ref_state[0].masks)
    chex.assert_trees_all_equal(state[1].assignments, ref_state[1].assignments)
    chex.assert_trees_all_close(eff, jax.jit(t.apply)(one, ref_state), rtol=1e-6, atol=1e-6)
    one_grads = jax.tree.map(lambda x: x * 0.1, one)
    ref_new = jax.jit(t.update)(one, ref_state, one_grads, np.int32(2))
    chex.assert_trees_all_equal(new[0].masks, ref_new[0].masks)


def test_a_jitted_step_keeps_the_layout_and_matches_one_device(mesh, sharded):
    opt = optax.adam(1e-2)
    t = T
    step = lc.train.make_step(_apply, _apply, opt, t)
    rng = np.random.default_rng(1)
    batch = {
        "inputs": rng.random((16, 64), dtype=np.float32),
        "labels": rng.integers(0, 10, 16).astype(np.int32),
    }
    teacher = _params()
    state = lc.train.init_state(sharded, opt, t, jax.random.key(2))
    shardings = parallel.state_shardings(state, mesh)
    assert shardings.params["Dense_0"]["kernel"].spec == P("data", "model")
    assert shardings.comp_state[0].masks["Dense_1"]["kernel"].spec == P("data", None)
    assert shardings.opt_state[0].mu[0]["Dense_2"]["kernel"].spec == P(None, "model")
    ref = jax.jit(lambda p, k: lc.train.init_state(p, opt, t, k))(_params(), jax.random.key(2))
    ref_step = jax.jit(step)
    run = parallel.data_parallel(step, mesh, state_shardings=shardings)
    state = parallel.place(state, shardings)
    for _ in range(3):
        state, metrics = run(state, teacher, batch)
        ref, ref_metrics = ref_step(ref, teacher, batch)
    _assert_like_params(state.comp_state)
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x.sharding.spec, state.params), SPECS)
    chex.assert_trees_all_equal(state.comp_state[0].masks, ref.comp_state[0].masks)
    chex.assert_trees_all_close(state.params, ref.params, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(metrics, ref_metrics, rtol=1e-4, atol=1e-5)


def test_unsharded_params_are_left_where_they_are():
    state = lc.transform.pruning(0.5).init(_params(), jax.random.key(0))
    mask = state.masks["Dense_0"]["kernel"]
    assert not isinstance(mask.sharding, NamedSharding) or mask.sharding.spec == P()
