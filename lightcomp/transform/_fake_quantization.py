"""`fake_quantization`: weights on an integer grid in the forward pass, STE backward."""

from __future__ import annotations

from typing import Any

from flax import struct

from lightcomp import _checks, quant, tree
from lightcomp.transform._base import Transform, check_state, fingerprint
from lightcomp.transform._learned import Learned

PyTree = Any


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


def fake_quantization(
    bits: int = 8,
    *,
    axis: int | None = -1,
    symmetric: bool = True,
    group_size: int | None = None,
    learned_scale: bool = False,
    select: tree.SelectLike = None,
) -> Transform:
    """Fake-quantizes the selected leaves in the forward pass (straight-through backward).

    Without ``learned_scale`` every call uses the leaf's own range
    (`lightcomp.quant.fake_quant`); with it, the step sizes are `Learned` and trained
    with the weights (`lightcomp.quant.lsq_fake_quant`), initialised by LSQ's rule.
    Zero maps to zero in every mode, so pruned weights stay exactly 0.0.

    Args:
      bits: integer width, 2..16.
      axis: the axis that keeps its own scale (-1: output channels of Flax kernels);
        None for one scale per tensor.
      symmetric: signed narrow range (contract); False for unsigned with a zero point
        (not with ``learned_scale``: LSQ's unsigned range is for non-negative activations).
      group_size: consecutive elements along the input axis (-2) sharing a scale.
      learned_scale: train the step sizes (LSQ).
      select: which leaves (`lightcomp.tree.as_select`).

    Returns:
      A `Transform` whose state is a `FakeQuantState`.

    References:
      Jacob et al. 2018 (quantization-aware training); Esser et al. 2019, "Learned Step
      Size Quantization".
    """
    bits = quant.check_bits(bits)
    symmetric = _checks.check_bool(symmetric, "symmetric")
    learned_scale = _checks.check_bool(learned_scale, "learned_scale")
    if axis is not None:
        _checks.check_int(axis, "axis")
    group_size = _checks.check_opt_int(group_size, "group_size", lo=1)
    if learned_scale and not symmetric:
        raise ValueError(
            "learned_scale=True needs symmetric=True: LSQ's unsigned range [0, 2**bits - 1] "
            "would clip every negative weight"
        )
    rule = tree.as_select(select)
    config = fingerprint(
        "fake_quantization",
        bits=bits,
        axis=axis,
        symmetric=symmetric,
        group_size=group_size,
        learned_scale=learned_scale,
    )

    def layout(w):
        return quant.layout(w.shape, axis=axis, group_size=group_size)

    def check(params, state):
        check_state(state, FakeQuantState, config)
        if learned_scale:
            scale_shape = lambda w: layout(w).scale_shape
            tree.check_mirror(params, state.scales.value, "fake_quantization scales", scale_shape)

    def init(params, key):
        del key
        tree.selection(params, rule, require_any=True)
        tree.map_selected(
            lambda path, w: _checks.with_path(path, lambda: layout(w)),
            params,
            select=rule,
            with_path=True,
        )
        if not learned_scale:
            return FakeQuantState(None, config)
        scales = tree.map_selected(
            lambda w: quant.lsq_init_scale(w, bits, axis=axis, group_size=group_size),
            params,
            select=rule,
            unselected="none",
        )
        return FakeQuantState(Learned(scales), config)

    def apply(params, state):
        check(params, state)
        if not learned_scale:
            return tree.map_selected(
                lambda w: quant.fake_quant(
                    w, bits, symmetric=symmetric, axis=axis, group_size=group_size
                ),
                params,
                select=rule,
            )

        def one(w, s):
            return quant.lsq_fake_quant(w, s, bits, axis=axis, group_size=group_size)

        return tree.map_selected(one, params, state.scales.value, select=rule)

    def update(params, state, grads, step):
        del grads, step
        check(params, state)
        return state

    return Transform(init, apply, update)
