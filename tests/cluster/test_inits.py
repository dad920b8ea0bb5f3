"""Tests for lightcomp/cluster/_inits.py: each init against a direct NumPy computation.

The inits only ever run inside `kmeans`'s jitted fit, so they are checked jitted; `kmeans`
itself is checked jitted and not.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp.cluster._inits import density_init, kmeanspp_init, linear_init, random_init
from lightcomp.cluster._lloyd import sorted_values

N = 300
_JIT = {
    f: jax.jit(f, static_argnums=2) for f in (linear_init, density_init, kmeanspp_init, random_init)
}


def _row(seed, zeros=0.0):
    """A float32 row with a fraction of zeros -> (x, sorted values, clustered count)."""
    rng = np.random.default_rng(seed)
    x = rng.laplace(size=N).astype(np.float32)
    x[rng.random(N) < zeros] = 0.0
    xs, m = sorted_values(jnp.asarray(x), zeros > 0)
    return x, xs, m


def _np_density(x, k, grid=4096):
    """The cube-root density init written directly in float64."""
    v = np.sort(x.astype(np.float64))
    g = min(grid, x.size)
    q = v[np.round(np.arange(g + 1) * ((v.size - 1) / g)).astype(int)]
    d = np.diff(q)
    cw = np.concatenate([[0.0], np.cumsum(d ** (2 / 3))])
    t = (np.arange(k) + 0.5) / k * cw[-1]
    j = np.clip(np.searchsorted(cw, t, side="right") - 1, 0, g - 1)
    w = d[j] ** (2 / 3)
    return q[j] + np.where(w > 0, (t - cw[j]) / np.where(w > 0, w, 1.0), 0.0) * d[j]


@pytest.mark.parametrize("k, zeros", [(1, 0.0), (9, 0.4)])
def test_linear_init_matches_numpy(k, zeros):
    x, xs, m = _row(k, zeros)
    kept = np.sort(x[x != 0] if zeros else x).astype(np.float64)
    want = np.linspace(kept[0], kept[-1], k) if k > 1 else [(kept[0] + kept[-1]) / 2]
    np.testing.assert_allclose(_JIT[linear_init](xs, m, k), want, rtol=1e-6, atol=1e-6)


def test_density_init_matches_numpy():
    jitted = _JIT[density_init]
    for k, zeros in [(15, 0.0), (15, 0.4)]:
        x, xs, m = _row(10 + k, zeros)
        got = jitted(xs, m, k)
        np.testing.assert_allclose(got, _np_density(x[x != 0], k), rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(np.asarray(got)) >= 0)


@pytest.mark.parametrize("init", [kmeanspp_init, random_init])
def test_random_inits_pick_distinct_clustered_values(init):
    jitted = _JIT[init]
    for zeros in (0.0, 0.4):
        x, xs, m = _row(20, zeros)
        key = jax.random.key(5)
        got = np.asarray(jitted(xs, m, 8, key))
        assert got.shape == (8,) and len(np.unique(got)) == 8  # continuous data: no repeats
        assert np.all(np.isin(got, x[x != 0]))  # data values, never a padded zero
        other = np.asarray(jitted(xs, m, 8, jax.random.key(6)))
        assert not np.array_equal(np.sort(other), np.sort(got))
        np.testing.assert_array_equal(jitted(xs, m, 8, key), got)  # one key, one answer


def test_kmeanspp_spreads_over_separated_groups():
    # eight tight groups far apart: D^2 seeding puts one centroid in each
    groups = np.arange(-70.0, 80.0, 20.0, dtype=np.float32)
    rng = np.random.default_rng(22)
    x = (np.repeat(groups, 38)[:N] + 0.1 * rng.standard_normal(N)).astype(np.float32)
    xs, m = sorted_values(jnp.asarray(x), False)
    got = np.sort(np.asarray(_JIT[kmeanspp_init](xs, m, 8, jax.random.key(1))))
    np.testing.assert_allclose(got, groups, atol=0.5)
