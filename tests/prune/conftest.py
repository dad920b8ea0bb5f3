"""Shared test data for lightcomp.prune: small parameter trees and NumPy references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc

# The selected leaves of `make_params` trees (kernels; biases are not selected).
SELECTED = ("Dense_0/kernel", "Conv_0/kernel", "Dense_1/kernel")


def _params(seed=0, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    return {
        "Dense_0": {
            "kernel": jnp.asarray(r.normal(size=(8, 12)), dtype),
            "bias": jnp.asarray(r.normal(size=(12,)), dtype),
        },
        "Conv_0": {
            "kernel": jnp.asarray(r.normal(size=(3, 3, 4, 8)), dtype),
            "bias": jnp.asarray(r.normal(size=(8,)), dtype),
        },
        "Dense_1": {"kernel": jnp.asarray(r.normal(size=(12, 4)), dtype)},
    }


def _like(params, seed):
    r = np.random.default_rng(seed)
    return jax.tree.map(lambda w: jnp.asarray(r.normal(size=w.shape), w.dtype), params)


def _mlp(features, in_features, seed):
    """``(apply, params)`` of `lc.models.MLP` with NumPy-drawn weights (no init to compile)."""
    r = np.random.default_rng(seed)
    params, fan_in = {}, in_features
    for i, f in enumerate(features):
        params[f"Dense_{i}"] = {
            "kernel": jnp.asarray(r.normal(size=(fan_in, f)) / np.sqrt(fan_in), jnp.float32),
            "bias": jnp.asarray(0.1 * r.normal(size=(f,)), jnp.float32),
        }
        fan_in = f
    model = lc.models.MLP(tuple(features))
    return jax.jit(lambda p, x: model.apply({"params": p}, x)), params


def _np_lowest(flat, k):
    """Reference: True for the k lowest of a 1-D array, ties by index (stable sort)."""
    out = np.zeros(flat.size, bool)
    out[np.argsort(flat, kind="stable")[:k]] = True
    return out


def _np_layer_mask(score, s):
    """Reference keep-mask: zero the round(s * size) lowest scores, ties by index."""
    flat = np.asarray(score, np.float32).reshape(-1)
    return ~_np_lowest(flat, round(s * flat.size)).reshape(np.shape(score))


def _leaves(tree):
    return dict(lc.tree.leaves_with_paths(tree))


@pytest.fixture(scope="session")
def make_params():
    """``make_params(seed, dtype)``: two Dense kernels, a Conv kernel and two biases."""
    return _params


@pytest.fixture(scope="session")
def like():
    """``like(tree, seed)``: a random tree of ``tree``'s shapes and dtypes (grads, say)."""
    return _like


@pytest.fixture(scope="session")
def mlp():
    """``mlp(features, in_features, seed) -> (jitted apply, params)``."""
    return _mlp


@pytest.fixture(scope="session")
def np_lowest():
    return _np_lowest


@pytest.fixture(scope="session")
def np_layer_mask():
    return _np_layer_mask


@pytest.fixture(scope="session")
def leaves():
    """``leaves(tree) -> {path: leaf}``."""
    return _leaves


@pytest.fixture(scope="session")
def selected():
    return SELECTED


@pytest.fixture(scope="module")
def digits():
    d = lc.data.load_digits(seed=0)
    return d.x_train[:256], d.y_train[:256]
