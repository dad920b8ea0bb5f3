"""One leaf's encoding: positions of the non-zeros, the values, and the negative zeros.

A leaf is stored as up to three independent parts: the positions of its non-zeros
(when it has exact zeros; `lightcomp.export._positions`), the values (all, or the
non-zeros; `lightcomp.export._values`), and the positions of its negative zeros (they
differ from ``+0`` in one bit). Every combination of candidates is ranked by its
bytes plus a quarter of its JSON spec's length, and the first that decodes back bit
for bit is chosen: a leaf always round-trips, because raw values are exact. A leaf of
more than `EXHAUSTIVE_MAX` values is stored sparse (positions, then the non-zeros) when
at most half of it is non-zero, and dense otherwise, without coding the other layout.

The spec: ``{"pos": positions spec or None, "val": values spec, "negz": positions spec
or None}``; part indices in it (``p``, ``sp``, ``bp``) count from the leaf's first part.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from lightcomp.export._format import bits_of, is_float
from lightcomp.export._positions import decode_positions, encode_positions
from lightcomp.export._segments import spans
from lightcomp.export._streams import EXHAUSTIVE_MAX
from lightcomp.export._values import value_candidates, value_chunks
from lightcomp.export._views import PlusZero, materialized


def relocate(spec: Any, by: int) -> Any:
    """Adds ``by`` to every part index (keys ``p``, ``sp``, ``bp``) of a nested spec."""
    if isinstance(spec, dict):
        return {k: (v + by if k in ("p", "sp", "bp") else relocate(v, by)) for k, v in spec.items()}
    return spec


def _sign_bit(dt: np.dtype) -> np.ndarray:
    """The bit pattern of ``-0.0`` in ``dt``, as its unsigned integer of the same size."""
    return np.array(1 << (8 * dt.itemsize - 1)).astype(f"u{dt.itemsize}")


def encode_leaf(x: np.ndarray, entropy: bool) -> tuple[dict, list[bytes]]:
    """The smallest verified encoding of one leaf.

    No copy of the leaf is made: negative zeros are stored apart and the values read
    with ``+0`` in their place (`lightcomp.export._views.PlusZero`); a dense leaf's
    positions are never listed; candidates are verified chunk by chunk against ``x``.

    Args:
      x: the leaf, any shape and dtype NumPy holds (bfloat16 included).
      entropy: also try Huffman / zlib / lzma on integer streams and values.

    Returns:
      ``(spec, parts)``: ``decode_leaf(spec, x.shape, x.dtype, parts)`` equals ``x``
      bitwise. A part is ``bytes`` or a memoryview of ``x``'s bytes.
    """
    shape, size = x.shape, x.size
    flat = x.reshape(-1)
    negz_spec, negz_parts = None, []
    if is_float(x.dtype):
        negz = np.flatnonzero(bits_of(flat) == _sign_bit(x.dtype))
        present = bits_of(flat) != 0
        if negz.size:
            negz_spec = encode_positions(negz, size, negz_parts, entropy)
            present[negz] = False
            flat = PlusZero(flat)  # read with +0 in place of -0, without a copy
    else:
        present = flat != 0
    count = int(np.count_nonzero(present))
    sparse = 0 < count < size or (size and count == 0)
    layouts = []
    if not sparse or size <= EXHAUSTIVE_MAX or 2 * count > size:
        layouts.append((None, [], None))
    if sparse and (size <= EXHAUSTIVE_MAX or 2 * count <= size):
        nonzero = _positions(present, count)
        pos_parts: list[bytes] = []
        layouts.append((encode_positions(nonzero, size, pos_parts, entropy), pos_parts, nonzero))
    del present
    cands = []
    for pos_spec, pos_parts, idx in layouts:
        base = len(pos_parts) + len(negz_parts)
        values = flat if idx is None else flat[idx]
        for vspec, vparts in value_candidates(values, idx, shape, entropy):
            enc = {"pos": relocate(pos_spec, len(negz_parts)), "val": relocate(vspec, base)}
            enc["negz"] = negz_spec
            parts = [*negz_parts, *pos_parts, *vparts]
            cost = sum(map(len, parts)) + len(json.dumps(enc, separators=(",", ":"))) // 4
            cands.append((cost, len(cands), enc, parts))
        del values
    for _, _, enc, parts in sorted(cands, key=lambda c: c[:2]):
        try:
            parts = materialized(parts)
            if (_dense_matches if enc["pos"] is None else _sparse_matches)(enc, x, parts):
                return enc, parts
        except ValueError:  # a candidate that does not decode is not chosen
            continue
    raise AssertionError("raw encoding failed to round-trip")  # unreachable: raw is exact


def _positions(present: np.ndarray, count: int) -> np.ndarray:
    """The flat indices where ``present`` is True, sorted: int32 when they fit, built by chunks."""
    out = np.empty(count, np.int32 if present.size < 2**31 else np.int64)
    w = 0
    for lo, hi in spans(present.size):
        p = np.flatnonzero(present[lo:hi])
        out[w : w + p.size] = p + lo
        w += p.size
    return out


def _dense_matches(enc: dict, x: np.ndarray, parts: list[bytes]) -> bool:
    """Whether a dense spec decodes to ``x`` bit for bit, compared chunk by chunk.

    The same verdict as ``same_bits(decode_leaf(enc, ...), x)``, without the leaf.

    Raises:
      ValueError: the parts do not decode.
    """
    want = bits_of(x.reshape(-1))
    neg = None if enc.get("negz") is None else decode_positions(enc["negz"], x.size, parts)
    lo = 0
    for values in value_chunks(enc["val"], None, x.shape, x.dtype, parts):
        hi = lo + values.size
        if hi > x.size:
            return False
        got = bits_of(values)
        if neg is not None:
            here = neg[(neg >= lo) & (neg < hi)]
            got[here - lo] = _sign_bit(x.dtype)
        if not np.array_equal(got, want[lo:hi]):
            return False
        lo = hi
    return lo == x.size


def _sparse_matches(enc: dict, x: np.ndarray, parts: list[bytes]) -> bool:
    """Whether a sparse spec decodes to ``x`` bit for bit, without the decoded leaf.

    The decoded leaf is ``-0`` at the (distinct) negative zeros ``neg``, the values at
    the other (distinct) positions ``idx``, and ``+0`` elsewhere. So it is ``x`` exactly
    when ``x`` is ``-0`` at ``neg``, equals the values at ``idx`` outside ``neg``, and
    has no other non-zero bits: its count of non-zero bit patterns is ``len(neg)`` plus
    that of the values at ``idx`` outside ``neg``.

    Raises:
      ValueError: the parts do not decode.
    """
    flat, sign = bits_of(x.reshape(-1)), _sign_bit(x.dtype)
    idx = decode_positions(enc["pos"], x.size, parts)
    neg = np.zeros(0, np.int64)
    if enc.get("negz") is not None:
        neg = decode_positions(enc["negz"], x.size, parts)
        if not np.all(flat[neg] == sign):
            return False
    lo, nonzero = 0, neg.size
    for values in value_chunks(enc["val"], idx, x.shape, x.dtype, parts):
        hi = lo + values.size
        if hi > idx.size:
            return False
        at, got = idx[lo:hi], bits_of(values)
        keep = np.ones(at.size, bool)
        if neg.size:
            off = np.minimum(np.searchsorted(neg, at), neg.size - 1)
            keep = neg[off] != at
        if not np.array_equal(flat[at[keep]], got[keep]):
            return False
        nonzero += int(np.count_nonzero(got[keep]))
        lo = hi
    if lo != idx.size:
        return False
    total = sum(int(np.count_nonzero(flat[a:b])) for a, b in spans(flat.size))
    return total == nonzero


def decode_leaf(enc: dict, shape: tuple[int, ...], dt: np.dtype, parts: list[bytes]) -> np.ndarray:
    """The leaf ``[*shape]`` of dtype ``dt`` that an `encode_leaf` spec and its parts describe.

    The positions are decoded (checking their declared counts first), then the values
    chunk by chunk straight into the leaf (`lightcomp.export._values.value_chunks`): the
    leaf is the only full-size array made.

    Raises:
      ValueError: the parts do not decode (a corrupted file).
    """
    size = math.prod(shape)
    idx = None if enc["pos"] is None else decode_positions(enc["pos"], size, parts)
    m = size if idx is None else idx.size
    out = np.empty(size, dt) if idx is None else np.zeros(size, dt)
    lo = 0
    for values in value_chunks(enc["val"], idx, shape, dt, parts):
        hi = lo + values.size
        if hi > m:
            raise ValueError(f"corrupted values: more than the {m} expected")
        if idx is None:
            out[lo:hi] = values
        else:
            out[idx[lo:hi]] = values
        lo = hi
    if lo != m:
        raise ValueError(f"corrupted values: {lo}, not the {m} expected")
    if enc.get("negz") is not None:
        neg = decode_positions(enc["negz"], size, parts)
        bits_of(out)[neg] = _sign_bit(dt)
    return out.reshape(shape)
