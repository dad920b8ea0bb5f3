"""Per-leaf figures of a clustering: k, bits per index, inertia, codebook and index bytes."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree
from lightcomp._checks import check_bool
from lightcomp.cluster._share import inertia

PyTree = Any


class LeafReport(NamedTuple):
    """One leaf's line of `cluster_report` (sizes in bytes; indices bit-packed)."""

    k: int
    bits: int
    channels: int
    inertia: float
    codebook_bytes: int
    index_bytes: int
    total_bytes: int
    dense_bytes: int


def _leaf_axis(path: str, w: Any, c: Any) -> int | None:
    """The axis of ``w`` that per-channel centroids ``[channels, k]`` belong to (the last fit)."""
    if c.ndim != 2:
        return None
    match = [i for i, s in enumerate(w.shape) if s == c.shape[0]]
    if not match:
        raise ValueError(f"centroids of {path!r} of shape {c.shape} fit no axis of {w.shape}")
    return match[-1]


def cluster_report(
    params: PyTree, centroids: PyTree, assignments: PyTree, *, preserve_zeros: bool = False
) -> dict[str, LeafReport]:
    """Per clustered leaf: k, bits per index, inertia, and codebook + bit-packed index bytes.

    Args:
      params: the original weights.
      centroids, assignments: trees mirroring ``params`` (None at leaves not clustered), as from
        `kmeans_tree`; per-channel centroids ``[channels, k]`` are recognised by their shape.
      preserve_zeros: code 0 is the zero code (it counts among the k codes).

    Returns:
      ``{path: LeafReport}`` in flattening order. ``bits = ceil(log2 k)``, ``index_bytes =
      ceil(size * bits / 8)``, ``codebook_bytes`` = the centroids' bytes, ``dense_bytes`` = the
      leaf's own bytes.

    Raises:
      ValueError: trees that do not mirror ``params``, assignments of another shape than
        their leaf, per-channel centroids that fit no axis of their leaf.
    """
    preserve_zeros = check_bool(preserve_zeros, "preserve_zeros")
    items = tree.leaves_with_paths(params)
    flat_c = jax.tree.leaves(centroids, is_leaf=lambda t: t is None)
    flat_a = jax.tree.leaves(assignments, is_leaf=lambda t: t is None)
    if len(flat_c) != len(items) or len(flat_a) != len(items):
        first = tree.first_mismatch(params, centroids) or tree.first_mismatch(params, assignments)
        raise ValueError(
            "centroids and assignments must mirror params (None at leaves not clustered); "
            f"first mismatch at {first!r}"
        )
    out = {}
    for (path, w), c, a in zip(items, flat_c, flat_a, strict=True):
        if c is None or a is None:
            continue
        if a.shape != w.shape:
            raise ValueError(f"assignments of {path!r} have shape {a.shape}, not {w.shape}")
        k = int(c.shape[-1])
        axis = _leaf_axis(path, w, c)
        bits = math.ceil(math.log2(k)) if k > 1 else 0
        err = float(inertia(w, c, a, axis=axis, preserve_zeros=preserve_zeros))
        cb = int(c.size * c.dtype.itemsize)
        ib = math.ceil(int(np.prod(w.shape)) * bits / 8)
        dense = int(np.prod(w.shape)) * int(jnp.dtype(w.dtype).itemsize)
        channels = 1 if axis is None else int(c.shape[0])
        out[path] = LeafReport(k, bits, channels, err, cb, ib, cb + ib, dense)
    return out
