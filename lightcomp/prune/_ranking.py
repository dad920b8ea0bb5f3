"""Exact ranking kernels: the ``k`` lowest entries, the lowest units, n:m groups.

Every kernel is exact (no approximate top-k) and deterministic: ties go to the lower
index first, the same set as the first ``k`` of a stable ascending argsort. ``k`` may be
traced, so a new sparsity never recompiles. Inputs are float32 and NaN-free (the caller
cleans them).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from lightcomp._float_order import float_to_key


def kth_smallest_key(keys: jax.Array, k: jax.Array, axis: int) -> jax.Array:
    """The k-th smallest int32 key along ``axis`` (``k >= 1``), by bisection.

    32 counting passes over the int32 range instead of a sort: XLA's sort is a comparator
    sort that is ~20x slower than this on CPU for a few hundred thousand weights, and
    ``lax.top_k`` needs a static k.

    Args:
      keys: int32 array.
      k: int32 scalar (or broadcastable to ``keys`` with ``axis`` of size 1), ``>= 1``.
      axis: the axis to rank along.

    Returns:
      int32 array of ``keys``' shape with ``axis`` of size 1.
    """
    lo = jnp.min(keys, axis=axis, keepdims=True)
    hi = jnp.max(keys, axis=axis, keepdims=True)

    def body(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        enough = jnp.sum(keys <= mid, axis=axis, keepdims=True, dtype=jnp.int32) >= k
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return lo


def lowest_k(x: jax.Array, k: Any, axis: int = -1) -> jax.Array:
    """True for the ``k`` lowest entries along ``axis``; ties go to the lower index first.

    The k-th smallest value is the threshold: every entry below it is chosen, and of the
    entries equal to it the first ``k - (number below)`` in index order (a cumsum).

    Args:
      x: float array (cast to float32; -0.0 counts as +0.0).
      k: int, possibly traced; clipped to ``[0, x.shape[axis]]``.
      axis: the axis to rank along.

    Returns:
      bool array of ``x``'s shape with exactly ``k`` True along ``axis``.
    """
    size = x.shape[axis]
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, size)
    keys = float_to_key(x.astype(jnp.float32), merge_zeros=True)
    thr = kth_smallest_key(keys, jnp.maximum(k, 1), axis)
    less = keys < thr
    n_less = jnp.sum(less, axis=axis, keepdims=True, dtype=jnp.int32)
    eq = keys == thr
    chosen = less | (eq & (jnp.cumsum(eq, axis=axis, dtype=jnp.int32) <= k - n_less))
    return chosen & (k > 0)


def _flat_index(shape: tuple[int, ...], perm: tuple[int, ...], offset: int) -> jax.Array:
    """int32 ``shape``: ``offset`` + each entry's index in the leaf read in axis order ``perm``.

    Built from iotas in the leaf's own shape (no transpose, no reshape), so a sharded
    leaf's index is computed shard by shard.
    """
    read = [shape[a] for a in perm]
    strides = [math.prod(read[j + 1 :]) for j in range(len(read))]
    idx = jnp.full(shape, offset, jnp.int32)
    for j, a in enumerate(perm):
        idx = idx + jax.lax.broadcasted_iota(jnp.int32, shape, a) * strides[j]
    return idx


def _bisect(count, target, lo, hi, passes: int):
    """The smallest ``t`` in ``[lo, hi]`` with ``count(t) >= target`` (``count`` increasing)."""

    def body(_, bounds):
        lo, hi = bounds
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        enough = count(mid) >= target
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    return jax.lax.fori_loop(0, passes, body, (lo, hi))[0]


def lowest_k_many(xs: list[jax.Array], k: Any, perms: list[tuple[int, ...]] | None = None):
    """`lowest_k` over the leaves ``xs`` together, without concatenating or gathering them.

    Exactly the entries ``lowest_k(concatenate([x.transpose(perm).ravel() ...]), k)``
    chooses: the ``k`` lowest, ties to the lower index of that order (leaf by leaf, each in
    the axis order of its ``perm``). Two bisections - 32 counting passes over the int32
    keys for the threshold, then up to 32 over the indices for how many of the entries
    equal to it are chosen - and every pass is elementwise work and a sum per leaf. On
    leaves sharded over a mesh, XLA counts each shard where it lies and adds the partial
    counts (an all-reduce of one number): a distributed threshold search, with no leaf
    gathered onto one device.

    Args:
      xs: float arrays (cast to float32; -0.0 counts as +0.0), NaN-free; fewer than
        ``2**31`` entries in all.
      k: int, possibly traced; clipped to ``[0, total size]``.
      perms: per leaf, the axis order it is read in (default: row-major).

    Returns:
      bool arrays shaped like ``xs``, with exactly ``k`` True in all.
    """
    perms = [tuple(range(x.ndim)) for x in xs] if perms is None else perms
    total = sum(x.size for x in xs)
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, total)
    keys = [float_to_key(x.astype(jnp.float32), merge_zeros=True) for x in xs]

    def count(pred):
        return sum(jnp.sum(pred(i, key), dtype=jnp.int32) for i, key in enumerate(keys))

    lo = jnp.min(jnp.stack([jnp.min(key) for key in keys]))
    hi = jnp.max(jnp.stack([jnp.max(key) for key in keys]))
    thr = _bisect(lambda mid: count(lambda i, key: key <= mid), jnp.maximum(k, 1), lo, hi, 32)
    quota = k - count(lambda i, key: key < thr)
    offsets = [sum(x.size for x in xs[:i]) for i in range(len(xs))]
    idx = [_flat_index(x.shape, p, o) for x, p, o in zip(xs, perms, offsets, strict=True)]
    t = _bisect(
        lambda mid: count(lambda i, key: (key == thr) & (idx[i] < mid)),
        quota,
        jnp.int32(0),
        jnp.int32(total),
        max(1, int(total).bit_length()),
    )
    return [
        ((key < thr) | ((key == thr) & (i < t))) & (k > 0) for key, i in zip(keys, idx, strict=True)
    ]


def lowest_units(unit_scores: jax.Array, unit_sizes: jax.Array, k: Any) -> jax.Array:
    """True for the lowest-scoring units whose sizes add up to at most ``k`` weights.

    One ascending stable argsort: equal scores go in index order, so the result is
    deterministic; with unit size 1 exactly ``k`` units are chosen.

    Args:
      unit_scores: float32 ``[units]``.
      unit_sizes: int32 ``[units]``, weights per unit.
      k: int, possibly traced: the most weights to choose.

    Returns:
      bool ``[units]``: the longest prefix of the stable ascending order within ``k``.
    """
    order = jnp.argsort(unit_scores, stable=True)
    chosen_sorted = jnp.cumsum(unit_sizes[order]) <= k
    return jnp.zeros(unit_scores.shape, bool).at[order].set(chosen_sorted)


def nm_keep(score: jax.Array, n: int, m: int, axis: int = -2) -> jax.Array:
    """Keeps the ``n`` best of every ``m`` consecutive weights along ``axis``.

    Args:
      score: float32 array whose ``axis`` (a kernel's last input axis; -2 for Dense and
        Conv kernels) is divisible by ``m``.
      n: weights kept per group (static).
      m: group size (static).
      axis: the axis the groups run along (static).

    Returns:
      bool array of ``score``'s shape with exactly ``n`` True per group.
    """
    moved = jnp.moveaxis(score, axis, -1)  # (..., groups axis last)
    groups = moved.reshape((*moved.shape[:-1], moved.shape[-1] // m, m))
    if m <= 16:
        # small groups: each weight's rank by pairwise comparison inside its group
        # (m * m compares per group; cheaper to compile and run than a search)
        keys = float_to_key(groups, merge_zeros=True)
        a, b = keys[..., :, None], keys[..., None, :]
        before = jnp.tril(jnp.ones((m, m), bool), k=-1)  # j < i
        rank = jnp.sum((b < a) | ((b == a) & before), axis=-1)
        keep = (rank >= m - n).reshape(moved.shape)
    else:
        keep = jnp.logical_not(lowest_k(groups, m - n, axis=-1)).reshape(moved.shape)
    return jnp.moveaxis(keep, -1, axis)
