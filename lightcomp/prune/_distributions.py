"""How a total sparsity is spread over layers: Erdős–Rényi-Kernel (`erk`)."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree as lt
from lightcomp._checks import check_number
from lightcomp.prune._masks import leaf_axes_of

PyTree = Any


def erk(
    params: PyTree,
    sparsity: float,
    *,
    select: lt.SelectLike = None,
    power: float = 1.0,
    axes: PyTree | None = None,
) -> PyTree:
    """Erdős–Rényi-Kernel per-layer sparsities whose weighted mean is ``sparsity``.

    A layer's density is proportional to ``sum(shape) / prod(shape)`` (raised to
    ``power``), so small layers stay denser; layers that would exceed density 1 are kept
    dense and the rest rescaled, as in RigL's implementation. A stacked leaf's layers are
    its slices: the ratio reads one slice's shape (the leaf without its layer axes).

    Args:
      params: parameter pytree (only shapes are read).
      sparsity: overall fraction of selected weights to prune, in [0, 1) (concrete).
      select: which leaves.
      power: exponent on the ERK ratio (1.0 = ERK).
      axes: a tree of `lightcomp.tree.Axes` (None: `lightcomp.tree.axes` of ``params``).

    Returns:
      A tree mirroring params with a Python float sparsity at each selected leaf, None
      elsewhere; pass it to `lightcomp.prune.masks` (``scope="layer"``).

    Raises:
      ValueError: ``sparsity`` outside [0, 1), a non-finite ``power``, or no leaf selected.

    References:
      Mocanu et al., "Scalable training of artificial neural networks with adaptive
      sparse connectivity inspired by network science", 2018 (Erdős–Rényi); Evci, Gale,
      Menick, Castro & Elsen, "Rigging the Lottery: Making All Tickets Winners", 2020 (ERK).

    Example:
      >>> params = {"big": jnp.zeros((100, 100)), "tiny": jnp.zeros((2, 3))}
      >>> d = lc.prune.erk(params, 0.5)
      >>> round(d["big"], 4), d["tiny"]
      (0.5003, 0.0)
    """
    check_number(sparsity, "sparsity", lo=0.0, hi=1.0, hi_open=True)
    check_number(power, "power")
    flags = jax.tree.leaves(lt.selection(params, select, require_any=True))
    shapes = [tuple(w.shape) for w, f in zip(jax.tree.leaves(params), flags, strict=True) if f]
    chosen = lt.map_selected(
        lambda w: jax.ShapeDtypeStruct(w.shape, jnp.float32),
        params,
        select=select,
        unselected="none",
    )
    given = lt.axes(params, select) if axes is None else axes
    stacked = [ax.stacked for ax in leaf_axes_of(chosen, given)]
    slices = [
        tuple(d for a, d in enumerate(s) if a not in st)
        for s, st in zip(shapes, stacked, strict=True)
    ]
    sizes = np.array([math.prod(s) for s in shapes], np.float64)
    raw = np.array([(sum(s) / math.prod(s)) ** power for s in slices], np.float64)
    dense = np.zeros(len(shapes), bool)
    target = (1.0 - sparsity) * sizes.sum()
    density = np.ones(len(shapes))
    while not dense.all():  # at most one pass per layer (a loop over layers, not elements)
        budget = target - sizes[dense].sum()
        eps = budget / np.sum(raw[~dense] * sizes[~dense])
        density = np.where(dense, 1.0, eps * raw)
        over = (~dense) & (density > 1.0)
        if not over.any():
            break
        dense |= over
    values = iter(float(np.clip(1.0 - d, 0.0, 1.0 - 1e-12)) for d in density)
    return jax.tree.map(
        lambda w, f: next(values) if f else None, params, lt.selection(params, select)
    )
