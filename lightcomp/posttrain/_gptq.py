"""GPTQ: one-shot quantization with second-order error feedback, layer by layer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lightcomp import quant
from lightcomp import tree as lt
from lightcomp._checks import check_bool
from lightcomp.posttrain._baselines import grid_result
from lightcomp.posttrain._calibration import Gram, Plan, matrix_case
from lightcomp.posttrain._layers import LayerView
from lightcomp.posttrain._obs import Grid, block_size, solve
from lightcomp.posttrain._sequential import (
    LayerResult,
    anonymous,
    check_dampening,
    check_factor,
    checked_gram,
    compress,
)
from lightcomp.posttrain._state import check_request, prechecker, state_of
from lightcomp.posttrain._targets import check_blocksize, check_grid

PyTree = Any


def gptq_layer(
    view: LayerView,
    kernel: jax.Array,
    gram: Gram,
    *,
    grid: Grid,
    act_order: bool,
    blocksize: int,
    dampening: float,
) -> LayerResult:
    """GPTQ on one kernel (checked config; see `gptq`)."""
    checked_gram(view, gram, dampening)
    width = block_size(blocksize, view.n_in, None, grid.group_size)
    out, ok = _compute(
        kernel, gram.matrix, jnp.float32(dampening), view=anonymous(view), grid=grid,
        act_order=act_order, width=width,
    )  # fmt: skip
    check_factor(view, ok, dampening)
    return out


@functools.partial(jax.jit, static_argnames=("view", "grid", "act_order", "width"))
def _compute(kernel, h, dampening, *, view, grid, act_order, width) -> tuple[LayerResult, Any]:
    """The layer's solve and its result, one compiled program per layer layout."""
    q, _, lo, hi, ok = solve(
        view.to_matrix(kernel), h, None, dampening, width=width, nm=None, grid=grid,
        act_order=act_order,
    )  # fmt: skip
    return grid_result(view, kernel, q, grid, (lo, hi)), ok


def _checked(bits, group_size, symmetric, act_order, blocksize, dampening):
    act_order = check_bool(act_order, "act_order")
    grid = check_grid(bits, group_size, symmetric, static=act_order)
    return grid, act_order, check_blocksize(blocksize), check_dampening(dampening)


def gptq(
    apply_fn: Callable,
    params: PyTree,
    calib_inputs: Any,
    bits: int = 4,
    *,
    group_size: int | None = None,
    symmetric: bool = True,
    act_order: bool = False,
    blocksize: int = 128,
    dampening: float = 0.01,
    select: lt.SelectLike = None,
    sequential: bool = True,
    return_state: bool = False,
) -> PyTree:
    """Quantizes every selected layer in one shot on lightcomp's grid (GPTQ).

    For each layer's matrix ``W`` ``[O, I]`` and the Gram matrix ``H`` of its inputs, the
    columns are rounded to the grid one at a time; each column's rounding error, divided by
    ``[U]_jj`` (``U`` the upper Cholesky factor of the dampened ``H^-1``), is fed back into
    the columns not yet rounded through row ``j`` of ``U``; blocks of ``blocksize`` columns
    defer the update of the rest (lazy batch updates). The grid is lightcomp's
    (`lightcomp.quant`): symmetric ``absmax / qmax`` with codes ``+-qmax`` or asymmetric with
    a zero point, round half to even, one range per output row or per ``group_size``
    consecutive input columns (taken when the group's first column is reached; with
    ``act_order``, from the weights before the sweep, so groups stay contiguous).

    Args:
      apply_fn, params, calib_inputs, select, sequential: as `sparsegpt`.
      bits: 2..8.
      group_size: input columns sharing a scale, per output row (e.g. 128); None: one scale
        per output row.
      symmetric: lightcomp's signed narrow grid, or unsigned with a zero point.
      act_order: columns in order of descending ``diag H`` (GPTQ's "act-order").
      blocksize: columns per lazy-update block.
      dampening: ``lambda`` added to ``diag H`` as a fraction of its mean; 0 refuses a
        singular ``H``.
      return_state: also return the `lightcomp.FakeQuantState` of
        ``lc.fake_quantization(bits, group_size=group_size, learned_scale=True)``
        holding the grid (symmetric only; each layer's scales must be per kernel column).

    Returns:
      The parameters with every selected kernel exactly on its grid (``lc.export.pack``
      stores the integers), or ``(params, state)``.

    Raises:
      ValueError / TypeError: as `sparsegpt`; ``group_size`` not dividing a layer's input
        columns; ``return_state`` with an asymmetric grid or a layer whose grid the
        transform cannot hold (naming it).

    References:
      Frantar, Ashkboos, Hoefler & Alistarh, "GPTQ: Accurate Post-Training Quantization for
      Generative Pre-trained Transformers", ICLR 2023.

    Example:
      >>> model = lc.models.MLP((8, 4))
      >>> x = jax.random.normal(jax.random.key(0), (64, 16))
      >>> params = model.init(jax.random.key(1), x)["params"]
      >>> q = lc.posttrain.gptq(lambda p, x: model.apply({"params": p}, x), params, x, bits=3)
      >>> [len(set(col.tolist())) <= 7 for col in q["Dense_0"]["kernel"].T][:4]
      [True, True, True, True]
    """
    grid, act_order, blocksize, dampening = _checked(
        bits, group_size, symmetric, act_order, blocksize, dampening
    )
    return_state = check_request(return_state, grid)

    def layer(view, kernel, gram):
        return gptq_layer(
            view,
            kernel,
            gram,
            grid=grid,
            act_order=act_order,
            blocksize=blocksize,
            dampening=dampening,
        )

    new, results, found = compress(
        apply_fn,
        params,
        calib_inputs,
        layer,
        select=select,
        sequential=sequential,
        precheck=prechecker(params, None, grid, return_state, select),
    )
    return state_of(new, results, return_state, grid=grid, views=found.views, select=select)


def gptq_matrix(
    w: jax.Array,
    h: jax.Array,
    bits: int = 4,
    *,
    group_size: int | None = None,
    symmetric: bool = True,
    act_order: bool = False,
    blocksize: int = 128,
    dampening: float = 0.01,
) -> quant.QTensor:
    """GPTQ on one matrix ``w`` ``[O, I]`` (rows are outputs) with its Gram ``h`` ``[I, I]``.

    Args:
      w: float weights ``[O, I]``.
      h: float32 ``sum x^T x`` of the inputs, ``[I, I]``.
      bits, group_size, symmetric, act_order, blocksize, dampening: as `gptq`.

    Returns:
      A `lightcomp.quant.QTensor` ``[O, I]`` with ``axis=0`` (a scale per row) and groups
      along axis 1; `lightcomp.quant.dequantize` gives the float32 weights.

    Example:
      >>> w = jax.random.normal(jax.random.key(0), (4, 8))
      >>> x = jax.random.normal(jax.random.key(1), (32, 8))
      >>> qt = lc.posttrain.gptq_matrix(w, x.T @ x, bits=4, group_size=4)
      >>> qt.values.dtype, qt.scale.shape, int(jnp.abs(qt.values).max()) <= 7
      (dtype('int8'), (4, 2), True)
    """
    grid, act_order, blocksize, dampening = _checked(
        bits, group_size, symmetric, act_order, blocksize, dampening
    )
    view, kernel, gram = matrix_case(w, h)
    prechecker(None, None, grid, False)(Plan({view.path: view}, []))
    out = gptq_layer(
        view,
        kernel,
        gram,
        grid=grid,
        act_order=act_order,
        blocksize=blocksize,
        dampening=dampening,
    )
    return out.grid
