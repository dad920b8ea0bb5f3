"""Wanda: prune by ``|w| * ||x||``, for every layer type, from the same calibration."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lightcomp import tree as lt
from lightcomp.posttrain._baselines import masked_result, view_keep
from lightcomp.posttrain._sequential import anonymous, checked_gram, compress
from lightcomp.posttrain._state import check_request, prechecker, state_of
from lightcomp.posttrain._targets import check_scope, check_target

PyTree = Any


def wanda_scores(w: jnp.ndarray, gram_matrix: jnp.ndarray) -> jnp.ndarray:
    """``|W_ij| * ||X_j||_2`` for matrices ``[S, O, I]`` and Grams ``[S, I, I]`` (float32)."""
    norms = jnp.sqrt(jnp.diagonal(gram_matrix, axis1=-2, axis2=-1))
    return jnp.abs(w) * norms[:, None, :]


@functools.partial(jax.jit, static_argnames=("view", "target", "scope"))
def _wanda(kernel, h, *, view, target, scope):
    scores = wanda_scores(view.to_matrix(kernel), h)
    return masked_result(view, kernel, view_keep(view, scores, target, scope))


def wanda(
    apply_fn: Callable,
    params: PyTree,
    calib_inputs: Any,
    sparsity: Any = 0.5,
    *,
    scope: str = "output",
    select: lt.SelectLike = None,
    sequential: bool = True,
    return_state: bool = False,
) -> PyTree:
    """Prunes the weights of lowest ``|w| * ||x||`` in one shot, with no weight update (Wanda).

    The input norms are ``sqrt(diag H)`` of the same Gram matrices SparseGPT uses, so every
    layer type the calibration sees (Dense, DenseGeneral, Conv through its patches, Einsum;
    linen and nnx) is scored along its own input axes.

    Args:
      apply_fn, params, calib_inputs, select, sequential, return_state: as `sparsegpt`.
      sparsity: a fraction in ``[0, 1)`` or an n:m granularity (``lc.prune.NM(2, 4)``).
      scope: ``"output"`` (the paper's: each output row loses ``round(sparsity * I)``) or
        ``"layer"`` (exactly ``round(sparsity * size)`` per kernel).

    Returns:
      The pruned parameters (pruned weights exactly zero), or ``(params, state)`` with the
      `lightcomp.PruningState` of ``lc.pruning(sparsity, scope=scope)``.

    Raises:
      ValueError / TypeError: as `sparsegpt`.

    References:
      Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language
      Models", ICLR 2024 (arXiv 2023).

    Example:
      >>> model = lc.models.MLP((8, 4))
      >>> x = jax.random.normal(jax.random.key(0), (64, 16))
      >>> params = model.init(jax.random.key(1), x)["params"]
      >>> pruned = lc.posttrain.wanda(lambda p, x: model.apply({"params": p}, x), params, x)
      >>> (pruned["Dense_0"]["kernel"] == 0).sum(axis=0).tolist()
      [8, 8, 8, 8, 8, 8, 8, 8]
    """
    target = check_target(sparsity)
    scope = check_scope(scope, target)
    return_state = check_request(return_state, None)

    def layer(view, kernel, gram):
        checked_gram(view, gram, None)
        return _wanda(kernel, gram.matrix, view=anonymous(view), target=target, scope=scope)

    new, results, _ = compress(
        apply_fn,
        params,
        calib_inputs,
        layer,
        select=select,
        sequential=sequential,
        precheck=prechecker(params, target, None, return_state, select),
    )
    return state_of(new, results, return_state, target=target, scope=scope, select=select)
