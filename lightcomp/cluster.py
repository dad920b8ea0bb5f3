"""Weight sharing: a fast, jittable 1-D k-means, trainable shared centroids, channel merging.

Deep-Compression-style weight sharing (Han et al. 2016) as pure functions:

- `kmeans` clusters the values of one array (or of each output channel, with ``axis``) into
  ``k`` centroids with Lloyd's algorithm run to its fixed point. It exploits the 1-D structure:
  the values are sorted once (an order-preserving int32 key sort), cluster sums come from
  prefix sums, and each Lloyd step assigns by the ``k - 1`` boundaries between sorted
  centroids (``searchsorted``), so a step costs O(k log n) and nothing of size n x k is built.
- `share` turns ``(centroids, assignments)`` back into weights with a gather; its gradient with
  respect to the centroids is the segment sum (or mean) of the weights' gradients.
- `merge_channels` shares whole output channels whose weight vectors are close.
- `cluster_report` gives per-leaf k, bits per index, inertia and codebook + index bytes.

Codes. Assignments use the smallest unsigned dtype that holds ``k - 1`` (`index_dtype`:
uint8 for k <= 256). With ``preserve_zeros=True`` **code 0 is the zero code**:
``centroids[..., 0]`` is exactly 0.0, every zero weight gets code 0, and the other ``k - 1``
centroids (sorted ascending) are fitted to the non-zero weights only; non-zero weights never get
code 0. Pass the same ``preserve_zeros=True`` to `share`, which then outputs exactly 0 for code 0
and gives that centroid no gradient, so a pruning mask survives clustering and training.
Without it, centroids are sorted ascending.

References:
  Han, Mao, Dally, "Deep Compression", ICLR 2016 (weight sharing, linear init, centroid grads).
  Lloyd, "Least squares quantization in PCM", 1982. Arthur & Vassilvitskii, "k-means++", 2007.
  Gersho, "Asymptotically optimal block quantization", 1979 (cube-root density point density).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree as _tree

__all__ = [
    "INITS",
    "KMeansInfo",
    "LeafReport",
    "MergeInfo",
    "cluster_report",
    "index_dtype",
    "inertia",
    "kmeans",
    "kmeans_tree",
    "merge_channels",
    "share",
]

PyTree = Any
INITS = ("linear", "density", "kmeans++", "random")
_REDUCES = ("sum", "mean")
_METRICS = ("cosine", "euclidean")
_DENSITY_GRID = 4096  # quantile intervals for the density estimate of the "density" init
_PP_SAMPLE = 1 << 15  # k-means++ seeds on at most this many values (uniform sample)


class KMeansInfo(NamedTuple):
    """What `kmeans` did (returned with ``with_info=True``).

    Attributes:
      iterations: int32, Lloyd steps taken (the most over channels).
      converged: bool, every channel reached its fixed point (or ``tol``) before ``iters``.
      inertia: float32, sum of squared distances of the values to their centroids.
    """

    iterations: jax.Array
    converged: jax.Array
    inertia: jax.Array


class MergeInfo(NamedTuple):
    """What `merge_channels` merged.

    Attributes:
      groups: int32 ``[channels]``, the index of the channel whose group each channel joined
        (its own index for a group's first channel).
      num_groups: int32, distinct shared vectors left.
      num_merged: int32, channels that now share another channel's vector
        (``channels - num_groups``).
    """

    groups: jax.Array
    num_groups: jax.Array
    num_merged: jax.Array


class LeafReport(NamedTuple):
    """One leaf's line of `cluster_report` (sizes in bytes; indices bit-packed)."""

    k: int
    bits: int
    channels: int
    inertia: float
    codebook_bytes: int
    index_bytes: int
    total_bytes: int
    dense_bytes: int


# --------------------------------------------------------------------------- validation


def index_dtype(k: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ``k - 1`` (uint8 for k <= 256)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if k - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"k={k} needs more than 32-bit indices")


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _where(name: str) -> str:
    return f" (leaf {name!r})" if name not in ("", "x") else ""


def _check_float_array(x: Any, argname: str, name: str) -> jax.Array:
    if not hasattr(x, "dtype"):
        x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{argname}{_where(name)} must be a floating array, got {x.dtype}")
    return x


def _check_int(value: Any, argname: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{argname} must be an int, got {value!r}")
    if value < lo:
        raise ValueError(f"{argname} must be >= {lo}, got {value}")
    return int(value)


def _norm_axis(axis: Any, ndim: int) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"axis must be an int or None, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis={axis} is out of range for an array of {ndim} dimensions")
    return int(axis) % ndim


def _check_finite(x: Any, name: str) -> None:
    if _is_concrete(x):
        bad = ~np.isfinite(np.asarray(x, dtype=np.float32))
        if bad.any():
            raise ValueError(
                f"x{_where(name)} has {int(bad.sum())} NaN/inf values (first at flat index "
                f"{int(np.argmax(bad))}); k-means needs finite weights"
            )


def _distinct_counts(rows: np.ndarray, preserve_zeros: bool) -> np.ndarray:
    srt = np.sort(rows, axis=1)
    new = np.ones_like(srt, dtype=bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    if preserve_zeros:
        new &= srt != 0
    return new.sum(axis=1)


def _check_distinct(rows: np.ndarray, k_fit: int, preserve_zeros: bool, name: str, per_channel):
    # A cheap sufficient test on a prefix of each row first; the full count only where it fails.
    head = _distinct_counts(rows[:, : 8 * k_fit], preserve_zeros)
    short = np.flatnonzero(head < k_fit)
    if short.size == 0:
        return
    full = _distinct_counts(rows[short], preserve_zeros)
    if preserve_zeros:
        full = np.where(~rows[short].any(axis=1), k_fit, full)  # all-zero (pruned) rows pass
    bad = short[full < k_fit]
    if bad.size:
        what = "non-zero values" if preserve_zeros else "values"
        k_name = "k - 1" if preserve_zeros else "k"
        where = f" channel {int(bad[0])} (and {bad.size - 1} more)" if per_channel else ""
        got = int(full[full < k_fit][0])
        raise ValueError(
            f"x{_where(name)}{where} has {got} distinct {what}, fewer than {k_name}={k_fit} "
            f"clusters; use k <= {got + int(preserve_zeros)}"
        )


# --------------------------------------------------------------------------- 1-D core


def _float_key(x: jax.Array) -> jax.Array:
    # Order-preserving int32 view of float32 (an involution): XLA sorts int32 keys about five
    # times faster than float32 on CPU, which dominates the whole k-means for large arrays.
    b = jax.lax.bitcast_convert_type(x, jnp.int32)
    return b ^ ((b >> 31) & jnp.int32(0x7FFFFFFF))


def _sorted_values(x: jax.Array, preserve_zeros: bool) -> tuple[jax.Array, jax.Array]:
    """Sorts a 1-D float32 array; values not clustered (zeros) go last as +inf. -> (xs, m)."""
    if preserve_zeros:
        keep = x != 0
        x = jnp.where(keep, x, jnp.inf)
        m = jnp.sum(keep, dtype=jnp.int32)
    else:
        m = jnp.int32(x.shape[0])
    keys = jax.lax.sort(_float_key(x), is_stable=False)
    return jax.lax.bitcast_convert_type(_float_key(keys), jnp.float32), m


def _prefix_sums(xs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Prefix sums ``[n + 1]`` of sorted values as a float32 pair (hi, lo).

    Sums of sorted values grow to O(n) and a float32 difference of two of them loses the
    low bits of a cluster's sum. ``lo`` accumulates the rounding errors of ``hi``: each step of
    ``hi`` is recovered exactly by one subtraction (Sterbenz), so ``hi + lo`` telescopes to the
    exact prefix to float32 precision of the *range* sums, at the price of one more cumsum.
    """
    z = jnp.zeros((1,), jnp.float32)
    hi = jnp.concatenate([z, jnp.cumsum(xs)])
    step = hi[1:] - hi[:-1]
    lo = jnp.concatenate([z, jnp.cumsum(xs - step)])
    return hi, lo


def _take(a: jax.Array, i: jax.Array) -> jax.Array:
    return jnp.take(a, i, mode="clip")


def _init_linear(xs, m, k):
    lo, hi = xs[0], _take(xs, m - 1)
    t = (jnp.arange(k, dtype=jnp.float32) + (0.5 if k == 1 else 0.0)) / max(k - 1, 1)
    return lo + (hi - lo) * t


def _init_density(xs, m, k):
    # Quantiles q_g of the data on G equal-mass intervals; an interval of width d holds mass
    # 1/G, so density 1/(G d) and cube-root-density mass d^(2/3) (up to a constant). Centroids
    # go to equal shares of that mass (Gersho 1979), interpolated inside each interval.
    g = min(_DENSITY_GRID, xs.shape[0])
    pos = jnp.round(jnp.arange(g + 1, dtype=jnp.float32) * ((m - 1) / g)).astype(jnp.int32)
    q = _take(xs, pos)
    d = jnp.diff(q)
    w = d ** (2.0 / 3.0)
    cw = jnp.concatenate([jnp.zeros((1,), jnp.float32), jnp.cumsum(w)])
    t = (jnp.arange(k, dtype=jnp.float32) + 0.5) / k * cw[-1]
    j = jnp.clip(jnp.searchsorted(cw, t, side="right") - 1, 0, g - 1)
    frac = jnp.where(w[j] > 0, (t - cw[j]) / jnp.where(w[j] > 0, w[j], 1.0), 0.0)
    return jnp.where(cw[-1] > 0, q[j] + frac * d[j], q[0])


def _init_kmeanspp(xs, m, k, key):
    # Greedy k-means++ as scikit-learn runs it: each step draws 2 + log(k) candidates with
    # probability proportional to D^2 and keeps the one that lowers the potential most.
    n = xs.shape[0]
    ks, k0 = jax.random.split(key)
    if n <= _PP_SAMPLE:
        v, valid = xs, jnp.arange(n) < m
    else:
        v = _take(xs, jnp.floor(jax.random.uniform(ks, (_PP_SAMPLE,)) * m).astype(jnp.int32))
        valid = jnp.ones((_PP_SAMPLE,), bool)
    v = jnp.where(valid, v, 0.0)
    trials = 2 + int(math.log(k)) if k > 1 else 1
    first = _take(v, jnp.floor(jax.random.uniform(k0, ()) * jnp.sum(valid)).astype(jnp.int32))
    d2 = jnp.where(valid, (v - first) ** 2, 0.0)
    cs = jnp.zeros((k,), jnp.float32).at[0].set(first)

    def body(i, carry):
        cs, d2, key = carry
        key, sub = jax.random.split(key)
        cum = jnp.cumsum(d2)
        u = jax.random.uniform(sub, (trials,)) * cum[-1]
        cand = _take(v, jnp.searchsorted(cum, u, side="right", method="scan"))
        new = jnp.where(valid, jnp.minimum(d2, (v - cand[:, None]) ** 2), 0.0)
        best = jnp.argmin(jnp.sum(new, axis=1))
        return cs.at[i].set(cand[best]), new[best], key

    cs, _, _ = jax.lax.fori_loop(1, k, body, (cs, d2, k0))
    return cs


def _init_random(xs, m, k, key):
    n = xs.shape[0]
    r = jnp.where(jnp.arange(n) < m, jax.random.uniform(key, (n,)), -1.0)
    _, idx = jax.lax.top_k(r, min(k, n))
    return _take(xs, jnp.minimum(idx, m - 1))


def _lloyd(xs, m, c, iters, tol):
    """Lloyd's algorithm on sorted values to its fixed point (or ``tol``). -> (c, steps, done)."""
    k = c.shape[0]
    hi, lo = _prefix_sums(jnp.where(jnp.arange(xs.shape[0]) < m, xs, 0.0))
    scale = _take(xs, m - 1) - xs[0]
    mp = jnp.reshape(m, (1,))

    def step(c):
        e = jnp.searchsorted(xs, (c[:-1] + c[1:]) * 0.5, side="left", method="scan")
        start = jnp.concatenate([jnp.zeros((1,), e.dtype), e]).astype(jnp.int32)
        end = jnp.concatenate([e, mp.astype(e.dtype)]).astype(jnp.int32)
        count = end - start
        total = (hi[end] - hi[start]) + (lo[end] - lo[start])
        first, last = _take(xs, start), _take(xs, end - 1)
        mean = jnp.clip(total / jnp.maximum(count, 1), first, last)
        new = jnp.where(count > 0, mean, c)
        # Empty clusters, deterministically: the r-th empty centroid (by index) moves into the
        # r-th widest cluster by count * range^2 (an upper bound on what a split can remove),
        # at that cluster's upper-quartile value; clusters of one distinct value are not split.
        width = jnp.where(count > 0, count * (last - first) ** 2, 0.0)
        order = jnp.argsort(-width, stable=True)
        empty = count == 0
        target = order[jnp.clip(jnp.cumsum(empty) - 1, 0, k - 1)]
        split = _take(xs, start[target] + (3 * count[target]) // 4)
        split = jnp.where(split > first[target], split, last[target])
        move = empty & (width[target] > 0)
        return jnp.sort(jnp.where(move, split, new))

    def cond(s):
        return (s[1] < iters) & ~s[2]

    def body(s):
        c, it, _ = s
        new = step(c)
        return new, it + 1, jnp.max(jnp.abs(new - c)) <= tol * scale

    if k == 1:
        total = hi[-1] + lo[-1]
        return jnp.reshape(total / jnp.maximum(m, 1), (1,)), jnp.int32(1), jnp.bool_(True)
    # nothing to cluster (an all-zero channel under preserve_zeros): done before any step
    c, it, done = jax.lax.while_loop(cond, body, (c, jnp.int32(0), m == 0))
    return c, it, done


def _fit_row(x, key, init_c, *, k, init, iters, tol, preserve_zeros):
    """k-means of one 1-D float32 row -> (centroids [k], codes [n], steps, done, inertia)."""
    k_fit = k - 1 if preserve_zeros else k
    xs, m = _sorted_values(x, preserve_zeros)
    if init_c is not None:
        c0 = jnp.sort(init_c[1:] if preserve_zeros else init_c)
    elif init == "linear":
        c0 = _init_linear(xs, m, k_fit)
    elif init == "density":
        c0 = _init_density(xs, m, k_fit)
    elif init == "kmeans++":
        c0 = jnp.sort(_init_kmeanspp(xs, m, k_fit, key))
    else:
        c0 = jnp.sort(_init_random(xs, m, k_fit, key))
    c, steps, done = _lloyd(xs, m, jnp.where(m > 0, c0, 0.0), iters, tol)
    c = jnp.where(m > 0, c, 0.0)
    codes = jnp.searchsorted((c[:-1] + c[1:]) * 0.5, x, side="right", method="scan_unrolled")
    recon = c[codes]
    if preserve_zeros:
        zero = x == 0
        codes = jnp.where(zero, 0, codes + 1)
        recon = jnp.where(zero, 0.0, recon)
        c = jnp.concatenate([jnp.zeros((1,), jnp.float32), c])
    err = jnp.sum((x - recon) ** 2)
    return c, codes.astype(index_dtype(k)), steps, done, err


@functools.partial(jax.jit, static_argnames=("k", "init", "iters", "preserve_zeros", "axis"))
def _fit(x, key, init_c, tol, *, k, init, iters, preserve_zeros, axis):
    x32 = x.astype(jnp.float32)  # already float32 (and flat without axis) from `kmeans`
    fit = functools.partial(
        _fit_row, k=k, init=init, iters=iters, tol=tol, preserve_zeros=preserve_zeros
    )
    if axis is None:
        c, codes, steps, done, err = fit(x32.reshape(-1), key, init_c)
        return c, codes.reshape(x.shape), KMeansInfo(steps, done, err)
    moved = jnp.moveaxis(x32, axis, 0)
    rows = moved.reshape(moved.shape[0], -1)
    keys = jax.random.split(key, rows.shape[0])
    if init_c is None:
        c, codes, steps, done, err = jax.vmap(lambda r, kk: fit(r, kk, None))(rows, keys)
    else:
        c, codes, steps, done, err = jax.vmap(fit)(rows, keys, init_c)
    codes = jnp.moveaxis(codes.reshape(moved.shape), 0, axis)
    return c, codes, KMeansInfo(jnp.max(steps), jnp.all(done), jnp.sum(err))


def kmeans(
    x: jax.Array,
    k: int,
    *,
    init: str | jax.Array = "density",
    iters: int = 1000,
    tol: float = 0.0,
    key: jax.Array | None = None,
    preserve_zeros: bool = False,
    axis: int | None = None,
    name: str = "x",
    with_info: bool = False,
):
    """1-D k-means of the values of ``x`` (or of each slice along ``axis``); jittable, static k.

    The values are sorted once; Lloyd's algorithm then alternates assignment by the midpoints
    between sorted centroids (``searchsorted`` into the sorted values) and centroid = mean of
    members (from prefix sums), O(k log n) per step, inside a ``lax.while_loop`` until the
    centroids stop changing (``tol=0``: the exact fixed point) or ``iters`` steps. An empty
    cluster's centroid moves deterministically into the widest cluster (by count x range^2).

    Args:
      x: float array (float32, bfloat16, float16, ...); statistics are float32.
      k: number of codes, >= 1 (>= 2 with ``preserve_zeros``, whose code 0 is the zero).
      init: ``"density"`` (quantiles of the cube-root density, the asymptotically optimal
        point density; default), ``"linear"`` (evenly spaced from min to max, Deep
        Compression's choice), ``"kmeans++"`` (greedy D^2 seeding with 2 + log k candidates a
        step, as scikit-learn; on a uniform sample of at most 32768 values), ``"random"`` (k distinct positions), or an array ``[k]`` (``[channels,
        k]`` with ``axis``) of starting centroids, e.g. the current ones for a re-cluster step
        (with ``preserve_zeros``, entry 0, the zero code, is ignored).
      iters: the most Lloyd steps, >= 1.
      tol: stop once no centroid moves more than ``tol * (max - min)``; 0 runs to the fixed point.
      key: PRNG key; required for ``"kmeans++"`` and ``"random"``.
      preserve_zeros: zeros are not clustered: they get code 0, whose centroid is exactly 0.
      axis: cluster each slice ``x[..., i, ...]`` along this axis (an output channel) alone.
      name: the leaf's name for error messages (e.g. ``"Dense_0/kernel"``).
      with_info: also return a `KMeansInfo`.

    Returns:
      ``(centroids, assignments)`` (``+ (info,)`` with ``with_info``): centroids float32 ``[k]``
      (``[x.shape[axis], k]`` with ``axis``), sorted ascending (from index 1 with
      ``preserve_zeros``); assignments of ``x.shape`` in ``index_dtype(k)``, each value's
      nearest centroid. At convergence each centroid is the mean of its members.

    Raises:
      ValueError: bad ``k``, ``init``, ``iters``, ``tol``, ``axis``, non-float ``x``, no ``key``
        for a random init, and for concrete ``x``: NaN/inf values, or fewer distinct (non-zero)
        values than clusters in ``x`` (in a channel with ``axis``; all-zero arrays and channels
        pass under ``preserve_zeros``: every value gets the zero code). Under ``jit`` the data checks cannot run: surplus clusters
        then stay empty and duplicate a centroid, deterministically.

    References:
      Lloyd 1982; Han et al., "Deep Compression", 2016; Arthur & Vassilvitskii 2007.
    """
    x = _check_float_array(x, "x", name)
    k = _check_int(k, "k", 2 if preserve_zeros else 1)
    iters = _check_int(iters, "iters", 1)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a float >= 0, got {tol!r}")
    ax = _norm_axis(axis, x.ndim)
    if axis is not None and x.ndim == 0:
        raise ValueError("axis needs an array of at least one dimension")
    channels = 1 if ax is None else x.shape[ax]
    per_row = x.size // max(channels, 1)
    k_fit = k - 1 if preserve_zeros else k
    if per_row < k_fit:
        where = " per channel" if ax is not None else ""
        raise ValueError(f"k={k} is more than the {per_row} values{where} of x{_where(name)}")
    init_c = None
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS} or an array of centroids, got {init!r}")
        if init in ("kmeans++", "random") and key is None:
            raise ValueError(f"init={init!r} needs a PRNG key: pass key=jax.random.key(...)")
    else:
        init_c = _check_float_array(init, "init", name).astype(jnp.float32)
        want = (k,) if ax is None else (channels, k)
        if init_c.shape != want:
            raise ValueError(f"init centroids must have shape {want}, got {init_c.shape}")
        init = "array"
    _check_finite(x, name)
    if _is_concrete(x) and (ax is None or channels > 0):
        rows = np.asarray(x, np.float32)
        rows = rows.reshape(1, -1) if ax is None else np.moveaxis(rows, ax, 0).reshape(channels, -1)
        _check_distinct(rows, k_fit, preserve_zeros, name, ax is not None)
    if key is None:
        key = jax.random.key(0)  # not used by the deterministic inits; one traced signature
    # float32 and (without axis) flat before the jitted fit: one compilation per size, not per
    # shape and dtype.
    x32 = x.astype(jnp.float32)
    c, codes, info = _fit(
        x32 if ax is not None else x32.reshape(-1), key, init_c, jnp.float32(tol),
        k=k, init=init, iters=iters, preserve_zeros=bool(preserve_zeros), axis=ax,
    )  # fmt: skip
    codes = codes.reshape(x.shape)
    return (c, codes, info) if with_info else (c, codes)


def kmeans_tree(
    params: PyTree, k: int, *, select: _tree.SelectLike = None, **kwargs: Any
) -> tuple[PyTree, PyTree]:
    """`kmeans` on every selected leaf -> ``(centroids, assignments)`` trees (None elsewhere).

    ``kwargs`` go to `kmeans` (``init``, ``preserve_zeros``, ``axis``, ...); errors name the leaf.
    A ``key`` is split over the selected leaves in flattening order.
    """
    paths = _tree.selected_paths(params, select)
    key = kwargs.pop("key", None)
    keys = (
        dict(zip(paths, jax.random.split(key, max(len(paths), 1)), strict=False))
        if key is not None
        else {}
    )

    def one(path, leaf):
        return kmeans(leaf, k, key=keys.get(path), name=path, **kwargs)[:2]

    pairs = _tree.map_selected(one, params, select=select, unselected="none", with_path=True)
    is_pair = lambda t: isinstance(t, tuple) or t is None
    cents = jax.tree.map(lambda t: None if t is None else t[0], pairs, is_leaf=is_pair)
    codes = jax.tree.map(lambda t: None if t is None else t[1], pairs, is_leaf=is_pair)
    return cents, codes


# --------------------------------------------------------------------------- sharing


def share(
    centroids: jax.Array,
    assignments: jax.Array,
    *,
    axis: int | None = None,
    reduce: str = "sum",
    preserve_zeros: bool = False,
    dtype: Any = None,
) -> jax.Array:
    """Shared weights ``centroids[assignments]``: a gather, differentiable in the centroids.

    The gradient reaching centroid ``j`` is the sum of the gradients of the weights coded
    ``j`` (segment sum; the Deep Compression update), or their mean with ``reduce="mean"``.
    Both come from JAX's own gather transpose; ``"mean"`` scales the centroids' cotangent by
    ``1 / members`` with a stop-gradient identity, not a hand-written gradient.

    Args:
      centroids: float ``[k]``, or ``[channels, k]`` with ``axis``.
      assignments: unsigned integer codes, any shape (``shape[axis] == channels`` with ``axis``).
      axis: the axis of ``assignments`` whose slices use their own row of ``centroids``.
      reduce: ``"sum"`` or ``"mean"`` of the members' gradients.
      preserve_zeros: code 0 is the zero code (as from ``kmeans(..., preserve_zeros=True)``):
        it gives exactly 0 and centroid 0 gets no gradient.
      dtype: output dtype (default: the centroids' dtype), e.g. the weights' own.

    Returns:
      array of ``assignments.shape``.
    """
    centroids = _check_float_array(centroids, "centroids", "")
    if reduce not in _REDUCES:
        raise ValueError(f"reduce must be one of {_REDUCES}, got {reduce!r}")
    if not hasattr(assignments, "dtype") or not jnp.issubdtype(assignments.dtype, jnp.integer):
        raise ValueError(
            f"assignments must be an integer array, got {getattr(assignments, 'dtype', type(assignments).__name__)}"
        )
    ax = _norm_axis(axis, assignments.ndim)
    want_ndim = 1 if ax is None else 2
    if centroids.ndim != want_ndim or (
        ax is not None and centroids.shape[0] != assignments.shape[ax]
    ):
        want = "[k]" if ax is None else f"[{assignments.shape[ax]}, k]"
        raise ValueError(f"centroids must have shape {want}, got {centroids.shape}")
    k = centroids.shape[-1]
    if _is_concrete(assignments) and assignments.size:
        top = int(np.asarray(assignments).max())
        if top >= k:
            raise ValueError(f"assignments hold code {top}, but there are only k={k} centroids")
    out_dtype = centroids.dtype if dtype is None else jnp.dtype(dtype)
    codes = assignments.astype(jnp.int32)
    if ax is None:
        flat_c, flat_i = centroids, codes
    else:
        moved = jnp.moveaxis(codes, ax, 0)
        offs = (jnp.arange(moved.shape[0], dtype=jnp.int32) * k).reshape(
            (-1,) + (1,) * (moved.ndim - 1)
        )
        flat_c, flat_i = centroids.reshape(-1), moved + offs
    if reduce == "mean":
        counts = jnp.bincount(flat_i.reshape(-1), length=flat_c.shape[0])
        frozen = jax.lax.stop_gradient(flat_c)
        flat_c = frozen + (flat_c - frozen) / jnp.maximum(counts, 1).astype(flat_c.dtype)
    out = flat_c[flat_i]
    if preserve_zeros:
        out = jnp.where(
            flat_i % k == 0 if ax is not None else flat_i == 0, jnp.zeros((), out.dtype), out
        )
    if ax is not None:
        out = jnp.moveaxis(out, 0, ax)
    return out.astype(out_dtype)


def inertia(
    x: jax.Array,
    centroids: jax.Array,
    assignments: jax.Array,
    *,
    axis: int | None = None,
    preserve_zeros: bool = False,
) -> jax.Array:
    """Sum of squared differences between ``x`` and its shared version (float32 scalar)."""
    recon = share(centroids, assignments, axis=axis, preserve_zeros=preserve_zeros)
    return jnp.sum((jnp.asarray(x, jnp.float32) - recon.astype(jnp.float32)) ** 2)


# --------------------------------------------------------------------------- channel merging


@functools.partial(jax.jit, static_argnames=("metric",))
def _merge(v, threshold, *, metric):
    c = v.shape[0]
    norms = jnp.sqrt(jnp.sum(v * v, axis=1))

    def close_to(i):
        if metric == "cosine":
            dots = v @ v[i]
            both = (norms > 0) & (norms[i] > 0)
            cos = jnp.where(both, dots / jnp.where(both, norms * norms[i], 1.0), 0.0)
            cos = jnp.where((norms == 0) & (norms[i] == 0), 1.0, cos)  # zero channels merge
            return cos >= threshold
        return jnp.sqrt(jnp.sum((v - v[i]) ** 2, axis=1)) <= threshold

    def body(i, groups):
        # Leader clustering in channel order: channel i joins the first earlier group leader
        # it is close to, else it leads a new group. Deterministic; O(channels * size) a step.
        lead = (groups == jnp.arange(c)) & (jnp.arange(c) < i) & close_to(i)
        return groups.at[i].set(jnp.where(jnp.any(lead), jnp.argmax(lead), i))

    groups = jax.lax.fori_loop(0, c, body, jnp.arange(c, dtype=jnp.int32))
    counts = jax.ops.segment_sum(jnp.ones((c,), jnp.float32), groups, c)
    shared = jax.ops.segment_sum(v, groups, c) / jnp.maximum(counts, 1.0)[:, None]
    n_groups = jnp.sum(counts > 0, dtype=jnp.int32)
    return shared[groups], MergeInfo(groups, n_groups, jnp.int32(c) - n_groups)


def merge_channels(
    x: jax.Array, threshold: float, *, metric: str = "cosine", axis: int = -1, name: str = "x"
) -> tuple[jax.Array, MergeInfo]:
    """Shares whole output channels whose weight vectors are close: one vector per group.

    Channels are visited in order; each joins the first earlier group leader within the
    threshold (cosine similarity ``>= threshold``, or Euclidean distance ``<= threshold``),
    else it leads a new group. Every channel of a group is replaced by the group's mean
    vector. All-zero channels count as identical (cosine 1), so pruned channels merge.

    Args:
      x: float array; the vectors are the slices ``x[..., i, ...]`` along ``axis``.
      threshold: cosine in [-1, 1], or a distance >= 0.
      metric: ``"cosine"`` or ``"euclidean"``.
      axis: the output-channel axis (Flax kernels: -1).
      name: the leaf's name for error messages.

    Returns:
      ``(merged, info)``: ``merged`` has ``x``'s shape and dtype; `MergeInfo` says how many merged.

    References:
      Son, Nah, Lee, "Clustering convolutional kernels to compress deep neural networks", 2018.
    """
    x = _check_float_array(x, "x", name)
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a float, got {threshold!r}")
    if metric == "cosine" and not -1.0 <= threshold <= 1.0:
        raise ValueError(f"cosine threshold must be in [-1, 1], got {threshold}")
    if metric == "euclidean" and not threshold >= 0:
        raise ValueError(f"euclidean threshold must be >= 0, got {threshold}")
    if x.ndim < 1:
        raise ValueError(f"x{_where(name)} needs at least one dimension to merge channels")
    ax = _norm_axis(axis, x.ndim)
    _check_finite(x, name)
    moved = jnp.moveaxis(x.astype(jnp.float32), ax, 0)
    merged, info = _merge(moved.reshape(moved.shape[0], -1), jnp.float32(threshold), metric=metric)
    return jnp.moveaxis(merged.reshape(moved.shape), 0, ax).astype(x.dtype), info


# --------------------------------------------------------------------------- report


def cluster_report(
    params: PyTree, centroids: PyTree, assignments: PyTree, *, preserve_zeros: bool = False
) -> dict[str, LeafReport]:
    """Per clustered leaf: k, bits per index, inertia, and codebook + bit-packed index bytes.

    Args:
      params: the original weights.
      centroids, assignments: trees mirroring ``params`` (None at leaves not clustered), as from
        `kmeans_tree`; per-channel centroids ``[channels, k]`` are recognised by their shape.
      preserve_zeros: code 0 is the zero code (it counts among the k codes).

    Returns:
      ``{path: LeafReport}`` in flattening order. ``bits = ceil(log2 k)``, ``index_bytes =
      ceil(size * bits / 8)``, ``codebook_bytes`` = the centroids' bytes, ``dense_bytes`` = the
      leaf's own bytes.
    """
    items = _tree.leaves_with_paths(params)
    flat_c = jax.tree.leaves(centroids, is_leaf=lambda t: t is None)
    flat_a = jax.tree.leaves(assignments, is_leaf=lambda t: t is None)
    if len(flat_c) != len(items) or len(flat_a) != len(items):
        raise ValueError(
            "centroids and assignments must mirror params (None at leaves not clustered); "
            f"first mismatch at {_tree.first_mismatch(params, centroids) or _tree.first_mismatch(params, assignments)!r}"
        )
    out = {}
    for (path, w), c, a in zip(items, flat_c, flat_a, strict=True):
        if c is None or a is None:
            continue
        if a.shape != w.shape:
            raise ValueError(f"assignments of {path!r} have shape {a.shape}, not {w.shape}")
        k = int(c.shape[-1])
        axis = None
        if c.ndim == 2:
            match = [i for i, s in enumerate(w.shape) if s == c.shape[0]]
            if not match:
                raise ValueError(
                    f"centroids of {path!r} of shape {c.shape} fit no axis of {w.shape}"
                )
            axis = match[-1]
        bits = math.ceil(math.log2(k)) if k > 1 else 0
        err = float(inertia(w, c, a, axis=axis, preserve_zeros=preserve_zeros))
        cb = int(c.size * c.dtype.itemsize)
        ib = math.ceil(int(np.prod(w.shape)) * bits / 8)
        dense = int(np.prod(w.shape)) * int(jnp.dtype(w.dtype).itemsize)
        out[path] = LeafReport(
            k, bits, 1 if axis is None else int(c.shape[0]), err, cb, ib, cb + ib, dense
        )
    return out
