"""Tests for lightcomp.train.init_state and DistillState."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

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
