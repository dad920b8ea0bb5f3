"""The optimal-brain-surgeon column sweep that SparseGPT and GPTQ share.

For a layer ``W`` ``[O, I]`` (rows are outputs) and the Gram matrix ``H`` ``[I, I]`` of its
inputs, columns are fixed left to right: column ``j`` is replaced by its pruned and / or
quantized value ``q_j`` and the error ``(w_j - q_j) / U_jj`` is spread over the columns
not yet fixed through row ``j`` of ``U``, the upper Cholesky factor of the dampened
inverse Hessian (``H^-1 = U^T U``). Columns go in blocks of ``B``: inside a block the
updates are made column by column, the rest of the matrix gets them once per block
("lazy batch updates"), which is the same arithmetic in another order. The same holds one
level down and one up (`Split`): the rank-1 updates touch only a panel of a few columns
of the block, and the sweep runs in a few pieces with static shapes, so that a piece's
errors reach only the columns after it (a finished column gets no product).

Per block, SparseGPT's adaptive mask prunes the weights of lowest ``w^2 / U_jj^2``;
for n:m, each group of ``m`` columns is chosen when its first column is reached. A grid
(``bits``, symmetric or not, one range per row or per group of columns) quantizes each
column on lightcomp's grid (`lightcomp.quant.fake_quant` with the group's range).

References:
  Hassibi & Stork, "Second order derivatives for network pruning: Optimal Brain
  Surgeon", 1993. Frantar & Alistarh, "SparseGPT", 2023 (Algorithm 1). Frantar et al.,
  "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
  2022 (Algorithm 1; Cholesky reformulation and lazy batch updates).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import prune, quant
from lightcomp.posttrain._factor import inverse_factor, pad, prepare

_HI = jax.lax.Precision.HIGHEST
SUB = 16  # panel columns: a [16, O] float32 panel of a 4096-row layer is 256 KiB (cache)
PIECES = 8  # static pieces: a few compiled copies of the block loop, <= 1/16 extra products
PIECE = 512  # columns per piece at least: a narrower layer is one piece (less to compile)


@dataclasses.dataclass(frozen=True)
class Grid:
    """A quantization grid for the sweep (static).

    Attributes:
      bits: 2..8.
      symmetric: lightcomp's signed narrow range, or unsigned with a zero point.
      group_size: columns sharing a range (per row); None: one range per row.
      static: the ranges are taken from the weights before the sweep (per row, or with
        act-order); otherwise each group's range is taken when its first column is reached.
    """

    bits: int
    symmetric: bool
    group_size: int | None
    static: bool

    def n_groups(self, n_cols: int) -> int:
        return 1 if self.group_size is None else -(-n_cols // self.group_size)


def block_size(blocksize: int, n_cols: int, multiple: int | None, group: int | None) -> int:
    """The block width: at most ``blocksize`` and ``n_cols``, a multiple of ``multiple`` (n:m's
    ``m``), and a multiple or a divisor of ``group`` so that groups start where the sweep
    can read them."""
    b = min(blocksize, n_cols)
    step = multiple or 1
    if group is not None:
        if group <= b:
            step = math.lcm(step, group)
        else:
            b = math.gcd(group, b)
    return max(step, b - b % step)


def fractions(counts: np.ndarray, size: int) -> np.ndarray:
    """float32 fractions ``f`` with ``round(f * size) == count`` in float32 arithmetic.

    `lightcomp.prune.masks` prunes ``round(sparsity * size)`` weights of a leaf; these
    fractions make it prune exactly ``counts`` (ties broken by index) under ``jit``.
    """
    out = (counts / size).astype(np.float32)
    for _ in range(64):
        got = np.round(out * np.float32(size))
        if np.array_equal(got, counts):
            return out
        out = np.where(got < counts, np.nextafter(out, np.float32(1)), out)
        out = np.where(got > counts, np.nextafter(out, np.float32(0)), out)
    raise AssertionError("no float32 fraction gives the count")  # pragma: no cover


def block_counts(total: int, n_cols: int, width: int) -> np.ndarray:
    """Weights pruned in each block of ``width`` columns, adding up to exactly ``total``."""
    ends = np.minimum(np.arange(1, -(-n_cols // width) + 1) * width, n_cols)
    cum = (total * ends) // n_cols
    return np.diff(np.concatenate([[0], cum]))


def _quant_col(col, lo, hi, grid: Grid):
    return quant.fake_quant(col, grid.bits, symmetric=grid.symmetric, axis=0, range=(lo, hi))


def _nm_pruned(w_rows, d_rows, nm: prune.NM):
    """True for the ``m - n`` lowest ``w^2 / d^2`` of each column of ``[m, O]`` rows."""
    scores = jnp.square(w_rows) / jnp.square(d_rows)[:, None]
    return ~prune.masks({"w": scores}, None, granularity=nm)["w"]


@dataclasses.dataclass(frozen=True)
class Split:
    """How the sweep cuts the columns (static; any split gives the same arithmetic).

    Attributes:
      width: the block width (`block_size`): SparseGPT's mask is chosen per block.
      sub: columns per panel: the rank-1 updates touch only the panel's ``[sub, O]`` rows,
        the rest of the block gets the panel's errors in one product.
      chunk: columns per piece of the sweep with static shapes: after each piece, only the
        columns after it get its errors (one product).
    """

    width: int
    sub: int
    chunk: int

    @staticmethod
    def of(n_cols: int, width: int, nm: prune.NM | None, grid: Grid | None) -> Split:
        """The split of ``n_cols`` padded columns: panels of at most `SUB` columns (a multiple of
        n:m's ``m``, dividing a dynamic grid's group, else whole groups), at most `PIECES`
        pieces of at least `PIECE` columns (whole groups of a dynamic grid wider than a
        block)."""
        m = nm.m if nm is not None else 1
        g = grid.group_size if grid is not None and not grid.static else None
        fits = [s for s in range(min(SUB, width), 0, -1) if width % s == 0 and s % m == 0]
        inside = [s for s in fits if g is None or g % s == 0]
        if inside:
            sub = inside[0]
        else:  # whole groups in a panel
            step = math.lcm(m, g)
            sub = next(s for s in range(step, width + 1, step) if width % s == 0)
        pieces = max(1, min(PIECES, n_cols // PIECE))
        chunk = -(-n_cols // width // pieces) * width
        if g is not None and g > width:
            chunk = math.lcm(chunk, g)
        return Split(width, sub, chunk)


def _take_range(lo, hi, rows, start, col, g):
    """The ranges of the group starting at column ``col`` (if one does) from ``g`` rows."""

    def take():
        src = jax.lax.dynamic_slice_in_dim(rows, start, g, 0)
        gi = col // g
        return lo.at[:, gi].set(jnp.min(src, axis=0)), hi.at[:, gi].set(jnp.max(src, axis=0))

    return jax.lax.cond(col % g == 0, take, lambda: (lo, hi))


def _columns(env, base, up, dp, c):
    """The rank-1 sweep of one panel: ``c = (p, qp, ep, mp, lo, hi)``, rows ``[sub, O]``."""
    nm, grid, gidx = env["nm"], env["grid"], env["gidx"]
    rows = jnp.arange(up.shape[0])

    def column(jj, c):
        p, qp, ep, mp, lo, hi = c
        if nm is not None:
            mp = jax.lax.cond(
                jj % nm.m == 0,
                lambda: jax.lax.dynamic_update_slice_in_dim(
                    mp,
                    _nm_pruned(
                        jax.lax.dynamic_slice_in_dim(p, jj, nm.m, 0),
                        jax.lax.dynamic_slice_in_dim(dp, jj, nm.m),
                        nm,
                    ),
                    jj,
                    0,
                ),
                lambda: mp,
            )
        wj, pj = p[jj], mp[jj]
        qj = jnp.where(pj, 0.0, wj)
        if grid is not None:
            g = grid.group_size
            if not grid.static and g < up.shape[0]:
                lo, hi = _take_range(lo, hi, p, (jj // g) * g, base + jj, g)
            gi = gidx[base + jj]
            qj = jnp.where(pj, 0.0, _quant_col(qj, lo[:, gi], hi[:, gi], grid))
        err = (wj - qj) / dp[jj]
        p = p - jnp.outer(jnp.where(rows > jj, up[jj], 0.0), err)
        return p, qp.at[jj].set(qj), ep.at[jj].set(err), mp, lo, hi

    return jax.lax.fori_loop(0, up.shape[0], column, c)


def _panels(env, base, u1, c):
    """One block's panels: ``c = (w1, q1, m1, lo, hi)`` rows ``[width, O]``; returns those
    and the block's errors ``e1``."""
    sub, grid = env["split"].sub, env["grid"]
    width = u1.shape[0]
    cols = jnp.arange(width)

    def panel(k, c):
        w1, q1, e1, m1, lo, hi = c
        s = k * sub
        if grid is not None and not grid.static and sub <= grid.group_size <= width:
            lo, hi = _take_range(lo, hi, w1, s, base + s, grid.group_size)
        up = jax.lax.dynamic_slice(u1, (s, s), (sub, sub))
        p = jax.lax.dynamic_slice_in_dim(w1, s, sub, 0)
        mp = jax.lax.dynamic_slice_in_dim(m1, s, sub, 0)
        zeros = jnp.zeros_like(p)
        p, qp, ep, mp, lo, hi = _columns(
            env, base + s, up, jnp.diagonal(up), (p, zeros, zeros, mp, lo, hi)
        )
        rest = jax.lax.dynamic_slice_in_dim(u1, s, sub, 0)
        rest = jnp.where(cols[None, :] >= s + sub, rest, 0.0)  # the panel has its updates
        w1 = w1 - jnp.matmul(rest.T, ep, precision=_HI)
        put = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=s, axis=0)
        return w1, put(q1, qp), put(e1, ep), put(m1, mp), lo, hi

    w1, q1, m1, lo, hi = c
    _, q1, e1, m1, lo, hi = jax.lax.fori_loop(
        0, width // sub, panel, (w1, q1, jnp.zeros_like(w1), m1, lo, hi)
    )
    return q1, e1, m1, lo, hi


def _piece(env, c0, c1, slab, lo, hi):
    """The blocks of columns ``[c0, c1)``: ``slab`` ``[c1 - c0, O]`` (transposed weights) ->
    the piece's ``(q, pruned, errors, lo, hi)``, rows ``[c1 - c0, O]``."""
    width, grid, u, frac = env["split"].width, env["grid"], env["u"], env["frac"]
    cols = jnp.arange(width)

    def block(b, c):
        slab, q, pruned, err, lo, hi = c
        r = b * width
        w1 = jax.lax.dynamic_slice_in_dim(slab, r, width, 0)
        u1 = jax.lax.dynamic_slice(u, (c0 + r, c0 + r), (width, width))
        if frac is not None:  # scores [O, width]: the mask's ties go in that order
            scores = jnp.square(w1.T) / jnp.square(jnp.diagonal(u1))[None, :]
            scores = jnp.where((c0 + r + cols)[None, :] < env["n_real"], scores, jnp.inf)
            m1 = ~prune.masks({"w": scores}, frac[c0 // width + b])["w"].T
        else:
            m1 = jnp.zeros(w1.shape, bool)
        if grid is not None and not grid.static and grid.group_size > width:
            lo, hi = _take_range(lo, hi, slab, r, c0 + r, grid.group_size)
        q1, e1, m1, lo, hi = _panels(env, c0 + r, u1, (w1, jnp.zeros_like(w1), m1, lo, hi))
        row = jax.lax.dynamic_slice(u, (c0 + r, c0), (width, c1 - c0))
        slab = slab - jnp.matmul(row.T, e1, precision=_HI)  # earlier rows get 0 (U is upper)
        put = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=r, axis=0)
        return slab, put(q, q1), put(pruned, m1), put(err, e1), lo, hi

    zeros = jnp.zeros_like(slab)
    init = (slab, zeros, jnp.zeros(slab.shape, bool), zeros, lo, hi)
    _, q, pruned, err, lo, hi = jax.lax.fori_loop(0, (c1 - c0) // width, block, init)
    return q, pruned, err, lo, hi


@functools.partial(jax.jit, static_argnames=("split", "n_real", "nm", "grid"))
def sweep(w, u, frac, lo, hi, gidx, *, split, n_real, nm, grid):
    """One matrix through the sweep.

    The weights are swept transposed (``[P, O]``: a column is a contiguous row) in pieces
    of ``split.chunk`` columns with static shapes; after a piece only the columns after it
    get its errors, so no product touches a finished column.

    Args:
      w: float32 ``[O, P]``, the prepared weights, ``P`` a multiple of ``split.width``
        (columns past ``n_real`` are zero padding).
      u: float32 ``[P, P]`` from `inverse_factor` (identity on the padding).
      frac: float32 ``[P / width]`` fractions of each block to prune (`fractions`), or None.
      lo, hi: float32 ``[O, G]`` ranges (static grids; dynamic ones are filled in), or None.
      gidx: int32 ``[P]``, the group of each column, or None.
      split: a `Split` (`Split.of`).
      n_real: the columns that are not padding.
      nm: an n:m granularity, or None.
      grid: a `Grid`, or None.

    Returns:
      ``(q, pruned, lo, hi)``: the new weights ``[O, P]``, the pruned positions (bool), the
      ranges used.
    """
    n_cols = w.shape[1]
    env = dict(split=split, u=u, frac=frac, gidx=gidx, n_real=n_real, nm=nm, grid=grid)
    if lo is None:
        lo = hi = jnp.zeros((w.shape[0], 1), jnp.float32)
    rest, qs, masks = w.T, [], []
    for c0 in range(0, n_cols, split.chunk):
        c1 = min(c0 + split.chunk, n_cols)
        slab, rest = rest[: c1 - c0], rest[c1 - c0 :]
        q, pruned, err, lo, hi = _piece(env, c0, c1, slab, lo, hi)
        if c1 < n_cols:
            rest = rest - jnp.matmul(u[c0:c1, c1:].T, err, precision=_HI)
        qs.append(q)
        masks.append(pruned)
    return jnp.concatenate(qs).T, jnp.concatenate(masks).T, lo, hi


def _static_ranges(w: jax.Array, grid: Grid) -> tuple[jax.Array, jax.Array]:
    """float32 ``[O, G]`` min and max of each row (or row group) of ``w`` before the sweep."""
    g = grid.group_size or w.shape[1]
    v = w.reshape(w.shape[0], -1, g)
    return jnp.min(v, axis=2), jnp.max(v, axis=2)


@functools.partial(jax.jit, static_argnames=("width", "nm", "grid", "act_order"))
def solve(w, h, frac, dampening, *, width, nm, grid, act_order):
    """Prepare, order, factor and sweep ``S`` matrices at once.

    Args:
      w: float32 ``[S, O, I]``.
      h: float32 ``[S, I, I]``.
      frac: float32 ``[S, blocks]`` (`fractions`) or None.
      dampening: float32 scalar.
      width: the block width (`block_size`).
      nm: an n:m granularity or None.
      grid: a `Grid` or None.
      act_order: columns in order of descending ``diag H`` (then put back).

    Returns:
      ``(q, pruned, lo, hi, finite)``: ``[S, O, I]`` weights and pruned positions, the
      ``[S, O, G]`` ranges, and ``[S]`` whether the factor of ``H^-1`` was finite.
    """
    n = w.shape[-1]

    def one(w, h, frac):
        w, h = prepare(w, h, dampening)
        lo = hi = gidx = None
        if grid is not None:
            n_groups = grid.n_groups(n + (-n % width))
            lo = hi = jnp.zeros((w.shape[0], n_groups), jnp.float32)
            gidx = jnp.arange(n, dtype=jnp.int32) // (grid.group_size or n)
            if grid.static:
                lo, hi = _static_ranges(w, grid)
        perm = jnp.argsort(-jnp.diagonal(h), stable=True) if act_order else jnp.arange(n)
        w, h = w[:, perm], h[perm][:, perm]
        if gidx is not None:
            gidx = jnp.pad(gidx[perm], (0, -n % width))
            if not grid.static:
                gidx = jnp.arange(gidx.shape[0], dtype=jnp.int32) // grid.group_size
        wp, hp = pad(w, h, width)
        u = inverse_factor(hp)
        split = Split.of(wp.shape[1], width, nm, grid)
        q, pruned, lo, hi = sweep(
            wp, u, frac, lo, hi, gidx, split=split, n_real=n, nm=nm, grid=grid
        )
        inv = jnp.argsort(perm)
        return q[:, :n][:, inv], pruned[:, :n][:, inv], lo, hi, jnp.all(jnp.isfinite(u))

    return jax.vmap(one)(w, h, frac)
