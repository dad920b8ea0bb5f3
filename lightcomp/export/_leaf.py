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

from lightcomp.export._format import bits_of, is_float, same_bits
from lightcomp.export._positions import decode_positions, encode_positions
from lightcomp.export._streams import EXHAUSTIVE_MAX
from lightcomp.export._values import decode_values, value_candidates


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

    Args:
      x: the leaf, any shape and dtype NumPy holds (bfloat16 included).
      entropy: also try Huffman / zlib / lzma on integer streams and values.

    Returns:
      ``(spec, parts)``: ``decode_leaf(spec, x.shape, x.dtype, parts)`` equals ``x`` bitwise.
    """
    shape, size = x.shape, x.size
    flat = x.reshape(-1)
    negz_spec, negz_parts = None, []
    if is_float(x.dtype):
        b = bits_of(flat)
        signbit = _sign_bit(x.dtype)
        negz = np.flatnonzero(b == signbit)
        if negz.size:
            negz_spec = encode_positions(negz, size, negz_parts, entropy)
            flat = np.where(b == signbit, np.zeros((), x.dtype), flat)
        nonzero = np.flatnonzero(bits_of(flat) != 0)
    else:
        nonzero = np.flatnonzero(flat)
    sparse = 0 < nonzero.size < size or (size and nonzero.size == 0)
    layouts = []
    if not sparse or size <= EXHAUSTIVE_MAX or 2 * nonzero.size > size:
        layouts.append((None, [], np.arange(size)))
    if sparse and (size <= EXHAUSTIVE_MAX or 2 * nonzero.size <= size):
        pos_parts: list[bytes] = []
        layouts.append((encode_positions(nonzero, size, pos_parts, entropy), pos_parts, nonzero))
    cands = []
    for pos_spec, pos_parts, idx in layouts:
        base = len(pos_parts) + len(negz_parts)
        for vspec, vparts in value_candidates(flat[idx], idx, shape, entropy):
            enc = {"pos": relocate(pos_spec, len(negz_parts)), "val": relocate(vspec, base)}
            enc["negz"] = negz_spec
            parts = [*negz_parts, *pos_parts, *vparts]
            cost = sum(map(len, parts)) + len(json.dumps(enc, separators=(",", ":"))) // 4
            cands.append((cost, len(cands), enc, parts))
    for _, _, enc, parts in sorted(cands, key=lambda c: c[:2]):
        try:
            if same_bits(decode_leaf(enc, shape, x.dtype, parts), x):
                return enc, parts
        except ValueError:  # a candidate that does not decode is not chosen
            continue
    raise AssertionError("raw encoding failed to round-trip")  # unreachable: raw is exact


def decode_leaf(enc: dict, shape: tuple[int, ...], dt: np.dtype, parts: list[bytes]) -> np.ndarray:
    """The leaf ``[*shape]`` of dtype ``dt`` that an `encode_leaf` spec and its parts describe.

    The positions and values are decoded (each checking its declared counts first)
    before the leaf itself is allocated; a dense leaf is its values, without a zero fill.

    Raises:
      ValueError: the parts do not decode (a corrupted file).
    """
    size = math.prod(shape)
    idx = None if enc["pos"] is None else decode_positions(enc["pos"], size, parts)
    values = decode_values(enc["val"], idx, shape, dt, parts)
    if idx is None:
        out = np.array(values, dt, copy=True)  # writable, not a view of the payload
    else:
        out = np.zeros(size, dt)
        out[idx] = values
    if enc.get("negz") is not None:
        neg = decode_positions(enc["negz"], size, parts)
        bits_of(out)[neg] = _sign_bit(dt)
    return out.reshape(shape)
