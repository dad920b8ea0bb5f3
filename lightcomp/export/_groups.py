"""The groups (one grid scale each) of a leaf's values, for a whole leaf or a chunk at a time.

A granularity spec (see `lightcomp.export._grid`) maps every flat position of a leaf to
a group. `group_ids` gives the ids of given positions; `Groups` gives those of the
values ``[lo, hi)`` of a leaf's dense or sparse values on demand, so that a pass over
a long leaf never holds the ids of all of it.
"""

from __future__ import annotations

import numpy as np


def _ids(idx: np.ndarray, shape: tuple[int, ...], gran: dict) -> tuple[np.ndarray, int]:
    """int64 group ids of the flat positions ``idx``, and the number of groups."""
    if gran["kind"] == "tensor":
        return np.zeros(idx.shape, np.int64), 1
    strides = np.cumprod((1, *shape[::-1]))[:-1][::-1]

    def coord(a):
        return (idx // strides[a]) % shape[a]

    if gran["kind"] == "axis":
        return coord(gran["axis"]), shape[gran["axis"]]
    if gran["kind"] == "axes":
        gid, ngroups = np.zeros(idx.shape, np.int64), 1
    else:
        ga, size = gran["gaxis"], gran["size"]
        ngroups = shape[ga] // size
        gid = coord(ga) // size
    kept = gran["axes"] if "axes" in gran else [] if gran["axis"] is None else [gran["axis"]]
    for a in kept:  # row-major over (group, *kept)
        gid, ngroups = gid * shape[a] + coord(a), ngroups * shape[a]
    return gid, ngroups


def group_ids(idx: np.ndarray, shape: tuple[int, ...], gran: dict) -> tuple[np.ndarray, int]:
    """The group (one scale each) of every flat index ``idx`` of a leaf ``shape``.

    Returns:
      ``(gid, ngroups)``: int64 group ids shaped like ``idx``, in ``[0, ngroups)``.
    """
    return _ids(np.asarray(idx), shape, gran)


class Groups:
    """The group ids of a leaf's values, computed for the values asked for only.

    Args:
      idx: the flat positions of the values, or None for all ``prod(shape)`` of them
        (a dense leaf: no index array is made).
      shape: the leaf's shape.
      gran: the granularity spec.

    Attributes:
      ngroups: the number of groups.
    """

    def __init__(self, idx: np.ndarray | None, shape: tuple[int, ...], gran: dict):
        self._idx, self._shape, self._gran = idx, tuple(shape), gran
        self.ngroups = _ids(np.zeros(0, np.int64), self._shape, gran)[1]

    def at(self, pos: np.ndarray) -> np.ndarray:
        """int64 group ids of the values at positions ``pos`` (indices into the values)."""
        flat = pos if self._idx is None else self._idx[pos]
        return _ids(flat, self._shape, self._gran)[0]

    def span(self, lo: int, hi: int) -> np.ndarray:
        """int64 group ids of the values ``[lo, hi)``."""
        flat = np.arange(lo, hi) if self._idx is None else self._idx[lo:hi]
        return _ids(flat, self._shape, self._gran)[0]


class GivenGroups:
    """`Groups` for an explicit array of group ids ``gid`` (any int dtype)."""

    def __init__(self, gid: np.ndarray, ngroups: int):
        self._gid, self.ngroups = gid, ngroups

    def at(self, pos: np.ndarray) -> np.ndarray:
        return self._gid[pos]

    def span(self, lo: int, hi: int) -> np.ndarray:
        return self._gid[lo:hi]
