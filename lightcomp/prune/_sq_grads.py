"""The diagonal empirical Fisher: a running mean of squared gradients, for `fisher`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lightcomp import tree as lt

PyTree = Any


class SqGrads(NamedTuple):
    """Running mean of squared gradients (the diagonal empirical Fisher).

    Attributes:
      count: int32 scalar, batches seen.
      mean: float32 tree of the params' shapes; None at unselected leaves.
    """

    count: jax.Array
    mean: PyTree


def sq_grads_init(params: PyTree, *, select: lt.SelectLike = None) -> SqGrads:
    """An empty `SqGrads` accumulator for the selected leaves of ``params``.

    Args:
      params: parameter pytree (shapes only).
      select: which leaves.

    Returns:
      ``SqGrads(count=0, mean=zeros)``, float32 zeros of each selected leaf's shape.

    Example:
      >>> acc = lc.prune.sq_grads_init({"w": jnp.ones((2, 3)), "b": jnp.ones(3)})
      >>> int(acc.count), acc.mean["w"].shape, acc.mean["b"]
      (0, (2, 3), None)
    """
    zeros = lt.map_selected(
        lambda w: jnp.zeros(w.shape, jnp.float32), params, select=select, unselected="none"
    )
    return SqGrads(jnp.zeros((), jnp.int32), zeros)


def sq_grads_update(acc: SqGrads, grads: PyTree) -> SqGrads:
    """Adds one batch's gradients: ``mean += (g**2 - mean) / (count + 1)``. Jittable.

    Args:
      acc: the accumulator so far.
      grads: one batch's gradients, params' structure.

    Returns:
      The updated `SqGrads`.

    Example:
      >>> acc = lc.prune.sq_grads_init({"w": jnp.ones((1, 2))})
      >>> acc = jax.jit(lc.prune.sq_grads_update)(acc, {"w": jnp.array([[2.0, -4.0]])})
      >>> acc.mean["w"]
      Array([[ 4., 16.]], dtype=float32)
    """
    count = acc.count + 1
    inv = 1.0 / count.astype(jnp.float32)

    def one(g, m):
        if m is None:
            return None
        return m + (jnp.square(g.astype(jnp.float32)) - m) * inv

    return SqGrads(count, jax.tree.map(one, grads, acc.mean))
