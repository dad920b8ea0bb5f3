"""`fake_quantization`: weights on an integer grid in the forward pass, STE backward."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from lightcomp import _checks, quant, tree
from lightcomp.transform import _axes
from lightcomp.transform._base import Transform, check_state, fingerprint
from lightcomp.transform._learned import Learned
from lightcomp.transform._sharding import follow_params

PyTree = Any
UNITS = "units"


@struct.dataclass
class FakeQuantState:
    """State of `fake_quantization` (arrays only; the configuration is in the closure).

    Attributes:
      scales: with ``learned_scale``, a `Learned` tree of float32 LSQ step sizes in the
        layout's scale shape (`lightcomp.quant.layout`), None at unselected leaves;
        otherwise None.
      fingerprint: the static configuration it was built under (pytree aux data).
    """

    scales: Learned | None
    fingerprint: str = struct.field(pytree_node=False, default="")


def _is_layout(x: Any) -> bool:
    return isinstance(x, quant.Layout)


def _check_axis(axis: Any) -> Any:
    if isinstance(axis, str) and axis == UNITS:
        return axis
    return _axes.check_axis(axis)


def kept_axes(axis: Any, ax: tree.Axes, path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The axes of a leaf that keep their own scale: the user's ``axis`` on a leaf's `Axes`.

    ``"units"``: `lightcomp.tree.Axes.units`; None: the layer axes alone (one scale per
    slice); an int or a tuple: those axes, and the layer axes.
    """
    if axis == UNITS:
        tree.need_known(ax, path, shape, "fake_quantization(axis='units')")
        return ax.units
    return _axes.with_layers(axis, ax, path, len(shape))


def leaf_layout(axis, group_size, path, w, ax) -> quant.Layout:
    """The `lightcomp.quant.Layout` of leaf ``w`` at ``path`` with axes ``ax`` (checked)."""
    shape = tuple(w.shape)
    kept = kept_axes(axis, ax, path, shape)
    group_axis = None
    if group_size is not None:
        tree.need_known(ax, path, shape, f"fake_quantization(group_size={group_size})")
        group_axis = ax.group_axis  # None for a vector: quant.layout's own default
    return _checks.with_path(
        path, lambda: quant.layout(shape, kept or None, group_size, group_axis)
    )


def fake_quantization(
    bits: int = 8,
    *,
    axis: int | tuple[int, ...] | str | None = UNITS,
    symmetric: bool = True,
    group_size: int | None = None,
    learned_scale: bool = False,
    select: tree.SelectLike = None,
    axes: dict[str, tree.Axes] | None = None,
    stacked: Any = None,
) -> Transform:
    """Fake-quantizes the selected leaves in the forward pass (straight-through backward).

    Without ``learned_scale`` every call uses the leaf's own range
    (`lightcomp.quant.fake_quant`); with it, the step sizes are `Learned` and trained
    with the weights (`lightcomp.quant.lsq_fake_quant`), initialised by LSQ's rule.
    Zero maps to zero in every mode, so pruned weights stay exactly 0.0. Each leaf's
    layer, input and output axes come from `lightcomp.tree.axes`, resolved from the
    params at ``init``; every slice of a stacked leaf gets its own scales.

    Args:
      bits: integer width, 2..16.
      axis: which axes keep their own scale. ``"units"`` (default): one scale per output
        unit of each slice (`lightcomp.tree.Axes.units`: ``-1`` for Dense and Conv kernels,
        heads x head_dim for attention query/key/value, each row of an embedding); an int
        or a tuple: those axes (and a stacked leaf's layer axes); None: one scale per
        tensor (per slice of a stacked leaf).
      symmetric: signed narrow range (contract); False for unsigned with a zero point
        (not with ``learned_scale``: LSQ's unsigned range is for non-negative activations).
      group_size: consecutive elements along the last input axis
        (`lightcomp.tree.Axes.group_axis`) sharing a scale.
      learned_scale: train the step sizes (LSQ).
      select: which leaves (`lightcomp.tree.as_select`).
      axes: ``{path_regex: lightcomp.tree.Axes}`` for leaves whose axes cannot be derived
        (as `lightcomp.tree.axes`'s ``overrides``).
      stacked: layer axes the tree does not show (as `lightcomp.tree.axes`).

    Returns:
      A `Transform` whose state is a `FakeQuantState`.

    Raises:
      ValueError / TypeError: bad static configuration (here), or at ``init`` a leaf whose
        axes the layout needs but cannot be derived, an axis out of range (naming the leaf).

    References:
      Jacob et al. 2018 (quantization-aware training); Esser et al. 2019, "Learned Step
      Size Quantization".
    """
    bits = quant.check_bits(bits)
    symmetric = _checks.check_bool(symmetric, "symmetric")
    learned_scale = _checks.check_bool(learned_scale, "learned_scale")
    axis = _check_axis(axis)
    group_size = _checks.check_opt_int(group_size, "group_size", lo=1)
    if learned_scale and not symmetric:
        raise ValueError(
            "learned_scale=True needs symmetric=True: LSQ's unsigned range [0, 2**bits - 1] "
            "would clip every negative weight"
        )
    rule = tree.as_select(select)
    opts = _axes.options(axes, stacked)
    # the layouts resolved at each leaf join this in the state's fingerprint (`_axes`)
    config = fingerprint(
        "fake_quantization",
        bits=bits,
        symmetric=symmetric,
        group_size=group_size,
        learned_scale=learned_scale,
    )

    def layouts(params):
        leaf_axes = _axes.resolve(params, rule, opts)
        lays = tree.map_selected(
            lambda path, w, ax: leaf_layout(axis, group_size, path, w, ax),
            params,
            leaf_axes,
            select=rule,
            unselected="none",
            with_path=True,
        )
        read = jax.tree.map(lambda lay: (lay.axes, lay.group_axis), lays, is_leaf=_is_layout)
        return lays, _axes.with_digest(config, _axes.digest(params, rule, read))

    def check(params, state):
        lays, expected = layouts(params)
        what = "fake_quantization scales"
        learned = learned_scale and isinstance(state, FakeQuantState) and state.scales is not None
        if learned:  # a tree of another model: name its first path
            tree.check_mirror(params, state.scales.value, what, shapes=False)
        check_state(state, FakeQuantState, expected)
        if learned:
            _axes.check_resolved(
                params, state.scales.value, lays, what, lambda w, lay: lay.scale_shape
            )
        return lays

    def init(params, key):
        _checks.check_key(key)
        tree.selection(params, rule, require_any=True)
        lays, fp = layouts(params)
        if not learned_scale:
            return FakeQuantState(None, fp)
        scales = tree.map_selected(
            lambda w, lay: quant.lsq_init_scale(w, bits, **_layout_args(lay)),
            params,
            lays,
            select=rule,
            unselected="none",
        )
        return FakeQuantState(Learned(scales), fp)

    def apply(params, state):
        lays = check(params, state)
        one = functools.partial(_quantized, bits=bits, symmetric=symmetric)
        if not learned_scale:
            return tree.map_selected(one, params, lays, select=rule)
        return tree.map_selected(one, params, lays, state.scales.value, select=rule)

    def update(params, state, grads, step):
        del grads, step
        check(params, state)
        return state

    return follow_params(Transform(init, apply, update))


def _layout_args(lay: quant.Layout) -> dict[str, Any]:
    """The ``axis``, ``group_size`` and ``group_axis`` arguments that give ``lay``."""
    return dict(axis=lay.axis, group_size=lay.group_size, group_axis=lay.group_axis)


def _quantized(w, lay, scale=None, *, bits, symmetric):
    """``w`` fake-quantized in layout ``lay``: its own range, or LSQ with ``scale``."""
    if scale is None:
        return quant.fake_quant(w, bits, symmetric=symmetric, **_layout_args(lay))
    # A trained step size that went below 1e-8 is used as 1e-8, its gradient unchanged (as
    # lsq_fake_quant does under jit); lsq_fake_quant itself refuses a concrete scale <= 0.
    floor = jax.lax.stop_gradient(jnp.maximum(scale, jnp.asarray(1e-8, scale.dtype)))
    return quant.lsq_fake_quant(w, quant.straight_through(scale, floor), bits, **_layout_args(lay))
