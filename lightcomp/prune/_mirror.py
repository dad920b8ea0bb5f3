"""Checks that a tree mirrors the parameters (scores, masks, grads, per-leaf statistics).

A mirroring tree has the parameters' structure, with ``None`` allowed where a leaf is not
selected, and at each leaf it holds an array of that leaf's shape.
"""

from __future__ import annotations

from typing import Any

from lightcomp import tree as lt


def check_mirror(params: Any, other: Any, argname: str) -> None:
    """Raises a ValueError naming ``argname`` and the first path where ``other`` stops mirroring.

    Args:
      params: the reference tree.
      other: a tree with ``params``' structure, ``None`` allowed at leaves.
      argname: the argument's name, for the message.

    Raises:
      ValueError: the structures differ (the message names the leaf path).
    """
    bad = lt.first_mismatch(params, other)
    if bad is not None:
        raise ValueError(f"{argname} does not mirror params: mismatch at leaf {bad!r}")


def check_same_shape(path: str, leaf: Any, other: Any, argname: str) -> None:
    """Raises a ValueError when ``other`` (of ``argname``) does not have ``leaf``'s shape.

    Args:
      path: the leaf path, for the message.
      leaf: the parameter leaf (anything with ``.shape``).
      other: the mirroring tree's leaf at ``path``.
      argname: the mirroring tree's argument name.
    """
    if tuple(leaf.shape) != tuple(other.shape):
        raise ValueError(
            f"{argname} leaf {path!r} has shape {tuple(other.shape)}, "
            f"params has {tuple(leaf.shape)}"
        )
