"""Tests of lightcomp.export._huffman: canonical Huffman codes, limited lengths, decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp.export._huffman import (
    _CHUNKED_MIN,
    MAX_CODE_LEN,
    _chunked_chain,
    _doubled_chain,
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


@pytest.mark.parametrize("skew", [0.05, 0.7, 3.0])
def test_long_streams_decode_in_synchronized_chunks(skew):
    # past _CHUNKED_MIN bits the chain of code starts is followed chunk by chunk; it
    # must give what the bit-by-bit definition gives, and refuse what it refuses
    rng = np.random.default_rng(int(skew * 10))
    p = np.exp(-skew * np.arange(40))
    sym = rng.choice(40, 80_000, p=p / p.sum())
    lengths = huffman_lengths(np.bincount(sym))
    data, nbits = huffman_encode(sym, lengths)
    assert nbits >= _CHUNKED_MIN
    np.testing.assert_array_equal(huffman_decode(data, lengths, sym.size, nbits), sym)
    head_data, head_bits = huffman_encode(sym[:3000], lengths)
    np.testing.assert_array_equal(
        _reference_decode(head_data, lengths, 3000, head_bits), sym[:3000]
    )
    with pytest.raises(ValueError, match="corrupted Huffman stream"):
        huffman_decode(data, lengths, sym.size - 1, nbits)
    with pytest.raises(ValueError, match="corrupted Huffman stream"):
        huffman_decode(data, lengths, sym.size + 1, nbits)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    try:  # a flipped byte decodes to other symbols or is refused, never to these
        back = huffman_decode(bytes(flipped), lengths, sym.size, nbits)
        assert not np.array_equal(back, sym)
    except ValueError as e:
        assert "corrupted Huffman stream" in str(e)


def test_chunked_chain_equals_pointer_doubling_or_declines():
    rng = np.random.default_rng(5)
    for nbits in (70_000, 200_000):
        jump = np.minimum(np.arange(nbits) + rng.integers(1, 21, nbits), nbits).astype(np.int32)
        jump = np.append(jump, np.int32(nbits))
        doubled = _doubled_chain(jump, nbits)
        want = doubled[doubled < nbits]
        got = _chunked_chain(jump, nbits, want.size)
        if got is not None:  # random lengths synchronize; None would also be exact
            np.testing.assert_array_equal(got, want)
    # a stream whose chunks never meet their own chain (every code 2 bits, offset 1)
    jump = np.append(np.minimum(np.arange(100_001) + 2, 100_001), 100_001).astype(np.int32)
    assert _chunked_chain(jump, 100_001, 50_001) is None or np.array_equal(
        _chunked_chain(jump, 100_001, 50_001), np.arange(0, 100_001, 2)
    )
