"""Shared weights from ``(centroids, assignments)``: a gather, differentiable in the centroids.

References:
  Han, Mao, Dally, "Deep Compression", ICLR 2016 (the centroids' gradient).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp._checks import check_bool, check_choice, check_floating, is_traced
from lightcomp.cluster._kmeans import kept_axes

_REDUCES = ("sum", "mean")


def share(
    centroids: jax.Array,
    assignments: jax.Array,
    *,
    axis: int | tuple[int, ...] | None = None,
    reduce: str = "sum",
    preserve_zeros: bool = False,
    dtype: Any = None,
) -> jax.Array:
    """Shared weights ``centroids[assignments]``: a gather, differentiable in the centroids.

    The gradient reaching centroid ``j`` is the sum of the gradients of the weights coded
    ``j`` (segment sum; the Deep Compression update), or their mean with ``reduce="mean"``.
    Both come from JAX's own gather transpose; ``"mean"`` scales the centroids' cotangent by
    ``1 / members`` with a stop-gradient identity, not a hand-written gradient.

    Args:
      centroids: float ``[k]``, ``[channels, k]`` with ``axis``, or ``[*sizes, k]`` with a
        tuple ``axis`` (one codebook per combination of indices, as `kmeans` returns).
      assignments: unsigned integer codes, any shape (``shape[axis] == channels`` with ``axis``).
      axis: the axis (or tuple of axes) of ``assignments`` whose slices use their own row
        of ``centroids``.
      reduce: ``"sum"`` or ``"mean"`` of the members' gradients.
      preserve_zeros: code 0 is the zero code (as from ``kmeans(..., preserve_zeros=True)``):
        it gives exactly 0 and centroid 0 gets no gradient, so a pruning mask survives
        clustering and training.
      dtype: output dtype (default: the centroids' dtype), e.g. the weights' own.

    Returns:
      array of ``assignments.shape``.

    Raises:
      TypeError: non-float centroids, non-integer assignments, a non-bool flag.
      ValueError: an unknown ``reduce``, ``axis`` out of range, centroids of the wrong
        shape, or (concrete assignments) a code ``< 0`` or ``>= k``.

    References:
      Han, Mao, Dally, "Deep Compression", ICLR 2016.

    Example:
      >>> c = jnp.array([-1.0, 0.5, 2.0])
      >>> lc.cluster.share(c, jnp.array([2, 0, 1], jnp.uint8)).tolist()
      [2.0, -1.0, 0.5]
    """
    centroids = centroids if hasattr(centroids, "dtype") else jnp.asarray(centroids)
    check_floating(centroids, "centroids")
    reduce = check_choice(reduce, _REDUCES, "reduce")
    preserve_zeros = check_bool(preserve_zeros, "preserve_zeros")
    if not hasattr(assignments, "dtype") or not jnp.issubdtype(assignments.dtype, jnp.integer):
        got = getattr(assignments, "dtype", type(assignments).__name__)
        raise TypeError(f"assignments must be an integer array, got {got}")
    axes = kept_axes(axis, assignments.ndim)
    sizes = tuple(assignments.shape[a] for a in axes)
    if tuple(centroids.shape[:-1]) != sizes or centroids.ndim != len(axes) + 1:
        want = "[k]" if not axes else f"[{', '.join(map(str, sizes))}, k]"
        raise ValueError(f"centroids must have shape {want}, got {centroids.shape}")
    k = centroids.shape[-1]
    if not is_traced(assignments) and assignments.size:
        held = np.asarray(assignments)
        low, top = int(held.min()), int(held.max())
        if low < 0:
            raise ValueError(f"assignments hold code {low}; codes must be in [0, k={k})")
        if top >= k:
            raise ValueError(f"assignments hold code {top}, but there are only k={k} centroids")
    out_dtype = centroids.dtype if dtype is None else jnp.dtype(dtype)
    codes = assignments.astype(jnp.int32)
    front = tuple(range(len(axes)))
    if not axes:
        flat_c, flat_i = centroids, codes
    else:
        moved = jnp.moveaxis(codes, axes, front).reshape(
            (-1, *[d for i, d in enumerate(codes.shape) if i not in axes])
        )
        offs = (jnp.arange(moved.shape[0], dtype=jnp.int32) * k).reshape(
            (-1,) + (1,) * (moved.ndim - 1)
        )
        flat_c, flat_i = centroids.reshape(-1), moved + offs
    if reduce == "mean":
        counts = jnp.bincount(flat_i.reshape(-1), length=flat_c.shape[0])
        frozen = jax.lax.stop_gradient(flat_c)
        flat_c = frozen + (flat_c - frozen) / jnp.maximum(counts, 1).astype(flat_c.dtype)
    out = flat_c[flat_i]
    if preserve_zeros:
        zero_code = flat_i % k == 0 if axes else flat_i == 0
        out = jnp.where(zero_code, jnp.zeros((), out.dtype), out)
    if axes:
        out = jnp.moveaxis(out.reshape((*sizes, *out.shape[1:])), front, axes)
    return out.astype(out_dtype)


def inertia(
    x: jax.Array,
    centroids: jax.Array,
    assignments: jax.Array,
    *,
    axis: int | tuple[int, ...] | None = None,
    preserve_zeros: bool = False,
) -> jax.Array:
    """Sum of squared differences between ``x`` and its shared version (float32 scalar).

    Args:
      x: the original weights, of ``assignments.shape``.
      centroids, assignments, axis, preserve_zeros: as `share`.

    Returns:
      ``sum((x - share(centroids, assignments))**2)`` in float32.
    """
    recon = share(centroids, assignments, axis=axis, preserve_zeros=preserve_zeros)
    return jnp.sum((jnp.asarray(x, jnp.float32) - recon.astype(jnp.float32)) ** 2)
