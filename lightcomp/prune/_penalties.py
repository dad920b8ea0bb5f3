"""Sparsity-inducing penalties to add to a loss: L1 and group lasso."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from lightcomp import tree as lt
from lightcomp._checks import check_bool, norm_axis, with_path

PyTree = Any


def _selected(params: PyTree, select: lt.SelectLike) -> list[tuple[str, jax.Array]]:
    flags = jax.tree.leaves(lt.selection(params, select))
    return [it for it, f in zip(lt.leaves_with_paths(params), flags, strict=True) if f]


def l1_penalty(params: PyTree, *, select: lt.SelectLike = None) -> jax.Array:
    """``sum |w|`` over the selected leaves (float32 scalar); add ``lam * l1`` to the loss.

    Args:
      params: parameter pytree.
      select: which leaves.

    Returns:
      float32 scalar; differentiable (subgradient ``sign(w)``).

    Example:
      >>> params = {"w": jnp.array([[1.0, -2.0], [0.5, 0.0]]), "b": jnp.ones(2)}
      >>> lc.prune.l1_penalty(params)
      Array(3.5, dtype=float32)
    """
    leaves = [w for _, w in _selected(params, select)]
    return sum(
        (jnp.sum(jnp.abs(w.astype(jnp.float32))) for w in leaves), jnp.zeros((), jnp.float32)
    )


def _safe_norm(x: jax.Array, axes) -> jax.Array:
    """L2 norm with a zero (not NaN) gradient at 0; optax.safe_norm adds a floor to the value."""
    sq = jnp.sum(jnp.square(x), axis=axes)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def group_lasso_penalty(
    params: PyTree, *, axis: int = -1, select: lt.SelectLike = None, scale: bool = False
) -> jax.Array:
    """Group lasso ``sum_g ||w_g||_2``; a group is one index of ``axis`` (-1: output channels).

    Drives whole channels to zero, ready for channel masks (`lightcomp.prune.Channel`) and
    `lightcomp.prune.shrink`.

    Args:
      params: parameter pytree.
      axis: the axis whose indices are the groups; the norm runs over all others.
      select: which leaves.
      scale: multiply each group's norm by ``sqrt(group size)`` (Yuan & Lin 2006).

    Returns:
      float32 scalar; its gradient is 0 (not NaN) at an all-zero group.

    Raises:
      ValueError: ``axis`` is out of range for a selected leaf (naming it).

    References:
      Yuan & Lin, "Model selection and estimation in regression with grouped
      variables", 2006; Wen, Wu, Wang, Chen & Li, "Learning Structured Sparsity in Deep
      Neural Networks", 2016.

    Example:
      >>> params = {"w": jnp.array([[3.0, 0.0], [4.0, 1.0]])}
      >>> lc.prune.group_lasso_penalty(params)
      Array(6., dtype=float32)
    """
    check_bool(scale, "scale")
    total = jnp.zeros((), jnp.float32)
    for path, w in _selected(params, select):
        ax = with_path(path, lambda w=w: norm_axis(axis, w.ndim))
        others = tuple(a for a in range(w.ndim) if a != ax)
        norms = _safe_norm(w.astype(jnp.float32), others)
        if scale:
            norms = norms * math.sqrt(math.prod(w.shape[a] for a in others))
        total = total + jnp.sum(norms)
    return total
