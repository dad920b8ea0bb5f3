"""A leaf's values (all of them, or its non-zeros): raw floats, a codebook, or a grid.

Raw values are stored in the narrowest float dtype that holds them exactly (float16,
bfloat16, float32), optionally zlib/lzma-compressed; a codebook stores the ``k``
distinct values (Deep Compression's weight sharing) and ``ceil(log2 k)``-bit indices;
a grid is found by `lightcomp.export._grid`. Non-float leaves are stored raw.
"""

from __future__ import annotations

import numpy as np

from lightcomp.export._format import FLOATS, bits_of, dtype_named, is_float, same_bits
from lightcomp.export._grid import grid_candidates, grid_chunks
from lightcomp.export._segments import sorted_distinct, spans
from lightcomp.export._streams import (
    CODECS,
    EXHAUSTIVE_MAX,
    INT_CHUNK,
    SAMPLE,
    Candidate,
    best_ints,
    compress,
    decompressed_pieces,
    int_chunks,
    shift,
    zlib_estimate,
)
from lightcomp.export._views import LazyBytes, materialized


def _sample(v: np.ndarray) -> np.ndarray:
    """About `SAMPLE` values of ``v`` spread over all of it (every value when fewer)."""
    return v[:: max(1, v.size // SAMPLE)]


def narrowest_float(v: np.ndarray) -> np.dtype:
    """The smallest float dtype that holds every value of ``v`` exactly (bitwise round trip)."""
    for name in ("float16", "bfloat16", "float32"):
        dt = np.dtype(FLOATS[name])
        if dt.itemsize < v.dtype.itemsize:
            with np.errstate(all="ignore"):
                s = _sample(v)  # a cheap refusal first: the whole must hold what a part does
                if same_bits(s.astype(dt).astype(v.dtype), s) and all(
                    same_bits(c.astype(dt).astype(v.dtype), c)
                    for c in (v[lo:hi] for lo, hi in spans(v.size))
                ):
                    return dt
    return v.dtype


def _raw_part(v, dt: np.dtype) -> memoryview | LazyBytes:
    """The raw part of ``v`` in ``dt``: a view of an array's bytes (a copy only to narrow
    it), or bytes made on demand for a `lightcomp.export._views.PlusZero`."""
    if isinstance(v, np.ndarray):  # a view, or the narrower copy
        return memoryview(np.ascontiguousarray(v.astype(dt, copy=False)).reshape(-1).view(np.uint8))
    return LazyBytes(v, dt)


def value_candidates(v: np.ndarray, idx: np.ndarray, shape, entropy: bool) -> list[Candidate]:
    """Every encoding of the values ``v`` [m] at flat positions ``idx`` of a leaf ``shape``.

    Returns:
      ``[(spec, blobs)]``: raw first, then a codebook (up to ``2**16`` distinct values,
      for leaves up to ``2**24`` values), grids (not for float64), and compressed raw.
      Beyond `EXHAUSTIVE_MAX` values, a codebook is not tried when a sample already has
      more than half its values distinct, and raw values are only zlib'd, when zlib's
      ratio on a sample (`zlib_estimate`) saves 2% on every other candidate. The raw
      part is a view of ``v``'s bytes, or made on demand (``v`` may be a
      `lightcomp.export._views.PlusZero`): never a copy held while the others are coded.
    """
    large = v.size > EXHAUSTIVE_MAX
    if not is_float(v.dtype):
        raw = _raw_part(v, v.dtype)
        cands = [({"val": "raw", "dt": v.dtype.name, "p": 0}, [raw])]
    else:
        dt = narrowest_float(v)
        raw = _raw_part(v, dt)
        cands = [({"val": "raw", "dt": dt.name, "p": 0}, [raw])]
        if v.size <= 2**24:
            cands += _codebook_candidate(v, entropy)
            if v.dtype.name != "float64":
                cands += grid_candidates(v, idx, shape, entropy)
    if entropy and len(raw) > 64:
        codecs = CODECS
        if large:  # zlib'd when its estimate is 2% below every other candidate
            best = min(sum(map(len, blobs)) for _, blobs in cands)
            codecs = ("zlib",) if zlib_estimate(raw[:SAMPLE], len(raw)) < 0.98 * best else ()
        data = materialized([raw])[0] if codecs else raw
        for codec in codecs:
            cands.append(
                (
                    {"val": "raw", "dt": cands[0][0]["dt"], "z": codec, "p": 0},
                    [compress(codec, data)],
                )
            )
    return cands


def _codebook_candidate(v: np.ndarray, entropy: bool) -> list[Candidate]:
    """The codebook of ``v``'s distinct bit patterns and the index stream (none if useless).

    The distinct patterns are merged chunk by chunk (stopping past ``2**16``) and the
    indices found by binary search into uint16: no sort of all values, no int64 inverse.
    """
    if v.size > EXHAUSTIVE_MAX and 2 * np.unique(bits_of(_sample(v))).size > SAMPLE:
        return []
    uniq, held = bits_of(v[:0]), []
    for lo, hi in spans(v.size):
        held.append(sorted_distinct(bits_of(v[lo:hi])))
        if sum(map(len, held)) > 2**17 or hi == v.size:  # merged now and then
            uniq = sorted_distinct(np.concatenate([uniq, *held]))
            held = []
            if len(uniq) > 2**16:
                return []
    if len(uniq) >= v.size:
        return []
    inv = np.empty(v.size, np.uint16)
    for lo, hi in spans(v.size):  # sorted queries: a cache-friendly binary search
        c = bits_of(v[lo:hi])
        order = np.argsort(c)
        inv[lo + order] = np.searchsorted(uniq, c[order])
    book = uniq.view(v.dtype)
    bdt = narrowest_float(book)
    sub: list[bytes] = []
    ispec = best_ints(inv, sub, entropy)
    spec = {"val": "book", "dt": bdt.name, "k": len(uniq), "bp": 0, "s": shift(ispec, 1)}
    return [(spec, [book.astype(bdt).tobytes(), *sub])]


def decode_values(spec: dict, idx: np.ndarray | None, shape, dt: np.dtype, parts) -> np.ndarray:
    """The values ``[m]`` (dtype ``dt``) a `value_candidates` spec describes.

    The concatenation of `value_chunks` (see there).
    """
    chunks = list(value_chunks(spec, idx, shape, dt, parts))
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def value_chunks(spec: dict, idx: np.ndarray | None, shape, dt: np.dtype, parts):
    """The values (dtype ``dt``) a `value_candidates` spec describes, a chunk at a time.

    Args:
      spec: the values' spec.
      idx: the flat positions of the values, or None for all ``prod(shape)`` of them.
      shape: the leaf's shape.
      dt: the leaf's dtype.
      parts: the leaf's parts.

    Yields:
      new ``dt`` arrays (never views of the parts), ``m`` values in all.

    Raises:
      ValueError: the data are corrupted or the spec names an unknown encoding; every
        declared size is checked before it is allocated or decompressed.
    """
    kind = spec["val"]
    m = int(np.prod(shape, dtype=np.int64)) if idx is None else idx.size
    if kind == "raw":
        sdt = dtype_named(spec["dt"])
        data, step = parts[spec["p"]], INT_CHUNK * sdt.itemsize
        if "z" in spec:
            pieces = decompressed_pieces(
                spec["z"], data, "compressed values", m * sdt.itemsize, step
            )
        elif len(data) != m * sdt.itemsize:
            raise ValueError("corrupted raw values")
        else:
            view = memoryview(data)
            pieces = (view[lo : lo + step] for lo in range(0, len(data), step))
        yield np.zeros(0, dt)
        for piece in pieces:
            yield np.frombuffer(piece, sdt).astype(dt)
        return
    if kind == "book":
        bdt = dtype_named(spec["dt"])
        data = parts[spec["bp"]]
        if not 1 <= spec["k"] <= 2**16 or len(data) != spec["k"] * bdt.itemsize:
            raise ValueError("corrupted codebook")
        book = np.frombuffer(data, bdt).astype(dt)
        for inds in int_chunks(spec["s"], parts, n=m):
            if inds.size and inds.max() >= book.size:
                raise ValueError("corrupted codebook")
            yield book[inds]
        return
    if kind == "grid":
        yield from grid_chunks(spec, idx, shape, dt, parts)
        return
    raise ValueError(f"unknown value encoding {kind!r}")
