"""lightcomp/prune/_shrink.py: removing pruned channels keeps the masked model's outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc
from lightcomp import prune as P


def test_shrink_mlp_same_outputs_and_smaller(mlp):
    apply, params = mlp((32, 24, 10), 16, 1)
    m = P.masks(P.magnitude(params), 0.5, granularity=P.Channel())
    masked = P.apply_masks(params, m)
    small = P.shrink(params, m, ["Dense_0", "Dense_1", "Dense_2"], activation=jax.nn.relu)
    x = jax.random.normal(jax.random.key(2), (5, 16))
    small_model = lc.models.MLP((16, 12, 10))  # the widths left after shrinking
    out = jax.jit(small_model.apply)({"params": small}, x)
    np.testing.assert_allclose(out, apply(masked, x), rtol=1e-5, atol=1e-5)
    assert small["Dense_0"]["kernel"].shape == (16, 16)
    assert small["Dense_1"]["kernel"].shape[0] == 16
    assert small["Dense_2"]["kernel"].shape[1] == 10
    size = lambda t: sum(v.size for v in jax.tree.leaves(t))
    assert size(small) < 0.6 * size(params)
    with pytest.raises(ValueError, match="not channel-structured"):
        broken = jax.tree.map(lambda v: v, m)
        broken["Dense_0"]["kernel"] = ~np.eye(16, 32, dtype=bool)
        P.shrink(params, broken, ["Dense_0", "Dense_1", "Dense_2"])
    with pytest.raises(ValueError, match="no layer 'Dense_7'"):
        P.shrink(params, m, ["Dense_0", "Dense_7"])


def test_shrink_cnn_equals_masked_with_biases_dropped():
    model = lc.models.CNN((8, 12), 10)
    x = jax.random.uniform(jax.random.key(3), (4, 8, 8, 1))
    r = np.random.default_rng(4)
    shapes = {"Conv_0": (3, 3, 1, 8), "Conv_1": (3, 3, 8, 12), "Dense_0": (12, 10)}
    params = {
        name: {
            "kernel": jnp.asarray(r.normal(size=shape) / np.sqrt(np.prod(shape[:-1])), jnp.float32),
            "bias": jnp.asarray(0.1 * r.normal(size=shape[-1]), jnp.float32),
        }
        for name, shape in shapes.items()
    }
    m = P.masks(P.magnitude(params), 0.5, granularity="channel", scope="layer")
    order = ["Conv_0", "Conv_1", "Dense_0"]
    small = P.shrink(params, m, order)
    ref = P.apply_masks(params, m)
    for layer in order[:-1]:  # without folding, a pruned channel's bias goes with it
        alive = np.asarray(m[layer]["kernel"]).reshape(-1, ref[layer]["bias"].shape[0]).any(0)
        ref[layer] = dict(ref[layer], bias=ref[layer]["bias"] * alive)
    out_small = jax.jit(lc.models.CNN((4, 6), 10).apply)({"params": small}, x)
    out_ref = jax.jit(model.apply)({"params": ref}, x)
    np.testing.assert_allclose(out_small, out_ref, rtol=1e-5, atol=1e-5)
    assert small["Conv_0"]["kernel"].shape == (3, 3, 1, 4)
    assert small["Conv_1"]["kernel"].shape == (3, 3, 4, 6)
    assert small["Dense_0"]["kernel"].shape == (6, 10)
