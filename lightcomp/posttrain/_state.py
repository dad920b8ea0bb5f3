"""The compression state a one-shot result hands to the transforms, so training can go on.

A pruned result comes with the `lightcomp.PruningState` of ``lc.pruning(sparsity,
scope=..., granularity=...)`` holding its masks (with a constant sparsity that transform
never recomputes them: the masks stay). A quantized result comes with the
`lightcomp.FakeQuantState` of ``lc.fake_quantization(bits, axis=-1, group_size=...,
learned_scale=True)`` holding its grid as learned step sizes: applying it leaves the
weights as they are, and a distillation trains weights and scales on that grid (LSQ). A
pruned and quantized result comes with both, for ``lc.chain(pruning, fake_quantization)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lightcomp import prune, transform
from lightcomp import tree as lt
from lightcomp._checks import check_bool
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


def check_grid_fits(view: LayerView, grid: Grid) -> None:
    """The grid of ``view`` must be a `lightcomp.fake_quantization` layout (axis -1, groups
    along -2).

    Raises:
      ValueError: naming the layer, when its scales would be per stacked matrix, per
        several output axes, or in groups across the kernel's axis -2.
    """
    nd = len(view.shape)
    fits = view.stacked == () and view.outputs == (nd - 1,) and view.inputs == tuple(range(nd - 1))
    g = grid.group_size
    if fits and g is not None:
        fits = view.shape[-2] % g == 0
    if not fits:
        raise ValueError(
            f"return_state=True: the grid of layer {view.path!r} (kernel {view.shape}, stacked "
            f"axes {view.stacked}, output axes {view.outputs}) has a scale per output row of its "
            "matrix, which lc.fake_quantization(axis=-1, group_size along -2) cannot hold; "
            "leave the layer out with select=, or pass return_state=False"
        )


def precheck(view: LayerView, target: Any, grid: Grid | None, return_state: bool) -> None:
    """Every refusal a layer can cause, before any work: divisibility, then the state's layout."""
    check_layer(view, target, grid)
    if return_state and grid is not None:
        check_grid_fits(view, grid)


def _kernel_scale(view: LayerView, scale: jax.Array, grid: Grid) -> jax.Array:
    """Matrix-view scales ``[O, G]`` -> the `lightcomp.quant.layout` scale shape of the kernel."""
    lead = view.shape[:-2]
    if grid.group_size is None:
        return scale[:, 0].reshape((1,) * (len(view.shape) - 1) + (view.n_out,))
    per_row = scale.reshape(view.n_out, *lead, view.shape[-2] // grid.group_size)
    return jnp.moveaxis(per_row, 0, -1)


def _over(params: PyTree, base: PyTree, values: dict[str, Any]) -> PyTree:
    """``base`` (a tree mirroring ``params``, None at unselected leaves) with the entries of
    ``values`` (by leaf path) in place of its own."""
    flat = jax.tree.structure(params).flatten_up_to(base)
    paths = [p for p, _ in lt.leaves_with_paths(params)]
    return jax.tree.unflatten(
        jax.tree.structure(params), [values.get(p, b) for p, b in zip(paths, flat, strict=True)]
    )


# The states are built by the transforms' own ``init`` on ``params``, so that their
# fingerprints name the axes those transforms resolve at every leaf; the one-shot masks
# and grids then replace what ``init`` computed (a leaf the one-shot pass left alone
# keeps the transform's own initial mask or scale).


def pruning_state(params: PyTree, keep: dict[str, jax.Array], target: Any, scope: str):
    """The `lightcomp.PruningState` of ``lc.pruning`` for ``target`` holding these masks."""
    nm = isinstance(target, prune.NM)
    t = transform.pruning(
        None if nm else target, scope=scope, granularity=target if nm else "element"
    )
    base = t.init(params, jax.random.key(0))
    s = target.sparsity if nm else target
    return base.replace(masks=_over(params, base.masks, keep), sparsity=jnp.asarray(s, jnp.float32))


def grid_state(params: PyTree, scales: dict[str, jax.Array], views, grid: Grid):
    """The `lightcomp.FakeQuantState` of ``lc.fake_quantization(..., learned_scale=True)``."""
    t = transform.fake_quantization(
        grid.bits, axis=-1, group_size=grid.group_size, learned_scale=True
    )
    base = t.init(params, jax.random.key(0))
    kernel_scales = {p: _kernel_scale(views[p], s, grid) for p, s in scales.items()}
    return base.replace(scales=transform.Learned(_over(params, base.scales.value, kernel_scales)))


def state_of(params, results, return_state, *, target=None, scope="layer", grid=None, views=None):
    """``params``, or ``(params, state)`` with ``return_state``: a pruning state, a grid state,
    or the pair of both (for ``lc.chain(pruning, fake_quantization)``)."""
    if not return_state:
        return params
    states = []
    if target is not None:
        keep = {p: r.keep for p, r in results.items()}
        states.append(pruning_state(params, keep, target, scope))
    if grid is not None:
        scales = {p: r.grid.scale for p, r in results.items()}
        states.append(grid_state(params, scales, views, grid))
    return params, states[0] if len(states) == 1 else tuple(states)
