"""Scanned stacks seen layer by layer: ``jax.lax.scan`` as a Python loop while calibrating.

A layer inside ``nn.scan`` / ``nnx.scan`` (over blocks created by ``nn.scan``,
``nnx.scan`` or ``nnx.vmap``) reads one slice of a stacked kernel inside the scan's body,
where nothing can leave the loop but its outputs. During the calibration's traces only,
``jax.lax.scan`` is replaced by a loop that calls the body once per index with the
slices ``xs[i]`` (the same computation, traced once per layer); each slice remembers the
array and index it came from, so a layer call is tied to its stacked leaf and its layer
index exactly, as an unrolled layer is tied to its leaf. The original is restored at once,
even on error. Only stacks along axis 0 are seen (Flax's default ``variable_axes``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp


class Slices:
    """Where every slice made by a looped scan came from: ``id(slice) -> (array, index)``."""

    def __init__(self):
        self.parent: dict[int, tuple[Any, int]] = {}
        self._alive: list[Any] = []  # keeps the ids unique while the trace runs

    def add(self, piece: Any, whole: Any, index: int) -> None:
        self.parent[id(piece)] = (whole, index)
        self._alive.append(piece)

    def resolve(self, x: Any, ids: dict[int, str]) -> tuple[str, tuple[int, ...]] | None:
        """``(leaf path, layer index)`` of the array ``x`` a layer read, or None when ``x`` is
        neither a leaf of the params (``ids``) nor a slice of one (the index is ``()`` for an
        unscanned leaf, one int per enclosing scan otherwise)."""
        index: tuple[int, ...] = ()
        while id(x) not in ids:
            if id(x) not in self.parent:
                return None
            x, i = self.parent[id(x)]
            index = (i, *index)
        return ids[id(x)], index


@contextlib.contextmanager
def looped_scans(slices: Slices):
    """Within the block, ``jax.lax.scan`` loops in Python and records its slices."""
    original = jax.lax.scan

    def scan(f, init, xs=None, length=None, reverse=False, unroll=1, **kwargs):
        del unroll, kwargs  # a loop is fully unrolled; the rest only tunes the primitive
        flat, treedef = jax.tree.flatten(xs)
        n = length if length is not None else (flat[0].shape[0] if flat else None)
        if n is None:
            return original(f, init, xs, length=length, reverse=reverse)
        carry, ys = init, [None] * n
        for i in reversed(range(n)) if reverse else range(n):
            part = []
            for whole in flat:
                part.append(whole[i])
                slices.add(part[-1], whole, i)
            carry, ys[i] = f(carry, jax.tree.unflatten(treedef, part))
        return carry, jax.tree.map(lambda *y: jnp.stack(y), *ys)

    jax.lax.scan = scan
    try:
        yield
    finally:
        jax.lax.scan = original
