"""Tests for lightcomp.train.init_state and DistillState."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lightcomp as lc
from tests.train.helpers import comparable, masks


def test_init_state_structure(adam_run, student):
    _, opt, _, state = adam_run
    _, s_params = student
    chex.assert_trees_all_equal_structs(state.params, s_params)
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    trainable, _ = lc.transform.split_trainable(state.params, state.comp_state)
    expected = opt.init(trainable)
    chex.assert_trees_all_equal_structs(state.opt_state, expected)
    kept = masks(state)
    # pruned entries are zero from the start, and the mask prunes 80% of each kernel
    for path in ("Dense_0", "Dense_1"):
        m = np.asarray(kept[path]["kernel"])
        w = np.asarray(state.params[path]["kernel"])
        assert np.all(w[~m] == 0.0)
        assert abs((~m).mean() - 0.8) < 0.01
    # DistillState is a pytree: it round-trips through flatten / unflatten
    leaves, treedef = jax.tree.flatten(state)
    chex.assert_trees_all_equal(comparable(jax.tree.unflatten(treedef, leaves)), comparable(state))


def test_model_state_fields_add_leaves_only_when_they_hold_some(student):
    """Stateless: the tree (leaf paths, checkpoint layout) of 0.1.0; stateful: its leaves."""
    _, s_params = student
    opt = optax.sgd(0.1)
    plain = lc.train.init_state(s_params, opt, lc.identity(), jax.random.key(0))
    assert plain.model_state == {} and plain.teacher_state == {}
    paths = lc.tree.paths(comparable(plain))
    assert all(
        p.split("/")[0] in {"step", "params", "opt_state", "comp_state", "rng"} for p in paths
    )
    stats = {"batch_stats": {"bn": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}}
    full = lc.train.init_state(
        s_params, opt, lc.identity(), jax.random.key(0), model_state=stats, teacher_state=stats
    )
    extra = [p for p in lc.tree.paths(comparable(full)) if p not in paths]
    assert extra == [
        "model_state/batch_stats/bn/mean",
        "model_state/batch_stats/bn/var",
        "teacher_state/batch_stats/bn/mean",
        "teacher_state/batch_stats/bn/var",
    ]
    for state in (plain, full, full.replace(model_state={})):
        leaves, treedef = jax.tree.flatten(state)
        back = jax.tree.unflatten(treedef, leaves)
        assert isinstance(back, lc.train.DistillState)
        chex.assert_trees_all_equal(comparable(back), comparable(state))
    assert full.replace(model_state={}).model_state == {}
    # a tree of Nones mirrors the state (orbax's save arguments are built so)
    nones = jax.tree.map(lambda x: None, full)
    assert jax.tree.map(lambda x, a: x, full, nones, is_leaf=lambda a: a is None) is not None
    with pytest.raises(TypeError, match=r"model_state.*'bn'"):
        lc.train.init_state(
            s_params, opt, lc.identity(), jax.random.key(0), model_state={"bn": "x"}
        )
