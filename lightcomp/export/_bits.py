"""Bit packing: non-negative integers as fixed-width big-endian fields, across byte boundaries."""

from __future__ import annotations

import math

import numpy as np


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Packs ``values`` (non-negative ints < ``2**width``) as ``width``-bit fields.

    The fields are concatenated most significant bit first and the last byte is
    padded with zero bits, so ``n`` values take ``ceil(n * width / 8)`` bytes.

    Args:
      values: integers ``[n]`` (any shape; flattened), each in ``[0, 2**width)``.
      width: bits per value, 0..32 (0 stores nothing).

    Returns:
      The packed bytes.
    """
    if width == 0 or values.size == 0:
        return b""
    v = values.astype(np.uint32).reshape(-1, 1)
    bits = (v >> np.arange(width - 1, -1, -1, dtype=np.uint32)) & 1
    return np.packbits(bits.astype(np.uint8).ravel()).tobytes()


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
