"""SparseGPT: one-shot pruning with the optimal-brain-surgeon update, layer by layer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import prune
from lightcomp import tree as lt
from lightcomp.posttrain._baselines import grid_result
from lightcomp.posttrain._calibration import Gram, Plan, matrix_case
from lightcomp.posttrain._layers import LayerView
from lightcomp.posttrain._obs import Grid, block_counts, block_size, fractions, solve
from lightcomp.posttrain._sequential import (
    LayerResult,
    anonymous,
    check_dampening,
    check_factor,
    checked_gram,
    compress,
)
from lightcomp.posttrain._state import check_request, prechecker, state_of
from lightcomp.posttrain._targets import Target, check_blocksize, check_grid, check_target

PyTree = Any


def slice_fractions(target: float, shape: tuple[int, int, int], width: int) -> np.ndarray:
    """float32 ``[S, blocks]``: per matrix and block, the fraction that prunes its exact share.

    The kernel loses exactly ``round(target * S * O * I)`` weights (as `lightcomp.prune.masks`
    counts a leaf), split over the matrices and then over the column blocks.
    """
    s, o, i = shape
    total = round(target * s * o * i)
    per_slice = np.diff((total * np.arange(s + 1)) // s)
    counts = np.stack([block_counts(int(k), i, width) for k in per_slice])
    return fractions(counts, o * width)


def sparsegpt_layer(
    view: LayerView,
    kernel: jax.Array,
    gram: Gram,
    *,
    target: Target,
    grid: Grid | None,
    blocksize: int,
    dampening: float,
) -> LayerResult:
    """SparseGPT on one kernel (checked config; see `sparsegpt`)."""
    checked_gram(view, gram, dampening)
    nm = target if isinstance(target, prune.NM) else None
    width = block_size(blocksize, view.n_in, nm.m if nm else None, grid and grid.group_size)
    shape = (view.n_stacked, view.n_out, view.n_in)
    frac = None if nm else jnp.asarray(slice_fractions(target, shape, width))
    out, ok = _compute(
        kernel, gram.matrix, frac, jnp.float32(dampening), view=anonymous(view), nm=nm, grid=grid,
        width=width,
    )  # fmt: skip
    check_factor(view, ok, dampening)
    return out


@functools.partial(jax.jit, static_argnames=("view", "nm", "grid", "width"))
def _compute(kernel, h, frac, dampening, *, view, nm, grid, width) -> tuple[LayerResult, Any]:
    """The layer's solve and its result, one compiled program per layer layout."""
    q, pruned, lo, hi, ok = solve(
        view.to_matrix(kernel), h, frac, dampening, width=width, nm=nm, grid=grid, act_order=False
    )
    keep = view.from_matrix(~pruned, bool)
    if grid is None:
        return LayerResult(view.from_matrix(q, kernel.dtype), keep, None), ok
    out = grid_result(view, kernel, q, grid, (lo, hi))
    zero = jnp.zeros((), kernel.dtype)
    return out._replace(kernel=jnp.where(keep, out.kernel, zero), keep=keep), ok


def sparsegpt(
    apply_fn: Callable,
    params: PyTree,
    calib_inputs: Any,
    sparsity: Any = 0.5,
    *,
    bits: int | None = None,
    group_size: int | None = None,
    symmetric: bool = True,
    blocksize: int = 128,
    dampening: float = 0.01,
    select: lt.SelectLike = None,
    sequential: bool = True,
    return_state: bool = False,
) -> PyTree:
    """Prunes every selected layer in one shot, updating the kept weights (SparseGPT).

    For each layer's matrix ``W`` ``[O, I]`` and the Gram matrix ``H = sum x^T x`` of its
    inputs, columns are pruned left to right in blocks of ``blocksize``: at each block the
    mask prunes the weights of lowest ``w^2 / [U]_jj^2`` (``U`` the upper Cholesky factor of
    the dampened ``H^-1``), each pruned column's error is spread over the columns not yet
    visited (the OBS update), the rest of the matrix gets it once per block. With ``bits``
    the kept weights are quantized in the same pass (GPTQ's update for both errors).

    Args:
      apply_fn: ``(params, inputs) -> outputs`` (e.g. ``lambda p, x: model.apply({"params":
        p}, x)`` or an nnx ``merge``-and-call), not already jitted.
      params: the trained parameters (a linen dict, an ``nnx.State``).
      calib_inputs: an input array, a dict with ``"inputs"``, or a sequence of them (the
        batches; a few hundred sequences in the papers).
      sparsity: a fraction in ``[0, 1)``: exactly ``round(sparsity * size)`` weights of each
        kernel go, as `lightcomp.prune.masks` counts; or an n:m granularity
        (``lc.prune.NM(2, 4)`` or ``"2:4"``): ``n`` kept in every ``m`` consecutive inputs.
      bits: also quantize the kept weights to this grid (2..8), in the same pass.
      group_size: input columns sharing a scale, per output row (with ``bits``).
      symmetric: lightcomp's signed narrow grid, or unsigned with a zero point (with
        ``bits``).
      blocksize: columns per lazy-update block (the mask is chosen per block).
      dampening: ``lambda`` added to ``diag H`` as a fraction of its mean (the papers'
        1%); 0 refuses a singular ``H``.
      select: None for every kernel of a Dense / DenseGeneral / Conv / Einsum layer (linen
        or nnx) that ``apply_fn`` calls; otherwise `lightcomp.tree.as_select`'s rule.
      sequential: each layer calibrated on the model whose earlier layers are already
        pruned (the papers' order); False: one calibration pass on the dense model.
      return_state: also return the state of ``lc.pruning(sparsity, granularity=...)``
        holding the masks (with ``bits``: ``(pruning state, fake_quantization state)`` for
        ``lc.chain(lc.pruning(...), lc.fake_quantization(bits,
        group_size=group_size, learned_scale=True))``).

    Returns:
      The pruned parameters (pruned weights exactly zero, each leaf's dtype), or
      ``(params, state)``.

    Raises:
      ValueError / TypeError: a bad argument; a selected leaf the inputs never reach, or of
        a layer type without derived input axes; ``m`` or ``group_size`` not dividing a
        layer's input columns; a singular ``H`` with ``dampening=0`` (each naming the layer).
        A dead input column with dampening is reported by a warning.

    References:
      Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
      One-Shot", ICML 2023; Hassibi & Stork, "Optimal Brain Surgeon", 1993.

    Example:
      >>> model = lc.models.MLP((8, 4))
      >>> x = jax.random.normal(jax.random.key(0), (64, 16))
      >>> params = model.init(jax.random.key(1), x)["params"]
      >>> apply = lambda p, x: model.apply({"params": p}, x)
      >>> pruned = lc.posttrain.sparsegpt(apply, params, x, sparsity=0.5)
      >>> int((pruned["Dense_0"]["kernel"] == 0).sum()), pruned["Dense_0"]["kernel"].size
      (64, 128)
    """
    target = check_target(sparsity)
    grid = None if bits is None else check_grid(bits, group_size, symmetric, static=False)
    if bits is None and group_size is not None:
        raise ValueError("group_size is for quantizing in the same pass: pass bits too")
    blocksize = check_blocksize(blocksize)
    dampening = check_dampening(dampening)
    return_state = check_request(return_state, grid)

    def layer(view, kernel, gram):
        return sparsegpt_layer(
            view, kernel, gram, target=target, grid=grid, blocksize=blocksize, dampening=dampening
        )

    new, results, found = compress(
        apply_fn,
        params,
        calib_inputs,
        layer,
        select=select,
        sequential=sequential,
        precheck=prechecker(params, target, grid, return_state, select),
    )
    return state_of(
        new, results, return_state, target=target, grid=grid, views=found.views, select=select
    )


def sparsegpt_matrix(
    w: jax.Array,
    h: jax.Array,
    sparsity: Any = 0.5,
    *,
    blocksize: int = 128,
    dampening: float = 0.01,
) -> tuple[jax.Array, jax.Array]:
    """SparseGPT on one matrix ``w`` ``[O, I]`` (rows are outputs) with its Gram ``h`` ``[I, I]``.

    Args:
      w: float weights ``[O, I]``.
      h: float32 ``sum x^T x`` of the inputs, ``[I, I]``.
      sparsity, blocksize, dampening: as `sparsegpt`.

    Returns:
      ``(w_hat, keep)``: float32 ``[O, I]`` with exactly ``round(sparsity * O * I)`` zeros
      (or n:m along the columns), and the bool mask (True = kept).

    Example:
      >>> w = jax.random.normal(jax.random.key(0), (4, 8))
      >>> x = jax.random.normal(jax.random.key(1), (32, 8))
      >>> w_hat, keep = lc.posttrain.sparsegpt_matrix(w, x.T @ x, lc.prune.NM(2, 4))
      >>> keep.reshape(4, 2, 4).sum(-1).tolist()
      [[2, 2], [2, 2], [2, 2], [2, 2]]
    """
    target = check_target(sparsity)
    blocksize = check_blocksize(blocksize)
    dampening = check_dampening(dampening)
    view, kernel, gram = matrix_case(w, h)
    prechecker(None, target, None, False)(Plan({view.path: view}, []))
    out = sparsegpt_layer(
        view, kernel, gram, target=target, grid=None, blocksize=blocksize, dampening=dampening
    )
    return out.kernel.T, out.keep.T
