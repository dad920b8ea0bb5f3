"""Tests for lightcomp/cluster/_lloyd.py: the sort and the prefix sums of the 1-D core.

Lloyd's loop itself is checked through `kmeans` against a NumPy Lloyd (test_kmeans.py).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp.cluster._lloyd import prefix_sums, sorted_values


@pytest.mark.parametrize("preserve_zeros", [False, True])
def test_sorted_values_match_numpy(preserve_zeros):
    x = np.random.default_rng(8).standard_normal(64).astype(np.float32)
    x[::3] = 0.0
    x[1] = -0.0
    # the core runs inside the jitted fit only, so it is checked jitted
    xs, m = jax.jit(sorted_values, static_argnums=1)(jnp.asarray(x), preserve_zeros)
    kept = x[x != 0] if preserve_zeros else x
    want = np.concatenate([np.sort(kept), np.full(x.size - kept.size, np.inf, np.float32)])
    np.testing.assert_array_equal(xs, want)
    assert int(m) == kept.size


def test_prefix_sums_are_accurate():
    xs = jnp.sort(jnp.asarray(np.random.default_rng(0).standard_normal(200_000), jnp.float32))
    edges = np.linspace(0, xs.shape[0], 65).astype(int)
    want = np.add.reduceat(np.asarray(xs, np.float64), edges[:-1])
    for fn in (prefix_sums, jax.jit(prefix_sums)):
        hi, lo = fn(xs)
        chex.assert_shape((hi, lo), (xs.shape[0] + 1,))
        got = np.diff(np.asarray(hi, np.float64)[edges]) + np.diff(
            np.asarray(lo, np.float64)[edges]
        )
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-3)
