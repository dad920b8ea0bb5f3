"""lightcomp/prune/_shrink.py: removing pruned channels keeps the masked model's outputs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import lightcomp as lc
from lightcomp import prune as P

size = lambda t: sum(v.size for v in jax.tree.leaves(t))


def _random_params(shapes, seed, bias=0.1):
    r = np.random.default_rng(seed)
    return {
        name: {
            "kernel": jnp.asarray(r.normal(size=shape) / np.sqrt(np.prod(shape[:-1])), jnp.float32),
            "bias": jnp.asarray(bias * r.normal(size=shape[-1]), jnp.float32),
        }
        for name, shape in shapes.items()
    }


def test_shrink_mlp_same_outputs_and_smaller(mlp):
    apply, params = mlp((32, 24, 10), 16, 1)
    m = P.masks(P.magnitude(params), 0.5, granularity=P.Channel())
    masked = P.apply_masks(params, m)
    order = ["Dense_0", "Dense_1", "Dense_2"]
    small = P.shrink(params, m, order, activation=jax.nn.relu)
    x = jax.random.normal(jax.random.key(2), (5, 16))
    small_model = P.smaller_module(lc.models.MLP((32, 24, 10)), params, small, order)
    assert small_model.features == (16, 12, 10)
    out = jax.jit(small_model.apply)({"params": small}, x)
    np.testing.assert_allclose(out, apply(masked, x), rtol=1e-5, atol=1e-5)
    assert small["Dense_0"]["kernel"].shape == (16, 16)
    assert small["Dense_1"]["kernel"].shape[0] == 16
    assert small["Dense_2"]["kernel"].shape[1] == 10
    assert size(small) < 0.6 * size(params)
    with pytest.raises(ValueError, match="not channel-structured"):
        broken = jax.tree.map(lambda v: v, m)
        broken["Dense_0"]["kernel"] = ~np.eye(16, 32, dtype=bool)
        P.shrink(params, broken, order)
    with pytest.raises(ValueError, match="no layer 'Dense_7'"):
        P.shrink(params, m, ["Dense_0", "Dense_7"])


def test_shrink_cnn_equals_masked_with_biases_dropped():
    model = lc.models.CNN((8, 12), 10)
    x = jax.random.uniform(jax.random.key(3), (4, 8, 8, 1))
    shapes = {"Conv_0": (3, 3, 1, 8), "Conv_1": (3, 3, 8, 12), "Dense_0": (12, 10)}
    params = _random_params(shapes, 4)
    m = P.masks(P.magnitude(params), 0.5, granularity="channel", scope="layer")
    order = ["Conv_0", "Conv_1", "Dense_0"]
    small = P.shrink(params, m, order)
    ref = P.apply_masks(params, m)
    for layer in order[:-1]:  # without folding, a pruned channel's bias goes with it
        alive = np.asarray(m[layer]["kernel"]).reshape(-1, ref[layer]["bias"].shape[0]).any(0)
        ref[layer] = dict(ref[layer], bias=ref[layer]["bias"] * alive)
    small_model = P.smaller_module(model, params, small, order)
    assert small_model.channels == (4, 6)
    out_small = jax.jit(small_model.apply)({"params": small}, x)
    np.testing.assert_allclose(out_small, jax.jit(model.apply)({"params": ref}, x), atol=1e-5)
    assert small["Conv_1"]["kernel"].shape == (3, 3, 4, 6)


class _ValidCNN(nn.Module):
    """Conv -> Conv (VALID) -> pooling -> Dense, widths as a field."""

    widths: tuple[int, ...] = (8, 12)

    @nn.compact
    def __call__(self, x):
        for w in self.widths:
            x = nn.relu(nn.Conv(w, (3, 3), padding="VALID")(x))
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


def test_conv_conv_with_activation_folds_the_pruned_channels_constant():
    model = _ValidCNN()
    shapes = {"Conv_0": (3, 3, 1, 8), "Conv_1": (3, 3, 8, 12), "Dense_0": (12, 10)}
    params = _random_params(shapes, 5, bias=1.0)  # positive biases: relu(bias) != 0
    x = jax.random.uniform(jax.random.key(6), (3, 8, 8, 1))
    m = P.masks(P.magnitude(params), 0.5, granularity="channel")
    order = ["Conv_0", "Conv_1", "Dense_0"]
    small = P.shrink(params, m, order, activation=jax.nn.relu)
    want = model.apply({"params": P.apply_masks(params, m)}, x)
    got = P.smaller_module(model, params, small, order).apply({"params": small}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # "SAME" padding (lc.models.CNN): exact when the pruned channels' constant is 0
    neg = jax.tree.map(lambda v: v, params)
    for k in ("Conv_0", "Conv_1"):
        neg[k] = dict(neg[k], bias=-jnp.abs(neg[k]["bias"]))
    small = P.shrink(neg, m, order, activation=jax.nn.relu)
    cnn = lc.models.CNN((8, 12), 10)
    want = cnn.apply({"params": P.apply_masks(neg, m)}, x)
    got = P.smaller_module(cnn, neg, small, order).apply({"params": small}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class _MnistCNN(nn.Module):
    """Flax's MNIST example CNN (conv, pool, conv, pool, flatten, dense), widths as fields."""

    features: tuple[int, ...] = (8, 16, 32)

    @nn.compact
    def __call__(self, x):
        for f in self.features[:2]:
            x = nn.relu(nn.Conv(f, (3, 3))(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.features[2])(x))
        return nn.Dense(10)(x)


def test_conv_flatten_dense_flax_mnist_cnn():
    model = _MnistCNN()
    x = jax.random.uniform(jax.random.key(7), (2, 8, 8, 1))
    shapes = {
        "Conv_0": (3, 3, 1, 8),
        "Conv_1": (3, 3, 8, 16),
        "Dense_0": (2 * 2 * 16, 32),
        "Dense_1": (32, 10),
    }
    params = _random_params(shapes, 8)
    m = P.masks(P.magnitude(params), 0.5, granularity="channel")
    order = list(shapes)
    small = P.shrink(params, m, ["Conv_1", "Dense_0", "Dense_1"], activation=jax.nn.relu)
    assert small["Dense_0"]["kernel"].shape == (2 * 2 * 8, 16)
    smaller = P.smaller_module(model, params, small, order)
    assert smaller.features == (8, 8, 16)  # Conv_0 was not shrunk: its channels stay
    want = model.apply({"params": P.apply_masks(params, m)}, x)
    np.testing.assert_allclose(smaller.apply({"params": small}, x), want, rtol=1e-5, atol=1e-5)
    assert size(small) < size(params)


def test_nnx_chain_shrinks_and_rebuilds_without_touching_the_model():
    model = lc.models.NnxMLP((6, 16, 12, 4), rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    m = P.masks(P.magnitude(params), 0.5, granularity="channel")
    order = ["layers/0", "layers/1", "layers/2"]
    small = P.shrink(params, m, order, activation=jax.nn.relu)
    assert isinstance(small, nnx.State)
    smaller = P.smaller_module(model, params, small, order)
    x = jax.random.normal(jax.random.key(9), (3, 6))
    masked = nnx.clone(model)
    nnx.update(masked, P.apply_masks(params, m))
    np.testing.assert_allclose(smaller(x), masked(x), rtol=1e-5, atol=1e-5)
    assert smaller.layers[0].out_features == 8 and smaller.layers[1].in_features == 8
    assert model.layers[0].kernel[...].shape == (6, 16)  # the user's model is unchanged


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"order": "Dense_0"}, ValueError, "order must be a sequence"),
        ({"order": ["Dense_0", 3]}, TypeError, "non-empty strings"),
        ({"activation": "relu"}, TypeError, "activation must be callable"),
    ],
)
def test_bad_arguments(mlp, kw, error, match):
    _, params = mlp((8, 4), 6, 0)
    m = P.masks(P.magnitude(params), 0.5, granularity="channel")
    with pytest.raises(error, match=match):
        P.shrink(params, m, **{"order": ["Dense_0", "Dense_1"], **kw})


def test_whole_layer_pruned_and_a_module_without_widths(mlp):
    _, params = mlp((8, 4), 6, 0)
    m = P.masks(P.magnitude(params), 0.5, granularity="channel")
    m["Dense_0"]["kernel"] = np.zeros((6, 8), bool)
    with pytest.raises(ValueError, match="every output channel of 'Dense_0' is pruned"):
        P.shrink(params, m, ["Dense_0", "Dense_1"])
    small = P.shrink(params, P.masks(P.magnitude(params), 0.5, granularity="channel"),
                     ["Dense_0", "Dense_1"])  # fmt: skip
    with pytest.raises(ValueError, match="no field holds the layer widths"):
        P.smaller_module(nn.Dense(4), params, small, ["Dense_0", "Dense_1"])


def _np_mlp(params, x, order):
    for i, layer in enumerate(order):
        x = x @ np.asarray(params[layer]["kernel"]) + np.asarray(params[layer]["bias"])
        x = np.maximum(x, 0.0) if i < len(order) - 1 else x
    return x


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), widths=st.lists(st.integers(1, 6), min_size=1, max_size=3))
def test_property_any_channel_mask_gives_the_masked_function(seed, widths):
    """Random channel masks (at least one channel alive): same function, exact widths."""
    r = np.random.default_rng(seed)
    sizes = [4, *widths, 3]
    order = [f"Dense_{i}" for i in range(len(sizes) - 1)]
    shapes = {name: (a, b) for name, a, b in zip(order, sizes[:-1], sizes[1:], strict=True)}
    params = _random_params(shapes, seed, bias=1.0)
    masks = {}
    for name, (a, b) in shapes.items():
        alive = r.random(b) < 0.5
        alive[r.integers(b)] = True
        masks[name] = {"kernel": np.broadcast_to(alive, (a, b)).copy(), "bias": None}
    small = P.shrink(params, masks, order, activation=jax.nn.relu)
    for name in order[:-1]:
        assert small[name]["kernel"].shape[1] == masks[name]["kernel"][0].sum()
    x = r.normal(size=(5, 4)).astype(np.float32)
    want = _np_mlp(P.apply_masks(params, masks), x, order)
    np.testing.assert_allclose(_np_mlp(small, x, order), want, rtol=1e-4, atol=1e-4)
