"""Integer streams and their coder: fixed width, canonical Huffman, zlib or lzma, the smallest.

An encoder appends its blobs to the leaf's list of parts and returns a JSON spec that
says which coder was used and where its blobs are (``"p"``: the index of its first
part). Every spec a decoder reads was written by an encoder here, so decoders check
only what a damaged file could break (lengths), and say "corrupted" when it is.
"""

from __future__ import annotations

import lzma
import zlib

import numpy as np

from lightcomp.export._bits import pack_bits, unpack_bits
from lightcomp.export._huffman import huffman_decode, huffman_encode, huffman_lengths

Candidate = tuple[dict, list[bytes]]  # (spec, blobs)
CODECS = ("zlib", "lzma")


def compress(codec: str, data: bytes) -> bytes:
    """``data`` compressed by a standard-library codec: zlib level 9, or lzma's xz format."""
    return zlib.compress(data, 9) if codec == "zlib" else lzma.compress(data, lzma.FORMAT_XZ)


def decompress(codec: str, data: bytes, what: str) -> bytes:
    """Inverse of `compress`; a damaged stream is a ValueError ``corrupted <what>``."""
    try:
        return zlib.decompress(data) if codec == "zlib" else lzma.decompress(data)
    except (zlib.error, lzma.LZMAError) as e:
        raise ValueError(f"corrupted {what}") from e


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


def decode_ints(spec: dict, parts: list[bytes]) -> np.ndarray:
    """The integers a spec of `int_candidates` describes, as int64 ``[n]``.

    Raises:
      ValueError: the stream is corrupted or names an unknown coder.
    """
    c, n, p = spec["c"], spec["n"], spec["p"]
    if c == "fixed":
        return unpack_bits(parts[p], spec["w"], n)
    if c == "huff":
        lengths = unpack_bits(parts[p], 5, spec["k"])
        return huffman_decode(parts[p + 1], lengths, n, spec["nb"])
    if c in CODECS:
        return unpack_bits(decompress(c, parts[p], f"{c} stream"), spec["w"], n)
    raise ValueError(f"unknown integer coding {c!r}")
