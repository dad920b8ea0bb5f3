"""Tests for lightcomp.models: the small Flax models of the built-in task."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lightcomp import models, prune, train, tree


def test_mlp_matches_numpy_forward():
    apply, params = models.init_mlp([8, 3], 5, jax.random.key(0))
    assert tree.paths(params) == [
        "Dense_0/bias",
        "Dense_0/kernel",
        "Dense_1/bias",
        "Dense_1/kernel",
    ]
    x = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    p = jax.tree.map(np.asarray, params)
    h = np.maximum(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0.0)
    expected = h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    np.testing.assert_allclose(apply(params, x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(apply)(params, x), expected, rtol=1e-5, atol=1e-5)


def test_cnn_shapes():
    model = models.CNN(channels=(4,), num_classes=10)
    x = jnp.ones((2, 8, 8, 1))
    params = model.init(jax.random.key(0), x)["params"]
    chex.assert_shape(params["Conv_0"]["kernel"], (3, 3, 1, 4))
    chex.assert_shape(model.apply({"params": params}, x), (2, 10))


def test_nnx_mlp_equals_linen_mlp_with_the_same_weights():
    net = models.NnxMLP([5, 8, 3], rngs=nnx.Rngs(0))
    _, state = nnx.split(net)
    assert tree.selected_paths(state) == ["layers/0/kernel", "layers/1/kernel"]
    params = {
        f"Dense_{i}": {"kernel": layer.kernel[...], "bias": layer.bias[...]}
        for i, layer in enumerate(net.layers)
    }
    x = np.random.default_rng(2).normal(size=(4, 5)).astype(np.float32)
    linen_out = models.MLP((8, 3)).apply({"params": params}, x)
    chex.assert_trees_all_close(net(x), linen_out, rtol=1e-6, atol=1e-6)


def test_cnn_with_batchnorm_carries_statistics_and_reads_them_in_eval_mode():
    x = np.random.default_rng(3).random((4, 8, 8, 1), dtype=np.float32)
    bn = models.CNN(channels=(4, 4), batch_norm=True)
    variables = jax.jit(bn.init)(jax.random.key(0), x)
    assert set(variables) == {"params", "batch_stats"}
    assert "bias" not in variables["params"]["Conv_0"]
    chex.assert_shape(variables["batch_stats"]["BatchNorm_1"]["mean"], (4,))
    # fresh statistics (mean 0, var 1, scale 1, bias 0): each BatchNorm divides by
    # sqrt(1 + eps), and the net equals the plain CNN with zero conv biases up to that
    plain = models.CNN(channels=(4, 4))
    p = {
        "Conv_0": {**variables["params"]["Conv_0"], "bias": jnp.zeros(4)},
        "Conv_1": {**variables["params"]["Conv_1"], "bias": jnp.zeros(4)},
        "Dense_0": variables["params"]["Dense_0"],
    }
    want = plain.apply({"params": p}, x)
    got = bn.apply(variables, x)
    b = np.asarray(p["Dense_0"]["bias"])
    np.testing.assert_allclose((got - b) * (1 + 1e-5), want - b, rtol=1e-5, atol=1e-6)
    # train mode (BatchNorm's "batch" axis bound by the adapter): the statistics move
    apply = train.linen_apply(bn, train=True)
    _, new = apply.run(variables["params"], {"batch_stats": variables["batch_stats"]}, x)
    assert not np.allclose(new["batch_stats"]["BatchNorm_0"]["mean"], 0.0)


def test_digits_cnn_folds_into_its_plain_twin():
    module, params, state = models.init_cnn((4, 8), jax.random.key(0))
    assert sorted(params) == ["BatchNorm_0", "BatchNorm_1", "Conv_0", "Conv_1", "Dense_0"]
    assert params["Dense_0"]["kernel"].shape == (4 * 4 * 8, 10)  # flattened after one pool
    assert sorted(state) == ["batch_stats"]
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(3, 8, 8, 1)), jnp.float32)
    want = module.apply({"params": params, **state}, x)
    pairs = {"Conv_0": "BatchNorm_0", "Conv_1": "BatchNorm_1"}
    folded, _ = prune.fold_batchnorm(params, state["batch_stats"], pairs, keep_norm=False)
    plain, plain_params, plain_state = models.init_cnn((4, 8), jax.random.key(1), batch_norm=False)
    chex.assert_trees_all_equal_shapes(folded, plain_params)
    assert plain_state == {}
    np.testing.assert_allclose(plain.apply({"params": folded}, x), want, rtol=1e-5, atol=1e-5)
