"""The compression state a one-shot result hands to the transforms, so training can go on.

A pruned result comes with the `lightcomp.PruningState` of ``lc.pruning(sparsity,
scope=..., granularity=...)`` holding its masks (with a constant sparsity that transform
never recomputes them: the masks stay). A quantized result comes with the
`lightcomp.FakeQuantState` of ``lc.fake_quantization(bits, group_size=...,
learned_scale=True)`` holding its grid as learned step sizes: applying it leaves the
weights as they are, and a distillation trains weights and scales on that grid (LSQ). A
pruned and quantized result comes with both, for ``lc.chain(pruning, fake_quantization)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lightcomp import prune, quant, transform
from lightcomp import tree as lt
from lightcomp._checks import check_bool
from lightcomp.posttrain._calibration import Plan
from lightcomp.posttrain._layers import LayerView
from lightcomp.posttrain._obs import Grid
from lightcomp.posttrain._targets import check_layer

PyTree = Any


def check_request(return_state: Any, grid: Grid | None) -> bool:
    """``return_state`` as a bool; a state for a grid needs a symmetric one (LSQ's)."""
    return_state = check_bool(return_state, "return_state")
    if return_state and grid is not None and not grid.symmetric:
        raise ValueError(
            "return_state=True needs symmetric=True: lc.fake_quantization keeps a learned "
            "grid only as symmetric step sizes (LSQ), without a zero point"
        )
    return return_state


def leaf_axes(params: PyTree) -> dict[str, lt.Axes]:
    """``{path: lightcomp.tree.Axes}`` the transforms derive for ``params`` (default select)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(lt.axes(params))
    return {lt.path_str(k): ax for k, ax in flat}


def check_grid_fits(view: LayerView, grid: Grid, ax: lt.Axes | None) -> None:
    """The grid of ``view`` must be the layout of ``lc.fake_quantization(axis="units")``.

    That layout keeps a scale per output unit of each slice (`lightcomp.tree.Axes.units`) and
    groups along the last input axis, from the axes `lightcomp.tree.axes` derives for the
    leaf (``ax``); the grid here keeps one per row of the matrix view, groups along its
    columns. They agree when the derived axes are the layer's own and, with groups, the layer
    has one input axis.

    Raises:
      ValueError: naming the layer, when they do not agree.
    """
    fits = ax is not None and ax.known
    if fits:
        fits = ax.units == tuple(sorted(view.stacked + view.outputs))
        fits = fits and ax.group_axis == view.last_input
    if fits and grid.group_size is not None:
        fits = len(view.inputs) == 1
    if not fits:
        raise ValueError(
            f"return_state=True: the grid of layer {view.path!r} (kernel {view.shape}, stacked "
            f"axes {view.stacked}, input axes {view.inputs}, output axes {view.outputs}) is not "
            f"the layout lc.fake_quantization(axis='units', group_size=...) derives for it "
            f"({ax}); leave the layer out with select=, or pass return_state=False"
        )


def prechecker(params: PyTree, target: Any, grid: Grid | None, return_state: bool, select=None):
    """``precheck(plan)``: every refusal the layers found can cause, before any work:
    divisibility, then (with ``return_state``) the state's selection and layout."""

    def precheck(found: Plan) -> None:
        for view in found.views.values():
            check_layer(view, target, grid)
        if not return_state:
            return
        extra = sorted(set(lt.selected_paths(params, select)) - set(found.views))
        if extra:
            raise ValueError(
                f"return_state=True: select={select!r} also picks {extra}, which no layer call "
                "compresses (an embedding, or a layer the calibration inputs do not reach), so "
                "the transforms' state would not match the result; pass a select that names only "
                "compressed layers (e.g. lc.tree.select(exclude='embedding'))"
            )
        if grid is not None:
            axes = leaf_axes(params)
            for view in found.views.values():
                check_grid_fits(view, grid, axes.get(view.path))

    return precheck


def _mirror(params: PyTree, values: dict[str, Any]) -> PyTree:
    items = lt.leaves_with_paths(params)
    return jax.tree.unflatten(jax.tree.structure(params), [values.get(p) for p, _ in items])


def _kernel_scale(view: LayerView, scale: jax.Array, grid: Grid, ax: lt.Axes) -> jax.Array:
    """Matrix-view scales ``[S * O, G]`` -> the layout's scale shape for the kernel."""
    g = grid.group_size or view.n_in
    per_col = jnp.repeat(scale.reshape(view.n_stacked, view.n_out, -1), g, axis=-1)
    full = view.from_matrix(per_col, jnp.float32)  # kernel-shaped, one scale per element
    lay = quant.layout(
        view.shape, ax.units or None, grid.group_size, grid.group_size and ax.group_axis
    )
    v = lay.view(full)
    first = v[tuple(slice(0, 1) if a in lay.reduce_axes else slice(None) for a in range(v.ndim))]
    return lay.scale_from_view(first)


def pruning_state(params: PyTree, keep: dict, target: Any, scope: str, select=None):
    """The `lightcomp.PruningState` of ``lc.pruning`` for ``target`` holding these masks."""
    nm = isinstance(target, prune.NM)
    t = transform.pruning(
        None if nm else target,
        scope=scope,
        granularity=target if nm else "element",
        select=select,
    )
    base = t.init(params, jax.random.key(0))
    return base.replace(masks=_mirror(params, keep))


def grid_state(params: PyTree, scales: dict[str, jax.Array], views, grid: Grid, select=None):
    """The `lightcomp.FakeQuantState` of ``lc.fake_quantization(bits, group_size=...,
    learned_scale=True)`` holding the grid's scales as its step sizes."""
    t = transform.fake_quantization(
        grid.bits, group_size=grid.group_size, learned_scale=True, select=select
    )
    base = t.init(params, jax.random.key(0))
    axes = leaf_axes(params)
    kernel_scales = {p: _kernel_scale(views[p], s, grid, axes[p]) for p, s in scales.items()}
    return base.replace(scales=transform.Learned(_mirror(params, kernel_scales)))


def state_of(
    params, results, return_state, *, target=None, scope="layer", grid=None, views=None, select=None
):
    """``params``, or ``(params, state)`` with ``return_state``: a pruning state, a grid state,
    or the pair of both (for ``lc.chain(pruning, fake_quantization)``)."""
    if not return_state:
        return params
    states = []
    if target is not None:
        keep = {p: r.keep for p, r in results.items()}
        states.append(pruning_state(params, keep, target, scope, select))
    if grid is not None:
        scales = {p: r.grid.scale for p, r in results.items()}
        states.append(grid_state(params, scales, views, grid, select))
    return params, states[0] if len(states) == 1 else tuple(states)
