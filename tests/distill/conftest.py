"""The distill losses, jitted once for the whole package's tests."""

import jax
import pytest

from lightcomp import distill


@pytest.fixture(scope="session")
def jitted():
    return {
        "soft_kl": jax.jit(distill.soft_kl),
        "hard_ce": jax.jit(distill.hard_ce),
        "mse": jax.jit(distill.mse),
        "cross_entropy": jax.jit(distill.cross_entropy),
        "loss": jax.jit(distill.loss, static_argnames=("kind",)),
        "feature_mse": jax.jit(distill.feature_mse),
        "attention_transfer": jax.jit(distill.attention_transfer, static_argnames=("p",)),
    }
