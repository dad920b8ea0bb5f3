"""A packed leaf read as integers and scales: what integer serving loads.

A leaf stored on a uniform grid holds ``float32(n * scale)`` per tensor, per index of an
axis, or per group (`lightcomp.export._grid`). `integers` returns those integers ``n`` and
their float32 scales in the layout of `lightcomp.quant.layout`, so that
``lightcomp.quant.dequantize`` of them gives the leaf back bit for bit. A leaf stored
otherwise (a codebook of shared values, raw floats) is searched for such a grid in its
decoded values, as the encoder searches, unless ``search=False``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from lightcomp._checks import check_bool, with_path
from lightcomp.export._format import bits_of, dtype_named, is_float
from lightcomp.export._grid import find_grid, granularities, grid_values, group_ids
from lightcomp.export._leaf import decode_leaf
from lightcomp.export._pack import Packed
from lightcomp.export._positions import decode_positions
from lightcomp.export._streams import decode_ints


class Integers(NamedTuple):
    """A leaf as integers times scales: ``leaf == float32(values * scale)`` cast to ``dtype``.

    Attributes:
      values: the integers, the leaf's shape, int8 / int16 / int32 (the smallest that holds
        them); 0 where the leaf is 0.
      scale: float32 of ``lightcomp.quant.layout(shape, axis, group_size,
        group_axis).scale_shape`` (``()`` for one scale).
      axis: the axis with a scale per index, or None.
      group_size, group_axis: consecutive indices of ``group_axis`` sharing a scale, or None.
      dtype: the leaf's dtype.
    """

    values: np.ndarray
    scale: np.ndarray
    axis: int | None
    group_size: int | None
    group_axis: int | None
    dtype: np.dtype

    @property
    def bits(self) -> int:
        """The narrowest symmetric width that holds the integers: ``max|n| <= 2**(b-1) - 1``."""
        amax = int(np.abs(self.values.astype(np.int64)).max(initial=0))
        return max(2, amax.bit_length() + 1)


def _meta(packed: Packed, path: str) -> dict:
    if not isinstance(packed, Packed):
        raise TypeError(f"packed must be a lightcomp.export.Packed, got {type(packed).__name__}")
    if not isinstance(path, str):
        raise TypeError(f"path must be a leaf path string, got {type(path).__name__}")
    for meta in packed.manifest.get("leaves", []):
        if meta.get("path") == path:
            return meta
    known = [m.get("path") for m in packed.manifest.get("leaves", [])]
    raise ValueError(f"path {path!r} is not a packed leaf; the leaves are {known[:8]}")


def integers(packed: Packed, path: str, *, search: bool = True) -> Integers | None:
    """One packed leaf as integers and scales, or None when it is not on an integer grid.

    Args:
      packed: from `pack` or `load`.
      path: the leaf's `lightcomp.tree.path_str` path, e.g. ``"Dense_0/kernel"``.
      search: for a leaf not stored as a grid (a codebook, raw floats), look for a grid in
        its values (per tensor, per index of an axis, per group; coarsest first).

    Returns:
      `Integers`, or None (no grid of at most 16 bits reproduces the leaf, or it is not
      floating point).

    Raises:
      TypeError: ``packed`` is not a `Packed`, ``path`` not a string, ``search`` not a bool.
      ValueError: no leaf has that path, or the leaf's data are corrupted.

    Example:
      >>> w = lc.quant.fake_quant(jnp.array([[0.3, -1.2], [0.9, 0.5]]), 4, axis=-1)
      >>> ints = lc.export.integers(lc.export.pack({"kernel": w}), "kernel")
      >>> ints.values, ints.axis, ints.bits
      (array([[ 2, -7],
             [ 7,  3]], dtype=int8), 1, 4)
    """
    search = check_bool(search, "search")
    meta = _meta(packed, path)
    return with_path(path, lambda: _read(meta, packed.payload, search))


def _read(meta: dict, payload: bytes, search: bool) -> Integers | None:
    shape, dt, enc = tuple(meta["shape"]), dtype_named(meta["dtype"]), meta["enc"]
    spans = meta["parts"]
    if any(o < 0 or n < 0 or o + n > len(payload) for o, n in spans):
        raise ValueError("part outside the payload")
    parts = [payload[o : o + n] for o, n in spans]
    x = decode_leaf(enc, shape, dt, parts)  # checks the leaf's data
    if not is_float(dt) or dt.name == "float64":
        return None
    size = math.prod(shape)
    if enc["val"]["val"] == "grid":
        idx = np.arange(size) if enc["pos"] is None else decode_positions(enc["pos"], size, parts)
        gran, (n, scale) = enc["val"]["g"], _stored_grid(enc["val"], idx, shape, parts)
    elif search:
        flat = x.reshape(-1)
        idx = np.flatnonzero(bits_of(flat) & ~bits_of(np.array(-0.0, dt)))  # -0 counts as 0
        found = _search(flat[idx], idx, shape)
        if found is None:
            return None
        gran, (n, scale) = found
    else:
        return None
    gid, _ = group_ids(idx, shape, gran)
    want = x.reshape(-1)[idx]
    want = np.where(want == 0, np.zeros((), dt), want)  # a grid decodes 0 to +0; -0 is kept apart
    if not np.array_equal(bits_of(grid_values(n, scale, gid, dt)), bits_of(want)):
        raise ValueError("grid integers do not reproduce the leaf (corrupted)")
    return _integers(n, scale, idx, shape, gran, dt)


def _stored_grid(spec: dict, idx: np.ndarray, shape, parts) -> tuple[np.ndarray, np.ndarray]:
    """``(n, scale)`` of a grid-coded leaf: the integers with their offset or zero points."""
    gid, ngroups = group_ids(idx, shape, spec["g"])
    scale = np.frombuffer(parts[spec["sp"]], np.float32)
    stored = decode_ints(spec["s"], parts)
    if "z" not in spec:
        return stored + spec["off"], scale
    zero_points = decode_ints(spec["z"], parts) + spec["zoff"]
    if zero_points.size != ngroups:
        raise ValueError("corrupted zero points")
    return stored + zero_points[gid], scale


def _search(v: np.ndarray, idx: np.ndarray, shape) -> tuple[dict, tuple] | None:
    """The coarsest granularity whose grid reproduces the values ``v`` at ``idx``, or None."""
    for gran in granularities(shape):
        gid, ngroups = group_ids(idx, shape, gran)
        if ngroups > max(v.size // 2, 1):
            continue
        found = find_grid(v, gid, ngroups)
        if found is not None:
            return gran, found
    return None


def _integers(n, scale, idx, shape, gran, dt) -> Integers:
    """`Integers` of a leaf ``shape`` from the grid's integers at ``idx`` and its scales."""
    full = np.zeros(math.prod(shape), np.int64)
    full[idx] = n
    amax = int(np.abs(full).max(initial=0))
    itype = np.int8 if amax <= 127 else np.int16 if amax <= 2**15 - 1 else np.int32
    kind = gran["kind"]
    kept = tuple(gran["axes"]) if "axes" in gran else (gran.get("axis"),)  # "axes": several
    kept = tuple(a for a in kept if a is not None) if kind != "tensor" else ()
    axis = kept[0] if len(kept) == 1 else (kept or None)
    size, gaxis = (gran["size"], gran["gaxis"]) if kind == "group" else (None, None)
    scale_shape = tuple(
        (shape[i] // size if i == gaxis else shape[i] if i in kept else 1)
        for i in range(len(shape))
    )
    if kind == "tensor":
        scale_shape = ()
    # each scale's group: that of its first element (index g * size on the group axis)
    coords = np.indices(scale_shape or (1,) * max(len(shape), 1)).reshape(max(len(shape), 1), -1)
    if gaxis is not None:
        coords[gaxis] *= size
    first = np.ravel_multi_index(tuple(coords), shape) if shape else np.zeros(1, np.int64)
    gid, _ = group_ids(first, shape, gran)
    return Integers(
        values=full.reshape(shape).astype(itype),
        scale=np.asarray(scale[gid].reshape(scale_shape), np.float32),
        axis=axis,
        group_size=size,
        group_axis=gaxis,
        dtype=dt,
    )
