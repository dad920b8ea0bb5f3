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


@pytest.fixture(scope="session")
def scanned_lm():
    """NumPy-drawn params of a linen ``nn.scan`` LM: 3 stacked encoder blocks (attention,
    MLP, norms), an Embed and a head (`tests.tree.helpers.ScannedLM`)."""
    import jax.numpy as jnp

    from tests.tree.helpers import ScannedLM, draw, linen_params

    return draw(linen_params(ScannedLM(), jnp.zeros((1, 5), jnp.int32)), seed=4)


@pytest.fixture(scope="session")
def vmapped_state():
    """NumPy-drawn ``nnx.State`` of an nnx model whose blocks are made by ``nnx.vmap``."""
    from tests.tree.helpers import NnxScanned, draw, nnx_state

    return draw(nnx_state(lambda r: NnxScanned(r, "vmap")), seed=5)
