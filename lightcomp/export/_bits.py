"""Bit packing: non-negative integers as fixed-width big-endian fields, across byte boundaries."""

from __future__ import annotations

import math
import sys

import numpy as np


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Packs ``values`` (non-negative ints < ``2**width``) as ``width``-bit fields.

    The fields are concatenated most significant bit first and the last byte is
    padded with zero bits, so ``n`` values take ``ceil(n * width / 8)`` bytes. Widths
    1, 2, 4, 8, 16 and 32 are byte-aligned NumPy casts; the others go through
    `write_codes`, in chunks (no Python loop over the values).

    Args:
      values: integers ``[n]`` (any shape; flattened), each in ``[0, 2**width)``.
      width: bits per value, 0..32 (0 stores nothing).

    Returns:
      The packed bytes.
    """
    if width == 0 or values.size == 0:
        return b""
    v = values.reshape(-1)
    if width in (8, 16, 32):
        return v.astype(f">u{width // 8}").tobytes()
    if width == 1:
        return np.packbits(v.astype(np.uint8)).tobytes()
    if width in (2, 4):
        per = 8 // width
        u = np.zeros(-(-v.size // per) * per, np.uint8)
        u[: v.size] = v
        u = u.reshape(-1, per)
        out = u[:, 0] << (8 - width)
        for j in range(1, per):  # 2 or 4 fields per byte
            out |= u[:, j] << (8 - width * (j + 1))
        return out.tobytes()
    return write_codes(v, None, width)[0]


_CHUNK = 1 << 15  # symbols per chunk of `write_codes`: a work space of ~2 MiB


def write_codes(sym: np.ndarray, codes: np.ndarray | None, lengths) -> tuple[bytes, int]:
    """Concatenates one code word per symbol, most significant bit first.

    The bit string is built in 64-bit words: a code of at most 32 bits lies in one word
    or straddles two; codes in one word have disjoint bits, so their sum is their union
    (``np.add.reduceat``), and at most one code spills into each next word. Symbols go
    in chunks of 2**15, so the work space is about 2 MiB whatever the stream's length.

    Args:
      sym: symbols ``[n]`` (non-negative ints).
      codes: the code of each symbol value (``codes[sym]``), or None: the code is the
        symbol itself.
      lengths: the code length of each symbol value (an array indexed by ``sym``, each
        1..32), or one int for every symbol.

    Returns:
      ``(bytes, nbits)``: the bit string, zero-padded to whole bytes, and its length.
    """
    n = sym.size
    const = isinstance(lengths, (int, np.integer))
    if const:
        total = n * int(lengths)
    else:  # summed by chunks: no int64 copy of the stream
        total = sum(
            int(lengths[sym[lo : lo + _CHUNK]].sum(dtype=np.int64)) for lo in range(0, n, _CHUNK)
        )
    words = np.zeros(-(-total // 64) + 1, np.uint64)
    base = 0
    for lo in range(0, n, _CHUNK):
        s = sym[lo : lo + _CHUNK]
        ln = np.full(s.size, int(lengths), np.int64) if const else lengths[s].astype(np.int64)
        c = (s if codes is None else codes[s]).astype(np.uint64)
        start = np.cumsum(ln)
        start -= ln
        start += base
        base = int(start[-1] + ln[-1])
        word = start >> 6
        shift = 64 - (start & 63) - ln  # >= 0: the code fits in its word
        fits = shift >= 0
        head = np.where(fits, c << np.maximum(shift, 0).astype(np.uint64),
                        c >> np.maximum(-shift, 0).astype(np.uint64))  # fmt: skip
        firsts = np.flatnonzero(np.diff(word, prepend=-1))
        words[word[firsts]] += np.add.reduceat(head, firsts)
        spill = np.flatnonzero(~fits)
        words[word[spill] + 1] += c[spill] << (64 + shift[spill]).astype(np.uint64)
    if sys.byteorder == "little":  # big-endian words, in place: one copy out
        words.byteswap(inplace=True)
    return words.view(np.uint8)[: -(-total // 8)].tobytes(), total


def unpack_bits(data: bytes, width: int, n: int) -> np.ndarray:
    """Inverse of `pack_bits`: ``n`` integers of ``width`` bits.

    The length is checked before anything is allocated; the fields are regrouped into
    whole big-endian bytes (``width`` rounded up to 8, 16 or 32 bits), so the work
    space is about ``n * (width + 12)`` bytes.

    Args:
      data: exactly ``ceil(n * width / 8)`` bytes.
      width: bits per value, 0..32.
      n: how many values (>= 0).

    Returns:
      int64 ``[n]``.

    Raises:
      ValueError: ``width`` or ``n`` is out of range, or ``data`` has another length
        (a corrupted stream).
    """
    if not 0 <= width <= 32 or n < 0:
        raise ValueError(f"corrupted packed data: {n} values of {width} bits")
    if width == 0 or n == 0:
        if data:
            raise ValueError(f"corrupted packed data: {len(data)} bytes for {n} x {width} bits")
        return np.zeros(n, np.int64)
    if len(data) != math.ceil(n * width / 8):
        raise ValueError(f"corrupted packed data: {len(data)} bytes for {n} x {width} bits")
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=n * width).reshape(n, width)
    nbytes = {1: 1, 2: 2, 3: 4, 4: 4}[math.ceil(width / 8)]
    if width < 8 * nbytes:  # left-pad each field to whole bytes
        bits = np.concatenate([np.zeros((n, 8 * nbytes - width), np.uint8), bits], axis=1)
    fields = np.packbits(bits, axis=1)  # [n, nbytes], big-endian
    return fields.view(f">u{nbytes}").reshape(n).astype(np.int64)
