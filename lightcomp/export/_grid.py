"""Uniform integer grids: detect ``x = float32(n * scale)`` in a leaf's values, and code it.

A quantized leaf holds, per tensor, channel or group, values ``float32(n * scale)``
cast to the leaf's dtype: the decoding arithmetic of `lightcomp.quant.dequantize`.
`find_grid` recovers integers and float32 scales that reproduce every value bit for
bit; `grid_candidates` stores them (scales, then the integers with one tensor-wide
offset or a zero point per group, each integer stream at its own best coder).

Granularities (JSON specs): ``{"kind": "tensor"}``; ``{"kind": "axis", "axis": a}``
(one scale per index of axis ``a``); ``{"kind": "axes", "axes": [a, b, ...]}`` (one scale
per combination of indices of these axes: heads x head_dim, layers x output units);
``{"kind": "group", "gaxis": g, "size": s, "axis": a or None}`` (one scale per ``s``
consecutive indices of axis ``g``, and per index of axis ``a`` when given; ``"axes":
[...]`` in place of ``"axis"``: per combination of those).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from lightcomp.export._grid_search import find_grid, grid_values, search_grid
from lightcomp.export._groups import Groups, group_ids
from lightcomp.export._segments import spans
from lightcomp.export._streams import Candidate, best_ints, decode_ints, int_chunks, shift

__all__ = [  # the grid's names, with those of its search, for their users
    "decode_grid",
    "find_grid",
    "granularities",
    "grid_candidates",
    "grid_chunks",
    "grid_groups",
    "grid_values",
    "group_ids",
]


def grid_groups(shape: tuple[int, ...], gran: dict) -> int:
    """The number of groups (scales) of a granularity spec, checked against ``shape``.

    Raises:
      ValueError: the spec is not one `granularities` writes for ``shape`` (an axis out
        of range, a group size that does not divide its axis).
    """
    nd, kind = len(shape), gran["kind"]

    def ok_axis(a):
        return type(a) is int and 0 <= a < nd

    def kept_count(axes):  # distinct axes in order, as `granularities` writes them
        if (
            isinstance(axes, list)
            and axes
            and all(map(ok_axis, axes))
            and axes == sorted(set(axes))
        ):
            return math.prod(shape[a] for a in axes)
        return None

    if kind == "tensor":
        return 1
    if kind == "axis" and ok_axis(gran.get("axis")):
        return shape[gran["axis"]]
    if kind == "axes" and (count := kept_count(gran.get("axes"))) is not None:
        return count
    if kind == "group":
        ga, size = gran.get("gaxis"), gran.get("size")
        if ok_axis(ga) and type(size) is int and size >= 1 and shape[ga] % size == 0:
            if "axes" in gran:
                count = kept_count(gran["axes"])
            else:
                a = gran.get("axis")
                count = 1 if a is None else shape[a] if ok_axis(a) else None
            if count is not None:
                return shape[ga] // size * count
    raise ValueError(f"corrupted grid granularity {gran!r} for shape {list(shape)}")


def granularities(shape: tuple[int, ...]) -> list[dict]:
    """The granularities tried for a leaf ``shape``, coarsest first.

    Per tensor; per index of each axis longer than 1, last axis first; for rank >= 3, per
    combination of 2 to rank - 1 such axes, fewest scales first (the output units of an
    attention kernel, the layers x units of a stacked one); for rank >= 2, groups of
    ``2**i`` (4096 down to 2, dividing and shorter than the axis) along the second-to-last
    axis and then axis 0, per output channel (last axis) or not, and for rank >= 3 also per
    layer (axis 0) and output channel.
    """
    out: list[dict] = [{"kind": "tensor"}]
    nd = len(shape)
    long = [a for a in range(nd) if shape[a] > 1]
    out += [{"kind": "axis", "axis": a} for a in reversed(long)]
    combos = [c for r in range(2, nd) for c in itertools.combinations(long, r)]
    combos.sort(key=lambda c: math.prod(shape[a] for a in c))  # stable: ties in order
    out += [{"kind": "axes", "axes": list(c)} for c in combos]
    if nd >= 2:
        for ga in (nd - 2, 0) if nd > 2 else (0,):
            sizes = [2**i for i in range(12, 0, -1) if shape[ga] % 2**i == 0 and 2**i < shape[ga]]
            for size in sizes:
                out += [
                    {"kind": "group", "gaxis": ga, "size": size, "axis": a} for a in (nd - 1, None)
                ]
                if nd > 2 and ga != 0:
                    out.append({"kind": "group", "gaxis": ga, "size": size, "axes": [0, nd - 1]})
    return out


def grid_candidates(v: np.ndarray, idx: np.ndarray | None, shape, entropy: bool) -> list[Candidate]:
    """Grid encodings of the values ``v`` at flat positions ``idx`` of a leaf ``shape``.

    Granularities are tried coarsest first, skipping those with more scales than half
    the values, and stop after the first grid of at most 8 bits. Each found grid gives
    a candidate with one tensor-wide offset and, with several groups, one with a zero
    point per group (affine). Part 0 holds the float32 scales, then the zero points,
    then the integers. The integers are shifted in place, chunk by chunk, from one
    candidate to the next (their memory: 2 or 4 bytes per value, once).

    Args:
      v: the values ``[m]``, without negative zeros.
      idx: their flat positions, or None for a dense leaf (all of them, in order).
      shape: the leaf's shape.
      entropy: also try Huffman / zlib / lzma on the integer streams.

    Returns:
      ``[(spec, blobs)]`` with spec ``{"val": "grid", "g", "G", "sp", "s", ...}``.
    """
    out = []
    for gran in granularities(shape):
        groups = Groups(idx, shape, gran)
        ngroups = groups.ngroups
        if ngroups > max(v.size // 2, 1):
            continue  # more scales than half the values: a codebook or raw floats win
        found = search_grid(v, groups)
        if found is None:
            continue
        n, scale = found
        base = {"val": "grid", "g": gran, "G": ngroups, "sp": 0}
        lo, hi = int(n.min(initial=0)), int(n.max(initial=0))
        if hi - lo > np.iinfo(n.dtype).max:
            n = n.astype(np.int32)
        n -= n.dtype.type(lo)  # n - lo: in [0, hi - lo]
        i_parts: list[bytes] = []
        ispec = best_ints(n, i_parts, entropy)
        out.append(({**base, "off": lo, "s": shift(ispec, 1)}, [scale.tobytes(), *i_parts]))
        if ngroups > 1:
            out.append(_zero_point_candidate(base, n, lo, scale, groups, entropy))
        if hi - lo < 256:
            break  # a grid of at most 8 bits: finer granularities only add scales
    return out


def _zero_point_candidate(base, n, lo, scale, groups, entropy) -> Candidate:
    """The affine candidate: a zero point per group (its least integer), then ``n - zp``.

    ``n`` holds the integers less ``lo``; it is changed in place to ``n - zp[gid]``.
    """
    zp = np.full(groups.ngroups, 2**20, np.int64)
    for a, b in spans(n.size):
        np.minimum.at(zp, groups.span(a, b), n[a:b])
    has = zp != 2**20  # groups without values (all pruned) get 0
    zp = np.where(has, zp + lo, 0)
    zlo = int(zp.min(initial=0))
    z_parts: list[bytes] = []
    zspec = best_ints(zp - zlo, z_parts, entropy)
    by = np.where(has, zp - lo, 0).astype(n.dtype)
    for a, b in spans(n.size):
        n[a:b] -= by[groups.span(a, b)]
    i_parts: list[bytes] = []
    ispec = best_ints(n, i_parts, entropy)
    spec = {**base, "zoff": zlo, "z": shift(zspec, 1), "s": shift(ispec, 1 + len(z_parts))}
    return spec, [scale.tobytes(), *z_parts, *i_parts]


def decode_grid(spec: dict, idx: np.ndarray | None, shape, dt: np.dtype, parts) -> np.ndarray:
    """The values ``[m]`` (dtype ``dt``) a `grid_candidates` spec describes.

    The concatenation of `grid_chunks` (see there).
    """
    chunks = list(grid_chunks(spec, idx, shape, dt, parts))
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def grid_chunks(spec: dict, idx: np.ndarray | None, shape, dt: np.dtype, parts):
    """The values (dtype ``dt``) a `grid_candidates` spec describes, a chunk at a time.

    Args:
      spec: the values' spec.
      idx: the flat positions of the values, or None for all ``prod(shape)`` of them.
      shape: the leaf's shape.
      dt: the leaf's dtype.
      parts: the leaf's parts.

    Yields:
      ``dt`` arrays, ``m`` values in all, as the integer stream decodes
      (`lightcomp.export._streams.int_chunks`).

    Raises:
      ValueError: scales, integers or zero points do not match the leaf (corrupted); the
        counts are checked before the integers are decoded.
    """
    m = int(np.prod(shape, dtype=np.int64)) if idx is None else idx.size
    ngroups = grid_groups(tuple(shape), spec["g"])
    if ngroups != spec["G"] or len(parts[spec["sp"]]) != 4 * ngroups:
        raise ValueError("corrupted grid scales")
    if spec["s"]["n"] != m or ("z" in spec and spec["z"]["n"] != ngroups):
        raise ValueError("corrupted grid integers")
    scale = np.frombuffer(parts[spec["sp"]], np.float32)
    groups = Groups(idx, shape, spec["g"])
    zp = None
    if "z" in spec:
        zp = decode_ints(spec["z"], parts) + spec["zoff"]
        if zp.size != ngroups:
            raise ValueError("corrupted zero points")
    lo = 0
    for n in int_chunks(spec["s"], parts):
        if lo + n.size > m:
            raise ValueError("corrupted grid integers")
        gid = groups.span(lo, lo + n.size)
        n = n + (spec["off"] if zp is None else zp[gid])
        yield grid_values(n, scale, gid, dt)
        lo += n.size
    if lo != m:
        raise ValueError("corrupted grid integers")
