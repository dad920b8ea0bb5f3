"""Lloyd's algorithm on sorted 1-D values: the sort, the prefix sums, the fixed-point loop.

Cluster sums come from prefix sums of the sorted values, and each step assigns by the
``k - 1`` boundaries between sorted centroids (``searchsorted``): O(k log n) a step, nothing
of size n x k.

References:
  Lloyd, "Least squares quantization in PCM", 1982.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lightcomp._float_order import float_to_key, key_to_float


def sorted_values(x: jax.Array, preserve_zeros: bool) -> tuple[jax.Array, jax.Array]:
    """Sorts a float32 row ``[n]``; values not clustered (zeros) go last as +inf.

    Returns:
      ``(xs, m)``: the sorted values ``[n]`` and the int32 count of clustered ones.
    """
    if preserve_zeros:
        keep = x != 0
        x = jnp.where(keep, x, jnp.inf)
        m = jnp.sum(keep, dtype=jnp.int32)
    else:
        m = jnp.int32(x.shape[0])
    return key_to_float(jax.lax.sort(float_to_key(x), is_stable=False)), m


def prefix_sums(xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Prefix sums ``[n + 1]`` of sorted float32 values ``[n]`` as a float32 pair ``(hi, lo)``.

    Sums of sorted values grow to O(n) and a float32 difference of two of them loses the
    low bits of a cluster's sum. ``lo`` accumulates the rounding errors of ``hi``: each step of
    ``hi`` is recovered exactly by one subtraction (Sterbenz), so ``hi + lo`` telescopes to the
    exact prefix to float32 precision of the *range* sums, at the price of one more cumsum.
    """
    z = jnp.zeros((1,), jnp.float32)
    hi = jnp.concatenate([z, jnp.cumsum(xs)])
    step = hi[1:] - hi[:-1]
    lo = jnp.concatenate([z, jnp.cumsum(xs - step)])
    return hi, lo


def lloyd(xs: jax.Array, m: jax.Array, c: jax.Array, iters: int, tol: jax.Array):
    """Lloyd's algorithm on sorted values to its fixed point (or ``tol``).

    Args:
      xs: sorted float32 values ``[n]``, the first ``m`` clustered (`sorted_values`).
      m: int32 count of clustered values.
      c: float32 starting centroids ``[k]``, ascending.
      iters: the most steps.
      tol: stop once no centroid moves more than ``tol * (max - min)``.

    Returns:
      ``(centroids [k], steps, done)``.
    """
    k = c.shape[0]
    hi, lo = prefix_sums(jnp.where(jnp.arange(xs.shape[0]) < m, xs, 0.0))
    scale = jnp.take(xs, m - 1, mode="clip") - xs[0]
    mp = jnp.reshape(m, (1,))

    def step(c):
        e = jnp.searchsorted(xs, (c[:-1] + c[1:]) * 0.5, side="left", method="scan")
        start = jnp.concatenate([jnp.zeros((1,), e.dtype), e]).astype(jnp.int32)
        end = jnp.concatenate([e, mp.astype(e.dtype)]).astype(jnp.int32)
        count = end - start
        total = (hi[end] - hi[start]) + (lo[end] - lo[start])
        first = jnp.take(xs, start, mode="clip")
        last = jnp.take(xs, end - 1, mode="clip")
        mean = jnp.clip(total / jnp.maximum(count, 1), first, last)
        new = jnp.where(count > 0, mean, c)
        # Empty clusters, deterministically: the r-th empty centroid (by index) moves into the
        # r-th widest cluster by count * range^2 (an upper bound on what a split can remove),
        # at that cluster's upper-quartile value; clusters of one distinct value are not split.
        width = jnp.where(count > 0, count * (last - first) ** 2, 0.0)
        order = jnp.argsort(-width, stable=True)
        empty = count == 0
        target = order[jnp.clip(jnp.cumsum(empty) - 1, 0, k - 1)]
        split = jnp.take(xs, start[target] + (3 * count[target]) // 4, mode="clip")
        split = jnp.where(split > first[target], split, last[target])
        move = empty & (width[target] > 0)
        return jnp.sort(jnp.where(move, split, new))

    def cond(s):
        return (s[1] < iters) & ~s[2]

    def body(s):
        c, it, _ = s
        new = step(c)
        return new, it + 1, jnp.max(jnp.abs(new - c)) <= tol * scale

    if k == 1:
        total = hi[-1] + lo[-1]
        return jnp.reshape(total / jnp.maximum(m, 1), (1,)), jnp.int32(1), jnp.bool_(True)
    # nothing to cluster (an all-zero channel under preserve_zeros): done before any step
    return jax.lax.while_loop(cond, body, (c, jnp.int32(0), m == 0))
