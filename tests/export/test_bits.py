"""Tests of lightcomp.export._bits: fixed-width bit packing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightcomp.export._bits import pack_bits, unpack_bits


@pytest.mark.parametrize("width", [*range(1, 9), 11, 16, 20, 32])
@pytest.mark.parametrize("n", [1, 13])
def test_bit_packing_round_trips_and_matches_big_integer(width, n):
    v = np.random.default_rng(width * 100 + n).integers(0, 2**width, n)
    data = pack_bits(v, width)
    assert len(data) == math.ceil(n * width / 8)  # e.g. 4-bit values two per byte
    # direct reference: the values concatenated as one big-endian bit string, zero-padded
    big = 0
    for x in v:
        big = (big << width) | int(x)
    pad = 8 * len(data) - n * width
    assert data == (big << pad).to_bytes(len(data), "big")
    back = unpack_bits(data, width, n)
    assert back.dtype == np.int64
    np.testing.assert_array_equal(back, v)


def test_four_bit_values_two_per_byte():
    assert pack_bits(np.array([1, 2, 3]), 4) == bytes([0x12, 0x30])


@pytest.mark.parametrize("width,n", [(0, 5), (3, 0)])
def test_nothing_to_store_is_empty(width, n):
    assert pack_bits(np.zeros(n, np.int64), width) == b""
    np.testing.assert_array_equal(unpack_bits(b"", width, n), np.zeros(n, np.int64))


def test_unpack_bits_rejects_wrong_length_and_widths():
    with pytest.raises(ValueError, match="corrupted"):
        unpack_bits(b"\x00", 3, 5)
    with pytest.raises(ValueError, match="corrupted"):
        unpack_bits(b"\x00", 0, 5)  # nothing to store: no bytes either
    for width, n in [(33, 1), (10**6, 1), (-1, 1), (3, -1)]:
        with pytest.raises(ValueError, match="corrupted packed data"):
            unpack_bits(b"\x00" * 8, width, n)
