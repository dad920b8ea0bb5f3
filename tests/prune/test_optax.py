"""lightcomp/prune/_optax.py: `zero_pruned`, `keep_pruned`, `reset_moments`."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lightcomp import prune as P


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_zero_pruned_matches_numpy_and_passes_unmasked(dtype):
    r = np.random.default_rng(40)
    tree = {
        "k": jnp.asarray(r.normal(size=(3, 4)), dtype),
        "b": jnp.asarray(r.normal(size=4), dtype),
        "none": None,
    }
    keep = {"k": jnp.asarray(r.random((3, 4)) < 0.5), "b": None, "none": None}
    got = P.zero_pruned(tree, keep)
    chex.assert_trees_all_equal(jax.jit(P.zero_pruned)(tree, keep), got)
    chex.assert_trees_all_equal_dtypes(got, tree)
    ref = np.where(np.asarray(keep["k"]), np.asarray(tree["k"], np.float32), 0.0)
    np.testing.assert_array_equal(np.asarray(got["k"], np.float32), ref)
    assert got["b"] is tree["b"] and got["none"] is None
    # a mask at a None leaf of the tree (updates of a frozen leaf) passes the None through
    assert P.zero_pruned({"k": None}, {"k": jnp.ones(2, bool)}) == {"k": None}


@pytest.mark.parametrize(
    "opt",
    [optax.sgd(0.1, momentum=0.9), optax.adam(1e-2), optax.adamw(1e-2, weight_decay=0.1)],
    ids=["sgd_momentum", "adam", "adamw"],
)
def test_keep_pruned_keeps_zeros_every_step(digits, opt, mlp, leaves):
    apply, params = mlp((32, 10), 64, 5)
    m = P.masks(P.magnitude(params), 0.7)
    params = P.apply_masks(params, m)
    tx = P.keep_pruned(opt, lambda p: m)
    state = tx.init(params)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(loss)(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    x, y = digits
    loss_jit = jax.jit(loss)
    first = float(loss_jit(params, x, y))
    for i in range(30):
        sl = slice((i % 8) * 32, (i % 8) * 32 + 32)
        params, state = step(params, state, x[sl], y[sl])
        for path, mk in leaves(m).items():
            w = np.asarray(leaves(params)[path])
            assert np.all(w[~np.asarray(mk)] == 0.0), (i, path)
    assert float(loss_jit(params, x, y)) < first  # it trains
    assert P.sparsity_report(params)["total"]["sparsity"] == pytest.approx(0.7, abs=1e-3)


def test_keep_pruned_masks_keyword_and_unpruned_start(make_params, like, leaves):
    params = make_params(16)
    m = P.masks(P.magnitude(params), 0.5)
    tx = P.keep_pruned(optax.sgd(0.1, momentum=0.9))
    state = tx.init(params)
    u, state = tx.update(like(params, 3), state, params, masks=m)
    new = optax.apply_updates(params, u)  # not masked before: lands on exact zeros anyway
    for path, mk in leaves(m).items():
        assert np.all(np.asarray(leaves(new)[path])[~np.asarray(mk)] == 0.0)
    chex.assert_trees_all_close(
        new["Dense_0"]["bias"],
        params["Dense_0"]["bias"] - 0.1 * like(params, 3)["Dense_0"]["bias"],
        rtol=1e-6,
    )
    # momentum never builds up at pruned positions: the inner state saw zeroed gradients
    trace = state[0].trace
    for path, mk in leaves(m).items():
        assert np.all(np.asarray(leaves(trace)[path])[~np.asarray(mk)] == 0.0)
    with pytest.raises(ValueError, match="needs masks"):
        tx.update(like(params, 3), state, params)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(like(params, 3), state, masks=m)
    with pytest.raises(ValueError, match="masks does not mirror"):
        tx.update(like(params, 3), state, params, masks={"Dense_0": None})


def test_reset_moments_matches_structure_not_types():
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}
    reset = {"a": jnp.asarray([[True, False, False], [False, False, True]]), "b": None}
    custom = {
        "trace": jax.tree.map(lambda w: 2.0 * w, params),
        "step": jnp.int32(4),
        "other": (jnp.ones(5),),
    }
    out = P.reset_moments(custom, params, reset)
    np.testing.assert_array_equal(out["trace"]["a"], np.where(np.asarray(reset["a"]), 0.0, 2.0))
    np.testing.assert_array_equal(out["trace"]["b"], np.full(3, 2.0))
    assert int(out["step"]) == 4 and np.all(np.asarray(out["other"][0]) == 1)
    chex.assert_trees_all_equal(jax.jit(P.reset_moments)(custom, params, reset), out)
