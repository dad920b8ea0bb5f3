"""Magnitude pruning and round-to-nearest quantization through the post-training entry points,
and the masks every pruning method takes from its scores.

Both baselines read only the weights; they take ``apply_fn`` and ``calib_inputs`` to find
the same layers as the second-order methods (one abstract trace, no calibration pass), so
comparisons are between like and like.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lightcomp import prune, quant
from lightcomp import tree as lt
from lightcomp.posttrain._layers import LayerView
from lightcomp.posttrain._obs import Grid
from lightcomp.posttrain._sequential import LayerResult, anonymous, compress
from lightcomp.posttrain._state import check_request, prechecker, state_of
from lightcomp.posttrain._targets import (
    Target,
    check_grid,
    check_scope,
    check_target,
)

PyTree = Any


def view_keep(view: LayerView, scores: jax.Array, target: Target, scope: str) -> jax.Array:
    """Keep-masks ``[S, O, I]`` from float32 scores in the matrix view, by `lightcomp.prune.masks`.

    ``"layer"``: exactly ``round(s * size)`` pruned in the kernel, ranked as
    ``prune.masks`` ranks the kernel itself (ties by the kernel's index order);
    ``"output"``: ``round(s * I)`` per output row; n:m: ``n`` kept in every ``m``
    consecutive input columns.
    """
    if scope == "layer" and not isinstance(target, prune.NM):
        kernel_scores = view.from_matrix(scores, jnp.float32)
        return view.to_matrix(prune.masks({"w": kernel_scores}, target)["w"]) > 0
    s, o, i = scores.shape
    cols = jnp.transpose(scores, (2, 0, 1)).reshape(i, s * o)  # [I, S * O]: inputs on axis -2
    if isinstance(target, prune.NM):
        keep = prune.masks({"w": cols}, None, granularity=target)["w"]
    else:
        keep = prune.masks({"w": cols}, target, scope="output")["w"]
    return jnp.transpose(keep.reshape(i, s, o), (1, 2, 0))


def masked_result(view: LayerView, kernel: jax.Array, keep: jax.Array) -> LayerResult:
    """The kernel with the pruned weights exactly zero, and its kernel-shaped mask."""
    keep_k = view.from_matrix(keep, bool)
    return LayerResult(jnp.where(keep_k, kernel, jnp.zeros((), kernel.dtype)), keep_k, None)


def grid_result(view: LayerView, kernel: jax.Array, w: jax.Array, grid: Grid, lo_hi=None):
    """``w`` ``[S, O, I]`` put on ``grid`` (its own ranges, or ``lo_hi`` ``[S, O, G]``)."""
    s, o, i = w.shape
    rng = None
    if lo_hi is not None:
        g = grid.n_groups(i)
        rng = tuple(r[:, :, :g].reshape(s * o, g) for r in lo_hi)
    qt = quant.quantize(
        w.reshape(s * o, i),
        grid.bits,
        symmetric=grid.symmetric,
        axis=0,
        group_size=grid.group_size,
        group_axis=None if grid.group_size is None else 1,
        range=rng,
    )
    w_hat = quant.dequantize(qt).reshape(s, o, i)
    return LayerResult(view.from_matrix(w_hat, kernel.dtype), None, qt)


@functools.partial(jax.jit, static_argnames=("view", "target", "scope"))
def _magnitude(kernel, *, view, target, scope) -> LayerResult:
    keep = view_keep(view, jnp.abs(view.to_matrix(kernel)), target, scope)
    return masked_result(view, kernel, keep)


@functools.partial(jax.jit, static_argnames=("view", "grid"))
def _rtn(kernel, *, view, grid) -> LayerResult:
    return grid_result(view, kernel, view.to_matrix(kernel), grid)


def magnitude(
    apply_fn: Callable,
    params: PyTree,
    calib_inputs: Any,
    sparsity: Any = 0.5,
    *,
    scope: str = "layer",
    select: lt.SelectLike = None,
    return_state: bool = False,
) -> PyTree:
    """Magnitude pruning (``|w|``) of the layers the other methods compress.

    Args:
      apply_fn, params, calib_inputs, select, return_state: as `sparsegpt` (only one
        abstract trace of ``apply_fn`` is made, to find the layers).
      sparsity: a fraction in ``[0, 1)`` or an n:m granularity (``lc.prune.NM(2, 4)``).
      scope: ``"layer"`` (exact count per kernel, as `lightcomp.prune.masks`) or
        ``"output"`` (per output row).

    Returns:
      The pruned parameters (and the `lightcomp.PruningState` with ``return_state``).

    References:
      Han, Pool, Tran & Dally, "Learning both Weights and Connections for Efficient Neural
      Networks", 2015.
    """
    target = check_target(sparsity)
    scope = check_scope(scope, target)
    return_state = check_request(return_state, None)

    def layer(view, kernel, gram):
        del gram
        return _magnitude(kernel, view=anonymous(view), target=target, scope=scope)

    new, results, _ = compress(
        apply_fn,
        params,
        calib_inputs,
        layer,
        select=select,
        sequential=False,
        needs_grams=False,
        precheck=prechecker(params, target, None, return_state, select),
    )
    return state_of(new, results, return_state, target=target, scope=scope, select=select)


def rtn(
    apply_fn: Callable,
    params: PyTree,
    calib_inputs: Any,
    bits: int = 4,
    *,
    group_size: int | None = None,
    symmetric: bool = True,
    select: lt.SelectLike = None,
    return_state: bool = False,
) -> PyTree:
    """Round-to-nearest quantization on the grid `gptq` uses, each weight on its own.

    Args:
      apply_fn, params, calib_inputs, select, return_state: as `gptq` (one abstract trace).
      bits: 2..8.
      group_size: input columns sharing a scale per output row; None: one per output row.
      symmetric: lightcomp's signed narrow range, or unsigned with a zero point.

    Returns:
      The quantized parameters (and the `lightcomp.FakeQuantState` with ``return_state``).
    """
    grid = check_grid(bits, group_size, symmetric, static=True)
    return_state = check_request(return_state, grid)

    def layer(view, kernel, gram):
        del gram
        return _rtn(kernel, view=anonymous(view), grid=grid)

    new, results, found = compress(
        apply_fn,
        params,
        calib_inputs,
        layer,
        select=select,
        sequential=False,
        needs_grams=False,
        precheck=prechecker(params, None, grid, return_state, select),
    )
    return state_of(new, results, return_state, grid=grid, views=found.views, select=select)
