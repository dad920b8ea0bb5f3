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

    Args:
      data: exactly ``ceil(n * width / 8)`` bytes.
      width: bits per value.
      n: how many values.

    Returns:
      int64 ``[n]``.

    Raises:
      ValueError: ``data`` has another length (a corrupted stream).
    """
    if width == 0 or n == 0:
        return np.zeros(n, np.int64)
    if len(data) != math.ceil(n * width / 8):
        raise ValueError(f"corrupted packed data: {len(data)} bytes for {n} x {width} bits")
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=n * width).reshape(n, width)
    return bits.astype(np.int64) @ (np.int64(1) << np.arange(width - 1, -1, -1, dtype=np.int64))
