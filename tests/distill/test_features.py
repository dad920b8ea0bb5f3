"""Tests for lightcomp/distill/_features.py: feature and attention losses against NumPy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import distill
from tests.distill.helpers import np_attention


def test_feature_mse_with_and_without_projection(jitted):
    rng = np.random.default_rng(13)
    fs = rng.normal(size=(4, 3, 3, 5)).astype(np.float32)
    ft = rng.normal(size=(4, 3, 3, 8)).astype(np.float32)
    proj = distill.init_feature_projection(jax.random.key(0), 5, 8)
    chex.assert_shape(proj["kernel"], (5, 8))
    chex.assert_shape(proj["bias"], (8,))
    proj = {"kernel": proj["kernel"], "bias": jnp.asarray(rng.normal(size=8), jnp.float32)}
    k, b = np.asarray(proj["kernel"], np.float64), np.asarray(proj["bias"], np.float64)
    want = ((fs.astype(np.float64) @ k + b - ft) ** 2).mean()
    np.testing.assert_allclose(distill.feature_mse(fs, ft, proj), want, rtol=1e-5)
    np.testing.assert_allclose(jitted["feature_mse"](fs, ft, proj), want, rtol=1e-5)
    same = rng.normal(size=(4, 3, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(
        distill.feature_mse(fs, same), ((fs.astype(np.float64) - same) ** 2).mean(), rtol=1e-5
    )
    # the projection is trainable: the loss has a gradient for it
    g = jax.jit(jax.grad(lambda p: distill.feature_mse(fs, ft, p)))(proj)
    assert float(jnp.abs(g["kernel"]).sum()) > 0


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_attention_transfer_matches_numpy(jitted, p):
    rng = np.random.default_rng(14)
    fs = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    ft = rng.normal(size=(3, 4, 5, 16)).astype(np.float32)  # channel counts may differ
    want = ((np_attention(fs, p) - np_attention(ft, p)) ** 2).sum(-1).mean()
    np.testing.assert_allclose(distill.attention_transfer(fs, ft, p=p), want, rtol=1e-5)
    np.testing.assert_allclose(jitted["attention_transfer"](fs, ft, p=p), want, rtol=1e-5)
    g = jax.jit(jax.grad(distill.attention_transfer))(fs, fs)
    assert np.all(np.isfinite(g)) and np.allclose(g, 0.0, atol=1e-6)


def test_bad_feature_arguments():
    with pytest.raises(ValueError, match="channels"):
        distill.attention_transfer(np.ones((2, 4, 4, 3)), np.ones((2, 5, 4, 3)))
    with pytest.raises(ValueError, match="projection"):
        distill.feature_mse(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="in_features must be >= 1"):
        distill.init_feature_projection(jax.random.key(0), 0, 4)
    with pytest.raises(TypeError, match="out_features must be an int"):
        distill.init_feature_projection(jax.random.key(0), 4, 2.0)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        distill.init_feature_projection(0, 4, 4)
    fs = np.ones((2, 3, 3, 4), np.float32)
    with pytest.raises(ValueError, match="p must be"):
        distill.attention_transfer(fs, fs, p=0.0)
    with pytest.raises(TypeError, match="p must be a number"):
        distill.attention_transfer(fs, fs, p=True)
    with pytest.raises(ValueError, match="projection must be"):
        distill.feature_mse(fs, fs, {"kernel": np.eye(4, dtype=np.float32)})
    with pytest.raises(ValueError, match="do not map"):
        distill.feature_mse(fs, fs, {"kernel": np.eye(3, dtype=np.float32), "bias": np.zeros(3)})
