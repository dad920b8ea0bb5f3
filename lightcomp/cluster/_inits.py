"""Starting centroids for the 1-D k-means: linear, cube-root density, k-means++, random.

Every init reads the sorted values ``xs`` ``[n]`` of one row, of which the first ``m``
are clustered (the rest, zeros under ``preserve_zeros``, sit at the end as ``+inf``),
and returns float32 centroids ``[k]``.

References:
  Han, Mao, Dally, "Deep Compression", ICLR 2016 (linear init).
  Gersho, "Asymptotically optimal block quantization", 1979 (cube-root point density).
  Arthur & Vassilvitskii, "k-means++: the advantages of careful seeding", 2007.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

INITS = ("linear", "density", "kmeans++", "random")
"""The names `lightcomp.cluster.kmeans` accepts as ``init``."""

_DENSITY_GRID = 4096  # quantile intervals for the density estimate of the "density" init
_PP_SAMPLE = 1 << 15  # k-means++ seeds on at most this many values (uniform sample)


def linear_init(xs: jax.Array, m: jax.Array, k: int) -> jax.Array:
    """``k`` evenly spaced centroids from the smallest to the largest clustered value."""
    lo, hi = xs[0], jnp.take(xs, m - 1, mode="clip")
    t = (jnp.arange(k, dtype=jnp.float32) + (0.5 if k == 1 else 0.0)) / max(k - 1, 1)
    return lo + (hi - lo) * t


def density_init(xs: jax.Array, m: jax.Array, k: int) -> jax.Array:
    """Centroids at equal shares of the cube-root density, ascending (Gersho 1979).

    Quantiles ``q_g`` of the data on ``G`` equal-mass intervals: an interval of width
    ``d`` holds mass ``1 / G``, so density ``1 / (G d)`` and cube-root-density mass
    ``d**(2/3)`` (up to a constant). Centroids go to equal shares of that mass,
    interpolated inside each interval.
    """
    g = min(_DENSITY_GRID, xs.shape[0])
    pos = jnp.round(jnp.arange(g + 1, dtype=jnp.float32) * ((m - 1) / g)).astype(jnp.int32)
    q = jnp.take(xs, pos, mode="clip")
    d = jnp.diff(q)
    w = d ** (2.0 / 3.0)
    cw = jnp.concatenate([jnp.zeros((1,), jnp.float32), jnp.cumsum(w)])
    t = (jnp.arange(k, dtype=jnp.float32) + 0.5) / k * cw[-1]
    j = jnp.clip(jnp.searchsorted(cw, t, side="right") - 1, 0, g - 1)
    frac = jnp.where(w[j] > 0, (t - cw[j]) / jnp.where(w[j] > 0, w[j], 1.0), 0.0)
    return jnp.where(cw[-1] > 0, q[j] + frac * d[j], q[0])


def kmeanspp_init(xs: jax.Array, m: jax.Array, k: int, key: jax.Array) -> jax.Array:
    """Greedy k-means++ seeding, unsorted (Arthur & Vassilvitskii 2007).

    As scikit-learn runs it: each step draws ``2 + log(k)`` candidates with probability
    proportional to ``D**2`` and keeps the one that lowers the potential most; on a
    uniform sample of at most 32768 values.
    """
    n = xs.shape[0]
    ks, k0 = jax.random.split(key)
    if n <= _PP_SAMPLE:
        v, valid = xs, jnp.arange(n) < m
    else:
        pick = jnp.floor(jax.random.uniform(ks, (_PP_SAMPLE,)) * m).astype(jnp.int32)
        v = jnp.take(xs, pick, mode="clip")
        valid = jnp.ones((_PP_SAMPLE,), bool)
    v = jnp.where(valid, v, 0.0)
    trials = 2 + int(math.log(k)) if k > 1 else 1
    first_at = jnp.floor(jax.random.uniform(k0, ()) * jnp.sum(valid)).astype(jnp.int32)
    first = jnp.take(v, first_at, mode="clip")
    d2 = jnp.where(valid, (v - first) ** 2, 0.0)
    cs = jnp.zeros((k,), jnp.float32).at[0].set(first)

    def body(i, carry):
        cs, d2, key = carry
        key, sub = jax.random.split(key)
        cum = jnp.cumsum(d2)
        u = jax.random.uniform(sub, (trials,)) * cum[-1]
        cand = jnp.take(v, jnp.searchsorted(cum, u, side="right", method="scan"), mode="clip")
        new = jnp.where(valid, jnp.minimum(d2, (v - cand[:, None]) ** 2), 0.0)
        best = jnp.argmin(jnp.sum(new, axis=1))
        return cs.at[i].set(cand[best]), new[best], key

    cs, _, _ = jax.lax.fori_loop(1, k, body, (cs, d2, k0))
    return cs


def random_init(xs: jax.Array, m: jax.Array, k: int, key: jax.Array) -> jax.Array:
    """The values at ``k`` distinct random positions among the clustered ones, unsorted."""
    n = xs.shape[0]
    r = jnp.where(jnp.arange(n) < m, jax.random.uniform(key, (n,)), -1.0)
    _, idx = jax.lax.top_k(r, min(k, n))
    return jnp.take(xs, jnp.minimum(idx, m - 1), mode="clip")


def initial_centroids(init: str, xs: jax.Array, m: jax.Array, k: int, key: jax.Array) -> jax.Array:
    """The starting centroids ``[k]`` of one row by the init named ``init``, ascending."""
    if init == "linear":
        return linear_init(xs, m, k)
    if init == "density":
        return density_init(xs, m, k)
    if init == "kmeans++":
        return jnp.sort(kmeanspp_init(xs, m, k, key))
    return jnp.sort(random_init(xs, m, k, key))
