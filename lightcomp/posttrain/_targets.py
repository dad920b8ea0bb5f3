"""What a method is asked for: a sparsity or an n:m pattern, a grid; checked once, eagerly."""

from __future__ import annotations

from typing import Any

from lightcomp import prune, quant
from lightcomp._checks import check_bool, check_choice, check_fraction, check_int, check_opt_int
from lightcomp.posttrain._layers import LayerView
from lightcomp.posttrain._obs import Grid

Target = float | prune.NM
SCOPES = ("layer", "output")


def check_target(sparsity: Any) -> Target:
    """A fraction in ``[0, 1)``, or an n:m granularity (`lightcomp.prune.NM` or ``"2:4"``).

    Raises:
      TypeError / ValueError: anything else (another granularity, a bool, 1.0, NaN).
    """
    if isinstance(sparsity, str):
        sparsity = prune.as_granularity(sparsity)
    if isinstance(sparsity, prune.NM):
        return sparsity
    if isinstance(sparsity, (prune.Element, prune.Channel, prune.Block)):
        raise ValueError(
            f"sparsity must be a fraction or an n:m granularity, got {sparsity!r} "
            "(these methods prune single weights)"
        )
    return check_fraction(sparsity, "sparsity")


def check_scope(scope: Any, target: Target) -> str:
    """``"layer"`` (exact count per kernel) or ``"output"`` (per output row).

    An n:m pattern fixes its own counts: either value is accepted and ``"layer"`` returned.
    """
    scope = check_choice(scope, SCOPES, "scope")
    return "layer" if isinstance(target, prune.NM) else scope


def check_grid(bits: Any, group_size: Any, symmetric: Any, *, static: bool) -> Grid:
    """The grid of ``bits`` (2..8), ``group_size`` columns (or per row), symmetric or not."""
    bits = quant.check_bits(bits, lo=2, hi=8)
    group_size = check_opt_int(group_size, "group_size", lo=1)
    symmetric = check_bool(symmetric, "symmetric")
    return Grid(bits, symmetric, group_size, static or group_size is None)


def check_blocksize(blocksize: Any) -> int:
    """Columns per lazy-update block, >= 1."""
    return check_int(blocksize, "blocksize", lo=1)


def check_layer(view: LayerView, target: Target | None, grid: Grid | None) -> None:
    """n:m's ``m`` and a grid's ``group_size`` must divide the layer's input columns.

    Raises:
      ValueError: naming the layer path, its kernel shape and its input axes.
    """
    where = (
        f"layer {view.path!r} (kernel {view.shape}, input axes {view.inputs}: {view.n_in} columns)"
    )
    if isinstance(target, prune.NM) and view.n_in % target.m:
        raise ValueError(f"m={target.m} does not divide the input columns of {where}")
    if grid is not None and grid.group_size is not None and view.n_in % grid.group_size:
        raise ValueError(
            f"group_size={grid.group_size} does not divide the input columns of {where}"
        )
