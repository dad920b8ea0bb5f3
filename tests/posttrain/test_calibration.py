"""Gram matrices by interception: linen and nnx, streamed over batches, and the refusals."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lightcomp as lc
from lightcomp.posttrain import _calibration

ZOO_KERNELS = [
    "Conv_0/kernel",
    "Conv_1/kernel",
    "DenseGeneral_0/kernel",
    "Einsum_0/kernel",
    "Einsum_1/kernel",
    "DenseGeneral_1/kernel",
    "Dense_0/kernel",
]


def test_dense_gram_is_x_transpose_x(mlp_task):
    apply, params, x, _ = mlp_task
    xs = [x[:100], x[100:300], {"inputs": x[300:]}]
    g = lc.posttrain.grams(apply, params, xs, select=r"Dense_0/kernel")
    x64 = np.asarray(x, np.float64)
    np.testing.assert_allclose(g["Dense_0/kernel"].matrix[0], x64.T @ x64, rtol=1e-5, atol=1e-3)
    assert float(g["Dense_0/kernel"].rows) == 512
    assert list(g) == ["Dense_0/kernel"]


def test_every_layer_type_is_found_in_call_order_and_streaming_is_the_sum(zoo):
    apply, params, xs = zoo
    found = _calibration.plan(apply, params, xs[0])
    assert [p for g in found.groups for p, _ in g] == ZOO_KERNELS
    views = found.views
    assert views["Einsum_1/kernel"].stacked == (0,) and views["Conv_0/kernel"].n_in == 27
    assert views["DenseGeneral_1/kernel"].inputs == (0, 1)
    streamed = lc.posttrain.grams(apply, params, xs)
    whole = lc.posttrain.grams(apply, params, jnp.concatenate(xs))
    for path in ZOO_KERNELS:
        np.testing.assert_allclose(
            streamed[path].matrix, whole[path].matrix, rtol=1e-4, atol=1e-3 * len(xs)
        )
        assert float(streamed[path].rows) == float(whole[path].rows)
        assert streamed[path].matrix.dtype == jnp.float32


def test_gram_gives_the_layer_output_energy(zoo):
    """trace(W H W^T) is the sum of squares of the layer's output (less its bias), per type."""
    from tests.posttrain.conftest import Zoo

    apply, params, xs = zoo
    g = lc.posttrain.grams(apply, params, xs[0])
    found = _calibration.plan(apply, params, xs[0])
    _, inter = Zoo().apply(
        {"params": params}, xs[0], capture_intermediates=True, mutable=["intermediates"]
    )
    leaves = dict(lc.tree.leaves_with_paths(params))
    for path in ZOO_KERNELS:
        module = path.rsplit("/", 1)[0]
        y = inter["intermediates"][module]["__call__"][0] - params[module]["bias"]
        w = found.views[path].to_matrix(leaves[path])
        energy = jnp.einsum("soi,sij,soj->", w, g[path].matrix, w, precision="highest")
        np.testing.assert_allclose(energy, jnp.sum(jnp.square(y)), rtol=2e-4)


def test_nnx_gram_matches_the_layer_input(nnx_zoo):
    apply, params, xs = nnx_zoo
    original = nnx.Linear.__call__
    g = lc.posttrain.grams(apply, params, xs)
    assert nnx.Linear.__call__ is original  # the classes are put back
    assert set(g) == {"conv/kernel", "proj/kernel", "mix/kernel", "out/kernel"}
    from tests.posttrain.conftest import NnxZoo

    model = nnx.merge(*nnx.split(NnxZoo(nnx.Rngs(0))))
    total = 0
    for x in xs:
        h = nnx.relu(model.conv(x)).reshape(x.shape[0], 36, 4)
        h = jnp.tanh(model.mix(model.proj(h))).mean(axis=1)
        total = total + np.asarray(h, np.float64).T @ np.asarray(h, np.float64)
    np.testing.assert_allclose(g["out/kernel"].matrix[0], total, rtol=1e-4, atol=1e-4)


class Branchy(nn.Module):
    @nn.compact
    def __call__(self, x, tied=False):
        emb = nn.Embed(10, 4)
        h = emb(x)
        if tied:
            return emb.attend(h)
        return nn.Dense(3)(h) if x.shape[0] > 100 else nn.Dense(5, name="small")(h)


def test_refusals_name_the_layer():
    model = Branchy()
    x = jnp.arange(6).reshape(2, 3) % 10
    params = model.init(jax.random.key(0), jnp.zeros((200, 3), jnp.int32))["params"]
    params = {**params, **model.init(jax.random.key(1), x)["params"]}
    apply = lambda p, x: model.apply({"params": p}, x)
    with pytest.raises(ValueError, match=r"'Dense_0/kernel'.*never reach"):
        lc.posttrain.grams(apply, params, x, select=r"Dense_0/kernel")
    tied = lambda p, x: model.apply({"params": p}, x, tied=True)
    with pytest.raises(lc.posttrain.LayerError, match=r"'Embed_0/embedding'.*Embed"):
        lc.posttrain.grams(tied, params, x, select="embedding")
    with pytest.raises(ValueError, match=r"called no selected layer.*already jitted"):
        lc.posttrain.grams(tied, params, x)
    with pytest.raises(ValueError, match="empty"):
        lc.posttrain.grams(apply, params, [])
    with pytest.raises(TypeError, match="apply_fn must be callable"):
        lc.posttrain.grams("f", params, x)
    jitted = jax.jit(apply)
    jitted(params, x)
    with pytest.raises(ValueError, match="already jitted"):
        lc.posttrain.grams(jitted, params, x)
    assert list(lc.posttrain.grams(apply, params, x)) == ["small/kernel"]
