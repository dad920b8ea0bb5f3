"""Shared parameters for the transform tests: two 6x6 kernels (one k-means compilation)."""

import jax.numpy as jnp
import numpy as np
import pytest


def make_params(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
    return {
        "Dense_0": {"kernel": normal(6, 6), "bias": normal(6)},
        "Dense_1": {"kernel": normal(6, 6), "bias": normal(6)},
    }


@pytest.fixture(scope="session")
def new_params():
    """``new_params(seed, dtype)`` -> fresh random parameters."""
    return make_params


@pytest.fixture(scope="session")
def params():
    return make_params()


@pytest.fixture(scope="session")
def kernels():
    """``kernels(tree)`` -> the two kernels of a params-shaped tree."""
    return lambda t: [t["Dense_0"]["kernel"], t["Dense_1"]["kernel"]]
