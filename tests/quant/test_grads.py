"""Tests for lightcomp.quant's gradient quantization (quantize_grads, grad_scales)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import quant


def _rand(shape, seed, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def test_quantize_grads_structure_unbiased_and_shared_scales():
    grads = {
        "Dense_0": {"kernel": jnp.asarray(_rand((8, 4), 16)), "bias": jnp.asarray(_rand((4,), 17))},
        "x": None,
    }
    q = quant.quantize_grads(grads, 4, jax.random.key(0))
    assert isinstance(q["Dense_0"]["kernel"], quant.QTensor) and q["x"] is None
    assert (
        q["Dense_0"]["kernel"].values.dtype == jnp.int8 and q["Dense_0"]["kernel"].scale.shape == ()
    )
    np.testing.assert_allclose(
        q["Dense_0"]["kernel"].scale, np.abs(grads["Dense_0"]["kernel"]).max() / 7, rtol=1e-6
    )
    back = quant.dequantize_grads(q)
    chex.assert_trees_all_equal_structs(back, grads)
    qj = jax.jit(quant.quantize_grads, static_argnums=1)(grads, 4, jax.random.key(0))
    chex.assert_trees_all_equal(qj, q)
    # unbiased: mean over keys
    n = 500
    many = jax.jit(jax.vmap(lambda k: quant.dequantize_grads(quant.quantize_grads(grads, 4, k))))(
        jax.random.split(jax.random.key(1), n)
    )
    for path in (("Dense_0", "kernel"), ("Dense_0", "bias")):
        g, m = grads[path[0]][path[1]], many[path[0]][path[1]]
        s = np.abs(g).max() / 7
        assert np.abs(np.asarray(m).mean(0) - g).max() < 5 * s / (2 * np.sqrt(n))
    # shared (larger) scales: codes of two "devices" add up in int32
    scales = jax.tree.map(lambda s: s * 2, quant.grad_scales(grads, 4))
    q2 = quant.quantize_grads(grads, 4, jax.random.key(2), scales=scales)
    chex.assert_trees_all_close(q2["Dense_0"]["kernel"].scale, scales["Dense_0"]["kernel"])
    assert int(jnp.abs(q2["Dense_0"]["kernel"].values.astype(jnp.int32)).max()) <= 4


def test_grad_scales_match_numpy_jitted_and_not():
    grads = {"a": jnp.asarray(_rand((8, 4), 30)), "b": [jnp.asarray(_rand((4,), 31))]}
    want = jax.tree.map(lambda g: np.abs(np.asarray(g)).max() / np.float32(7), grads)
    chex.assert_trees_all_close(quant.grad_scales(grads, 4), want, rtol=1e-6)
    chex.assert_trees_all_close(
        jax.jit(quant.grad_scales, static_argnums=1)(grads, 4), want, rtol=1e-6
    )


def test_quantize_grads_names_bad_leaf():
    grads = {
        "Dense_0": {"kernel": jnp.ones((2, 2)).at[0, 0].set(jnp.nan)},
        "Dense_1": {"kernel": jnp.ones(2)},
    }
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        quant.quantize_grads(grads, 8, jax.random.key(0))
    with pytest.raises(ValueError, match="Dense_1/kernel"):
        quant.quantize_grads(
            {"Dense_1": {"kernel": jnp.array([1.0, jnp.inf])}}, 8, jax.random.key(0)
        )
    with pytest.raises(TypeError, match="Dense_0/step"):
        quant.quantize_grads({"Dense_0": {"step": jnp.ones(2, jnp.int32)}}, 8, jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        quant.quantize_grads({"a": jnp.ones(2)}, 8, None)
    with pytest.raises(ValueError, match="'b'"):
        quant.quantize_grads(
            {"a": jnp.ones(2), "b": jnp.ones(2)},
            8,
            jax.random.key(0),
            scales={"a": jnp.float32(1), "b": jnp.ones(2)},
        )
    with pytest.raises(ValueError, match="mirror"):
        quant.quantize_grads({"a": jnp.ones(2)}, 8, jax.random.key(0), scales={"c": 1.0})
    with pytest.raises(ValueError, match="bits"):
        quant.grad_scales({"a": jnp.ones(2)}, 17)
