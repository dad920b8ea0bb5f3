"""Layer by layer: calibrate, compress each layer, and feed the next layers compressed inputs.

Every method of `lightcomp.posttrain` is a *layer function* ``(view, kernel, gram) ->
LayerResult`` run by `compress`. In sequential mode (the papers' order) the layers are
taken in groups, in the order ``apply_fn`` first calls them (layers reading the same input
array, such as an attention's query, key and value projections, form one group); each
group's Gram matrices come from the model whose earlier groups are already compressed.
Otherwise one calibration pass serves every layer. The Gram step is compiled once; each
sequential pass re-runs it with the current parameters.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree as lt
from lightcomp._checks import check_bool, check_callable, check_number
from lightcomp.posttrain._calibration import (
    Gram,
    Plan,
    accumulate,
    as_batches,
    dead_columns,
    gram_step,
    plan,
)
from lightcomp.posttrain._layers import LayerView, slice_view

PyTree = Any


class LayerResult(NamedTuple):
    """What a layer function returns for one kernel.

    Attributes:
      kernel: the compressed kernel (the input's shape and dtype).
      keep: bool kernel-shaped mask (True = kept), or None when nothing was pruned.
      grid: the `lightcomp.quant.QTensor` of the matrix view ``[S * O, I]`` (a scale per
        row, groups along the columns), or None when nothing was quantized.
    """

    kernel: jax.Array
    keep: jax.Array | None
    grid: Any


LayerFn = Callable[[LayerView, jax.Array, Gram | None], LayerResult]


def anonymous(view: LayerView) -> LayerView:
    """``view`` without its path: the static key of a compiled layer computation, shared by
    every layer (and every slice of a stack) of that layout."""
    return dataclasses.replace(view, path="")


def check_dampening(dampening: Any) -> float:
    """A fraction of the mean of ``diag H`` in ``[0, 1]``."""
    return check_number(dampening, "dampening", lo=0.0, hi=1.0)


def checked_gram(view: LayerView, gram: Gram, dampening: float | None) -> None:
    """Refuses a Gram matrix of zero inputs; reports dead input columns.

    A dead column (an input that was zero on every calibration row) leaves ``H``
    singular: its weights are set to zero and ``H_jj`` to one (as the papers' code does),
    the dampening makes the rest invertible, and a warning names the layer. With
    ``dampening == 0`` that is an error; with None (no inverse is taken) nothing is said.

    Raises:
      ValueError: every input was zero, or dead columns with no dampening (naming the layer).
    """
    dead = dead_columns(gram)
    if np.all(dead == view.n_in):
        raise ValueError(
            f"layer {view.path!r}: every calibration input it received was zero (H = 0); "
            "the calibration inputs do not exercise it"
        )
    if dead.any() and dampening is not None:
        if dampening == 0:
            raise ValueError(
                f"layer {view.path!r}: H is singular ({int(dead.sum())} dead input column(s): "
                "inputs zero on every calibration row) and dampening is 0; pass dampening > 0"
            )
        warnings.warn(
            f"layer {view.path!r}: {int(dead.sum())} dead input column(s) (zero on every "
            "calibration row): their weights are set to 0 and dampening keeps H invertible",
            stacklevel=4,
        )


def check_factor(view: LayerView, finite: Any, dampening: float) -> None:
    """Raises when the Cholesky factor of ``H^-1`` failed (``H`` not positive definite)."""
    if not bool(np.all(np.asarray(finite))):
        raise ValueError(
            f"layer {view.path!r}: the dampened H is not positive definite (dampening="
            f"{dampening}); pass a larger dampening or more calibration rows"
        )


def compress(
    apply_fn: Callable,
    params: PyTree,
    calib_inputs: Any,
    layer_fn: LayerFn,
    *,
    select: lt.SelectLike,
    sequential: bool,
    needs_grams: bool = True,
    precheck: Callable[[Plan], None] | None = None,
) -> tuple[PyTree, dict[str, LayerResult], Plan]:
    """Runs ``layer_fn`` on every selected layer; returns ``(params, results, plan)``.

    Args:
      apply_fn: ``(params, inputs) -> outputs``, not already jitted.
      params: the parameters.
      calib_inputs: an input array, a dict with ``"inputs"``, or a sequence of them.
      layer_fn: ``(view, kernel, gram) -> LayerResult`` (``gram`` None without grams).
      select: as `lightcomp.posttrain.grams`.
      sequential: each group of layers calibrated on the partly compressed model.
      needs_grams: False for methods that read only the weights (no calibration pass).
      precheck: called on the `Plan` once the layers are found and before any work, to
        refuse a configuration a layer cannot take.

    Returns:
      The parameters with every selected kernel replaced, ``{path: LayerResult}``, and the
      `Plan` (layers in call order).
    """
    check_callable(apply_fn, "apply_fn")
    sequential = check_bool(sequential, "sequential")
    batches = as_batches(calib_inputs)
    found = plan(apply_fn, params, batches[0], select)
    if precheck is not None:
        precheck(found)
    items = lt.leaves_with_paths(params)
    treedef = jax.tree.structure(params)
    leaves = dict(items)
    step = gram_step(apply_fn, found.views) if needs_grams else None
    groups = found.groups if sequential and needs_grams else [[u for g in found.groups for u in g]]
    parts: dict[str, dict[tuple[int, ...], LayerResult]] = {}
    work = dict(leaves)  # the kernels as compressed so far
    current = params
    for group in groups:
        sums = accumulate(step, current, batches, found.views) if needs_grams else {}
        for path, index in group:
            view = found.views[path]
            one = layer_fn(slice_view(view, index), leaves[path][index], _slice(sums, view, index))
            parts.setdefault(path, {})[index] = one
            work[path] = work[path].at[index].set(one.kernel) if index else one.kernel
        current = jax.tree.unflatten(treedef, [work[p] for p, _ in items])
    results = {p: _stacked(found.views[p], r) for p, r in parts.items()}
    return current, results, found


def _slice(sums: dict[str, Gram], view: LayerView, index: tuple[int, ...]) -> Gram | None:
    """The Gram matrices of layer ``index`` of a stacked kernel (all of them for ``()``)."""
    gram = sums.get(view.path)
    if gram is None or not index:
        return gram
    layers = view.shape[: len(index)]
    per = view.n_stacked // math.prod(layers)
    at = int(np.ravel_multi_index(index, layers)) * per
    return Gram(gram.matrix[at : at + per], gram.rows)


def _stacked(view: LayerView, parts: dict[tuple[int, ...], LayerResult]) -> LayerResult:
    """One kernel's `LayerResult` from those of its layers (in index order)."""
    if list(parts) == [()]:
        return parts[()]
    order = [parts[i] for i in sorted(parts)]
    stack = lambda xs: None if xs[0] is None else jnp.stack(xs).reshape(view.shape)
    grids = [r.grid for r in order]
    grid = None if grids[0] is None else jax.tree.map(lambda *g: jnp.concatenate(g), *grids)
    return LayerResult(stack([r.kernel for r in order]), stack([r.keep for r in order]), grid)
