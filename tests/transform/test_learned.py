"""Tests for lightcomp.transform's Learned, partition/combine and split_trainable/join."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import prune
from lightcomp import transform as T

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def deep(params):
    """Deep Compression order with LSQ scales: (transform, state), built once."""
    t = T.chain(T.pruning(0.5), T.weight_sharing(4), T.fake_quantization(4, learned_scale=True))
    return t, t.init(params, KEY)


def test_partition_and_combine_are_inverse(deep):
    _, s = deep
    learned, fixed = T.partition(s)
    chex.assert_trees_all_equal(T.combine(learned, fixed), s)
    assert learned[0].masks["Dense_0"]["kernel"] is None
    assert isinstance(learned[1].centroids, T.Learned)
    assert fixed[1].centroids.value["Dense_0"]["kernel"] is None


def test_split_trainable_takes_float_params_and_learned_leaves_once(params, deep):
    _, s = deep
    trainable, rest = T.split_trainable(params, s)
    p, c = trainable
    chex.assert_trees_all_equal(p, params)  # every float param
    assert c[0].masks["Dense_0"]["kernel"] is None and c[0].sparsity is None
    assert c[1].assignments["Dense_0"]["kernel"] is None  # integer codes are fixed
    chex.assert_trees_all_equal(c[1].centroids.value, s[1].centroids.value)
    chex.assert_trees_all_equal(c[2].scales.value, s[2].scales.value)
    assert rest[1][1].centroids.value["Dense_0"]["kernel"] is None
    chex.assert_trees_all_equal(T.join(trainable, rest), (params, s))
    # the same split as partition followed by a float filter
    learned, _ = T.partition(s)
    assert jax.tree.structure(c) == jax.tree.structure(learned)


def test_split_trainable_keeps_integer_params_out(params):
    p = {**params, "count": jnp.int32(3)}
    trainable, rest = T.split_trainable(p, ())
    assert trainable[0]["count"] is None and int(rest[0]["count"]) == 3


def test_gradients_flow_to_params_centroids_and_scales(params, deep, kernels):
    t, s = deep
    trainable, rest = T.split_trainable(params, s)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 6)), jnp.float32)

    def loss(tr):
        e = t.apply(*T.join(tr, rest))
        h = jnp.tanh(x @ e["Dense_0"]["kernel"] + e["Dense_0"]["bias"])
        return jnp.sum((h @ e["Dense_1"]["kernel"] + e["Dense_1"]["bias"]) ** 2)

    gp, gl = jax.grad(loss)(trainable)
    gp_j, gl_j = jax.jit(jax.grad(loss))(trainable)
    chex.assert_trees_all_close((gp, gl), (gp_j, gl_j), rtol=1e-5, atol=1e-6)
    masks = T.masks_of(s)
    for g, m in zip(kernels(gp), kernels(masks), strict=True):
        assert np.all(np.asarray(g)[~np.asarray(m)] == 0.0)  # pruned: no gradient
        assert np.count_nonzero(np.asarray(g)[np.asarray(m)]) > 0
    for g in kernels(gl[1].centroids.value) + kernels(gl[2].scales.value):
        assert np.all(np.isfinite(g)) and np.count_nonzero(g) > 0


_STAGES = {
    "prune": lambda: T.pruning(prune.polynomial_schedule(0.3, 0.7, 0, 4), update_every=1),
    "share": lambda: T.weight_sharing(4),
    "quant": lambda: T.fake_quantization(4),
    "asym": lambda: T.fake_quantization(3, symmetric=False),
    "lsq": lambda: T.fake_quantization(4, learned_scale=True),
}


@pytest.mark.parametrize(
    "order",
    [
        *itertools.permutations(("prune", "share", "quant")),
        ("prune", "lsq", "share", "asym"),
    ],
)
def test_pruned_weights_stay_exactly_zero_in_any_order(params, kernels, order):
    t = T.chain(*(_STAGES[name]() for name in order))
    s = t.init(params, KEY)
    update = jax.jit(t.update)
    apply = jax.jit(t.apply)
    p = params
    for step in range(1, 5):  # the masks grow after sharing clustered: stale codes stay 0
        s = update(p, s, None, jnp.int32(step))
        masks = T.masks_of(s)
        p = prune.apply_masks(p, masks)  # as the train step keeps raw pruned weights at 0
        out = apply(p, s)
        for o, m in zip(kernels(out), kernels(masks), strict=True):
            assert np.all(np.asarray(o)[~np.asarray(m)] == 0.0)
            np.testing.assert_array_equal(np.signbit(np.asarray(o)[~np.asarray(m)]), False)
    assert float(s[order.index("prune")].sparsity) == pytest.approx(0.7)


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.pruning(0.5),
        lambda: T.weight_sharing(4),
        lambda: T.fake_quantization(4, learned_scale=True),
    ],
)
def test_state_that_does_not_match_params_names_the_first_path(params, make):
    t = make()
    s = t.init(params, KEY)
    renamed = {"Dense_0": params["Dense_0"], "Dense_9": params["Dense_1"]}
    with pytest.raises(ValueError, match=r"Dense_[19]/"):
        t.apply(renamed, s)
    with pytest.raises(ValueError, match=r"Dense_[19]/"):
        jax.jit(t.update)(renamed, s, None, jnp.int32(0))
    wider = {**params, "Dense_1": {"kernel": jnp.ones((6, 5)), "bias": jnp.ones(5)}}
    with pytest.raises(ValueError, match="Dense_1/kernel"):
        t.apply(wider, s)
