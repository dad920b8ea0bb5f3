"""Adapters that turn linen and nnx models into ``(params, inputs[, key]) -> logits``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def linen_apply(module: Any, *, rng_collections: Sequence[str] = ("dropout",), **call_kwargs):
    """Wraps a linen module as ``apply(params, inputs, key=None) -> logits``.

    Args:
      module: a ``flax.linen.Module``.
      rng_collections: rng streams fed from ``key`` (each gets ``fold_in(key, i)``).
      **call_kwargs: static keywords of the module's ``__call__``, e.g. ``train=True``.

    Returns:
      ``apply``; use it with ``make_step(..., pass_rng=True)`` for a train-mode student
      and ``linen_apply(module, train=False)`` for the teacher or `evaluate`.
    """
    names = tuple(rng_collections)

    def apply(params, inputs, key=None):
        rngs = None
        if key is not None:
            rngs = {c: jax.random.fold_in(key, i) for i, c in enumerate(names)}
        return module.apply({"params": params}, inputs, rngs=rngs, **call_kwargs)

    return apply


def nnx_apply(module: Any, *, train: bool | None = None):
    """Turns an nnx module into ``(apply, params)`` via ``nnx.split`` / ``nnx.merge``.

    ``params`` is the module's ``nnx.Param`` state; everything else (batch
    statistics, rng streams) is held fixed in the closure. The module itself is
    not modified.

    Args:
      module: a ``flax.nnx.Module``.
      train: True sets train mode (dropout on), False eval mode, None keeps the module's.

    Returns:
      ``(apply, params)`` with ``apply(params, inputs, key=None) -> logits``; a given
      ``key`` reseeds every rng stream of the module (``fold_in(key, i)``), so dropout
      masks change every step under ``make_step(..., pass_rng=True)``.
    """
    from flax import nnx

    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    if train is not None:
        copy = nnx.merge(graphdef, params, rest)
        copy.train() if train else copy.eval()
        graphdef, params, rest = nnx.split(copy, nnx.Param, ...)

    def apply(p, inputs, key=None):
        other = rest
        if key is not None:
            leaves, treedef = jax.tree.flatten(rest)
            leaves = [
                jax.random.fold_in(key, i)
                if jnp.issubdtype(getattr(x, "dtype", None) or np.float32, jax.dtypes.prng_key)
                else x
                for i, x in enumerate(leaves)
            ]
            other = jax.tree.unflatten(treedef, leaves)
        return nnx.merge(graphdef, p, other)(inputs)

    return apply, params
