"""Channel merging: whole output channels whose weight vectors are close share one vector.

References:
  Son, Nah, Lee, "Clustering convolutional kernels to compress deep neural networks", 2018.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lightcomp._checks import (
    at,
    check_choice,
    check_finite,
    check_floating,
    check_number,
    norm_axis,
)

_METRICS = ("cosine", "euclidean")


class MergeInfo(NamedTuple):
    """What `merge_channels` merged.

    Attributes:
      groups: int32 ``[channels]``, the index of the channel whose group each channel joined
        (its own index for a group's first channel).
      num_groups: int32, distinct shared vectors left.
      num_merged: int32, channels that now share another channel's vector
        (``channels - num_groups``).
    """

    groups: jax.Array
    num_groups: jax.Array
    num_merged: jax.Array


@functools.partial(jax.jit, static_argnames=("metric",))
def _merge(v, threshold, *, metric):
    """Leader clustering of the rows of ``v`` ``[channels, size]`` -> (merged rows, info)."""
    c = v.shape[0]
    norms = jnp.sqrt(jnp.sum(v * v, axis=1))

    def close_to(i):
        if metric == "cosine":
            dots = v @ v[i]
            both = (norms > 0) & (norms[i] > 0)
            cos = jnp.where(both, dots / jnp.where(both, norms * norms[i], 1.0), 0.0)
            cos = jnp.where((norms == 0) & (norms[i] == 0), 1.0, cos)  # zero channels merge
            return cos >= threshold
        return jnp.sqrt(jnp.sum((v - v[i]) ** 2, axis=1)) <= threshold

    def body(i, groups):
        # Leader clustering in channel order: channel i joins the first earlier group leader
        # it is close to, else it leads a new group. Deterministic; O(channels * size) a step.
        lead = (groups == jnp.arange(c)) & (jnp.arange(c) < i) & close_to(i)
        return groups.at[i].set(jnp.where(jnp.any(lead), jnp.argmax(lead), i))

    groups = jax.lax.fori_loop(0, c, body, jnp.arange(c, dtype=jnp.int32))
    counts = jax.ops.segment_sum(jnp.ones((c,), jnp.float32), groups, c)
    shared = jax.ops.segment_sum(v, groups, c) / jnp.maximum(counts, 1.0)[:, None]
    n_groups = jnp.sum(counts > 0, dtype=jnp.int32)
    return shared[groups], MergeInfo(groups, n_groups, jnp.int32(c) - n_groups)


def merge_channels(
    x: jax.Array, threshold: float, *, metric: str = "cosine", axis: int = -1, name: str = "x"
) -> tuple[jax.Array, MergeInfo]:
    """Shares whole output channels whose weight vectors are close: one vector per group.

    Channels are visited in order; each joins the first earlier group leader within the
    threshold (cosine similarity ``>= threshold``, or Euclidean distance ``<= threshold``),
    else it leads a new group. Every channel of a group is replaced by the group's mean
    vector. All-zero channels count as identical (cosine 1), so pruned channels merge.

    Args:
      x: float array; the vectors are the slices ``x[..., i, ...]`` along ``axis``.
      threshold: cosine in [-1, 1], or a distance >= 0.
      metric: ``"cosine"`` or ``"euclidean"``.
      axis: the output-channel axis (Flax kernels: -1).
      name: the leaf's name for error messages.

    Returns:
      ``(merged, info)``: ``merged`` has ``x``'s shape and dtype; `MergeInfo` says how many merged.

    Raises:
      TypeError: a non-float ``x``, a non-number ``threshold``, a non-int ``axis``.
      ValueError: an unknown ``metric``, ``threshold`` out of range, a scalar ``x``, ``axis``
        out of range, NaN/inf in a concrete ``x``.

    References:
      Son, Nah, Lee, "Clustering convolutional kernels to compress deep neural networks", 2018.
    """
    path = None if name in ("", "x") else name
    x = x if hasattr(x, "dtype") else jnp.asarray(x)
    check_floating(x, "x", path=path)
    metric = check_choice(metric, _METRICS, "metric")
    if metric == "cosine":
        threshold = check_number(threshold, "cosine threshold", lo=-1.0, hi=1.0)
    else:
        threshold = check_number(threshold, "euclidean threshold", lo=0.0)
    if x.ndim < 1:
        raise ValueError(f"x{at(path)} needs at least one dimension to merge channels")
    ax = norm_axis(axis, x.ndim, path=path)
    check_finite(x, "x", path=path, why="merging channels needs finite weights")
    moved = jnp.moveaxis(x.astype(jnp.float32), ax, 0)
    merged, info = _merge(moved.reshape(moved.shape[0], -1), jnp.float32(threshold), metric=metric)
    return jnp.moveaxis(merged.reshape(moved.shape), 0, ax).astype(x.dtype), info
