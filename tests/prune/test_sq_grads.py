"""lightcomp/prune/_sq_grads.py: the running mean of squared gradients, and Fisher scores."""

from __future__ import annotations

import chex
import jax
import numpy as np

from lightcomp import prune as P


def test_sq_grads_running_mean_and_fisher(make_params, like, leaves, selected):
    params = make_params(3)
    gs = [like(params, 10 + i) for i in range(4)]
    acc = P.sq_grads_init(params)
    upd = jax.jit(P.sq_grads_update)
    eager = acc
    for g in gs:
        acc = upd(acc, g)
        eager = P.sq_grads_update(eager, g)
    chex.assert_trees_all_close(acc, eager, rtol=1e-6)
    assert int(acc.count) == 4 and acc.mean["Dense_0"]["bias"] is None
    for path in selected:
        ref = np.mean([np.asarray(leaves(g)[path]) ** 2 for g in gs], axis=0)
        np.testing.assert_allclose(np.asarray(leaves(acc.mean)[path]), ref, rtol=1e-5)
    f = leaves(P.fisher(params, acc.mean))["Dense_1/kernel"]
    w = np.asarray(params["Dense_1"]["kernel"])
    np.testing.assert_allclose(np.asarray(f), 0.5 * w**2 * acc.mean["Dense_1"]["kernel"], rtol=1e-6)
