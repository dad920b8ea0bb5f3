"""`kmeans` and `kmeans_tree`: checks, initial centroids, and the fit of each row or channel.

`kmeans` clusters the values of one array (or of each output channel, with ``axis``) into
``k`` centroids with Lloyd's algorithm run to its fixed point. It exploits the 1-D structure:
the values are sorted once (an order-preserving int32 key sort), cluster sums come from
prefix sums, and each Lloyd step (`lightcomp.cluster._lloyd`) assigns by the ``k - 1`` boundaries between sorted
centroids (``searchsorted``), so a step costs O(k log n) and nothing of size n x k is built.

Codes. Assignments use the smallest unsigned dtype that holds ``k - 1`` (`index_dtype`:
uint8 for k <= 256). With ``preserve_zeros=True`` **code 0 is the zero code**:
``centroids[..., 0]`` is exactly 0.0, every zero weight gets code 0, and the other ``k - 1``
centroids (sorted ascending) are fitted to the non-zero weights only; non-zero weights never
get code 0. Without it, centroids are sorted ascending.

References:
  Lloyd, "Least squares quantization in PCM", 1982.
  Han, Mao, Dally, "Deep Compression", ICLR 2016.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree
from lightcomp._checks import (
    at,
    check_bool,
    check_finite,
    check_floating,
    check_int,
    check_key,
    check_number,
    is_traced,
    norm_axis,
)
from lightcomp.cluster._inits import INITS, initial_centroids
from lightcomp.cluster._lloyd import lloyd, sorted_values

PyTree = Any


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


def index_dtype(k: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ``k - 1`` (uint8 for k <= 256)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if k - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"k={k} needs more than 32-bit indices")


def _sum_safe_scale(x: jax.Array) -> jax.Array:
    """A power of two ``s`` such that the sums of ``|x| / s`` over a row stay finite: 1 unless
    ``max|x| * n`` nears float32's max (1e37-scale weights), then ``2**(ceil(log2 max|x|) - 2)``
    (``|x| / s < 4``; ``2**128`` itself would overflow). Dividing by a power of two is exact,
    so ordinary rows are clustered bit for bit as without."""
    amax = jnp.max(jnp.abs(x))
    limit = jnp.float32(np.finfo(np.float32).max / (4.0 * x.shape[0]))
    _, e = jnp.frexp(amax)
    return jnp.where(amax > limit, jnp.ldexp(jnp.float32(1.0), e - 2), jnp.float32(1.0))


def _fit_row(x, key, init_c, *, k, init, iters, tol, preserve_zeros):
    """k-means of one 1-D float32 row -> (centroids [k], codes [n], steps, done, inertia)."""
    k_fit = k - 1 if preserve_zeros else k
    s = _sum_safe_scale(x)
    x = x / s
    init_c = None if init_c is None else init_c / s
    xs, m = sorted_values(x, preserve_zeros)
    if init_c is not None:
        c0 = jnp.sort(init_c[1:] if preserve_zeros else init_c)
    else:
        c0 = initial_centroids(init, xs, m, k_fit, key)
    c, steps, done = lloyd(xs, m, jnp.where(m > 0, c0, 0.0), iters, tol)
    c = jnp.where(m > 0, c, 0.0)
    codes = jnp.searchsorted((c[:-1] + c[1:]) * 0.5, x, side="right", method="scan_unrolled")
    recon = c[codes]
    if preserve_zeros:
        zero = x == 0
        codes = jnp.where(zero, 0, codes + 1)
        recon = jnp.where(zero, 0.0, recon)
        c = jnp.concatenate([jnp.zeros((1,), jnp.float32), c])
    err = jnp.sum((x - recon) ** 2) * s * s
    return c * s, codes.astype(index_dtype(k)), steps, done, err


@functools.partial(jax.jit, static_argnames=("k", "init", "iters", "preserve_zeros", "axes"))
def _fit(x, key, init_c, tol, *, k, init, iters, preserve_zeros, axes):
    """`_fit_row` of the flat ``x`` (no ``axes``) or of each slice along ``axes`` (vmapped).

    With ``axes``, every combination of their indices is one row: centroids ``[*sizes, k]``.
    """
    fit = functools.partial(
        _fit_row, k=k, init=init, iters=iters, tol=tol, preserve_zeros=preserve_zeros
    )
    if not axes:
        c, codes, steps, done, err = fit(x.reshape(-1), key, init_c)
        return c, codes.reshape(x.shape), KMeansInfo(steps, done, err)
    front = tuple(range(len(axes)))
    moved = jnp.moveaxis(x, axes, front)
    sizes = moved.shape[: len(axes)]
    rows = moved.reshape(math.prod(sizes), -1)
    keys = jax.random.split(key, rows.shape[0])
    if init_c is None:
        c, codes, steps, done, err = jax.vmap(lambda r, kk: fit(r, kk, None))(rows, keys)
    else:
        c, codes, steps, done, err = jax.vmap(fit)(rows, keys, init_c.reshape(rows.shape[0], k))
    codes = jnp.moveaxis(codes.reshape(moved.shape), front, axes)
    return c.reshape((*sizes, k)), codes, KMeansInfo(jnp.max(steps), jnp.all(done), jnp.sum(err))


def kept_axes(axis: Any, ndim: int, path: str | None = None) -> tuple[int, ...]:
    """``axis`` (None, an int or a tuple of ints) -> non-negative kept axes, increasing."""
    if isinstance(axis, (tuple, list)):
        axes = tuple(norm_axis(a, ndim, path=path) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"axis{at(path)} {tuple(axis)} names an axis twice")
        return tuple(sorted(axes))
    ax = norm_axis(axis, ndim, path=path)
    return () if ax is None else (ax,)


def _distinct_counts(rows: np.ndarray, preserve_zeros: bool) -> np.ndarray:
    srt = np.sort(rows, axis=1)
    new = np.ones_like(srt, dtype=bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    if preserve_zeros:
        new &= srt != 0
    return new.sum(axis=1)


def _check_distinct(x, axes, k_fit: int, preserve_zeros: bool, path: str | None) -> None:
    """Concrete ``x`` must have at least ``k_fit`` distinct (non-zero) values per row."""
    sizes = tuple(x.shape[a] for a in axes)
    channels = math.prod(sizes)
    if is_traced(x) or channels == 0:
        return
    rows = np.asarray(x, np.float32)
    front = tuple(range(len(axes)))
    rows = np.moveaxis(rows, axes, front).reshape(channels, -1)
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
        index = np.unravel_index(int(bad[0]), sizes)
        first = int(index[0]) if len(axes) == 1 else tuple(int(i) for i in index)
        where = f" channel {first} (and {bad.size - 1} more)" if axes else ""
        got = int(full[full < k_fit][0])
        raise ValueError(
            f"x{at(path)}{where} has {got} distinct {what}, fewer than {k_name}={k_fit} "
            f"clusters; use k <= {got + int(preserve_zeros)}"
        )


def _start(init: Any, k: int, sizes: tuple[int, ...], key: Any, path: str | None):
    """Checks ``init`` (and ``key``) -> ``(init name, starting centroids or None)``."""
    if key is not None:
        check_key(key)
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS} or an array of centroids, got {init!r}")
        if init in ("kmeans++", "random") and key is None:
            raise ValueError(f"init={init!r} needs a PRNG key: pass key=jax.random.key(...)")
        return init, None
    init = init if hasattr(init, "dtype") else jnp.asarray(init)
    check_floating(init, "init", path=path)
    want = (*sizes, k)
    if init.shape != want:
        raise ValueError(f"init centroids must have shape {want}, got {init.shape}")
    return "array", init.astype(jnp.float32)


def kmeans(
    x: jax.Array,
    k: int,
    *,
    init: str | jax.Array = "density",
    iters: int = 1000,
    tol: float = 0.0,
    key: jax.Array | None = None,
    preserve_zeros: bool = False,
    axis: int | tuple[int, ...] | None = None,
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
        Compression's choice), ``"kmeans++"`` (greedy D^2 seeding with 2 + log k candidates
        a step, as scikit-learn; on a uniform sample of at most 32768 values), ``"random"``
        (k distinct positions), or an array ``[k]`` (``[channels, k]`` with ``axis``) of
        starting centroids (``[*sizes, k]`` with a tuple ``axis``), e.g. the current ones for
        a re-cluster step (with ``preserve_zeros``, entry 0, the zero code, is ignored).
      iters: the most Lloyd steps, >= 1.
      tol: stop once no centroid moves more than ``tol * (max - min)``; 0 runs to the fixed point.
      key: PRNG key; required for ``"kmeans++"`` and ``"random"``.
      preserve_zeros: zeros are not clustered: they get code 0, whose centroid is exactly 0.
      axis: cluster each slice ``x[..., i, ...]`` along this axis (an output channel) alone;
        a tuple: each combination of indices along these axes alone (the layers of a
        stacked leaf, ``(0,)``, or layers x channels, ``(0, 2)``), in one compilation.
      name: the leaf's name for error messages (e.g. ``"Dense_0/kernel"``).
      with_info: also return a `KMeansInfo`.

    Returns:
      ``(centroids, assignments)`` (``+ (info,)`` with ``with_info``): centroids float32 ``[k]``
      (``[x.shape[axis], k]`` with ``axis``, ``[*sizes of the axes, k]`` with a tuple), sorted
      ascending (from index 1 with
      ``preserve_zeros``); assignments of ``x.shape`` in ``index_dtype(k)``, each value's
      nearest centroid. At convergence each centroid is the mean of its members.

    Raises:
      TypeError: a non-float ``x`` or ``init`` array, a non-int ``k``, ``iters`` or ``axis``,
        a non-number ``tol``, a non-bool flag, a ``key`` that is not a PRNG key.
      ValueError: ``k``, ``iters``, ``tol`` or ``axis`` out of range, an unknown ``init``, no
        ``key`` for a random init, and for concrete ``x``: NaN/inf values, or fewer distinct
        (non-zero) values than clusters in ``x`` (in a channel with ``axis``; all-zero arrays
        and channels pass under ``preserve_zeros``: every value gets the zero code). Under
        ``jit`` the data checks cannot run: surplus clusters then stay empty and duplicate a
        centroid, deterministically.

    References:
      Lloyd 1982; Han et al., "Deep Compression", 2016; Arthur & Vassilvitskii 2007.

    Example:
      >>> x = jnp.array([0.0, 0.1, 0.9, 1.0])
      >>> centroids, codes = lc.cluster.kmeans(x, 2)
      >>> np.asarray(centroids, np.float64).round(2).tolist(), np.asarray(codes).tolist()
      ([0.05, 0.95], [0, 0, 1, 1])
    """
    path = None if name in ("", "x") else name
    preserve_zeros = check_bool(preserve_zeros, "preserve_zeros")
    with_info = check_bool(with_info, "with_info")
    x = x if hasattr(x, "dtype") else jnp.asarray(x)
    check_floating(x, "x", path=path)
    k = check_int(k, "k", lo=2 if preserve_zeros else 1)
    iters = check_int(iters, "iters", lo=1)
    tol = check_number(tol, "tol", lo=0.0)
    axes = kept_axes(axis, x.ndim, path)
    sizes = tuple(x.shape[a] for a in axes)
    per_row = x.size // max(math.prod(sizes), 1)
    k_fit = k - 1 if preserve_zeros else k
    if per_row < k_fit:
        where = " per channel" if axes else ""
        raise ValueError(f"k={k} is more than the {per_row} values{where} of x{at(path)}")
    init, init_c = _start(init, k, sizes, key, path)
    check_finite(x, "x", path=path, why="k-means needs finite weights")
    _check_distinct(x, axes, k_fit, preserve_zeros, path)
    if key is None:
        key = jax.random.key(0)  # not used by the deterministic inits; one traced signature
    # float32 and (without axis) flat before the jitted fit: one compilation per size, not per
    # shape and dtype.
    x32 = x.astype(jnp.float32)
    c, codes, info = _fit(
        x32 if axes else x32.reshape(-1), key, init_c, jnp.float32(tol),
        k=k, init=init, iters=iters, preserve_zeros=preserve_zeros, axes=axes,
    )  # fmt: skip
    codes = codes.reshape(x.shape)
    return (c, codes, info) if with_info else (c, codes)


def kmeans_tree(
    params: PyTree, k: int, *, select: tree.SelectLike = None, **kwargs: Any
) -> tuple[PyTree, PyTree]:
    """`kmeans` on every selected leaf -> ``(centroids, assignments)`` trees (None elsewhere).

    Args:
      params: a pytree of arrays.
      k: number of codes per leaf (per channel with ``axis``).
      select: which leaves; default by role (`lightcomp.tree.default_rule`).
      **kwargs: keywords of `kmeans` (``init``, ``preserve_zeros``, ``axis``, ...). A
        ``key`` is split over the selected leaves in flattening order.

    Returns:
      Two trees with ``params``' structure: centroids and assignments as from `kmeans`
      at selected leaves, None elsewhere.

    Raises:
      ValueError, TypeError: as `kmeans`, naming the leaf's path.
    """
    paths = tree.selected_paths(params, select)
    key = kwargs.pop("key", None)
    keys = (
        dict(zip(paths, jax.random.split(key, max(len(paths), 1)), strict=False))
        if key is not None
        else {}
    )

    def one(path, leaf):
        return kmeans(leaf, k, key=keys.get(path), name=path, **kwargs)[:2]

    pairs = tree.map_selected(one, params, select=select, unselected="none", with_path=True)
    is_pair = lambda t: isinstance(t, tuple) or t is None
    cents = jax.tree.map(lambda t: None if t is None else t[0], pairs, is_leaf=is_pair)
    codes = jax.tree.map(lambda t: None if t is None else t[1], pairs, is_leaf=is_pair)
    return cents, codes
