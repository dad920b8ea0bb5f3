"""Canonical Huffman coding of integer symbols, with code lengths limited to 20 bits.

Deep Compression's last stage: the symbols (codebook indices, grid integers, relative
position gaps) are Huffman coded. The code is canonical, so the stream stores only
each symbol's code length; encoding and decoding are vectorized in NumPy (no Python
loop over the symbols).

References:
  Huffman, "A Method for the Construction of Minimum-Redundancy Codes", Proc. IRE 1952.
  Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning,
  Trained Quantization and Huffman Coding", ICLR 2016.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator

import numpy as np

from lightcomp.export._bits import write_codes

MAX_CODE_LEN = 20


def huffman_lengths(freq: np.ndarray) -> np.ndarray:
    """Code lengths of a Huffman code for the symbol counts ``freq``.

    When the optimal code would have a code longer than `MAX_CODE_LEN`, the small
    counts are raised to a floor (doubled until the code fits) and the code rebuilt.

    Args:
      freq: non-negative counts ``[K]`` with at least one non-zero.

    Returns:
      int64 ``[K]``: each used symbol's code length (1 for a single used symbol), 0 for
      unused symbols.
    """
    used = np.flatnonzero(freq)
    lengths = np.zeros(len(freq), np.int64)
    if len(used) == 1:
        lengths[used] = 1
        return lengths
    f = freq[used].astype(np.int64)
    floor = 0
    while True:
        depth = _tree_depths(np.maximum(f, floor))
        if depth.max() <= MAX_CODE_LEN:
            lengths[used] = depth
            return lengths
        floor = max(2 * floor, int(f.sum()) >> (MAX_CODE_LEN - 2), 1)


def _tree_depths(weights: np.ndarray) -> np.ndarray:
    """Depth of each leaf of the Huffman tree of ``weights`` [K >= 2]."""
    heap = [(int(c), i) for i, c in enumerate(weights)]
    heapq.heapify(heap)
    parent = list(range(len(weights)))
    nxt = len(weights)
    while len(heap) > 1:
        c1, a = heapq.heappop(heap)
        c2, b = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        parent.append(nxt)
        heapq.heappush(heap, (c1 + c2, nxt))
        nxt += 1
    depth = np.zeros(nxt, np.int64)
    for node in range(nxt - 2, -1, -1):  # parents are created after their children
        depth[node] = depth[parent[node]] + 1
    return depth[: len(weights)]


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes: symbols ordered by (length, symbol) get consecutive codes.

    Args:
      lengths: code lengths ``[K]`` (0 = unused) satisfying Kraft's inequality.

    Returns:
      int64 ``[K]``: each symbol's code, its ``lengths[s]`` low bits; 0 for unused symbols.
    """
    codes = np.zeros(len(lengths), np.int64)
    order = np.lexsort((np.arange(len(lengths)), lengths))
    order = order[lengths[order] > 0]
    code, prev = 0, int(lengths[order[0]])
    for i, s in enumerate(order):  # one iteration per distinct symbol
        ln = int(lengths[s])
        if i:
            code = (code + 1) << (ln - prev)
        codes[s], prev = code, ln
    return codes


def huffman_encode(sym: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Concatenates the canonical codes of ``sym``, most significant bit first.

    Args:
      sym: symbols ``[n]`` (n >= 1), each with a non-zero code length.
      lengths: the code lengths from `huffman_lengths`.

    Returns:
      ``(bytes, nbits)``: the bit string, zero-padded to whole bytes, and its length
      (`lightcomp.export._bits.write_codes`).
    """
    return write_codes(sym, canonical_codes(lengths), lengths)


def huffman_decode(data: bytes, lengths: np.ndarray, n: int, nbits: int) -> np.ndarray:
    """Decodes ``n`` symbols from a `huffman_encode` stream of ``nbits`` bits.

    The concatenation of `huffman_pieces` (see there: no Python loop over the symbols,
    sizes checked before anything is allocated, a work space bounded by the piece).

    Args:
      data: the stream's bytes.
      lengths: the code lengths ``[K]``.
      n: how many symbols.
      nbits: the stream's length in bits.

    Returns:
      int64 ``[n]``.

    Raises:
      ValueError: the stream or the code lengths are corrupted.
    """
    pieces = list(huffman_pieces(data, lengths, n, nbits))
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


PIECE_BITS = 1 << 18  # bits decoded at a time: a work space of ~4 MiB per piece


def huffman_pieces(
    data: bytes, lengths: np.ndarray, n: int, nbits: int, piece: int = PIECE_BITS
) -> Iterator[np.ndarray]:
    """The ``n`` symbols of a `huffman_encode` stream, in order, ``piece`` bits at a time.

    No Python loop over the symbols: within a piece, a table look-up at every bit
    position gives the symbol and code length starting there; the chain of code starts
    from the piece's first code is then followed by pointer doubling (or in synchronized
    chunks, `_chunked_chain`, an exact shortcut of it). Each piece starts where the last
    code of the one before ends, so the work space (about 14 bytes per bit) is bounded
    by ``piece``, not by the stream. The declared sizes are checked before anything is
    allocated (every code word takes at least one bit, so ``n <= nbits``); the stream
    must hold exactly ``n`` codes ending at bit ``nbits``.

    Yields:
      int64 symbol arrays, ``n`` symbols in all (none when ``n == 0``).

    Raises:
      ValueError: the stream or the code lengths are corrupted (possibly after some
        pieces were yielded).
    """
    if (
        n < 0
        or nbits < 0
        or len(data) != math.ceil(nbits / 8)
        or n > nbits
        or lengths.max(initial=0) > MAX_CODE_LEN
        or lengths.min(initial=0) < 0
        or (n and not lengths.any())
    ):
        raise ValueError("corrupted Huffman stream")
    if n == 0:
        yield np.zeros(0, np.int64)
        return
    itype = np.int32 if 2 * nbits + 2 < 2**31 else np.int64
    width, tab_sym, tab_len = _lookup_tables(lengths, nbits, itype)
    start, count = 0, 0
    while start < nbits:
        span = min(piece, nbits - start)
        sym, end = _decode_piece(data, start, span, width, tab_sym, tab_len, n - count)
        count += sym.size
        if count > n or end > nbits:
            raise ValueError("corrupted Huffman stream")
        start = end
        yield sym
    if count != n:
        raise ValueError("corrupted Huffman stream")


def _decode_piece(data, start, span, width, tab_sym, tab_len, left) -> tuple[np.ndarray, int]:
    """The symbols whose codes start in bits ``[start, start + span)``, and where the last ends.

    ``start`` is a code start; a window that starts no valid code jumps past the stream.
    """
    window = _windows(data, span, width, start)
    jump = np.arange(span, dtype=tab_len.dtype)
    jump += tab_len[window]
    jump = np.append(np.minimum(jump, span, out=jump), tab_len.dtype.type(span))
    pos = _chunked_chain(jump, span, min(left, span)) if span >= _CHUNKED_MIN else None
    if pos is None:
        pos = _doubled_chain(jump, min(left + 1, span))
        pos = pos[pos < span]
    last = int(pos[-1])
    return tab_sym[window[pos]].astype(np.int64), start + last + int(tab_len[window[last]])


def _windows(data: bytes, nbits: int, width: int, start: int = 0) -> np.ndarray:
    """int32 ``[nbits]``: the ``width`` (<= 20) bits from each bit ``start + i``, zero-padded."""
    lo = start >> 3
    chunk = data[lo : lo + ((start & 7) + nbits + 7) // 8 + 3]
    b = np.zeros(len(chunk) + 4, np.uint32)
    b[: len(chunk)] = np.frombuffer(chunk, np.uint8)
    word = (b[:-3] << 24) | (b[1:-2] << 16) | (b[2:-1] << 8) | b[3:]  # 32 bits from each byte
    p = np.arange(start & 7, (start & 7) + nbits, dtype=np.uint32)
    out = word[p >> 3]
    out <<= p & 7
    out >>= 32 - width
    return out.view(np.int32)


_CHUNKED_MIN = 1 << 16  # bits from which the chain of code starts is followed in chunks


def _doubled_chain(jump: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` positions of the chain from bit 0 by pointer doubling (any stream)."""
    pos = np.zeros(1, jump.dtype)
    while len(pos) < n:
        pos = np.concatenate([pos, jump[pos]])
        if len(pos) < n:
            jump = jump[jump]
    return pos[:n]


def _chunked_chain(jump: np.ndarray, nbits: int, n: int) -> np.ndarray | None:
    """Every code start of the chain from bit 0, or None when a chunk does not synchronize.

    The stream is cut into chunks of equal bits, and the chains from every chunk's first
    bit are followed in lockstep (one gather per step for all chunks) until each leaves
    its chunk. The true chain enters chunk ``i`` where chunk ``i - 1``'s chain leaves it;
    from there it is followed (again all chunks at once) until it meets chunk ``i``'s own
    chain (a Huffman code re-synchronizes within a few code words), which it then is.
    Exact: a true chain that leaves its chunk before meeting gives None (the caller
    then doubles).
    """
    chunks = max(1024, 8 * math.isqrt(n))
    size = max(512, -(-nbits // chunks))
    start = np.arange(0, nbits, size, dtype=jump.dtype)
    end = np.minimum(start + size, nbits).astype(jump.dtype)
    visited, exits = _lockstep(jump, start, lambda cur: cur < end)
    inside = visited < end[:, None]
    on_own = np.zeros(nbits + 1, bool)
    on_own[visited[inside]] = True
    entry = np.concatenate([[0], exits[:-1]]).astype(jump.dtype)
    before, meet = _lockstep(jump, entry, lambda cur: ~on_own[cur] & (cur < end))
    if (meet >= end).any():
        return None
    keep = np.concatenate([before < meet[:, None], (visited >= meet[:, None]) & inside], axis=1)
    return np.concatenate([before, visited], axis=1)[keep]


def _lockstep(jump: np.ndarray, cur: np.ndarray, going) -> tuple[np.ndarray, np.ndarray]:
    """Chains from ``cur`` [c] while ``going(cur)``: ``([c, steps] positions, [c] last)``.

    A chain that stopped repeats its last position in the later columns.
    """
    steps = [cur]
    live = going(cur)
    while live.any():
        cur = np.where(live, jump[cur], cur)
        steps.append(cur)
        live = going(cur)
    return np.stack(steps[:-1] or [cur], axis=1), cur


def _lookup_tables(lengths: np.ndarray, nbits: int, itype=np.int64):
    """Window width, and the symbol and code length for every window of that many bits.

    Windows that start no valid code get the length ``nbits + 1`` (they jump past the end).

    Returns:
      ``(width, tab_sym, tab_len)``: int32 symbols and ``itype`` lengths, ``[2**width]``;
      filled one code length at a time (a canonical code gives the symbols of one
      length consecutive codes: one block of the tables), with no temporaries.
    """
    codes = canonical_codes(lengths)
    width = int(lengths.max())
    used = np.flatnonzero(lengths)
    span = np.int64(1) << (width - lengths[used])
    if int(span.sum()) > (1 << width):
        raise ValueError("corrupted Huffman code lengths")
    tab_sym = np.zeros(1 << width, np.int32)
    tab_len = np.full(1 << width, nbits + 1, itype)
    for ln in np.unique(lengths[used]):
        syms = used[lengths[used] == ln]  # ascending: consecutive codes
        sp = 1 << (width - int(ln))
        lo = int(codes[syms[0]]) * sp
        tab_sym[lo : lo + syms.size * sp].reshape(syms.size, sp)[:] = syms[:, None]
        tab_len[lo : lo + syms.size * sp] = ln
    return width, tab_sym, tab_len
