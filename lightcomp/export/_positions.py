"""Where a leaf's non-zeros are: a bitmask, or relative indices with a skip symbol.

The relative form is Deep Compression's: each non-zero stores the number of zeros
before it as a ``b``-bit symbol. A gap too long for ``b`` bits is cut by the top
symbol ``2**b - 1``, which skips that many positions (Deep Compression stores a filler
zero there; here it costs no value slot). ``b`` is the width with the fewest bits.

References:
  Han, Mao, Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning,
  Trained Quantization and Huffman Coding", ICLR 2016.
"""

from __future__ import annotations

import numpy as np

from lightcomp.export._streams import (
    EXHAUSTIVE_MAX,
    encode_plan,
    int_candidates,
    int_chunks,
    plan_ints,
    smallest,
)


def relative_symbols(idx: np.ndarray) -> tuple[int, np.ndarray]:
    """The ``b``-bit relative-index symbols of sorted flat indices ``idx`` [m >= 1].

    Returns:
      ``(b, sym)``: the width (1..16) with the fewest bits in all, and the symbols: per
      non-zero, its gap (zeros before it) modulo ``2**b - 1``, preceded by one skip
      symbol ``2**b - 1`` per whole ``2**b - 1`` zeros of that gap.
    """
    gaps = np.diff(idx, prepend=-1) - 1
    cost = [b * int((gaps // (2**b - 1)).sum() + gaps.size) for b in range(1, 17)]
    b = 1 + int(np.argmin(cost))
    top = 2**b - 1
    reps = gaps // top
    sym = np.full(int(reps.sum() + gaps.size), top, np.int64)
    ends = np.cumsum(reps + 1) - 1
    sym[ends] = gaps % top
    return b, sym


def encode_positions(idx: np.ndarray, n: int, parts: list[bytes], entropy: bool) -> dict:
    """Appends the smallest coding of sorted flat indices ``idx`` of ``[n]``; its spec.

    Args:
      idx: sorted distinct flat indices ``[m]`` in ``[0, n)``.
      n: the leaf's size.
      parts: the leaf's parts; the chosen blobs are appended.
      entropy: also try the entropy coders of the integer streams.

    Returns:
      ``{"pos": "mask", "s": ints}`` or ``{"pos": "rel", "b": b, "m": m, "s": ints}``.
      Up to `EXHAUSTIVE_MAX` positions every coding of both forms is tried; beyond,
      each form's coder is planned (`plan_ints`) and only the smaller form is coded.
    """
    mask = np.zeros(n, np.uint8)
    mask[idx] = 1
    if n > EXHAUSTIVE_MAX:
        return _planned(idx, mask, parts, entropy)
    cands = []
    for spec, blobs in int_candidates(mask, parts, entropy):
        cands.append(({"pos": "mask", "s": spec}, blobs))
    if idx.size:
        b, sym = relative_symbols(idx)
        for spec, blobs in int_candidates(sym, parts, entropy):
            cands.append(({"pos": "rel", "b": b, "m": int(idx.size), "s": spec}, blobs))
    return smallest(cands, parts)


def _planned(idx: np.ndarray, mask: np.ndarray, parts: list[bytes], entropy: bool) -> dict:
    """`encode_positions` of a long leaf: the form with the fewer planned bytes, coded once."""
    freq = np.array([mask.size - idx.size, idx.size])
    mask_plan = plan_ints(mask, entropy, freq=freq if idx.size else freq[:1])
    if idx.size:
        b, sym = relative_symbols(idx)
        rel_plan = plan_ints(sym, entropy)
        if rel_plan.nbytes < mask_plan.nbytes:
            spec = encode_plan(sym, rel_plan, parts)
            return {"pos": "rel", "b": b, "m": int(idx.size), "s": spec}
    return {"pos": "mask", "s": encode_plan(mask, mask_plan, parts)}


def decode_positions(spec: dict, n: int, parts: list[bytes]) -> np.ndarray:
    """The sorted flat indices an `encode_positions` spec describes, as int64 ``[m]``.

    The declared counts are checked against ``n`` before the stream is decoded: a
    bitmask has ``n`` entries; relative indices have ``m <= n`` elements and at most
    ``(n - m) // (2**b - 1)`` skip symbols besides them.

    Raises:
      ValueError: the stream is corrupted (wrong count, an index outside ``[0, n)``).
    """
    if spec["pos"] == "mask":
        if spec["s"]["n"] != n:
            raise ValueError(f"corrupted position bitmask: {spec['s']['n']} entries for {n}")
        found, lo = [], 0
        for sym in int_chunks(spec["s"], parts):  # a chunk at a time: no int64 mask
            if sym.size and sym.max() > 1:
                raise ValueError("corrupted position bitmask")
            found.append(np.flatnonzero(sym) + lo)
            lo += sym.size
        if lo != n:
            raise ValueError("corrupted position bitmask")
        return found[0] if len(found) == 1 else np.concatenate(found)
    b, m, count = spec["b"], spec["m"], spec["s"]["n"]
    if not 1 <= b <= 16 or not 0 <= m <= n or not m <= count <= m + (n - m) // (2**b - 1):
        raise ValueError("corrupted relative indices")
    top = 2**b - 1
    found, base = [], 0
    for sym in int_chunks(spec["s"], parts):
        is_elem = sym != top
        ends = np.cumsum(np.where(is_elem, sym + 1, top))
        ends += base
        if ends.size:
            base = int(ends[-1])
        found.append((ends - 1)[is_elem])
    idx = found[0] if len(found) == 1 else np.concatenate(found)
    if idx.size != m or (idx.size and (idx[-1] >= n or idx[0] < 0)):
        raise ValueError("corrupted relative indices")
    return idx
