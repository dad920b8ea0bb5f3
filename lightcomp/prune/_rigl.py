"""Dynamic sparse training: RigL's drop-and-regrow mask update."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lightcomp import tree
from lightcomp._checks import check_fraction
from lightcomp.prune._optax import reset_moments, zero_pruned
from lightcomp.prune._ranking import lowest_k

PyTree = Any


@jax.jit
def _regrow_leaf(w, mk, g, fraction):
    """RigL on one leaf (jitted: an eager call compiles once per shape)."""
    flat_m = mk.reshape(-1)
    active = jnp.sum(flat_m.astype(jnp.int32))
    k = jnp.round(jnp.asarray(fraction, jnp.float32) * active.astype(jnp.float32))
    k = k.astype(jnp.int32)
    mag = jnp.where(flat_m, jnp.abs(w.reshape(-1).astype(jnp.float32)), jnp.inf)
    kept = flat_m & jnp.logical_not(lowest_k(mag, k))
    grow_score = jnp.where(kept, -jnp.inf, jnp.abs(g.reshape(-1).astype(jnp.float32)))
    grown = jnp.logical_not(kept) & lowest_k(-grow_score, k)
    return (kept | grown).reshape(mk.shape)


def prune_and_regrow(
    params: PyTree,
    masks: PyTree,
    grads: PyTree,
    fraction: Any,
    *,
    opt_state: PyTree = None,
) -> tuple[PyTree, PyTree, PyTree]:
    """One RigL mask update: drop the weakest active weights, regrow by gradient magnitude.

    In each masked leaf, ``k = round(fraction * active)`` active weights with the smallest
    ``|w|`` are dropped and the ``k`` inactive weights with the largest ``|g|`` are grown
    (a just-dropped weight may come back), so the number of active weights is unchanged.
    Grown weights start at 0, and the optimizer's per-weight moments are reset
    (`lightcomp.prune.reset_moments`) wherever the mask changed. Jittable; ``fraction``
    may be traced (`lightcomp.prune.cosine_fraction`). Ties by index.

    Args:
      params: parameter pytree.
      masks: current bool masks (None at unselected leaves).
      grads: dense gradients (computed at the masked params), params' structure.
      fraction: drop fraction in [0, 1].
      opt_state: optional optax state to reset.

    Returns:
      ``(params, masks, opt_state)``: params zeroed outside the new masks.

    Raises:
      ValueError: ``fraction`` outside [0, 1], or ``masks``/``grads`` do not mirror params.

    References:
      Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All Tickets
      Winners", 2020.

    Example:
      >>> params = {"w": jnp.array([0.0, 3.0, 1.0, 0.0])}
      >>> keep = {"w": jnp.array([False, True, True, False])}
      >>> grads = {"w": jnp.array([5.0, 0.0, 0.0, 1.0])}
      >>> new_params, new_masks, _ = lc.prune.prune_and_regrow(params, keep, grads, 0.5)
      >>> new_masks["w"].tolist(), new_params["w"].tolist()
      ([True, True, False, False], [0.0, 3.0, 0.0, 0.0])
    """
    check_fraction(fraction, "fraction", allow_one=True)
    tree.check_mirror(params, masks, "masks")
    tree.check_mirror(params, grads, "grads")

    def one(w, mk, g):
        return None if mk is None else _regrow_leaf(w, mk, g, fraction)

    new_masks = jax.tree.map(one, params, masks, grads)
    changed = jax.tree.map(lambda a, b: None if b is None else a != b, masks, new_masks)
    new_params = zero_pruned(params, new_masks)
    if opt_state is not None:
        opt_state = reset_moments(opt_state, params, changed)
    return new_params, new_masks, opt_state
