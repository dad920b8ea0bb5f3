"""Tests of lightcomp.export._streams: integer streams and the choice of their coder."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from lightcomp.export._bits import pack_bits
from lightcomp.export._streams import (
    best_ints,
    compress,
    decode_ints,
    decompress,
    int_candidates,
    shift,
)


def _streams():
    rng = np.random.default_rng(3)
    return {
        "uniform": rng.integers(0, 200, 500),
        "skewed": rng.geometric(0.5, 2000) - 1,
        "constant": np.full(40, 5),
        "zeros": np.zeros(30, np.int64),
        "empty": np.zeros(0, np.int64),
        "one": np.array([9]),
    }


@pytest.mark.parametrize("name", sorted(_streams()))
@pytest.mark.parametrize("entropy", [True, False])
def test_every_candidate_decodes_and_best_is_smallest(name, entropy):
    sym = _streams()[name]
    prior = [b"x", b"yy"]  # the stream's parts follow two others
    cands = int_candidates(sym, prior, entropy)
    fixed_spec, fixed_blobs = cands[0]
    width = int(sym.max()).bit_length() if sym.size else 0
    assert fixed_spec == {"c": "fixed", "n": sym.size, "w": width, "p": 2}
    assert fixed_blobs == [pack_bits(sym, width)]
    if not entropy:
        assert len(cands) == 1
    for spec, blobs in cands:
        np.testing.assert_array_equal(decode_ints(spec, [*prior, *blobs]), sym)
    parts = list(prior)
    spec = best_ints(sym, parts, entropy)
    sizes = [sum(map(len, b)) for _, b in cands]
    assert sum(map(len, parts[2:])) == min(sizes)
    assert spec == cands[sizes.index(min(sizes))][0]  # the first of the smallest


def test_huffman_only_for_few_distinct_symbols():
    coders = lambda sym: [s["c"] for s, _ in int_candidates(sym, [], True)]
    assert coders(np.random.default_rng(0).integers(0, 8, 400)) == ["fixed", "huff", "zlib", "lzma"]
    assert coders(np.arange(100)) == ["fixed", "zlib", "lzma"]  # every symbol distinct


def test_skewed_stream_is_entropy_coded():
    sym = np.random.default_rng(1).geometric(0.7, 4000) - 1
    spec = best_ints(sym, [], True)
    assert spec["c"] in ("huff", "lzma", "zlib")


@pytest.mark.parametrize("codec", ["zlib", "lzma"])
def test_compress_round_trips_and_rejects_damage(codec):
    data = bytes(range(256)) * 4
    small = compress(codec, data)
    assert decompress(codec, small, "thing", len(data)) == data
    with pytest.raises(ValueError, match="corrupted thing"):
        decompress(codec, small[:-7] + b"\x00" * 7, "thing", len(data))
    with pytest.raises(ValueError, match="corrupted thing"):
        decompress(codec, small + b"\x00", "thing", len(data))  # bytes after the stream


@pytest.mark.parametrize("codec", ["zlib", "lzma"])
def test_decompression_stops_at_the_expected_size(codec):
    bomb = compress(codec, bytes(50_000_000))  # ~50 KB (zlib) or ~7 KB (lzma)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more than the 1000 bytes expected"):
            decompress(codec, bomb, "thing", 1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (1 << 20 if codec == "zlib" else 10 << 20)  # lzma: its 8 MiB dictionary
    with pytest.raises(ValueError, match="1000 bytes, not the 1001 bytes expected"):
        decompress(codec, compress(codec, bytes(1000)), "thing", 1001)


def test_shift_moves_only_the_part_index():
    assert shift({"c": "fixed", "n": 3, "w": 2, "p": 1}, 2) == {
        "c": "fixed",
        "n": 3,
        "w": 2,
        "p": 3,
    }


def test_unknown_coder_is_an_error():
    with pytest.raises(ValueError, match="unknown integer coding"):
        decode_ints({"c": "rle", "n": 1, "p": 0}, [b""])


def test_decode_ints_refuses_another_count_before_decoding():
    parts: list[bytes] = []
    spec = best_ints(np.arange(40) % 5, parts, True)
    np.testing.assert_array_equal(decode_ints(spec, parts, n=40), np.arange(40) % 5)
    with pytest.raises(ValueError, match="40 values declared, 41 expected"):
        decode_ints(spec, parts, n=41)


def test_long_zlib_streams_are_deflated_in_pieces_as_one_standard_stream(monkeypatch):
    import zlib

    from lightcomp.export import _streams

    monkeypatch.setattr(_streams, "ZLIB_PIECE", 1000)  # pieces of 1000 bytes, on threads
    rng = np.random.default_rng(0)
    data = np.tile(rng.integers(0, 40, 700).astype(np.uint8), 9).tobytes() + rng.bytes(500)
    small = compress("zlib", data)
    assert zlib.decompress(small) == data  # any zlib reader reads it
    assert decompress("zlib", small, "thing", len(data)) == data
    assert len(small) < len(zlib.compress(data, 9)) * 1.2  # the window carries over pieces


@pytest.mark.parametrize("name", ["geometric", "uniform", "periodic", "binary"])
def test_planned_coder_of_a_long_stream_is_within_2_percent_of_the_smallest(name):
    rng = np.random.default_rng(2)
    sym = {
        "geometric": rng.geometric(0.3, 50_000) - 1,
        "uniform": rng.integers(0, 16, 50_000),
        "periodic": np.tile(rng.integers(0, 300, 999), 50),  # zlib wins by far
        "binary": (rng.random(50_000) < 0.05).astype(np.int64),
    }[name]
    parts: list[bytes] = []
    spec = best_ints(sym, parts, True)  # past EXHAUSTIVE_MAX: one planned coder
    np.testing.assert_array_equal(decode_ints(spec, parts), sym)
    cands = [(s["c"], sum(map(len, b))) for s, b in int_candidates(sym, [], True)]
    smallest = min(n for c, n in cands if c != "lzma")  # lzma is left to short streams
    assert sum(map(len, parts)) <= 1.02 * smallest
