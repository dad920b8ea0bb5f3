"""Integer streams and their coder: fixed width, canonical Huffman, zlib or lzma, the smallest.

A stream of at most `EXHAUSTIVE_MAX` symbols is coded by every coder and the smallest
kept. A longer one is coded once, by the coder its measured size estimate picks
(`plan_ints`): the exact sizes of fixed width and Huffman follow from the symbol
histogram (the code lengths are computed, not the code), and zlib's from its ratio on
a sample; lzma (a few MB/s) is left to short streams. A long zlib stream is deflated
in pieces on threads (zlib releases the GIL), each primed with the 32 KiB before it,
and joined into one standard zlib stream (as pigz does).

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
import os
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from lightcomp.export._bits import pack_bits, unpack_bits
from lightcomp.export._huffman import huffman_encode, huffman_lengths, huffman_pieces

Candidate = tuple[dict, list[bytes]]  # (spec, blobs)
CODECS = ("zlib", "lzma")
EXHAUSTIVE_MAX = 1 << 12  # streams (and leaves) up to this many values try every coder
SAMPLE = 1 << 16  # symbols (or bytes) whose zlib ratio estimates a long stream's
ZLIB_PIECE = 1 << 22  # bytes per piece of a long zlib stream, deflated on its own thread
_WINDOW = 1 << 15  # deflate's window: each piece is primed with the bytes before it


def compress(codec: str, data: bytes) -> bytes:
    """``data`` compressed by a standard-library codec: zlib level 9, or lzma's xz format.

    Data longer than `ZLIB_PIECE` are zlib'd in pieces on threads (`_zlib_pieces`); the
    result is one standard zlib stream either way.
    """
    if codec == "lzma":
        return lzma.compress(data, lzma.FORMAT_XZ, filters=_xz_filters(len(data)))
    return zlib.compress(data, 9) if len(data) <= ZLIB_PIECE else _zlib_pieces(data)


_XZ_DICT_MAX = 1 << 23  # xz preset 6's dictionary (8 MiB), the most `compress` asks for


def _xz_filters(size: int) -> list[dict]:
    """xz preset 6 with its dictionary cut to the data (a power of two, 4 KiB to 8 MiB).

    (Written here because `lzma.compress` sizes its match finder for the preset's 8 MiB
    dictionary whatever the data: ~90 MB of encoder memory per call, on every short
    stream. The same preset with a dictionary as large as the data finds the same
    matches and writes a stream of the same size, and its decoder needs less memory.)
    """
    dict_size = min(max(1 << 12, 1 << max(size - 1, 1).bit_length()), _XZ_DICT_MAX)
    return [{"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": dict_size}]


def _deflate_piece(data: memoryview, lo: int, hi: int) -> bytes:
    """Raw deflate of ``data[lo:hi]`` primed with the window before it; the last one ends."""
    zdict = bytes(data[max(0, lo - _WINDOW) : lo])
    c = zlib.compressobj(9, zlib.DEFLATED, -15, **({"zdict": zdict} if zdict else {}))
    last = hi >= len(data)
    return c.compress(data[lo:hi]) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def _zlib_pieces(data: bytes) -> bytes:
    """One zlib stream of ``data`` deflated piecewise in threads (header, pieces, Adler-32)."""
    view = memoryview(data)
    starts = range(0, len(data), ZLIB_PIECE)
    with ThreadPoolExecutor(max_workers=min(len(starts), os.cpu_count() or 1)) as pool:
        pieces = list(pool.map(lambda lo: _deflate_piece(view, lo, lo + ZLIB_PIECE), starts))
    return b"".join([b"\x78\xda", *pieces, zlib.adler32(data).to_bytes(4, "big")])


def zlib_estimate(data: bytes, total: int) -> int:
    """zlib's size for ``total`` bytes whose first bytes are ``data``, from its ratio on them."""
    if not data:
        return 0
    return math.ceil(len(zlib.compress(data, 6)) * total / len(data))


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


def histogram(sym: np.ndarray) -> np.ndarray:
    """``np.bincount(sym)`` by chunks: no int64 copy of a long narrow-int stream."""
    if sym.size <= INT_CHUNK:
        return np.bincount(sym)
    k = int(sym.max()) + 1
    freq = np.zeros(k, np.int64)
    for lo in range(0, sym.size, INT_CHUNK):
        freq += np.bincount(sym[lo : lo + INT_CHUNK], minlength=k)
    return freq


class IntPlan(NamedTuple):
    """How a stream will be coded, and its estimated bytes (exact for fixed and Huffman)."""

    nbytes: int
    coder: str  # "fixed", "huff" or "zlib"
    width: int  # bits of the fixed-width fields
    lengths: np.ndarray | None  # Huffman code lengths [K]


def plan_ints(sym: np.ndarray, entropy: bool, freq: np.ndarray | None = None) -> IntPlan:
    """The coder of the non-negative integers ``sym`` [n] with the fewest estimated bytes.

    Fixed width and Huffman are sized exactly from the histogram (Huffman only with few
    distinct symbols, as in `int_candidates`); zlib by its ratio on the first `SAMPLE`
    symbols, taken only when that estimate is 2% below the exact sizes.

    Args:
      sym: int ``[n]``, non-negative.
      entropy: besides fixed width, consider Huffman and zlib.
      freq: the histogram of ``sym`` when the caller has it (``np.bincount(sym)``).
    """
    n = int(sym.size)
    width = int(sym.max()).bit_length() if n else 0
    best = IntPlan(-(-n * width // 8), "fixed", width, None)
    if not entropy or n == 0 or width == 0:
        return best
    if width <= 16:
        freq = histogram(sym) if freq is None else freq
        if np.count_nonzero(freq) <= max(n // 4, 2):
            lengths = huffman_lengths(freq)
            huff = -(-int(freq @ lengths) // 8) + -(-len(freq) * 5 // 8)
            if huff < best.nbytes:
                best = IntPlan(huff, "huff", width, lengths)
    z = zlib_estimate(pack_bits(sym[:SAMPLE], width), -(-n * width // 8))
    return IntPlan(z, "zlib", width, None) if z < 0.98 * best.nbytes else best


def encode_plan(sym: np.ndarray, plan: IntPlan, parts: list[bytes]) -> dict:
    """Appends ``sym`` coded as `plan_ints` planned to ``parts``; returns its spec."""
    n, p = int(sym.size), len(parts)
    if plan.coder == "huff":
        data, nbits = huffman_encode(sym, plan.lengths)
        parts += [pack_bits(plan.lengths, 5), data]
        return {"c": "huff", "n": n, "k": len(plan.lengths), "nb": nbits, "p": p}
    fixed = pack_bits(sym, plan.width)
    parts.append(fixed if plan.coder == "fixed" else compress(plan.coder, fixed))
    return {"c": plan.coder, "n": n, "w": plan.width, "p": p}


def best_ints(sym: np.ndarray, parts: list[bytes], entropy: bool) -> dict:
    """Appends the smallest encoding of ``sym`` to ``parts``; returns its spec.

    Up to `EXHAUSTIVE_MAX` symbols every coder is tried (`int_candidates`); beyond, the
    coder `plan_ints` estimates smallest is used alone.
    """
    if sym.size <= EXHAUSTIVE_MAX:
        return smallest(int_candidates(sym, parts, entropy), parts)
    return encode_plan(sym, plan_ints(sym, entropy), parts)


def decode_ints(spec: dict, parts: list[bytes], n: int | None = None) -> np.ndarray:
    """The integers a spec of `int_candidates` describes, as int64 ``[n]``.

    The concatenation of `int_chunks`.

    Args:
      spec: the stream's spec.
      parts: the leaf's parts.
      n: the count the caller expects; a spec declaring another is refused before
        anything is decoded.

    Raises:
      ValueError: the stream is corrupted, declares another count, or names an
        unknown coder.
    """
    chunks = list(int_chunks(spec, parts, n))
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


INT_CHUNK = 1 << 16  # integers decoded at a time by `int_chunks` (a multiple of 8)


def int_chunks(spec: dict, parts: list[bytes], n: int | None = None) -> Iterator[np.ndarray]:
    """The integers of a spec of `int_candidates`, in order, a bounded chunk at a time.

    Fixed-width and zlib / lzma streams come `INT_CHUNK` integers at a time (the
    compressed ones decompressed piece by piece), Huffman streams
    `lightcomp.export._huffman.PIECE_BITS` bits at a time, so the work space does not
    grow with the stream. Declared sizes are checked before anything is decoded.

    Yields:
      int64 arrays, ``spec["n"]`` integers in all.

    Raises:
      ValueError: as `decode_ints` (a damaged stream possibly after some chunks).
    """
    c, count, p = spec["c"], spec["n"], spec["p"]
    if n is not None and count != n:
        raise ValueError(f"corrupted integer stream: {count} values declared, {n} expected")
    if c == "huff":
        lengths = unpack_bits(parts[p], 5, spec["k"])
        yield from huffman_pieces(parts[p + 1], lengths, count, spec["nb"])
        return
    if c not in ("fixed", *CODECS):
        raise ValueError(f"unknown integer coding {c!r}")
    w = spec["w"]
    if c != "fixed" and (not 0 <= w <= 32 or count < 0):
        raise ValueError(f"corrupted {c} stream: {count} values of {w} bits")
    size, step = math.ceil(count * w / 8), INT_CHUNK * w // 8
    if count <= INT_CHUNK or size == 0 or (c == "fixed" and len(parts[p]) != size):
        data = parts[p] if c == "fixed" else decompress(c, parts[p], f"{c} stream", size)
        yield unpack_bits(data, w, count)  # short, or refused with the reason
        return
    if c == "fixed":
        pieces = (parts[p][lo : lo + step] for lo in range(0, size, step))
    else:
        pieces = decompressed_pieces(c, parts[p], f"{c} stream", size, step)
    for i, piece in enumerate(pieces):
        yield unpack_bits(piece, w, min(INT_CHUNK, count - i * INT_CHUNK))


def decompressed_pieces(codec: str, data: bytes, what: str, size: int, piece: int):
    """`decompress` in pieces of exactly ``piece`` bytes (the last shorter): the same checks.

    The compressed input is fed `_FEED` bytes at a time, so neither the decoder nor its
    unconsumed input holds a copy of the stream.

    Yields:
      ``bytes``, ``size`` in all; the checks of `decompress` (a damaged stream, another
      decoded size, trailing bytes) raise after the last piece or where they fail.
    """
    buf = bytearray()
    for out in _inflated(codec, data, what, size, piece):
        buf += out
        while len(buf) >= piece:
            yield bytes(buf[:piece])
            del buf[:piece]
    if buf:
        yield bytes(buf)


_FEED = 1 << 16  # compressed bytes given to a decoder at a time


def _inflated(codec: str, data: bytes, what: str, size: int, most: int):
    """The decoded bytes of one stream, at most ``most`` a time, then `decompress`'s checks."""
    if codec == "zlib":
        d = zlib.decompressobj()
    else:
        d = lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=LZMA_MEMLIMIT)
    view, at, done, extra, tail = memoryview(data), 0, 0, b"", b""
    try:
        while not d.eof and len(extra) == 0:
            if codec == "zlib" and d.unconsumed_tail:
                feed = d.unconsumed_tail
            elif codec == "lzma" and not d.needs_input:
                feed = b""
            elif at < len(view):
                feed, at = view[at : at + _FEED], at + _FEED
            else:
                break  # the input ended before the stream did
            out = d.decompress(feed, min(most, size - done) if done < size else 1)
            if done >= size:
                extra = out
            else:
                done += len(out)
                if out:
                    yield out
        tail = view[at:] if at < len(view) else b""
    except (zlib.error, lzma.LZMAError) as e:
        raise ValueError(f"corrupted {what}") from e
    rest = (d.unconsumed_tail or d.unused_data if codec == "zlib" else d.unused_data) or tail
    if done != size or extra or not d.eof or rest:
        more = "more than" if extra else f"{done} bytes, not"
        raise ValueError(f"corrupted {what}: it decodes to {more} the {size} bytes expected")
