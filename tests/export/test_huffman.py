"""Tests of lightcomp.export._huffman: canonical Huffman codes, limited lengths, decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp.export._huffman import (
    MAX_CODE_LEN,
    canonical_codes,
    huffman_decode,
    huffman_encode,
    huffman_lengths,
)


def _words(lengths):
    codes = canonical_codes(lengths)
    return {s: format(int(codes[s]), f"0{int(lengths[s])}b") for s in np.flatnonzero(lengths)}


def _reference_decode(data: bytes, lengths, n, nbits):
    """Bit by bit: read until the bits read so far are a code word."""
    inverse = {w: s for s, w in _words(lengths).items()}
    bits = "".join(format(b, "08b") for b in data)[:nbits]
    out, word = [], ""
    for bit in bits:
        word += bit
        if word in inverse:
            out.append(inverse[word])
            word = ""
    assert word == "" and len(out) == n
    return np.array(out, np.int64)


def test_huffman_code_is_optimal_prefix_free_and_round_trips():
    rng = np.random.default_rng(1234)
    p = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    sym = rng.choice(len(p), 5000, p=p)
    freq = np.bincount(sym, minlength=len(p))
    lengths = huffman_lengths(freq)
    assert sum(2.0 ** -lengths[lengths > 0]) == pytest.approx(1.0)  # Kraft equality
    words = list(_words(lengths).values())
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    q = freq / freq.sum()
    entropy = -(q * np.log2(q)).sum()
    mean_len = (q * lengths).sum()
    assert entropy <= mean_len < entropy + 1
    data, nbits = huffman_encode(sym, lengths)
    assert nbits == int((freq * lengths).sum())
    np.testing.assert_array_equal(huffman_decode(data, lengths, sym.size, nbits), sym)


def test_canonical_codes_are_consecutive_by_length_then_symbol():
    lengths = np.array([2, 3, 0, 1, 3])
    # symbols by (length, symbol): 3 (len 1), 0 (len 2), 1 and 4 (len 3)
    assert _words(lengths) == {3: "0", 0: "10", 1: "110", 4: "111"}


def test_encoding_is_the_concatenated_code_words():
    rng = np.random.default_rng(7)
    sym = rng.integers(0, 9, 300)
    lengths = huffman_lengths(np.bincount(sym))
    data, nbits = huffman_encode(sym, lengths)
    words = _words(lengths)
    bits = "".join(words[s] for s in sym)
    assert nbits == len(bits) and len(data) == (nbits + 7) // 8
    assert data == int(bits + "0" * (8 * len(data) - nbits), 2).to_bytes(len(data), "big")


def test_single_symbol_gets_one_bit():
    lengths = huffman_lengths(np.array([0, 0, 7]))
    np.testing.assert_array_equal(lengths, [0, 0, 1])
    data, nbits = huffman_encode(np.full(7, 2), lengths)
    assert nbits == 7
    np.testing.assert_array_equal(huffman_decode(data, lengths, 7, nbits), np.full(7, 2))


def test_huffman_lengths_are_limited():
    freq = np.array([int(1.6**i) + 1 for i in range(40)])  # Fibonacci-like: deep tree
    lengths = huffman_lengths(freq)
    assert lengths.max() <= MAX_CODE_LEN
    assert sum(2.0**-lengths) <= 1.0
    sym = np.repeat(np.arange(40), 1 + np.arange(40) % 3)
    data, nbits = huffman_encode(sym, lengths)
    np.testing.assert_array_equal(huffman_decode(data, lengths, sym.size, nbits), sym)


@settings(max_examples=10, deadline=None)
@given(
    k=st.integers(1, 40),
    n=st.integers(1, 300),
    skew=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**16),
)
def test_property_decode_matches_bit_by_bit_reference(k, n, skew, seed):
    rng = np.random.default_rng(seed)
    p = np.exp(-skew * np.arange(k))
    sym = rng.choice(k, n, p=p / p.sum())
    lengths = huffman_lengths(np.bincount(sym))
    data, nbits = huffman_encode(sym, lengths)
    back = huffman_decode(data, lengths, n, nbits)
    np.testing.assert_array_equal(back, sym)
    np.testing.assert_array_equal(back, _reference_decode(data, lengths, n, nbits))


def test_corrupted_streams_are_rejected():
    sym = np.array([0, 1, 2, 2, 2, 1])
    lengths = huffman_lengths(np.bincount(sym))
    data, nbits = huffman_encode(sym, lengths)
    with pytest.raises(ValueError, match="corrupted Huffman stream"):
        huffman_decode(data + b"\x00", lengths, sym.size, nbits)
    with pytest.raises(ValueError, match="corrupted Huffman stream"):
        huffman_decode(data, lengths, sym.size + 5, nbits)  # runs past the end
    with pytest.raises(ValueError, match="corrupted Huffman stream"):
        huffman_decode(data, lengths, 10**12, nbits)  # more symbols than bits: before allocating
    with pytest.raises(ValueError, match="corrupted Huffman stream"):
        huffman_decode(data, np.zeros(3, np.int64), sym.size, nbits)  # no code at all
    with pytest.raises(ValueError, match="code lengths"):
        huffman_decode(data, np.array([1, 1, 1]), sym.size, nbits)  # breaks Kraft
