"""Counting zeros: `sparsity_report` (per leaf and total) and its `sparsity_table`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree as lt

PyTree = Any


def sparsity_report(params_or_masks: PyTree, *, select: lt.SelectLike = None) -> dict:
    """Per-leaf and total zero counts of a params tree or a masks tree.

    For a params tree, the selected leaves are counted (zeros = entries equal
    to 0); for a masks tree, every bool leaf (zeros = False entries). Reads
    values on the host: call it outside jit.

    Args:
      params_or_masks: a parameter tree or a bool masks tree.
      select: which leaves of a parameter tree are counted.

    Returns:
      ``{"leaves": {path: {"shape", "size", "zeros", "sparsity"}}, "total":
      {"size", "zeros", "sparsity"}}`` with Python ints and floats.

    Example:
      >>> params = {"w": jnp.array([[0.0, 1.0], [2.0, 0.0]]), "b": jnp.zeros(2)}
      >>> rep = lc.prune.sparsity_report(params)
      >>> rep["leaves"]["w"]["zeros"], rep["total"]["sparsity"]
      (2, 0.5)
    """
    items = lt.leaves_with_paths(params_or_masks, argname="params_or_masks")
    is_mask = bool(items) and all(getattr(w, "dtype", None) == jnp.bool_ for _, w in items)
    if is_mask:
        chosen = items
    else:
        flags = jax.tree.leaves(lt.selection(params_or_masks, select, argname="params_or_masks"))
        chosen = [it for it, f in zip(items, flags, strict=True) if f]
    leaves, total_size, total_zeros = {}, 0, 0
    for path, w in chosen:
        arr = np.asarray(w)
        size = int(arr.size)
        zeros = int(size - np.count_nonzero(arr))
        leaves[path] = {
            "shape": tuple(arr.shape),
            "size": size,
            "zeros": zeros,
            "sparsity": zeros / size if size else 0.0,
        }
        total_size += size
        total_zeros += zeros
    total = {
        "size": total_size,
        "zeros": total_zeros,
        "sparsity": total_zeros / total_size if total_size else 0.0,
    }
    return {"leaves": leaves, "total": total}


def sparsity_table(report: Mapping, *, title: str = "sparsity"):
    """A printable ``rich.table.Table`` of a `sparsity_report`.

    Args:
      report: what `sparsity_report` returned.
      title: the table's title.

    Returns:
      A ``rich.table.Table``: one row per leaf (shape, size, zeros, sparsity) and a total.

    Example:
      >>> params = {"w": jnp.array([[0.0, 1.0], [2.0, 0.0]])}
      >>> table = lc.prune.sparsity_table(lc.prune.sparsity_report(params))
      >>> table.row_count
      2
    """
    from rich.table import Table  # imported here: only reports need rich

    table = Table(title=title)
    for col, just in (
        ("leaf", "left"),
        ("shape", "left"),
        ("size", "right"),
        ("zeros", "right"),
        ("sparsity", "right"),
    ):
        table.add_column(col, justify=just)
    for path, row in report["leaves"].items():
        table.add_row(
            path,
            str(row["shape"]),
            f"{row['size']:,}",
            f"{row['zeros']:,}",
            f"{row['sparsity']:.2%}",
        )
    t = report["total"]
    table.add_row(
        "total", "", f"{t['size']:,}", f"{t['zeros']:,}", f"{t['sparsity']:.2%}", style="bold"
    )
    return table
