"""Integer streams and their coder: fixed width, canonical Huffman, zlib or lzma, the smallest.

An encoder appends its blobs to the leaf's list of parts and returns a JSON spec that
says which coder was used and where its blobs are (``"p"``: the index of its first
part). A spec read from a file has passed `lightcomp.export._manifest`'s schema
check; decoders check what the data could still break (lengths, counts), before
allocating, and say "corrupted" when it is. Decompression stops at the expected
decoded size: a stream that inflates further is refused, not expanded.
"""

from __future__ import annotations

import lzma
import math
import zlib

import numpy as np

from lightcomp.export._bits import pack_bits, unpack_bits
from lightcomp.export._huffman import huffman_decode, huffman_encode, huffman_lengths

Candidate = tuple[dict, list[bytes]]  # (spec, blobs)
CODECS = ("zlib", "lzma")


def compress(codec: str, data: bytes) -> bytes:
    """``data`` compressed by a standard-library codec: zlib level 9, or lzma's xz format."""
    return zlib.compress(data, 9) if codec == "zlib" else lzma.compress(data, lzma.FORMAT_XZ)


# The decoder's memory, mostly its dictionary: `compress` uses xz's default preset (an
# 8 MiB dictionary, ~9 MiB to decode); a stream that asks for more than this is refused.
LZMA_MEMLIMIT = 1 << 24


def decompress(codec: str, data: bytes, what: str, size: int) -> bytes:
    """Inverse of `compress`, producing exactly ``size`` bytes and never more.

    Args:
      codec: ``"zlib"`` or ``"lzma"`` (xz format).
      data: one complete compressed stream, nothing after it.
      what: names the stream in the error message.
      size: the decoded size the spec implies; decoding stops one byte past it.

    Raises:
      ValueError: ``corrupted <what>``: a damaged stream, trailing bytes, or another
        decoded size (a stream that inflates further is a decompression bomb).
    """
    try:
        if codec == "zlib":
            d = zlib.decompressobj()
            out = d.decompress(data, size + 1)
            rest = d.unconsumed_tail or d.unused_data
        else:
            d = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=LZMA_MEMLIMIT)
            out = d.decompress(data, size + 1)
            rest = d.unused_data
    except (zlib.error, lzma.LZMAError) as e:
        raise ValueError(f"corrupted {what}") from e
    if len(out) != size or not d.eof or rest:
        more = "more than" if len(out) > size else f"{len(out)} bytes, not"
        raise ValueError(f"corrupted {what}: it decodes to {more} the {size} bytes expected")
    return out


def size_of(candidate: Candidate) -> int:
    """Bytes of a candidate's blobs."""
    return sum(map(len, candidate[1]))


def smallest(candidates: list[Candidate], parts: list[bytes]) -> dict:
    """Appends the smallest candidate's blobs to ``parts`` (the first on a tie); its spec."""
    spec, blobs = min(candidates, key=size_of)
    parts.extend(blobs)
    return spec


def shift(spec: dict, by: int) -> dict:
    """``spec`` with its part index moved by ``by`` (its blobs follow ``by`` other parts)."""
    return {**spec, "p": spec["p"] + by}


def int_candidates(sym: np.ndarray, parts: list[bytes], entropy: bool) -> list[Candidate]:
    """Every encoding of the non-negative integers ``sym`` [n], to be placed after ``parts``.

    Args:
      sym: int64 ``[n]``, non-negative.
      parts: the parts already stored (only their count is read).
      entropy: besides fixed width, try Huffman (when there are few distinct symbols:
        otherwise the code table outweighs any gain), zlib and lzma.

    Returns:
      ``[(spec, blobs)]``: fixed width first, then Huffman, zlib, lzma.
    """
    n = int(sym.size)
    width = int(sym.max()).bit_length() if n else 0
    fixed = pack_bits(sym, width)
    out = [({"c": "fixed", "n": n, "w": width, "p": len(parts)}, [fixed])]
    if not entropy or n == 0 or width == 0:
        return out
    freq = np.bincount(sym)
    if np.count_nonzero(freq) <= max(n // 4, 2):
        lengths = huffman_lengths(freq)
        data, nbits = huffman_encode(sym, lengths)
        table = pack_bits(lengths, 5)
        spec = {"c": "huff", "n": n, "k": len(freq), "nb": nbits, "p": len(parts)}
        out.append((spec, [table, data]))
    for codec in CODECS:
        out.append(({"c": codec, "n": n, "w": width, "p": len(parts)}, [compress(codec, fixed)]))
    return out


def best_ints(sym: np.ndarray, parts: list[bytes], entropy: bool) -> dict:
    """Appends the smallest encoding of ``sym`` to ``parts``; returns its spec."""
    return smallest(int_candidates(sym, parts, entropy), parts)


def decode_ints(spec: dict, parts: list[bytes], n: int | None = None) -> np.ndarray:
    """The integers a spec of `int_candidates` describes, as int64 ``[n]``.

    Args:
      spec: the stream's spec.
      parts: the leaf's parts.
      n: the count the caller expects; a spec declaring another is refused before
        anything is decoded.

    Raises:
      ValueError: the stream is corrupted, declares another count, or names an
        unknown coder.
    """
    c, count, p = spec["c"], spec["n"], spec["p"]
    if n is not None and count != n:
        raise ValueError(f"corrupted integer stream: {count} values declared, {n} expected")
    if c == "fixed":
        return unpack_bits(parts[p], spec["w"], count)
    if c == "huff":
        lengths = unpack_bits(parts[p], 5, spec["k"])
        return huffman_decode(parts[p + 1], lengths, count, spec["nb"])
    if c in CODECS:
        w = spec["w"]
        if not 0 <= w <= 32 or count < 0:
            raise ValueError(f"corrupted {c} stream: {count} values of {w} bits")
        data = decompress(c, parts[p], f"{c} stream", math.ceil(count * w / 8))
        return unpack_bits(data, w, count)
    raise ValueError(f"unknown integer coding {c!r}")
