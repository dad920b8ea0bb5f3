"""Per-group reductions over a leaf's values in chunks, and each group's smallest gap.

A pass over a long leaf goes `spans` of values at a time and accumulates per-group
results (max and min are exact whatever the order), so its work space is one chunk.
`smallest_gaps` needs the values sorted within each group: it sorts the distinct
``(group, magnitude)`` keys in a bounded buffer, one key range (bucket) at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

_CHUNK_MIN = 1 << 15  # values per chunk of a pass, at least (Python overhead stays small)
_KEY_SAMPLE = 1 << 14  # values whose keys estimate how many distinct keys a leaf has


def spans(m: int) -> Iterator[tuple[int, int]]:
    """``(lo, hi)`` chunks of ``range(m)``: ``max(2**15, m // 256)`` values each."""
    step = max(_CHUNK_MIN, m // 256)
    for lo in range(0, m, step):
        yield lo, min(lo + step, m)


def segment(fn: np.ufunc, init: float, values: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """float64 ``[k]``: ``fn`` (``np.maximum``, ``np.minimum``) over ``values`` grouped by ``ids``."""
    out = np.full(k, init, np.float64)
    with np.errstate(invalid="ignore"):  # NaN leaves: no grid, rejected by the caller
        if k == 1:  # one group: a plain reduction, much faster than ``ufunc.at``
            out[0] = fn.reduce(values, initial=init)
        else:
            fn.at(out, ids, values)
    return out


def sorted_distinct(x: np.ndarray) -> np.ndarray:
    """``np.unique(x)`` by one sort (faster than its hash path on chunks)."""
    x = np.sort(x)
    return x[np.concatenate([[True], x[1:] != x[:-1]])] if x.size else x


def _keys(v: np.ndarray, gid: np.ndarray) -> np.ndarray:
    """uint64 ``group << 31 | bits of |v|`` (float32 bits, which sort as the magnitudes do)."""
    bits = np.abs(v.astype(np.float32)).view(np.uint32).astype(np.uint64)
    return (gid.astype(np.uint64) << np.uint64(31)) | bits


def smallest_gaps(v: np.ndarray, groups) -> np.ndarray:
    """float64 ``[ngroups]``: per group, the smallest gap between its distinct ``|v|`` (or inf).

    Exactly the gaps of one sort of all keys by (group, magnitude), with a bounded
    buffer: the key range is cut into buckets (quantiles of a sample's distinct keys)
    holding about ``m // 2`` distinct keys each; each bucket is gathered in one pass
    (deduplicated chunk by chunk when the sample shows few distinct keys), sorted in
    place, and its gaps taken chunk by chunk, with the one pair across buckets.
    """
    k, m = groups.ngroups, v.size
    if m == 0:
        return np.full(k, np.inf)
    pos = np.arange(0, m, max(1, m // _KEY_SAMPLE))
    sample = sorted_distinct(_keys(v[pos], groups.at(pos)))
    cap = max(_CHUNK_MIN, m // 2)
    nb = max(1, math.ceil(1.25 * sample.size / pos.size * m / cap))  # with slack
    bounds = [None, *(sample[(i * sample.size) // nb] for i in range(1, nb)), None]
    few = 2 * sample.size <= pos.size
    gap = np.full(k, np.inf)
    last = None
    for b in range(nb):
        keys = _bucket(v, groups, bounds[b], bounds[b + 1], cap, few)
        if keys.size:
            if last is not None:
                gap = _gaps_into(gap, np.array([last, keys[0]], np.uint64), k)
            gap = _gaps_into(gap, keys, k)
            last = keys[-1]
        del keys  # before the next bucket's buffer
    return gap


def _gaps_into(gap: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """``gap`` lowered by the positive gaps between consecutive sorted ``keys`` of one group."""
    step = max(_CHUNK_MIN, keys.size // 128)
    for lo in range(0, max(keys.size - 1, 0), step):
        c = keys[lo : lo + step + 1]
        sa = (c & np.uint64(0x7FFFFFFF)).astype(np.uint32).view(np.float32).astype(np.float64)
        sg = (c >> np.uint64(31)).astype(np.int64)
        with np.errstate(invalid="ignore"):
            d = np.diff(sa)
        ok = (np.diff(sg) == 0) & (d > 0)
        gap = np.minimum(gap, segment(np.minimum, np.inf, d[ok], sg[1:][ok], k))
    return gap


def _bucket(v, groups, lo_key, hi_key, cap: int, few: bool) -> np.ndarray:
    """The sorted distinct keys in ``[lo_key, hi_key)`` (None: unbounded), in one pass."""
    buf = np.empty(cap, np.uint64)
    fill = 0
    for lo, hi in spans(v.size):
        kc = _keys(v[lo:hi], groups.span(lo, hi))
        if lo_key is not None:
            kc = kc[kc >= lo_key]
        if hi_key is not None:
            kc = kc[kc < hi_key]
        if few:
            kc = sorted_distinct(kc)
        if fill + kc.size > buf.size:
            fill = _sort_unique(buf, fill)
            if fill + kc.size > buf.size:  # more distinct keys than the sample showed
                grown = np.empty(max(buf.size * 5 // 4, fill + kc.size), np.uint64)
                grown[:fill] = buf[:fill]
                buf = grown
        buf[fill : fill + kc.size] = kc
        fill += kc.size
    return buf[: _sort_unique(buf, fill)]


def _sort_unique(buf: np.ndarray, fill: int) -> int:
    """Sorts ``buf[:fill]`` in place and moves its distinct keys to the front; their count."""
    view = buf[:fill]
    view.sort()
    w = min(fill, 1)
    step = max(_CHUNK_MIN, fill // 128)
    for lo in range(1, fill, step):  # forward, in place: writes never pass the reads
        hi = min(lo + step, fill)
        kept = view[lo:hi][view[lo:hi] != view[lo - 1 : hi - 1]]
        view[w : w + kept.size] = kept
        w += kept.size
    return w
