"""Direct NumPy implementations of the papers' algorithms (float64, no lazy batching), and small
data and models for the post-training tests."""

from __future__ import annotations

import numpy as np


def layer_data(seed: int, rows: int = 16, cols: int = 64, n: int = 256):
    """``(W [rows, cols], X [n, cols], H = X^T X)`` with correlated inputs, float32."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    mix = np.eye(cols) + 0.5 * rng.normal(size=(cols, cols)) / np.sqrt(cols)
    x = (rng.normal(size=(n, cols)) * rng.uniform(0.2, 2.0, size=cols)) @ mix
    x = x.astype(np.float32)
    return w, x, (x.T.astype(np.float64) @ x).astype(np.float32)


def output_error(x, w, w_hat) -> float:
    """``||X W^T - X W_hat^T||_F``: the layer-output error the papers minimise."""
    return float(np.linalg.norm(x.astype(np.float64) @ (np.asarray(w, np.float64) - w_hat).T))


def grid_round(col, lo, hi, bits, symmetric):
    """lightcomp's grid (`lightcomp.quant`'s contract) for a column with per-row ranges."""
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
        scale = np.maximum(np.abs(lo), np.abs(hi)) / qmax
        zp = np.zeros_like(scale)
    else:
        qmin, qmax = 0, 2**bits - 1
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
        scale = (hi - lo) / qmax
        zp = np.round(-lo / np.where(scale > 0, scale, 1))
    safe = np.where(scale > 0, scale, 1)
    q = np.clip(np.round(col / safe) + zp, qmin, qmax)
    return np.where(scale > 0, (q - zp) * scale, 0.0)


def _prepare(w, h, damp):
    w, h = np.array(w, np.float64), np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    # the paper's Cholesky reformulation: the upper factor of H^-1, with H^-1 = U^T U
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    return w, u


def _lowest(scores, k):
    """Boolean mask of the k lowest entries (row-major order breaks ties)."""
    flat = np.zeros(scores.size, bool)
    flat[np.argsort(scores.ravel(), kind="stable")[:k]] = True
    return flat.reshape(scores.shape)


def np_sparsegpt(w, h, *, sparsity=None, nm=None, blocksize=128, damp=0.01, grid=None):
    """SparseGPT, Algorithm 1 of Frantar & Alistarh 2023, with every update applied at once.

    ``sparsity``: the layer loses exactly round(sparsity * size) weights, block ``b`` (of
    ``blocksize`` columns) ``floor(K e_b / I) - floor(K s_b / I)`` of them, chosen by lowest
    ``w^2 / U_jj^2``. ``nm = (n, m)``: per row, ``m - n`` of every ``m`` columns, chosen when
    the group's first column is reached. ``grid = (bits, symmetric)``: kept weights rounded on
    lightcomp's grid with one range per row from the weights before the sweep.
    Returns ``(w_hat, pruned)``.
    """
    w, u = _prepare(w, h, damp)
    rows, cols = w.shape
    pruned = np.zeros(w.shape, bool)
    q_all = np.zeros_like(w)
    total = None if sparsity is None else round(sparsity * rows * cols)
    if grid is not None:
        lo, hi = w.min(axis=1), w.max(axis=1)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        d = np.diag(u)
        if total is not None:
            k = (total * i2) // cols - (total * i1) // cols
            pruned[:, i1:i2] = _lowest(w[:, i1:i2] ** 2 / d[i1:i2] ** 2, k)
        for j in range(i1, i2):
            if nm is not None and j % nm[1] == 0:
                s = w[:, j : j + nm[1]] ** 2 / d[j : j + nm[1]] ** 2
                for r in range(rows):
                    pruned[r, j : j + nm[1]] = _lowest(s[r], nm[1] - nm[0])
            q = np.where(pruned[:, j], 0.0, w[:, j])
            if grid is not None:
                q = np.where(pruned[:, j], 0.0, grid_round(q, lo, hi, *grid))
            err = (w[:, j] - q) / u[j, j]
            w[:, j:] -= np.outer(err, u[j, j:])
            q_all[:, j] = q
    return q_all, pruned


def np_gptq(w, h, bits, *, group=None, symmetric=True, act_order=False, damp=0.01):
    """GPTQ, Algorithm 1 of Frantar et al. 2022, with every update applied at once.

    Ranges: one per row from the weights before the sweep; with ``group``, one per ``group``
    consecutive columns, taken from the current weights when the group's first column is
    reached (with ``act_order``, from the weights before the sweep, by original column).
    Returns ``w_hat``.
    """
    w, h = np.array(w, np.float64), np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    rows, cols = w.shape
    g = group or cols
    static_lo = w.reshape(rows, -1, g).min(axis=2)
    static_hi = w.reshape(rows, -1, g).max(axis=2)
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(cols)
    w, h = w[:, perm], h[perm][:, perm]
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    q_all = np.zeros_like(w)
    lo = hi = None
    for j in range(cols):
        if group is not None and not act_order and j % g == 0:
            lo, hi = w[:, j : j + g].min(axis=1), w[:, j : j + g].max(axis=1)
        elif group is None or act_order:
            lo, hi = static_lo[:, perm[j] // g], static_hi[:, perm[j] // g]
        q = grid_round(w[:, j], lo, hi, bits, symmetric)
        err = (w[:, j] - q) / u[j, j]
        w[:, j:] -= np.outer(err, u[j, j:])
        q_all[:, j] = q
    return q_all[:, np.argsort(perm)]
