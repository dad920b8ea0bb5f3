"""The search for a uniform integer grid ``x = float32(n * scale)`` in a leaf's values.

Every step is a per-group reduction (max, min, any) over the values, so it runs over
chunks of values in flat order (`lightcomp.export._segments.spans`: ``max(2**15, m // 256)`` values) and accumulates the per-group results: the
work space is bounded by a chunk, never a float64 copy of all values. The integers found
are held as int16 (int32 when a grid needs more). See `find_grid`.
"""

from __future__ import annotations

from collections.abc import Iterator

import ml_dtypes
import numpy as np

from lightcomp.export._format import bits_of
from lightcomp.export._groups import GivenGroups
from lightcomp.export._segments import segment, smallest_gaps, spans

_SCREEN = 1 << 14  # values of the sample an estimate is screened on before the full check
_PROBE = 32  # groups whose whole values are searched first, when there are many groups


def grid_values(n: np.ndarray, scale: np.ndarray, gid: np.ndarray, dt: np.dtype) -> np.ndarray:
    """``float32(n * scale[gid])`` cast to ``dt``: the arithmetic of `lightcomp.quant.dequantize`."""
    return (n.astype(np.float32) * scale[gid]).astype(dt)


def _pieces(v: np.ndarray, groups) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(lo, hi, v64, gid)`` per chunk: the float64 values ``v[lo:hi]`` and their groups."""
    for lo, hi in spans(v.size):
        yield lo, hi, v[lo:hi].astype(np.float64), groups.span(lo, hi)


def find_grid(v: np.ndarray, gid: np.ndarray, ngroups: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Integers ``n`` and float32 scales with ``grid_values(n, scale, gid) == v`` bitwise.

    The step of each group is first estimated (the smallest gap between its distinct
    magnitudes, then the min-max formulas of `lightcomp.quant` for 2..16 bits). Given
    the integers of an estimate, the scales that reproduce every value form an interval
    (each value's rounding interval divided by its integer), intersected per group;
    scales from that interval are then verified by decoding.

    Args:
      v: the values ``[m]`` (float16, bfloat16 or float32), without negative zeros (a
        grid decodes ``0 * scale`` to ``+0``; `encode_leaf` stores ``-0`` apart).
      gid: their groups ``[m]``, from `group_ids`.
      ngroups: the number of groups.

    Returns:
      ``(n, scale)``: int64 ``[m]`` and float32 ``[ngroups]``; None when some group is
      not on a grid (or holds NaN or inf).
    """
    found = search_grid(v, GivenGroups(gid, ngroups))
    return None if found is None else (found[0].astype(np.int64), found[1])


def search_grid(v: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray] | None:
    """`find_grid` with the groups of a `lightcomp.export._groups.Groups` (chunk by chunk).

    Returns:
      ``(n, scale)``: int16 (or int32, for grids wider than 16 bits) ``[m]`` and float32
      ``[ngroups]``, or None.
    """
    ngroups = groups.ngroups
    if ngroups > 2 * _PROBE and v.size > _SCREEN and not _probe_groups(v, groups):
        return None
    fi = ml_dtypes.finfo(v.dtype)
    tol = min(0.3, 2.0 ** (17 - fi.nmant))  # |v / est - n| allowed by v's own rounding
    stats = _stats(v, groups)
    n_out = [np.zeros(v.shape, np.int16)]  # widened in place of the list when needed
    scale = np.ones(ngroups, np.float32)
    done = stats["amax"] == 0  # all-zero groups: n = 0 with any scale
    rejects = _screen(v, groups, tol)
    for est in _step_estimates(v, groups, stats):
        if done.all():
            break
        est = np.where(np.isfinite(est) & (est > 0), est, 1.0)
        if rejects(est, ~done):
            continue
        resid = _residuals(v, groups, est)
        if resid is None or not np.any((resid < tol) & ~done):  # far from the grid
            continue
        lo, hi, bad = _scale_interval(v, groups, est)
        good = ~bad & (lo <= hi) & ~done & (resid < tol)
        if good.any():
            for s in _scale_candidates(lo, hi, est):
                if done.all():
                    break
                _take_exact(v, groups, est, s, good, n_out, scale, done)
    return (n_out[0], scale) if done.all() else None


def _stats(v: np.ndarray, groups) -> dict:
    """Per group (float64 ``[ngroups]``): max ``|v|``, max and min ``v``, least ``|v| > 0``."""
    k = groups.ngroups
    acc = {
        "amax": np.zeros(k),
        "vmax": np.zeros(k),
        "vmin": np.zeros(k),
        "first": np.full(k, np.inf),
    }
    for _, _, v64, gid in _pieces(v, groups):
        a = np.abs(v64)
        pos = a > 0
        for key, fn, init, x, g in (
            ("amax", np.maximum, 0.0, a, gid),
            ("vmax", np.maximum, 0.0, v64, gid),
            ("vmin", np.minimum, 0.0, v64, gid),
            ("first", np.minimum, np.inf, a[pos], gid[pos]),
        ):
            acc[key] = fn(acc[key], segment(fn, init, x, g, k))
    return acc


def _probe_groups(v: np.ndarray, groups) -> bool:
    """Whether `_PROBE` groups spread over all, taken whole, are each on a grid.

    Every group is searched on its own values alone (its estimates, residuals and
    scales are its own), so a probe group off the grid means the leaf has no grid at
    this granularity: a refusal at the cost of one pass, instead of the full search.
    """
    ngroups = groups.ngroups
    pick = np.unique(np.linspace(0, ngroups - 1, _PROBE).astype(np.int64))
    where = np.full(ngroups, -1, np.int64)
    where[pick] = np.arange(pick.size)
    vals, subs = [], []
    for lo, hi in spans(v.size):
        sub = where[groups.span(lo, hi)]
        keep = sub >= 0
        vals.append(v[lo:hi][keep])
        subs.append(sub[keep].astype(np.int32))
    sub_v, sub_g = np.concatenate(vals), np.concatenate(subs)
    return search_grid(sub_v, GivenGroups(sub_g, pick.size)) is not None


def _rounding_interval(a: np.ndarray, dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The float64 magnitudes that round to each ``|v|`` = ``a`` in ``dt`` (ties: verified)."""
    fi = ml_dtypes.finfo(dt)
    m, e = np.frexp(a)
    ulp = np.maximum(np.ldexp(1.0, e - 1 - fi.nmant), float(fi.smallest_subnormal))
    below = np.where(m == 0.5, ulp / 2, ulp)
    return a - 0.5 * below, a + 0.5 * ulp


def _screen(v: np.ndarray, groups, tol: float):
    """``rejects(est, open)``: True when no open group of a sample is within ``tol`` of a grid.

    The sample (every ``m // _SCREEN``-th value) decides only when it holds every open
    group: a group's residual on a subset is at most its residual on all of it, so a
    rejection by the sample is one the full check would make (the screen never loses a
    grid).
    """
    ngroups = groups.ngroups
    step = max(1, v.size // _SCREEN)
    sv = v[::step].astype(np.float64)
    sg = groups.at(np.arange(0, v.size, step))
    covered = np.bincount(sg, minlength=ngroups) > 0

    def rejects(est, open_):
        if step == 1 or not covered[open_].all():
            return False
        with np.errstate(all="ignore"):
            q = sv / est[sg]
            resid = segment(np.maximum, 0.0, np.abs(q - np.rint(q)), sg, ngroups)
        return not np.any((resid < tol) & open_)

    return rejects


def _step_estimates(v, groups, stats) -> Iterator[np.ndarray]:
    """Candidate grid steps [ngroups]: the smallest gap, then min-max for 2..16 bits."""
    yield np.minimum(smallest_gaps(v, groups), stats["first"])
    amax, vmax, vmin = stats["amax"], stats["vmax"], stats["vmin"]
    for b in range(2, 17):
        yield amax / (2 ** (b - 1) - 1)
        yield (np.maximum(vmax, 0) - np.minimum(vmin, 0)) / (2**b - 1)


def _quotients(v64: np.ndarray, est: np.ndarray, gid: np.ndarray):
    """``(q, n)``: ``v / est[gid]`` and its nearest integers, float64."""
    with np.errstate(all="ignore"):
        q = v64 / est[gid]
    return q, np.rint(q)


def _residuals(v: np.ndarray, groups, est: np.ndarray) -> np.ndarray | None:
    """Per group, max ``|v / est - n|``; None when some ``n`` is not finite or over ``2**16``."""
    out = np.zeros(groups.ngroups)
    for _, _, v64, gid in _pieces(v, groups):
        q, n = _quotients(v64, est, gid)
        if not np.all(np.isfinite(n)) or np.abs(n).max(initial=0) > 2**16:
            return None
        q -= n
        out = np.maximum(out, segment(np.maximum, 0.0, np.abs(q, out=q), gid, groups.ngroups))
    return out


def _scale_interval(v: np.ndarray, groups, est: np.ndarray):
    """Per group, the scales ``[lo, hi]`` that map ``n`` into every value's rounding interval.

    Returns:
      ``(lo, hi, bad)``: float64 ``[ngroups]`` bounds, and the groups where ``n`` cannot
      work at all (a zero integer for a non-zero value or the converse, or a wrong sign).
    """
    k = groups.ngroups
    lo, hi, bad = np.zeros(k), np.full(k, np.inf), np.zeros(k)
    for _, _, v64, gid in _pieces(v, groups):
        n = _quotients(v64, est, gid)[1]
        a = np.abs(v64)
        a_lo, a_hi = _rounding_interval(a, v.dtype)
        an = np.abs(n)
        nz = an > 0
        wrong = (nz != (a > 0)) | (nz & (np.sign(n) != np.sign(v64)))
        safe = np.where(nz, an, 1.0)
        lo = np.maximum(lo, segment(np.maximum, 0.0, np.where(nz, a_lo / safe, 0.0), gid, k))
        hi = np.minimum(hi, segment(np.minimum, np.inf, np.where(nz, a_hi / safe, np.inf), gid, k))
        bad = np.maximum(bad, segment(np.maximum, 0.0, wrong.astype(np.float64), gid, k))
    return lo, hi, bad > 0


def _scale_candidates(lo, hi, est) -> tuple[np.ndarray, ...]:
    """float32 scales to try from ``[lo, hi]``: the middle, the ends, and their neighbours."""
    with np.errstate(all="ignore"):
        mid = np.where(np.isfinite(hi), (lo + hi) / 2, est).astype(np.float32)
        lo32, hi32 = (
            lo.astype(np.float32),
            np.where(np.isfinite(hi), hi, est).astype(np.float32),
        )
    up, down = np.float32(np.inf), np.float32(0)
    return (
        mid,
        np.nextafter(mid, up),
        np.nextafter(mid, down),
        lo32,
        np.nextafter(lo32, up),
        hi32,
        np.nextafter(hi32, down),
    )


def _take_exact(v, groups, est, s, good, n_out, scale, done) -> None:
    """Takes ``(n, s)`` for the good, unfinished groups it reproduces bitwise (in place).

    ``n_out`` is a one-element list holding the integers, widened to int32 when a taken
    integer does not fit int16.
    """
    k = groups.ngroups
    s = np.where(np.isfinite(s) & (s > 0), s, np.float32(1)).astype(np.float32)
    wrong = np.zeros(k, bool)
    for lo, hi, v64, gid in _pieces(v, groups):
        n = _quotients(v64, est, gid)[1]
        miss = bits_of(grid_values(n, s, gid, v.dtype)) != bits_of(v[lo:hi])
        wrong |= segment(np.maximum, 0.0, miss.astype(np.float64), gid, k) > 0
    new = good & ~wrong & ~done
    if new.any():
        for lo, hi, v64, gid in _pieces(v, groups):
            take = new[gid]
            n = _quotients(v64[take], est, gid[take])[1]
            if n.size and np.abs(n).max() > np.iinfo(np.int16).max:
                n_out[0] = n_out[0].astype(np.int32)
            n_out[0][lo:hi][take] = n
    scale[new] = s[new]
    done |= new
