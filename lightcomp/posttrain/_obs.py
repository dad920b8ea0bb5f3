"""The optimal-brain-surgeon column sweep that SparseGPT and GPTQ share.

For a layer ``W`` ``[O, I]`` (rows are outputs) and the Gram matrix ``H`` ``[I, I]`` of its
inputs, columns are fixed left to right: column ``j`` is replaced by its pruned and / or
quantized value ``q_j`` and the error ``(w_j - q_j) / U_jj`` is spread over the columns
not yet fixed through row ``j`` of ``U``, the upper Cholesky factor of the dampened
inverse Hessian (``H^-1 = U^T U``). Columns go in blocks of ``B``: inside a block the
updates are made column by column, the rest of the matrix gets them once per block
("lazy batch updates"), which is the same arithmetic in another order.

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

_HI = jax.lax.Precision.HIGHEST


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


def prepare(w: jax.Array, h: jax.Array, dampening: float) -> tuple[jax.Array, jax.Array]:
    """Dead inputs (``diag H == 0``) get ``H_jj = 1`` and zero weights; then the dampening.

    Args:
      w: float32 ``[O, I]``.
      h: float32 ``[I, I]``.
      dampening: ``lambda`` as a fraction of the mean of ``diag H``, added to the diagonal.

    Returns:
      ``(w, h)``.
    """
    diag = jnp.diagonal(h)
    dead = diag == 0
    h = h + jnp.diag(dead.astype(h.dtype))
    w = jnp.where(dead[None, :], 0.0, w)
    lam = dampening * jnp.mean(jnp.diagonal(h))
    return w, h + lam * jnp.eye(h.shape[0], dtype=h.dtype)


def inverse_factor(h: jax.Array) -> jax.Array:
    """The upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``), float32 ``[I, I]``.

    With ``J`` the reversal, ``J H J = L L^T`` gives ``H = R R^T`` for the upper ``R = J L J``,
    so ``U = R^-1``: one Cholesky and one triangular solve, no explicit inverse. NaN when
    ``H`` is not positive definite.
    """
    n = h.shape[0]
    rev = h[::-1, ::-1]
    low = jnp.linalg.cholesky(rev)
    inv = jax.scipy.linalg.solve_triangular(low, jnp.eye(n, dtype=h.dtype), lower=True)
    return inv[::-1, ::-1]


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


def _nm_pruned(w_cols, d_cols, nm: prune.NM):
    """True for the ``m - n`` lowest ``w^2 / d^2`` of each row of ``[O, m]`` columns."""
    scores = jnp.square(w_cols) / jnp.square(d_cols)[None, :]
    keep = prune.masks({"w": scores.T}, None, granularity=nm)["w"]
    return ~keep.T


@functools.partial(jax.jit, static_argnames=("width", "n_real", "nm", "grid"))
def sweep(w, u, frac, lo, hi, gidx, *, width, n_real, nm, grid):
    """One matrix through the sweep.

    Args:
      w: float32 ``[O, P]``, the prepared weights, ``P`` a multiple of ``width`` (columns past
        ``n_real`` are zero padding).
      u: float32 ``[P, P]`` from `inverse_factor` (identity on the padding).
      frac: float32 ``[P / width]`` fractions of each block to prune (`fractions`), or None.
      lo, hi: float32 ``[O, G]`` ranges (static grids; dynamic ones are filled in), or None.
      gidx: int32 ``[P]``, the group of each column, or None.
      width: the block width.
      n_real: the columns that are not padding.
      nm: an n:m granularity, or None.
      grid: a `Grid`, or None.

    Returns:
      ``(q, pruned, lo, hi)``: the new weights ``[O, P]``, the pruned positions (bool), the
      ranges used.
    """
    n_rows, n_cols = w.shape
    cols = jnp.arange(width)
    g = grid.group_size if grid is not None else None
    dynamic = grid is not None and not grid.static

    def take_range(lo, hi, src, gi):
        lo = lo.at[:, gi].set(jnp.min(src, axis=1))
        return lo, hi.at[:, gi].set(jnp.max(src, axis=1))

    def column(i1, u1, d, j, c):
        w1, q1, e1, m1, lo, hi = c
        wj = w1[:, j]
        if nm is not None:
            m1 = jax.lax.cond(
                j % nm.m == 0,
                lambda: jax.lax.dynamic_update_slice(
                    m1,
                    _nm_pruned(
                        jax.lax.dynamic_slice_in_dim(w1, j, nm.m, 1),
                        jax.lax.dynamic_slice_in_dim(d, j, nm.m),
                        nm,
                    ),
                    (0, j),
                ),
                lambda: m1,
            )
        pj = m1[:, j]
        qj = jnp.where(pj, 0.0, wj)
        if grid is not None:
            gi = gidx[i1 + j]
            if dynamic and g <= width:
                src = jax.lax.dynamic_slice_in_dim(w1, (j // g) * g, g, 1)
                lo, hi = jax.lax.cond(
                    (i1 + j) % g == 0, lambda: take_range(lo, hi, src, gi), lambda: (lo, hi)
                )
            qj = jnp.where(pj, 0.0, _quant_col(qj, lo[:, gi], hi[:, gi], grid))
        err = (wj - qj) / d[j]
        w1 = w1 - jnp.outer(err, jnp.where(cols > j, u1[j], 0.0))
        return w1, q1.at[:, j].set(qj), e1.at[:, j].set(err), m1, lo, hi

    def block(b, c):
        w, q, pruned, lo, hi = c
        i1 = b * width
        w1 = jax.lax.dynamic_slice_in_dim(w, i1, width, 1)
        u1 = jax.lax.dynamic_slice(u, (i1, i1), (width, width))
        d = jnp.diagonal(u1)
        if frac is not None:
            scores = jnp.square(w1) / jnp.square(d)[None, :]
            scores = jnp.where((i1 + cols)[None, :] < n_real, scores, jnp.inf)
            m1 = ~prune.masks({"w": scores}, frac[b])["w"]
        else:
            m1 = jnp.zeros(w1.shape, bool)
        if dynamic and g > width:
            src = jax.lax.dynamic_slice_in_dim(w, (i1 // g) * g, g, 1)
            lo, hi = jax.lax.cond(
                i1 % g == 0, lambda: take_range(lo, hi, src, i1 // g), lambda: (lo, hi)
            )
        zeros = jnp.zeros_like(w1)
        w1, q1, e1, m1, lo, hi = jax.lax.fori_loop(
            0, width, functools.partial(column, i1, u1, d), (w1, zeros, zeros, m1, lo, hi)
        )
        row = jax.lax.dynamic_slice_in_dim(u, i1, width, 0)
        w = w - jnp.matmul(e1, row, precision=_HI)  # columns before i1 get 0 (U is upper)
        q = jax.lax.dynamic_update_slice(q, q1, (0, i1))
        return w, q, jax.lax.dynamic_update_slice(pruned, m1, (0, i1)), lo, hi

    if lo is None:
        lo = hi = jnp.zeros((n_rows, 1), jnp.float32)
    init = (w, jnp.zeros_like(w), jnp.zeros(w.shape, bool), lo, hi)
    _, q, pruned, lo, hi = jax.lax.fori_loop(0, n_cols // width, block, init)
    return q, pruned, lo, hi


def pad(w: jax.Array, h: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """Zero columns for ``w`` and an identity block for ``h`` up to a multiple of ``width``."""
    n = w.shape[-1]
    extra = -n % width
    if not extra:
        return w, h
    w = jnp.pad(w, ((0, 0), (0, extra)))
    h = jnp.pad(h, ((0, extra), (0, extra)))
    return w, h + jnp.diag(jnp.concatenate([jnp.zeros(n), jnp.ones(extra)]).astype(h.dtype))


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
        q, pruned, lo, hi = sweep(
            wp, u, frac, lo, hi, gidx, width=width, n_real=n, nm=nm, grid=grid
        )
        inv = jnp.argsort(perm)
        return q[:, :n][:, inv], pruned[:, :n][:, inv], lo, hi, jnp.all(jnp.isfinite(u))

    return jax.vmap(one)(w, h, frac)
