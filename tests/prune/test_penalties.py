"""lightcomp/prune/_penalties.py: L1 and group lasso against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import prune as P


def test_penalties_match_numpy_and_have_finite_grads(make_params, leaves, selected):
    params = make_params(15)
    params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[:, 0].set(0.0)  # a dead group
    l1, l1j = P.l1_penalty(params), jax.jit(P.l1_penalty)(params)
    ref = sum(np.abs(np.asarray(leaves(params)[p])).sum() for p in selected)
    np.testing.assert_allclose([l1, l1j], [ref, ref], rtol=1e-5)
    gl = P.group_lasso_penalty(params)
    glj = jax.jit(P.group_lasso_penalty)(params)
    ref = 0.0
    for p in selected:
        w = np.asarray(leaves(params)[p])
        ref += np.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0).sum()
    np.testing.assert_allclose([gl, glj], [ref, ref], rtol=1e-5)
    in_groups = P.group_lasso_penalty(params, axis=-2, scale=True)
    w = np.asarray(params["Dense_0"]["kernel"])
    part = np.sqrt(12) * np.linalg.norm(w, axis=1).sum()
    only = P.group_lasso_penalty(params, axis=-2, scale=True, select=r"Dense_0/kernel")
    np.testing.assert_allclose(only, part, rtol=1e-5)
    assert float(in_groups) > float(only)
    grads = jax.jit(jax.grad(P.group_lasso_penalty))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert bool(jnp.all(grads["Dense_1"]["kernel"][:, 0] == 0))


def test_penalty_errors(make_params):
    params = make_params(15)
    with pytest.raises(ValueError, match="leaf 'Conv_0/kernel': axis=5 is out of range"):
        P.group_lasso_penalty(params, axis=5)
    with pytest.raises(TypeError, match="axis must be an int"):
        P.group_lasso_penalty(params, axis=1.0)
    with pytest.raises(TypeError, match="scale must be True or False"):
        P.group_lasso_penalty(params, scale="yes")
