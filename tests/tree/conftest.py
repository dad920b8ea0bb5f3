"""Shared trees for the lightcomp.tree tests: a linen MLP, an nnx net, the model families."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from tests.tree.helpers import linen_families, nnx_families


class Net(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(10, 6, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)])
        self.norm = nnx.LayerNorm(6, rngs=rngs)


@pytest.fixture(scope="session")
def linen_params():
    model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(4)])
    return model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]


@pytest.fixture(scope="session")
def nnx_net():
    """``(graphdef, state)`` of a small nnx net (Embed, two Linear, LayerNorm)."""
    return nnx.split(Net(nnx.Rngs(0)))


@pytest.fixture(scope="session")
def families():
    """``{family: (params shapes, selected paths)}``, linen and nnx (`tests.tree.helpers`)."""
    out = {f"linen_{k}": v for k, v in linen_families().items()}
    out.update({f"nnx_{k}": v for k, v in nnx_families().items()})
    return out
