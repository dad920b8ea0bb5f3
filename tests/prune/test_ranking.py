"""lightcomp/prune/_ranking.py: the exact ranking kernels against NumPy's stable sort."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp.prune._ranking import lowest_k, lowest_units, nm_keep

_lowest_k_jit = jax.jit(lowest_k, static_argnames="axis")


@pytest.mark.parametrize("ties", [False, True])
def test_lowest_k_is_a_stable_argsort_prefix(ties, np_lowest):
    r = np.random.default_rng(30 + ties)
    x = r.normal(size=(5, 9)).astype(np.float32)
    if ties:  # repeated values, and -0.0 next to +0.0
        x = np.round(x, 0) * np.where(r.random(x.shape) < 0.5, -1, 1).astype(np.float32)
    for k in (0, 1, 4, 9):
        got = np.asarray(lowest_k(jnp.asarray(x), k, axis=-1))
        np.testing.assert_array_equal(got, np.asarray(_lowest_k_jit(jnp.asarray(x), jnp.int32(k))))
        ref = np.stack([_np_row(row, k, np_lowest) for row in x])
        np.testing.assert_array_equal(got, ref)
    got0 = np.asarray(_lowest_k_jit(jnp.asarray(x), jnp.int32(3), axis=0))
    np.testing.assert_array_equal(got0, np.stack([_np_row(c, 3, np_lowest) for c in x.T]).T)


def _np_row(row, k, np_lowest):
    return np_lowest(np.where(row == 0, np.float32(0), row), k)  # -0.0 counts as +0.0


def test_lowest_units_fills_k_weights_in_stable_order():
    r = np.random.default_rng(32)
    scores = np.round(r.random(12), 1).astype(np.float32)
    sizes = r.integers(1, 5, size=12).astype(np.int32)
    fn = jax.jit(lowest_units)
    for k in (0, 5, 17, 100):
        got = np.asarray(lowest_units(jnp.asarray(scores), jnp.asarray(sizes), k))
        np.testing.assert_array_equal(got, np.asarray(fn(scores, sizes, jnp.int32(k))))
        order = np.argsort(scores, kind="stable")
        ref = np.zeros(12, bool)
        ref[order] = np.cumsum(sizes[order]) <= k
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 3), (5, 20)])
def test_nm_keep_keeps_the_n_best_of_each_group(n, m):
    r = np.random.default_rng(33)
    score = np.round(r.random((2, 2 * m, 3)), 1).astype(np.float32)  # ties
    got = np.asarray(nm_keep(jnp.asarray(score), n, m))
    jitted = jax.jit(nm_keep, static_argnums=(1, 2))(jnp.asarray(score), n, m)
    np.testing.assert_array_equal(got, np.asarray(jitted))
    groups = np.moveaxis(score, -2, -1).reshape(2, 3, 2, m)
    ref = np.zeros(groups.shape, bool)
    np.put_along_axis(ref, np.argsort(groups, axis=-1, kind="stable")[..., m - n :], True, -1)
    np.testing.assert_array_equal(np.moveaxis(got, -2, -1).reshape(groups.shape), ref)
