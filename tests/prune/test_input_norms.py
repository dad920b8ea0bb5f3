"""lightcomp/prune/_input_norms.py: the input norms Wanda needs, against NumPy."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

import lightcomp as lc
from lightcomp import prune as P


def test_input_norms_match_numpy(mlp):
    model = lc.models.MLP((6, 5, 3))
    _, params = mlp((6, 5, 3), 7, 0)
    r = np.random.default_rng(0)
    batches = [r.normal(size=(9, 7)).astype(np.float32) for _ in range(2)]
    norms = P.input_norms(model, params, [{"inputs": batches[0]}, batches[1]])
    x = np.concatenate(batches)
    p = jax.tree.map(np.asarray, params)
    h0 = x
    h1 = np.maximum(h0 @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    h2 = np.maximum(h1 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], 0)
    for i, h in enumerate((h0, h1, h2)):
        np.testing.assert_allclose(
            np.asarray(norms[f"Dense_{i}"]["kernel"]), np.linalg.norm(h, axis=0), rtol=1e-5
        )
        assert norms[f"Dense_{i}"]["bias"] is None
    # the norms feed Wanda: |W| times the norm of the kernel's input rows
    scores = P.wanda(params, norms)
    ref = np.abs(p["Dense_1"]["kernel"]) * np.linalg.norm(h1, axis=0)[:, None]
    np.testing.assert_allclose(np.asarray(scores["Dense_1"]["kernel"]), ref, rtol=1e-5)
    with pytest.raises(ValueError, match="batches is empty"):
        P.input_norms(model, params, [])


class _NoDense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x * self.param("scale", nn.initializers.ones, (x.shape[-1],))


def test_input_norms_needs_a_dense_layer():
    x = np.ones((2, 3), np.float32)
    params = {"scale": np.ones(3, np.float32)}
    with pytest.raises(ValueError, match=r"no nn\.Dense layer"):
        P.input_norms(_NoDense(), params, [x])
