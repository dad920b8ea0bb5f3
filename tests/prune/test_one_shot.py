"""lightcomp/prune/_one_shot.py: one-call pruning with every kind of score."""

from __future__ import annotations

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import prune as P


@pytest.mark.parametrize("score", [P.magnitude, "magnitude"])
def test_one_shot_prune_magnitude_exact(score, make_params, leaves, selected, np_layer_mask):
    params = make_params(5)
    pruned, m = P.one_shot_prune(params, 0.75, score=score)
    for path in selected:
        w = leaves(pruned)[path]
        assert int(jnp.sum(w == 0)) == round(0.75 * w.size)
        np.testing.assert_array_equal(
            np.asarray(leaves(m)[path]), np_layer_mask(np.abs(leaves(params)[path]), 0.75)
        )
    chex.assert_trees_all_equal(pruned, P.apply_masks(params, m))


def test_one_shot_prune_wanda_compares_per_output(mlp):
    _, params = mlp((6, 5, 3), 7, 0)
    r = np.random.default_rng(0)
    norms = {
        f"Dense_{i}": {"kernel": jnp.asarray(r.random(fan_in) + 0.1, jnp.float32), "bias": None}
        for i, fan_in in enumerate((7, 6, 5))
    }
    pruned, m = P.one_shot_prune(params, 0.4, score=P.wanda, input_norms=norms)
    by_name, _ = P.one_shot_prune(params, 0.4, score="wanda", input_norms=norms)
    chex.assert_trees_all_equal(pruned, by_name)
    want = P.masks(P.wanda(params, norms), 0.4, scope="output")
    chex.assert_trees_all_equal(m, want)
    for i, fan_in in enumerate((7, 6, 5)):
        kernel = np.asarray(pruned[f"Dense_{i}"]["kernel"])
        # Wanda's per-output comparison: every output column loses round(0.4 * fan_in)
        np.testing.assert_array_equal((kernel == 0).sum(axis=0), round(0.4 * fan_in))
        np.testing.assert_array_equal(pruned[f"Dense_{i}"]["bias"], params[f"Dense_{i}"]["bias"])
    layer, _ = P.one_shot_prune(params, 0.4, score=P.wanda, input_norms=norms, scope="layer")
    chex.assert_trees_all_equal(layer, P.apply_masks(params, P.masks(P.wanda(params, norms), 0.4)))
    with pytest.raises(ValueError, match="input_norms"):
        P.one_shot_prune(params, 0.4, score="wanda")


def test_one_shot_prune_other_scores_and_granularities(make_params, like):
    params = make_params(18)
    grads = like(params, 19)
    for score in (P.taylor, "taylor"):
        _, m = P.one_shot_prune(params, 0.5, score=score, grads=grads)
        chex.assert_trees_all_equal(m, P.masks(P.taylor(params, grads), 0.5))
    user = lambda p, g: P.gradient(p, g)
    _, m = P.one_shot_prune(params, 0.5, score=user, grads=grads, scope="global")
    chex.assert_trees_all_equal(m, P.masks(P.gradient(params, grads), 0.5, scope="global"))
    tree = P.movement(params, grads)
    _, m = P.one_shot_prune(params, 0.5, score=tree, granularity=P.Channel())
    chex.assert_trees_all_equal(m, P.masks(tree, 0.5, granularity="channel"))
    _, m = P.one_shot_prune(params, None, granularity="n:m", n=2, m=4)
    chex.assert_trees_all_equal(m, P.masks(P.magnitude(params), None, granularity=P.NM(2, 4)))
    with pytest.raises(ValueError, match="score taylor needs grads="):
        P.one_shot_prune(params, 0.5, score=P.taylor)
    with pytest.raises(ValueError, match="score must be magnitude, wanda"):
        P.one_shot_prune(params, 0.5, score="hessian")
    with pytest.raises(ValueError, match="score does not mirror params"):
        P.one_shot_prune(params, 0.5, score={"Dense_0": None})
    with pytest.raises(ValueError, match="granularity must be one of"):
        P.one_shot_prune(params, 0.5, granularity="row")
