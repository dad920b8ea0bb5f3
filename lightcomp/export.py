"""Packing a compressed model into real bytes: a file that loads back bit for bit.

`pack` looks at the *effective* parameters (what the student computes with,
``transform.apply(params, cstate)``) on the host and, per leaf, searches for the
smallest encoding that reproduces the leaf bit for bit, verifying each candidate
by decoding it before choosing it. It needs nothing from the transforms' states:
what pruning, weight sharing and quantization left is found in the values.

A leaf is stored as three independent parts:

* positions of the non-zeros (when the leaf has exact zeros): a bitmask, or the
  relative indices of the non-zeros in ``b``-bit gaps with an escape symbol for
  long runs (Deep Compression's relative-index encoding; its filler zeros become a
  "skip" symbol here, which costs no value slot), whichever is smaller;
* the values (all of them, or the non-zeros): dense floats in the smallest float
  dtype that holds them exactly (float32 / bfloat16 / float16); a codebook of the
  ``k`` distinct values plus ``ceil(log2 k)``-bit indices; or a uniform integer
  grid ``x = float32(n * scale)`` cast to the leaf's dtype, detected per tensor,
  per channel or per group, with a tensor-wide offset or per-group zero points,
  the integers bit-packed at their width (1..16 bits, across byte boundaries);
* the positions of negative zeros, if any (they differ in one bit from ``+0``).

Every integer stream (indices, grid integers, gaps, the bitmask) is stored
bit-packed at fixed width, or with canonical Huffman coding (as Deep Compression
does), or with ``zlib``/``lzma`` from the standard library, whichever is
measured smaller.

File format, version 1 (all integers little-endian)::

    offset  size  field
    0       8     magic b"\\x89LCPACK\\n"
    8       2     format version (uint16) = 1
    10      2     flags (uint16): bit 0 set = the manifest is zlib-compressed JSON
    12      4     reserved, 0
    16      8     manifest length M (uint64)
    24      8     payload length P (uint64)
    32      32    SHA-256 of bytes [64, 64 + M + P)
    64      M     manifest: UTF-8 JSON {"format", "structure", "leaves", "payload_bytes"}
    64 + M  P     payload: the leaves' parts, back to back, no padding

Each manifest leaf holds ``path``, ``shape``, ``dtype``, ``enc`` (the nested
encoding description), ``parts`` (``[offset, length]`` pairs into the payload)
and ``nbytes``. The file's size is exactly ``64 + M + P``; `report` gives P as
the total and ``64 + M`` as the header.

References:
  Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with
  Pruning, Trained Quantization and Huffman Coding", ICLR 2016.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import lzma
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Packed",
    "load",
    "pack",
    "report",
    "report_table",
    "save",
    "unpack",
]

MAGIC = b"\x89LCPACK\n"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sHHIQQ32s")  # 64 bytes
_MAX_HUFF_LEN = 20
_FLOATS = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


@dataclasses.dataclass(frozen=True)
class Packed:
    """A packed model: a JSON-able manifest and the payload bytes.

    Attributes:
      manifest: ``{"structure": ..., "leaves": [...]}``; see the module docstring.
      payload: the concatenated parts of every leaf.
    """

    manifest: dict
    payload: bytes

    @property
    def nbytes(self) -> int:
        """Payload bytes (the reported total; the file adds `header_bytes`)."""
        return len(self.payload)

    @property
    def header_bytes(self) -> int:
        """Bytes of the file header: the fixed 64 bytes plus the stored manifest."""
        return _HEADER.size + len(_manifest_bytes(self)[0])


# --------------------------------------------------------------------------- dtypes


def _dtype(name: str) -> np.dtype:
    if name in _FLOATS:
        return np.dtype(_FLOATS[name])
    try:
        return np.dtype(getattr(ml_dtypes, name, name))
    except TypeError as e:
        raise ValueError(f"unknown dtype {name!r} in the manifest") from e


def _is_float(dt: np.dtype) -> bool:
    return dt.name in ("float64", "float32", "float16", "bfloat16")


def _bits_of(x: np.ndarray) -> np.ndarray:
    return x.view(f"u{x.dtype.itemsize}")


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(_bits_of(a), _bits_of(b))


# --------------------------------------------------------------------------- bit packing


def _pack_bits(values: np.ndarray, width: int) -> bytes:
    """``values`` (non-negative ints < 2**width) as ``width``-bit big-endian fields, packed."""
    if width == 0 or values.size == 0:
        return b""
    v = values.astype(np.uint32).reshape(-1, 1)
    bits = (v >> np.arange(width - 1, -1, -1, dtype=np.uint32)) & 1
    return np.packbits(bits.astype(np.uint8).ravel()).tobytes()


def _unpack_bits(data: bytes, width: int, n: int) -> np.ndarray:
    """Inverse of `_pack_bits`: ``n`` ints of ``width`` bits, as int64."""
    if width == 0 or n == 0:
        return np.zeros(n, np.int64)
    if len(data) != math.ceil(n * width / 8):
        raise ValueError(f"corrupted packed data: {len(data)} bytes for {n} x {width} bits")
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=n * width).reshape(n, width)
    return bits.astype(np.int64) @ (np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64))


# --------------------------------------------------------------------------- canonical Huffman


def _huffman_lengths(freq: np.ndarray) -> np.ndarray:
    """Code lengths of a Huffman code for symbol counts ``freq`` [K] (0 for unused symbols)."""
    used = np.flatnonzero(freq)
    lengths = np.zeros(len(freq), np.int64)
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    f = freq[used].astype(np.int64)
    floor = 0
    while True:  # flatten the counts until no code is longer than _MAX_HUFF_LEN
        w = np.maximum(f, floor)
        heap = [(int(c), i) for i, c in enumerate(w)]
        heapq.heapify(heap)
        parent = list(range(len(w)))
        nxt = len(w)
        while len(heap) > 1:
            c1, a = heapq.heappop(heap)
            c2, b = heapq.heappop(heap)
            parent[a] = parent[b] = nxt
            parent.append(nxt)
            heapq.heappush(heap, (c1 + c2, nxt))
            nxt += 1
        depth = np.zeros(nxt, np.int64)
        for node in range(nxt - 2, -1, -1):  # parents are created after their children
            depth[node] = depth[parent[node]] + 1
        if depth[: len(w)].max() <= _MAX_HUFF_LEN:
            lengths[used] = depth[: len(w)]
            return lengths
        floor = max(2 * floor, int(f.sum()) >> (_MAX_HUFF_LEN - 2), 1)


def _canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes: symbols ordered by (length, symbol) get consecutive codes."""
    codes = np.zeros(len(lengths), np.int64)
    order = np.lexsort((np.arange(len(lengths)), lengths))
    order = order[lengths[order] > 0]
    code, prev = 0, int(lengths[order[0]])
    for i, s in enumerate(order):  # one iteration per distinct symbol
        ln = int(lengths[s])
        if i:
            code = (code + 1) << (ln - prev)
        codes[s], prev = code, ln
    return codes


def _huffman_encode(sym: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    codes = _canonical_codes(lengths)
    ln, cd = lengths[sym], codes[sym]
    total = int(ln.sum())
    starts = np.cumsum(ln) - ln
    bits = np.zeros(total, np.uint8)
    for j in range(int(ln.max())):
        m = ln > j
        bits[starts[m] + j] = (cd[m] >> (ln[m] - 1 - j)) & 1
    return np.packbits(bits).tobytes(), total


def _huffman_decode(data: bytes, lengths: np.ndarray, n: int, nbits: int) -> np.ndarray:
    """Decodes ``n`` symbols without a Python loop over them: table look-up at every bit
    position, then the chain of code starts from bit 0 by pointer doubling."""
    if len(data) != math.ceil(nbits / 8) or lengths.max(initial=0) > _MAX_HUFF_LEN:
        raise ValueError("corrupted Huffman stream")
    codes = _canonical_codes(lengths)
    width = int(lengths.max())
    used = np.flatnonzero(lengths)
    span = np.int64(1) << (width - lengths[used])
    if int(span.sum()) > (1 << width):
        raise ValueError("corrupted Huffman code lengths")
    tab_sym = np.zeros(1 << width, np.int64)
    tab_len = np.full(1 << width, nbits + 1, np.int64)  # invalid codes jump past the end
    starts = codes[used] << (width - lengths[used])
    idx = np.repeat(starts, span) + (
        np.arange(int(span.sum())) - np.repeat(np.cumsum(span) - span, span)
    )
    tab_sym[idx] = np.repeat(used, span)
    tab_len[idx] = np.repeat(lengths[used], span)
    bits = np.concatenate(
        [np.unpackbits(np.frombuffer(data, np.uint8), count=nbits), np.zeros(width, np.uint8)]
    ).astype(np.int64)
    window = np.zeros(nbits, np.int64)
    for j in range(width):
        window = (window << 1) | bits[j : j + nbits]
    jump = np.minimum(np.arange(nbits) + tab_len[window], nbits)
    jump = np.append(jump, nbits)
    pos = np.zeros(1, np.int64)
    while len(pos) < n:
        pos = np.concatenate([pos, jump[pos]])
        jump = jump[jump]
    pos = pos[:n]
    if n and (pos.max() >= nbits or int(tab_len[window[pos]].sum()) != nbits):
        raise ValueError("corrupted Huffman stream")
    return tab_sym[window[pos]]


# --------------------------------------------------------------------------- integer streams


def _encode_ints(
    sym: np.ndarray, parts: list[bytes], entropy: bool
) -> list[tuple[dict, list[bytes]]]:
    """Candidate encodings of non-negative ints ``sym``: fixed width, Huffman, zlib, lzma."""
    n = int(sym.size)
    width = int(sym.max()).bit_length() if n else 0
    fixed = _pack_bits(sym, width)
    out = [({"c": "fixed", "n": n, "w": width, "p": len(parts)}, [fixed])]
    if not entropy or n == 0 or width == 0:
        return out
    freq = np.bincount(sym)
    if np.count_nonzero(freq) <= max(n // 4, 2):  # else the code table outweighs any gain
        lengths = _huffman_lengths(freq)
        data, nbits = _huffman_encode(sym, lengths)
        table = _pack_bits(lengths, 5)
        spec = {"c": "huff", "n": n, "k": len(freq), "nb": nbits, "p": len(parts)}
        out.append((spec, [table, data]))
    out.append(({"c": "zlib", "n": n, "w": width, "p": len(parts)}, [zlib.compress(fixed, 9)]))
    out.append(
        ({"c": "lzma", "n": n, "w": width, "p": len(parts)}, [lzma.compress(fixed, lzma.FORMAT_XZ)])
    )
    return out


def _decode_ints(spec: dict, parts: list[bytes]) -> np.ndarray:
    c, n, p = spec["c"], spec["n"], spec["p"]
    if c == "fixed":
        return _unpack_bits(parts[p], spec["w"], n)
    if c == "huff":
        lengths = _unpack_bits(parts[p], 5, spec["k"])
        return _huffman_decode(parts[p + 1], lengths, n, spec["nb"])
    if c in ("zlib", "lzma"):
        try:
            raw = zlib.decompress(parts[p]) if c == "zlib" else lzma.decompress(parts[p])
        except (zlib.error, lzma.LZMAError) as e:
            raise ValueError(f"corrupted {c} stream") from e
        return _unpack_bits(raw, spec["w"], n)
    raise ValueError(f"unknown integer coding {c!r}")


def _best_ints(sym: np.ndarray, parts: list[bytes], entropy: bool) -> dict:
    """Appends the smallest encoding of ``sym`` to ``parts``; returns its spec."""
    spec, blobs = min(_encode_ints(sym, parts, entropy), key=lambda c: sum(map(len, c[1])))
    parts.extend(blobs)
    return spec


# --------------------------------------------------------------------------- positions


def _encode_positions(idx: np.ndarray, n: int, parts: list[bytes], entropy: bool) -> dict:
    """Smallest of a bitmask and relative indices for the sorted flat indices ``idx`` of [n]."""
    mask = np.zeros(n, np.int64)
    mask[idx] = 1
    cands = []
    for spec, blobs in _encode_ints(mask, parts, entropy):
        cands.append(({"pos": "mask", "s": spec}, blobs))
    gaps = np.diff(idx, prepend=-1) - 1  # zeros before each non-zero
    if idx.size:
        # b-bit symbols; the top symbol 2**b - 1 skips that many positions (Deep Compression's
        # filler entries, without a value slot); pick the b with the fewest bits.
        cost = [b * int((gaps // (2**b - 1)).sum() + gaps.size) for b in range(1, 17)]
        b = 1 + int(np.argmin(cost))
        top = 2**b - 1
        reps = gaps // top
        sym = np.full(int(reps.sum() + gaps.size), top, np.int64)
        ends = np.cumsum(reps + 1) - 1
        sym[ends] = gaps % top
        for spec, blobs in _encode_ints(sym, parts, entropy):
            cands.append(({"pos": "rel", "b": b, "m": int(idx.size), "s": spec}, blobs))
    spec, blobs = min(cands, key=lambda c: sum(map(len, c[1])))
    parts.extend(blobs)
    return spec


def _decode_positions(spec: dict, n: int, parts: list[bytes]) -> np.ndarray:
    sym = _decode_ints(spec["s"], parts)
    if spec["pos"] == "mask":
        if sym.size != n:
            raise ValueError("corrupted position bitmask")
        return np.flatnonzero(sym)
    top = 2 ** spec["b"] - 1
    is_elem = sym != top
    advance = np.where(is_elem, sym + 1, top)
    idx = (np.cumsum(advance) - 1)[is_elem]
    if idx.size != spec["m"] or (idx.size and (idx[-1] >= n or idx[0] < 0)):
        raise ValueError("corrupted relative indices")
    return idx


# --------------------------------------------------------------------------- uniform grids


def _group_ids(idx: np.ndarray, shape: tuple[int, ...], gran: dict) -> tuple[np.ndarray, int]:
    """Group of each flat index under a granularity: one scale per tensor / channel / group."""
    if gran["kind"] == "tensor":
        return np.zeros(idx.shape, np.int64), 1
    strides = np.cumprod((1, *shape[::-1]))[:-1][::-1]

    def coord(a):
        return (idx // strides[a]) % shape[a]

    if gran["kind"] == "axis":
        return coord(gran["axis"]), shape[gran["axis"]]
    ga, size = gran["gaxis"], gran["size"]
    ngroups = shape[ga] // size
    gid = coord(ga) // size
    if gran.get("axis") is None:
        return gid, ngroups
    return gid * shape[gran["axis"]] + coord(gran["axis"]), ngroups * shape[gran["axis"]]


def _granularities(shape: tuple[int, ...]) -> list[dict]:
    out: list[dict] = [{"kind": "tensor"}]
    nd = len(shape)
    out += [{"kind": "axis", "axis": a} for a in range(nd - 1, -1, -1) if shape[a] > 1]
    if nd >= 2:
        for ga in (nd - 2, 0) if nd > 2 else (0,):
            sizes = [2**i for i in range(12, 0, -1) if shape[ga] % 2**i == 0 and 2**i < shape[ga]]
            for size in sizes:
                out += [
                    {"kind": "group", "gaxis": ga, "size": size, "axis": a} for a in (nd - 1, None)
                ]
    return out


def _grid_values(n: np.ndarray, scale: np.ndarray, gid: np.ndarray, dt: np.dtype) -> np.ndarray:
    """Decoding arithmetic of `lightcomp.quant.dequantize`: float32 ``n * scale``, cast."""
    return (n.astype(np.float32) * scale[gid]).astype(dt)


def _find_grid(
    v: np.ndarray, gid: np.ndarray, ngroups: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Integers ``n`` and float32 scales [ngroups] with ``_grid_values(n, scale) == v`` bitwise.

    The step of each group is first estimated (smallest gap between its distinct magnitudes,
    then the min-max formulas of `lightcomp.quant` for 2..16 bits); given the integers, the
    scales that reproduce every value form an interval (each value's rounding interval
    divided by its integer), intersected per group; candidates from it are verified.
    """
    dt = v.dtype
    v64 = v.astype(np.float64)
    a = np.abs(v64)
    fi = ml_dtypes.finfo(dt)
    m, e = np.frexp(a)
    ulp = np.maximum(np.ldexp(1.0, e - 1 - fi.nmant), float(fi.smallest_subnormal))
    below = np.where(m == 0.5, ulp / 2, ulp)
    a_lo, a_hi = a - 0.5 * below, a + 0.5 * ulp  # the rounding interval (ties: verified)

    def seg(fn, init, values, ids=gid):
        out = np.full(ngroups, init, np.float64)
        with np.errstate(invalid="ignore"):  # NaN leaves: no grid, rejected below
            fn.at(out, ids, values)
        return out

    amax = seg(np.maximum, 0.0, a)
    vmax, vmin = seg(np.maximum, 0.0, v64), seg(np.minimum, 0.0, v64)
    order = np.lexsort((a, gid))
    sa, sg = a[order], gid[order]
    with np.errstate(invalid="ignore"):
        d = np.diff(sa)
    ok = (np.diff(sg) == 0) & (d > 0)
    gap = seg(np.minimum, np.inf, d[ok], sg[1:][ok])
    first = seg(np.minimum, np.inf, a[a > 0], gid[a > 0])
    estimates = [np.minimum(gap, first)]
    for b in range(2, 17):
        estimates.append(amax / (2 ** (b - 1) - 1))
        estimates.append((np.maximum(vmax, 0) - np.minimum(vmin, 0)) / (2**b - 1))
    tol = min(0.3, 2.0 ** (17 - fi.nmant))  # |v / est - n| allowed by v's own rounding
    n_out = np.zeros(v.shape, np.int64)
    scale = np.ones(ngroups, np.float32)
    done = amax == 0  # all-zero groups: n = 0 with any scale
    for est in estimates:
        if done.all():
            break
        est = np.where(np.isfinite(est) & (est > 0), est, 1.0)
        with np.errstate(all="ignore"):
            n = np.rint(v64 / est[gid])
        if not np.all(np.isfinite(n)) or np.abs(n).max(initial=0) > 2**16:
            continue
        resid = seg(np.maximum, 0.0, np.abs(v64 / est[gid] - n))
        if not np.any((resid < tol) & ~done):  # cheap rejection: values far from the grid
            continue
        an = np.abs(n)
        nz = an > 0
        bad = (nz != (a > 0)) | (nz & (np.sign(n) != np.sign(v64)))
        safe = np.where(nz, an, 1.0)
        lo = seg(np.maximum, 0.0, np.where(nz, a_lo / safe, 0.0))
        hi = seg(np.minimum, np.inf, np.where(nz, a_hi / safe, np.inf))
        badg = seg(np.maximum, 0.0, bad.astype(np.float64)) > 0
        good = ~badg & (lo <= hi) & ~done & (resid < tol)
        if not good.any():
            continue
        with np.errstate(all="ignore"):
            mid = np.where(np.isfinite(hi), (lo + hi) / 2, est).astype(np.float32)
            lo32, hi32 = (
                lo.astype(np.float32),
                np.where(np.isfinite(hi), hi, est).astype(np.float32),
            )
        up, down = np.float32(np.inf), np.float32(0)
        for s in (
            mid,
            np.nextafter(mid, up),
            np.nextafter(mid, down),
            lo32,
            np.nextafter(lo32, up),
            hi32,
            np.nextafter(hi32, down),
        ):
            if done.all():
                break
            s = np.where(np.isfinite(s) & (s > 0), s, np.float32(1)).astype(np.float32)
            wrong = (
                seg(
                    np.maximum,
                    0.0,
                    (_bits_of(_grid_values(n, s, gid, dt)) != _bits_of(v)).astype(np.float64),
                )
                > 0
            )
            new = good & ~wrong & ~done
            take = new[gid]
            n_out[take] = n[take]
            scale[new] = s[new]
            done |= new
    return (n_out, scale) if done.all() else None


def _encode_grid(v, idx, shape, entropy) -> list[tuple[dict, list[bytes]]]:
    """Grid candidates: part 0 holds the float32 scales, then zero points, then integers."""
    out = []
    for gran in _granularities(shape):
        gid, ngroups = _group_ids(idx, shape, gran)
        if ngroups > max(v.size // 2, 1):
            continue  # more scales than half the values: a codebook or raw floats win
        found = _find_grid(v, gid, ngroups)
        if found is None:
            continue
        n, scale = found
        base = {"val": "grid", "g": gran, "G": ngroups, "sp": 0}
        # one tensor-wide offset ...
        lo = int(n.min(initial=0))
        i_parts: list[bytes] = []
        ispec = _best_ints(n - lo, i_parts, entropy)
        out.append(({**base, "off": lo, "s": _shift(ispec, 1)}, [scale.tobytes(), *i_parts]))
        # ... or a zero point per group (affine)
        if ngroups > 1:
            zp = np.full(ngroups, 2**20, np.int64)
            np.minimum.at(zp, gid, n)
            zp[zp == 2**20] = 0  # groups without values (all pruned)
            zlo = int(zp.min(initial=0))
            z_parts: list[bytes] = []
            zspec = _best_ints(zp - zlo, z_parts, entropy)
            i_parts = []
            ispec = _best_ints(n - zp[gid], i_parts, entropy)
            spec = {
                **base,
                "zoff": zlo,
                "z": _shift(zspec, 1),
                "s": _shift(ispec, 1 + len(z_parts)),
            }
            out.append((spec, [scale.tobytes(), *z_parts, *i_parts]))
        if int(n.max(initial=0)) - lo < 256:
            break  # a grid of at most 8 bits: finer granularities only add scales
    return out


def _shift(spec: dict, by: int) -> dict:
    return {**spec, "p": spec["p"] + by}


def _decode_grid(spec, idx, shape, dt, parts) -> np.ndarray:
    gid, ngroups = _group_ids(idx, shape, spec["g"])
    if ngroups != spec["G"] or len(parts[spec["sp"]]) != 4 * ngroups:
        raise ValueError("corrupted grid scales")
    scale = np.frombuffer(parts[spec["sp"]], np.float32)
    n = _decode_ints(spec["s"], parts)
    if n.size != idx.size:
        raise ValueError("corrupted grid integers")
    if "z" in spec:
        zp = _decode_ints(spec["z"], parts) + spec["zoff"]
        if zp.size != ngroups:
            raise ValueError("corrupted zero points")
        n = n + zp[gid]
    else:
        n = n + spec["off"]
    return _grid_values(n, scale, gid, dt)


# --------------------------------------------------------------------------- values


def _narrowest_float(v: np.ndarray) -> np.dtype:
    """The smallest float dtype that holds every value of ``v`` exactly (bitwise round trip)."""
    for name in ("float16", "bfloat16", "float32"):
        dt = np.dtype(_FLOATS[name])
        if dt.itemsize < v.dtype.itemsize:
            with np.errstate(all="ignore"):
                if _same_bits(v.astype(dt).astype(v.dtype), v):
                    return dt
    return v.dtype


def _encode_values(v, idx, shape, entropy) -> list[tuple[dict, list[bytes]]]:
    """Candidate encodings of the values ``v`` at flat positions ``idx`` of a leaf ``shape``."""
    cands = []
    if not _is_float(v.dtype):
        raw = v.tobytes()
        cands.append(({"val": "raw", "dt": v.dtype.name, "p": 0}, [raw]))
    else:
        dt = _narrowest_float(v)
        raw = v.astype(dt).tobytes()
        cands.append(({"val": "raw", "dt": dt.name, "p": 0}, [raw]))
        if v.size <= 2**24:
            uniq, inv = np.unique(_bits_of(v), return_inverse=True)
            if len(uniq) <= 2**16 and len(uniq) < v.size:
                book = uniq.view(v.dtype)
                bdt = _narrowest_float(book)
                sub: list[bytes] = []
                ispec = _best_ints(inv.ravel().astype(np.int64), sub, entropy)
                spec = {
                    "val": "book",
                    "dt": bdt.name,
                    "k": len(uniq),
                    "bp": 0,
                    "s": _shift(ispec, 1),
                }
                cands.append((spec, [book.astype(bdt).tobytes(), *sub]))
            if v.dtype.name != "float64":
                cands += _encode_grid(v, idx, shape, entropy)
    if entropy and len(raw) > 64:
        for codec, fn in (("zlib", lambda b: zlib.compress(b, 9)), ("lzma", lzma.compress)):
            cands.append(({"val": "raw", "dt": cands[0][0]["dt"], "z": codec, "p": 0}, [fn(raw)]))
    return cands


def _decode_values(spec: dict, idx: np.ndarray, shape, dt: np.dtype, parts) -> np.ndarray:
    kind = spec["val"]
    if kind == "raw":
        data = parts[spec["p"]]
        if "z" in spec:
            try:
                data = zlib.decompress(data) if spec["z"] == "zlib" else lzma.decompress(data)
            except (zlib.error, lzma.LZMAError) as e:
                raise ValueError("corrupted compressed values") from e
        sdt = _dtype(spec["dt"])
        if len(data) != idx.size * sdt.itemsize:
            raise ValueError("corrupted raw values")
        return np.frombuffer(data, sdt).astype(dt)
    if kind == "book":
        bdt = _dtype(spec["dt"])
        book = np.frombuffer(parts[spec["bp"]], bdt).astype(dt)
        inds = _decode_ints(spec["s"], parts)
        if (
            book.size != spec["k"]
            or inds.size != idx.size
            or (inds.size and inds.max() >= book.size)
        ):
            raise ValueError("corrupted codebook")
        return book[inds]
    if kind == "grid":
        return _decode_grid(spec, idx, shape, dt, parts)
    raise ValueError(f"unknown value encoding {kind!r}")


# --------------------------------------------------------------------------- leaves


def _relocate(spec: Any, by: int) -> Any:
    """Adds ``by`` to every part index (keys ``p``, ``sp``, ``bp``) of a nested spec."""
    if isinstance(spec, dict):
        return {
            k: (v + by if k in ("p", "sp", "bp") else _relocate(v, by)) for k, v in spec.items()
        }
    return spec


def _encode_leaf(x: np.ndarray, entropy: bool) -> tuple[dict, list[bytes]]:
    """The smallest verified encoding of one leaf: ``(enc spec, parts)``."""
    shape, size = x.shape, x.size
    flat = x.reshape(-1)
    negz_spec, negz_parts = None, []
    if _is_float(x.dtype):
        b = _bits_of(flat)
        signbit = np.array(1 << (8 * x.dtype.itemsize - 1)).astype(b.dtype)
        negz = np.flatnonzero(b == signbit)
        if negz.size:
            negz_spec = _encode_positions(negz, size, negz_parts, entropy)
            flat = np.where(b == signbit, np.zeros((), x.dtype), flat)
        nonzero = np.flatnonzero(_bits_of(flat) != 0)
    else:
        nonzero = np.flatnonzero(flat)
    layouts = [(None, [], np.arange(size))]
    if 0 < nonzero.size < size or (size and nonzero.size == 0):
        pos_parts: list[bytes] = []
        layouts.append((_encode_positions(nonzero, size, pos_parts, entropy), pos_parts, nonzero))
    cands = []
    for pos_spec, pos_parts, idx in layouts:
        base = len(pos_parts) + len(negz_parts)
        for vspec, vparts in _encode_values(flat[idx], idx, shape, entropy):
            enc = {"pos": _relocate(pos_spec, len(negz_parts)), "val": _relocate(vspec, base)}
            enc["negz"] = negz_spec
            parts = [*negz_parts, *pos_parts, *vparts]
            cost = sum(map(len, parts)) + len(json.dumps(enc, separators=(",", ":"))) // 4
            cands.append((cost, len(cands), enc, parts))
    for _, _, enc, parts in sorted(cands, key=lambda c: c[:2]):
        try:
            if _same_bits(_decode_leaf(enc, shape, x.dtype, parts), x):
                return enc, parts
        except ValueError:  # a candidate that does not decode is not chosen
            continue
    raise AssertionError("raw encoding failed to round-trip")  # unreachable: raw is exact


def _decode_leaf(enc: dict, shape, dt: np.dtype, parts: list[bytes]) -> np.ndarray:
    size = math.prod(shape)
    idx = np.arange(size) if enc["pos"] is None else _decode_positions(enc["pos"], size, parts)
    out = np.zeros(size, dt)
    out[idx] = _decode_values(enc["val"], idx, shape, dt, parts)
    if enc.get("negz") is not None:
        neg = _decode_positions(enc["negz"], size, parts)
        b = _bits_of(out)
        b[neg] = np.array(1 << (8 * dt.itemsize - 1)).astype(b.dtype)
    return out.reshape(shape)


def _describe(enc: dict) -> str:
    """A short human description of a leaf encoding, e.g. ``rel4+huff | grid axis=-1 w3``."""

    def ints(s):
        return f"{s['w']}b" if s["c"] == "fixed" else s["c"]

    out = []
    pos = enc["pos"]
    if pos is not None:
        out.append(
            f"mask/{ints(pos['s'])}" if pos["pos"] == "mask" else f"rel{pos['b']}/{ints(pos['s'])}"
        )
    v = enc["val"]
    if v["val"] == "raw":
        out.append(v["dt"] + (f"/{v['z']}" if "z" in v else ""))
    elif v["val"] == "book":
        out.append(f"book{v['k']}/{ints(v['s'])}")
    else:
        g = v["g"]
        gd = {"tensor": "tensor", "axis": f"axis{g.get('axis')}", "group": f"group{g.get('size')}"}
        out.append(f"grid {gd[g['kind']]}{'+zp' if 'z' in v else ''}/{ints(v['s'])}")
    if enc.get("negz") is not None:
        out.append("-0")
    return " | ".join(out)


# --------------------------------------------------------------------------- tree structure


def _skeleton(node: Any, counter: list[int]) -> Any:
    """A JSON form of a pytree's containers, in jax's leaf order; leaves become ``{"leaf": i}``."""
    if node is None:
        return None
    if isinstance(node, Mapping) and type(node) is dict:
        return {"dict": [[k, _skeleton(node[k], counter)] for k in sorted(node)]}
    if type(node) in (list, tuple):
        return {type(node).__name__: [_skeleton(c, counter) for c in node]}
    children, treedef = jax.tree_util.tree_flatten_with_path(node, is_leaf=lambda c: c is not node)
    if (
        treedef.num_leaves == 1
        and jax.tree_util.treedef_is_leaf(treedef)
        and children[0][1] is node
    ):
        counter[0] += 1
        return {"leaf": counter[0] - 1}
    keys = [jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in children]
    return {
        "node": type(node).__name__,
        "keys": [[k, _skeleton(c, counter)] for k, (_, c) in zip(keys, children, strict=True)],
    }


def _rebuild(skel: Any, leaves: list) -> Any:
    if skel is None:
        return None
    if not isinstance(skel, dict) or len(skel) == 0:
        raise ValueError("corrupted tree structure in the manifest")
    if "leaf" in skel:
        return leaves[skel["leaf"]]
    if "dict" in skel:
        return {k: _rebuild(c, leaves) for k, c in skel["dict"]}
    if "list" in skel:
        return [_rebuild(c, leaves) for c in skel["list"]]
    if "tuple" in skel:
        return tuple(_rebuild(c, leaves) for c in skel["tuple"])
    if "node" in skel:
        return {k: _rebuild(c, leaves) for k, c in skel["keys"]}
    raise ValueError("corrupted tree structure in the manifest")


# --------------------------------------------------------------------------- public API


def pack(params: Any, cstate: Any = None, transform: Any = None, *, entropy: bool = True) -> Packed:
    """Packs parameters into the smallest verified per-leaf encodings.

    Args:
      params: a pytree of arrays: the effective parameters the student evaluates with, or
        its raw parameters when ``cstate`` and ``transform`` are given.
      cstate: the transform's state; with ``transform``, the packed parameters are
        ``jax.jit(transform.apply)(params, cstate)``.
      transform: a `lightcomp.Transform` (needed with ``cstate``).
      entropy: also try Huffman / zlib / lzma coding of the integer streams and values.

    Returns:
      `Packed`; ``unpack(pack(p))`` equals ``p`` bit for bit (dtypes, shapes, structure).

    Raises:
      ValueError: only one of ``cstate`` and ``transform`` is given.
      TypeError: a leaf is not an array (the message names its path).
    """
    if (cstate is None) != (transform is None):
        raise ValueError(
            "pack: give both cstate and transform (to pack transform.apply(params, cstate)), "
            "or neither (params are then the effective parameters)"
        )
    path_leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    for path, leaf in path_leaves:
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, bool)):
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            raise TypeError(f"pack: params leaf {name!r} is a {type(leaf).__name__}, not an array")
    if transform is not None:
        params = jax.jit(transform.apply)(params, cstate)
        path_leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    counter = [0]
    structure = _skeleton(params, counter)
    if counter[0] != len(path_leaves):
        raise TypeError("pack: params contain a leaf type whose structure cannot be recorded")
    leaves_meta, payload = [], []
    offset = 0
    for path, leaf in path_leaves:
        x = np.asarray(jax.device_get(leaf))
        enc, parts = _encode_leaf(x, entropy)
        spans = []
        for blob in parts:
            spans.append([offset, len(blob)])
            offset += len(blob)
        payload += parts
        leaves_meta.append(
            {
                "path": jax.tree_util.keystr(path, simple=True, separator="/"),
                "shape": list(x.shape),
                "dtype": x.dtype.name,
                "kind": "jax" if isinstance(leaf, jax.Array) else "numpy",
                "enc": enc,
                "parts": spans,
                "nbytes": sum(s[1] for s in spans),
            }
        )
    return Packed({"structure": structure, "leaves": leaves_meta}, b"".join(payload))


def unpack(packed: Packed, like: Any = None) -> Any:
    """Decodes a `Packed` back into parameters, bit for bit.

    Args:
      packed: from `pack` or `load`.
      like: optional template pytree; the result then takes its exact tree type (for
        ``nnx.State``, ``FrozenDict`` or custom nodes). Plain dicts, lists and tuples come
        back as they were without it; other containers come back as nested dicts.

    Returns:
      The parameter pytree: jax arrays (numpy arrays for leaves packed from numpy).

    Raises:
      ValueError: the packed data are inconsistent, or ``like`` has other leaf paths.
    """
    payload = packed.payload
    leaves = []
    try:
        for meta in packed.manifest["leaves"]:
            spans = meta["parts"]
            if any(o < 0 or n < 0 or o + n > len(payload) for o, n in spans):
                raise ValueError(f"leaf {meta['path']!r}: part outside the payload")
            parts = [payload[o : o + n] for o, n in spans]
            dt = _dtype(meta["dtype"])
            try:
                x = _decode_leaf(meta["enc"], tuple(meta["shape"]), dt, parts)
            except ValueError as e:
                raise ValueError(f"leaf {meta['path']!r}: {e}") from e
            if meta["kind"] == "jax" and jnp.asarray(x).dtype == x.dtype:
                x = jnp.asarray(x)
            leaves.append(x)
        structure = packed.manifest["structure"]
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"corrupted manifest: {e!r}") from e
    if like is not None:
        path_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
        want = [m["path"] for m in packed.manifest["leaves"]]
        got = [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in path_leaves]
        if want != got:
            bad = next(
                (i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
                min(len(want), len(got)),
            )
            raise ValueError(
                f"unpack: like's leaf paths differ from the packed ones at leaf {bad}: "
                f"{got[bad] if bad < len(got) else None!r} vs {want[bad] if bad < len(want) else None!r}"
            )
        return jax.tree_util.tree_unflatten(treedef, leaves)
    return _rebuild(structure, leaves)


def _manifest_bytes(packed: Packed) -> tuple[bytes, int]:
    doc = {"format": FORMAT_VERSION, **packed.manifest, "payload_bytes": len(packed.payload)}
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    small = zlib.compress(text, 9)
    return (small, 1) if len(small) < len(text) else (text, 0)


def save(path: str | os.PathLike, packed: Packed) -> int:
    """Writes ``packed`` to one file, atomically (temporary file + ``os.replace``).

    Returns:
      The file's size in bytes: ``packed.header_bytes + packed.nbytes``.

    Raises:
      OSError: the directory does not exist or is not writable.
    """
    path = Path(path)
    manifest, flags = _manifest_bytes(packed)
    body = manifest + packed.payload
    digest = hashlib.sha256(body).digest()
    header = _HEADER.pack(
        MAGIC, FORMAT_VERSION, flags, 0, len(manifest), len(packed.payload), digest
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(header) + len(body)


def load(path: str | os.PathLike) -> Packed:
    """Reads a file written by `save`, checking magic, version, lengths and the SHA-256.

    Raises:
      ValueError: the file is not a lightcomp packed file, is from a newer format
        version, is truncated, or is corrupted.
    """
    data = Path(path).read_bytes()
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{path}: not a lightcomp packed model file (bad magic bytes)")
    if len(data) < _HEADER.size:
        raise ValueError(
            f"{path}: truncated lightcomp file ({len(data)} bytes, header is {_HEADER.size})"
        )
    _, version, flags, _, mlen, plen, digest = _HEADER.unpack_from(data)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {version} is newer than this lightcomp reads "
            f"({FORMAT_VERSION}); upgrade lightcomp"
        )
    if version < 1:
        raise ValueError(f"{path}: corrupted lightcomp file (format version {version})")
    expected = _HEADER.size + mlen + plen
    if len(data) < expected:
        raise ValueError(f"{path}: truncated lightcomp file ({len(data)} of {expected} bytes)")
    if len(data) > expected:
        raise ValueError(
            f"{path}: corrupted lightcomp file ({len(data) - expected} trailing bytes)"
        )
    body = data[_HEADER.size :]
    if hashlib.sha256(body).digest() != digest:
        raise ValueError(f"{path}: corrupted lightcomp file (SHA-256 checksum mismatch)")
    try:
        text = zlib.decompress(body[:mlen]) if flags & 1 else body[:mlen]
        doc = json.loads(text)
        manifest = {"structure": doc["structure"], "leaves": doc["leaves"]}
        ok = doc["payload_bytes"] == plen and doc["format"] == version
    except (zlib.error, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: corrupted lightcomp manifest ({e})") from e
    if not ok:
        raise ValueError(f"{path}: corrupted lightcomp manifest (inconsistent lengths)")
    return Packed(manifest, body[mlen:])


def report(packed: Packed) -> dict:
    """Sizes of a packed model, per leaf and in total.

    Returns:
      ``{"leaves": [{"path", "shape", "dtype", "encoding", "size", "bytes",
      "bits_per_weight", "ratio_vs_float32"}], "size", "payload_bytes", "header_bytes",
      "file_bytes", "float32_bytes", "bits_per_weight", "ratio_vs_float32"}``.
      ``file_bytes == payload_bytes + header_bytes`` is the size `save` writes; the total
      ratio and bits per weight count the whole file.
    """
    rows = []
    for m in packed.manifest["leaves"]:
        size = math.prod(m["shape"])
        rows.append(
            {
                "path": m["path"],
                "shape": tuple(m["shape"]),
                "dtype": m["dtype"],
                "encoding": _describe(m["enc"]),
                "size": size,
                "bytes": m["nbytes"],
                "bits_per_weight": 8 * m["nbytes"] / max(size, 1),
                "ratio_vs_float32": 4 * size / max(m["nbytes"], 1),
            }
        )
    size = sum(r["size"] for r in rows)
    header = packed.header_bytes
    total = header + packed.nbytes
    return {
        "leaves": rows,
        "size": size,
        "payload_bytes": packed.nbytes,
        "header_bytes": header,
        "file_bytes": total,
        "float32_bytes": 4 * size,
        "bits_per_weight": 8 * total / max(size, 1),
        "ratio_vs_float32": 4 * size / total,
    }


def report_table(packed_or_report: Packed | dict, title: str = "packed model"):
    """The `report` as a ``rich.table.Table`` (print it with ``rich.print``)."""
    from rich.table import Table

    rep = report(packed_or_report) if isinstance(packed_or_report, Packed) else packed_or_report
    t = Table(title=title)
    for col in ("leaf", "shape", "dtype", "encoding", "bytes", "bits/weight", "x vs float32"):
        t.add_column(col, justify="left" if col in ("leaf", "encoding", "dtype") else "right")
    for r in rep["leaves"]:
        t.add_row(
            r["path"],
            str(r["shape"]),
            r["dtype"],
            r["encoding"],
            f"{r['bytes']:,}",
            f"{r['bits_per_weight']:.3f}",
            f"{r['ratio_vs_float32']:.1f}",
        )
    t.add_row("(header)", "", "", "magic, version, manifest", f"{rep['header_bytes']:,}", "", "")
    t.add_row(
        "total (file)",
        str(rep["size"]),
        "",
        "",
        f"{rep['file_bytes']:,}",
        f"{rep['bits_per_weight']:.3f}",
        f"{rep['ratio_vs_float32']:.1f}",
    )
    return t
