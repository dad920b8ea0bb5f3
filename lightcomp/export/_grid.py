"""Uniform integer grids: detect ``x = float32(n * scale)`` in a leaf's values, and code it.

A quantized leaf holds, per tensor, channel or group, values ``float32(n * scale)``
cast to the leaf's dtype: the decoding arithmetic of `lightcomp.quant.dequantize`.
`find_grid` recovers integers and float32 scales that reproduce every value bit for
bit; `grid_candidates` stores them (scales, then the integers with one tensor-wide
offset or a zero point per group, each integer stream at its own best coder).

Granularities (JSON specs): ``{"kind": "tensor"}``; ``{"kind": "axis", "axis": a}``
(one scale per index of axis ``a``); ``{"kind": "axes", "axes": [a, b, ...]}`` (one scale
per combination of indices of these axes: heads x head_dim, layers x output units);
``{"kind": "group", "gaxis": g, "size": s, "axis": a or None}`` (one scale per ``s``
consecutive indices of axis ``g``, and per index of axis ``a`` when given; ``"axes":
[...]`` in place of ``"axis"``: per combination of those).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import ml_dtypes
import numpy as np

from lightcomp.export._format import bits_of
from lightcomp.export._streams import Candidate, best_ints, decode_ints, shift


def group_ids(idx: np.ndarray, shape: tuple[int, ...], gran: dict) -> tuple[np.ndarray, int]:
    """The group (one scale each) of every flat index ``idx`` of a leaf ``shape``.

    Returns:
      ``(gid, ngroups)``: int64 group ids shaped like ``idx``, in ``[0, ngroups)``.
    """
    if gran["kind"] == "tensor":
        return np.zeros(idx.shape, np.int64), 1
    strides = np.cumprod((1, *shape[::-1]))[:-1][::-1]

    def coord(a):
        return (idx // strides[a]) % shape[a]

    if gran["kind"] == "axis":
        return coord(gran["axis"]), shape[gran["axis"]]
    if gran["kind"] == "axes":
        gid, ngroups = np.zeros(idx.shape, np.int64), 1
    else:
        ga, size = gran["gaxis"], gran["size"]
        ngroups = shape[ga] // size
        gid = coord(ga) // size
    kept = gran["axes"] if "axes" in gran else [] if gran["axis"] is None else [gran["axis"]]
    for a in kept:  # row-major over (group, *kept)
        gid, ngroups = gid * shape[a] + coord(a), ngroups * shape[a]
    return gid, ngroups


def grid_groups(shape: tuple[int, ...], gran: dict) -> int:
    """The number of groups (scales) of a granularity spec, checked against ``shape``.

    Raises:
      ValueError: the spec is not one `granularities` writes for ``shape`` (an axis out
        of range, a group size that does not divide its axis).
    """
    nd, kind = len(shape), gran["kind"]

    def ok_axis(a):
        return type(a) is int and 0 <= a < nd

    def kept_count(axes):  # distinct axes in order, as `granularities` writes them
        if (
            isinstance(axes, list)
            and axes
            and all(map(ok_axis, axes))
            and axes == sorted(set(axes))
        ):
            return math.prod(shape[a] for a in axes)
        return None

    if kind == "tensor":
        return 1
    if kind == "axis" and ok_axis(gran.get("axis")):
        return shape[gran["axis"]]
    if kind == "axes" and (count := kept_count(gran.get("axes"))) is not None:
        return count
    if kind == "group":
        ga, size = gran.get("gaxis"), gran.get("size")
        if ok_axis(ga) and type(size) is int and size >= 1 and shape[ga] % size == 0:
            if "axes" in gran:
                count = kept_count(gran["axes"])
            else:
                a = gran.get("axis")
                count = 1 if a is None else shape[a] if ok_axis(a) else None
            if count is not None:
                return shape[ga] // size * count
    raise ValueError(f"corrupted grid granularity {gran!r} for shape {list(shape)}")


def granularities(shape: tuple[int, ...]) -> list[dict]:
    """The granularities tried for a leaf ``shape``, coarsest first.

    Per tensor; per index of each axis longer than 1, last axis first; for rank >= 3, per
    combination of 2 to rank - 1 such axes, fewest scales first (the output units of an
    attention kernel, the layers x units of a stacked one); for rank >= 2, groups of
    ``2**i`` (4096 down to 2, dividing and shorter than the axis) along the second-to-last
    axis and then axis 0, per output channel (last axis) or not, and for rank >= 3 also per
    layer (axis 0) and output channel.
    """
    out: list[dict] = [{"kind": "tensor"}]
    nd = len(shape)
    long = [a for a in range(nd) if shape[a] > 1]
    out += [{"kind": "axis", "axis": a} for a in reversed(long)]
    combos = [c for r in range(2, nd) for c in itertools.combinations(long, r)]
    combos.sort(key=lambda c: math.prod(shape[a] for a in c))  # stable: ties in order
    out += [{"kind": "axes", "axes": list(c)} for c in combos]
    if nd >= 2:
        for ga in (nd - 2, 0) if nd > 2 else (0,):
            sizes = [2**i for i in range(12, 0, -1) if shape[ga] % 2**i == 0 and 2**i < shape[ga]]
            for size in sizes:
                out += [
                    {"kind": "group", "gaxis": ga, "size": size, "axis": a} for a in (nd - 1, None)
                ]
                if nd > 2 and ga != 0:
                    out.append({"kind": "group", "gaxis": ga, "size": size, "axes": [0, nd - 1]})
    return out


def grid_values(n: np.ndarray, scale: np.ndarray, gid: np.ndarray, dt: np.dtype) -> np.ndarray:
    """``float32(n * scale[gid])`` cast to ``dt``: the arithmetic of `lightcomp.quant.dequantize`."""
    return (n.astype(np.float32) * scale[gid]).astype(dt)


def segment(fn: np.ufunc, init: float, values: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """float64 ``[k]``: ``fn`` (``np.maximum``, ``np.minimum``) over ``values`` grouped by ``ids``."""
    out = np.full(k, init, np.float64)
    with np.errstate(invalid="ignore"):  # NaN leaves: no grid, rejected by the caller
        if k == 1:  # one group: a plain reduction, much faster than ``ufunc.at``
            out[0] = fn.reduce(values, initial=init)
        else:
            fn.at(out, ids, values)
    return out


_SCREEN = 1 << 14  # values of the sample an estimate is screened on before the full check


def _screen(v64, gid, ngroups, tol):
    """``rejects(est, open)``: True when no open group of a sample is within ``tol`` of a grid.

    The sample (every ``m // _SCREEN``-th value) decides only when it holds every open
    group: a group's residual on a subset is at most its residual on all of it, so a
    rejection by the sample is one the full check would make (the screen never loses a
    grid).
    """
    step = max(1, v64.size // _SCREEN)
    sv, sg = v64[::step], gid[::step]
    covered = np.bincount(sg, minlength=ngroups) > 0

    def rejects(est, open_):
        if step == 1 or not covered[open_].all():
            return False
        with np.errstate(all="ignore"):
            q = sv / est[sg]
            resid = segment(np.maximum, 0.0, np.abs(q - np.rint(q)), sg, ngroups)
        return not np.any((resid < tol) & open_)

    return rejects


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
    if ngroups > 2 * _PROBE and v.size > _SCREEN and not _probe_groups(v, gid, ngroups):
        return None
    v64 = v.astype(np.float64)
    a = np.abs(v64)
    a_lo, a_hi = _rounding_interval(a, v.dtype)
    fi = ml_dtypes.finfo(v.dtype)
    tol = min(0.3, 2.0 ** (17 - fi.nmant))  # |v / est - n| allowed by v's own rounding
    amax = segment(np.maximum, 0.0, a, gid, ngroups)
    n_out = np.zeros(v.shape, np.int64)
    scale = np.ones(ngroups, np.float32)
    done = amax == 0  # all-zero groups: n = 0 with any scale
    rejects = _screen(v64, gid, ngroups, tol)
    for est in _step_estimates(v64, a, amax, gid, ngroups):
        if done.all():
            break
        est = np.where(np.isfinite(est) & (est > 0), est, 1.0)
        if rejects(est, ~done):
            continue
        with np.errstate(all="ignore"):
            n = np.rint(v64 / est[gid])
        if not np.all(np.isfinite(n)) or np.abs(n).max(initial=0) > 2**16:
            continue
        resid = segment(np.maximum, 0.0, np.abs(v64 / est[gid] - n), gid, ngroups)
        if not np.any((resid < tol) & ~done):  # cheap rejection: values far from the grid
            continue
        lo, hi, bad = _scale_interval(v64, a_lo, a_hi, n, gid, ngroups)
        good = ~bad & (lo <= hi) & ~done & (resid < tol)
        if good.any():
            for s in _scale_candidates(lo, hi, est):
                if done.all():
                    break
                _take_exact(v, n, s, gid, good, n_out, scale, done)
    return (n_out, scale) if done.all() else None


_PROBE = 32  # groups whose whole values are searched first, when there are many groups


def _probe_groups(v: np.ndarray, gid: np.ndarray, ngroups: int) -> bool:
    """Whether `_PROBE` groups spread over all, taken whole, are each on a grid.

    Every group is searched on its own values alone (its estimates, residuals and
    scales are its own), so a probe group off the grid means the leaf has no grid at
    this granularity: a refusal at the cost of one pass, instead of the full search.
    """
    pick = np.unique(np.linspace(0, ngroups - 1, _PROBE).astype(np.int64))
    where = np.full(ngroups, -1, np.int64)
    where[pick] = np.arange(pick.size)
    sub = where[gid]
    keep = sub >= 0
    return find_grid(v[keep], sub[keep], pick.size) is not None


def _rounding_interval(a: np.ndarray, dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The float64 magnitudes that round to each ``|v|`` = ``a`` in ``dt`` (ties: verified)."""
    fi = ml_dtypes.finfo(dt)
    m, e = np.frexp(a)
    ulp = np.maximum(np.ldexp(1.0, e - 1 - fi.nmant), float(fi.smallest_subnormal))
    below = np.where(m == 0.5, ulp / 2, ulp)
    return a - 0.5 * below, a + 0.5 * ulp


def _step_estimates(v64, a, amax, gid, ngroups) -> Iterator[np.ndarray]:
    """Candidate grid steps [ngroups]: the smallest gap, then min-max for 2..16 bits."""
    vmax = segment(np.maximum, 0.0, v64, gid, ngroups)
    vmin = segment(np.minimum, 0.0, v64, gid, ngroups)
    sa, sg = _sorted_by_group(a, gid)
    with np.errstate(invalid="ignore"):
        d = np.diff(sa)
    ok = (np.diff(sg) == 0) & (d > 0)
    gap = segment(np.minimum, np.inf, d[ok], sg[1:][ok], ngroups)
    first = segment(np.minimum, np.inf, a[a > 0], gid[a > 0], ngroups)
    yield np.minimum(gap, first)
    for b in range(2, 17):
        yield amax / (2 ** (b - 1) - 1)
        yield (np.maximum(vmax, 0) - np.minimum(vmin, 0)) / (2**b - 1)


def _sorted_by_group(a: np.ndarray, gid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The magnitudes ``a`` sorted by (group, magnitude), and their groups.

    ``a`` holds magnitudes of float32 / bfloat16 / float16 values, exact in float32,
    whose bits sort as the values do: one sort of ``group << 31 | bits`` (uint64).
    """
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    key = np.sort((gid.astype(np.uint64) << np.uint64(31)) | bits)
    low = (key & np.uint64(0x7FFFFFFF)).astype(np.uint32)
    return low.view(np.float32).astype(np.float64), (key >> np.uint64(31)).astype(np.int64)


def _scale_interval(v64, a_lo, a_hi, n, gid, ngroups):
    """Per group, the scales ``[lo, hi]`` that map ``n`` into every value's rounding interval.

    Returns:
      ``(lo, hi, bad)``: float64 ``[ngroups]`` bounds, and the groups where ``n`` cannot
      work at all (a zero integer for a non-zero value or the converse, or a wrong sign).
    """
    an = np.abs(n)
    nz = an > 0
    bad = (nz != (np.abs(v64) > 0)) | (nz & (np.sign(n) != np.sign(v64)))
    safe = np.where(nz, an, 1.0)
    lo = segment(np.maximum, 0.0, np.where(nz, a_lo / safe, 0.0), gid, ngroups)
    hi = segment(np.minimum, np.inf, np.where(nz, a_hi / safe, np.inf), gid, ngroups)
    return lo, hi, segment(np.maximum, 0.0, bad.astype(np.float64), gid, ngroups) > 0


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


def _take_exact(v, n, s, gid, good, n_out, scale, done) -> None:
    """Takes ``(n, s)`` for the good, unfinished groups it reproduces bitwise (in place)."""
    s = np.where(np.isfinite(s) & (s > 0), s, np.float32(1)).astype(np.float32)
    wrong = bits_of(grid_values(n, s, gid, v.dtype)) != bits_of(v)
    wrong = segment(np.maximum, 0.0, wrong.astype(np.float64), gid, len(done)) > 0
    new = good & ~wrong & ~done
    take = new[gid]
    n_out[take] = n[take]
    scale[new] = s[new]
    done |= new


def grid_candidates(v: np.ndarray, idx: np.ndarray, shape, entropy: bool) -> list[Candidate]:
    """Grid encodings of the values ``v`` at flat positions ``idx`` of a leaf ``shape``.

    Granularities are tried coarsest first, skipping those with more scales than half
    the values, and stop after the first grid of at most 8 bits. Each found grid gives
    a candidate with one tensor-wide offset and, with several groups, one with a zero
    point per group (affine). Part 0 holds the float32 scales, then the zero points,
    then the integers.

    Returns:
      ``[(spec, blobs)]`` with spec ``{"val": "grid", "g", "G", "sp", "s", ...}``.
    """
    out = []
    for gran in granularities(shape):
        gid, ngroups = group_ids(idx, shape, gran)
        if ngroups > max(v.size // 2, 1):
            continue  # more scales than half the values: a codebook or raw floats win
        found = find_grid(v, gid, ngroups)
        if found is None:
            continue
        n, scale = found
        base = {"val": "grid", "g": gran, "G": ngroups, "sp": 0}
        lo = int(n.min(initial=0))
        i_parts: list[bytes] = []
        ispec = best_ints(n - lo, i_parts, entropy)
        out.append(({**base, "off": lo, "s": shift(ispec, 1)}, [scale.tobytes(), *i_parts]))
        if ngroups > 1:
            out.append(_zero_point_candidate(base, n, scale, gid, ngroups, entropy))
        if int(n.max(initial=0)) - lo < 256:
            break  # a grid of at most 8 bits: finer granularities only add scales
    return out


def _zero_point_candidate(base, n, scale, gid, ngroups, entropy) -> Candidate:
    """The affine candidate: a zero point per group (its minimum integer), then ``n - zp``."""
    zp = np.full(ngroups, 2**20, np.int64)
    np.minimum.at(zp, gid, n)
    zp[zp == 2**20] = 0  # groups without values (all pruned)
    zlo = int(zp.min(initial=0))
    z_parts: list[bytes] = []
    zspec = best_ints(zp - zlo, z_parts, entropy)
    i_parts: list[bytes] = []
    ispec = best_ints(n - zp[gid], i_parts, entropy)
    spec = {**base, "zoff": zlo, "z": shift(zspec, 1), "s": shift(ispec, 1 + len(z_parts))}
    return spec, [scale.tobytes(), *z_parts, *i_parts]


def decode_grid(spec: dict, idx: np.ndarray | None, shape, dt: np.dtype, parts) -> np.ndarray:
    """The values ``[m]`` (dtype ``dt``) a `grid_candidates` spec describes.

    Args:
      spec: the values' spec.
      idx: the flat positions of the values, or None for all ``prod(shape)`` of them.
      shape: the leaf's shape.
      dt: the leaf's dtype.
      parts: the leaf's parts.

    Raises:
      ValueError: scales, integers or zero points do not match the leaf (corrupted); the
        counts are checked before the integers are decoded.
    """
    m = int(np.prod(shape, dtype=np.int64)) if idx is None else idx.size
    ngroups = grid_groups(tuple(shape), spec["g"])
    if ngroups != spec["G"] or len(parts[spec["sp"]]) != 4 * ngroups:
        raise ValueError("corrupted grid scales")
    if spec["s"]["n"] != m or ("z" in spec and spec["z"]["n"] != ngroups):
        raise ValueError("corrupted grid integers")
    scale = np.frombuffer(parts[spec["sp"]], np.float32)
    n = decode_ints(spec["s"], parts)
    if n.size != m:
        raise ValueError("corrupted grid integers")
    gid, _ = group_ids(np.arange(m) if idx is None else idx, shape, spec["g"])
    if "z" in spec:
        zp = decode_ints(spec["z"], parts) + spec["zoff"]
        if zp.size != ngroups:
            raise ValueError("corrupted zero points")
        n = n + zp[gid]
    else:
        n = n + spec["off"]
    return grid_values(n, scale, gid, dt)
