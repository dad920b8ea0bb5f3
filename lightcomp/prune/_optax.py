"""Pruned weights stay zero: `zero_pruned` (the one place it is done), optax integration.

`zero_pruned` is the constraint itself: `lightcomp.prune.apply_masks` is its checked form,
`keep_pruned` applies it to gradients before an optax optimizer, and a training step
applies it to updates and params.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lightcomp import tree

PyTree = Any


def zero_pruned(tree: PyTree, masks: PyTree) -> PyTree:
    """Sets the entries of ``tree`` to zero where ``masks`` is False, dtype kept.

    No validation: callers check that ``masks`` mirrors ``tree`` (as
    `lightcomp.prune.apply_masks` does). Jittable.

    Args:
      tree: params, gradients or updates.
      masks: bool tree mirroring ``tree``; leaves whose mask is None (and None leaves of
        ``tree``) pass through untouched.

    Returns:
      ``where(mask, x, 0)`` at every masked leaf, ``tree``'s structure and dtypes.

    Example:
      >>> updates = {"w": jnp.array([1.0, 2.0, 3.0]), "b": jnp.ones(2)}
      >>> keep = {"w": jnp.array([True, False, True]), "b": None}
      >>> lc.prune.zero_pruned(updates, keep)["w"]
      Array([1., 0., 3.], dtype=float32)
    """

    def one(x, mk):
        if mk is None or x is None:
            return x
        return jnp.where(mk, x, jnp.zeros((), x.dtype))

    return jax.tree.map(one, tree, masks, is_leaf=lambda x: x is None)


def land_pruned(updates: PyTree, masks: PyTree, params: PyTree) -> PyTree:
    """Updates with ``-w`` at pruned positions, so ``params + updates`` is exactly 0 there.

    No validation (callers check that ``masks`` mirrors ``updates``). Jittable.

    Args:
      updates: optax updates shaped like ``params``.
      masks: bool tree mirroring ``params`` (True = kept), None where nothing is pruned.
      params: the current parameters.

    Returns:
      ``where(mask, u, -w)`` at every masked leaf.
    """

    def one(u, mk, p):
        if mk is None or u is None:
            return u
        fill = jnp.zeros((), u.dtype) if p is None else -p.astype(u.dtype)
        return jnp.where(mk, u, fill)

    return jax.tree.map(one, updates, masks, params, is_leaf=lambda x: x is None)


def keep_pruned(
    optimizer: optax.GradientTransformation,
    masks_fn: Callable[[PyTree], PyTree] | PyTree | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optax optimizer so pruned weights stay exactly 0.0 step after step.

    The gradients of pruned weights are zeroed (`zero_pruned`) before the inner optimizer
    (so momentum and Adam moments never build up there), and the outgoing updates at
    pruned positions are ``-w`` (so ``optax.apply_updates`` lands on exactly 0.0, even for
    a weight not yet zeroed or just pruned by a new mask).

    Args:
      optimizer: any optax transformation.
      masks_fn: ``params -> masks``, a fixed masks tree, or None; a ``masks=`` keyword to
        ``update`` overrides it (dynamic sparse training, masks in the train state).

    Returns:
      A ``GradientTransformationExtraArgs``; ``update(grads, state, params, masks=None,
      **extra)`` needs ``params``.

    Example:
      >>> params = {"w": jnp.array([[0.0, 2.0], [-1.0, 0.0]])}
      >>> keep = {"w": params["w"] != 0}
      >>> tx = lc.prune.keep_pruned(optax.sgd(0.1), keep)
      >>> grads = {"w": jnp.ones((2, 2))}
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["w"]
      Array([[ 0. ,  1.9],
             [-1.1,  0. ]], dtype=float32)
    """
    inner = optax.with_extra_args_support(optimizer)

    def init(params):
        return inner.init(params)

    def update(updates, state, params=None, *, masks=None, **extra_args):
        if params is None:
            raise ValueError("keep_pruned.update needs params (the current weights)")
        if masks is None:
            if masks_fn is None:
                raise ValueError("keep_pruned needs masks: give masks_fn or pass masks= to update")
            masks = masks_fn(params) if callable(masks_fn) else masks_fn
        tree.check_mirror(params, masks, "masks")  # at trace time only: no per-step cost
        grads = zero_pruned(updates, masks)
        new_updates, state = inner.update(grads, state, params, **extra_args)
        return land_pruned(new_updates, masks, params), state

    return optax.GradientTransformationExtraArgs(init, update)


def reset_moments(opt_state: PyTree, params: PyTree, reset: PyTree) -> PyTree:
    """Zeroes optimizer-state entries at ``reset`` positions in every params-shaped subtree.

    Walks the optimizer state and treats each subtree whose structure and leaf shapes
    equal ``params``'s (momentum, Adam's ``mu`` and ``nu``, ...) as per-weight moments;
    counts, step sizes and anything else pass through. No ``isinstance`` on optimizer
    state types, so any optax chain works.

    Args:
      opt_state: an optax state.
      params: the parameter tree the state was built for.
      reset: bool tree mirroring params (None where nothing is reset).

    Returns:
      The optimizer state with moments at reset positions set to 0.

    Example:
      >>> params = {"w": jnp.ones(3)}
      >>> tx = optax.sgd(0.1, momentum=0.9)
      >>> _, state = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
      >>> state = lc.prune.reset_moments(state, params, {"w": jnp.array([True, False, False])})
      >>> state[0].trace["w"]
      Array([0., 1., 1.], dtype=float32)
    """
    pdef = jax.tree.structure(params)
    pshapes = [jnp.shape(x) for x in jax.tree.leaves(params)]

    def zero(mom, r):
        if r is None:
            return mom
        return jnp.where(r, jnp.zeros((), mom.dtype), mom)

    def walk(node):
        if node is None:
            return None
        try:
            if (
                jax.tree.structure(node) == pdef
                and [jnp.shape(x) for x in jax.tree.leaves(node)] == pshapes
            ):
                return jax.tree.map(zero, node, reset)
        except (TypeError, ValueError):
            pass
        children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
        if treedef.num_leaves == 1 and treedef.num_nodes == 1:
            return node  # a leaf
        return jax.tree.unflatten(treedef, [walk(c) for c in children])

    return walk(opt_state)
