"""Compression state laid out like the parameters: each leaf sharded as the one it mirrors.

Called on parameters placed with ``NamedSharding``s (FSDP ``P("data", ...)``, tensor
parallel ``P(None, "model")``, both), a transform's ``init``, ``apply`` and ``update``
run jitted and return every leaf that mirrors a parameter (a mask, an assignment, a
per-channel range, an effective parameter) sharded like it, on the axes where their
shapes agree, and every other array leaf (centroids, scalars) replicated on the same
mesh. Under ``jit`` the caller's ``out_shardings`` decide
(`lightcomp.parallel.state_shardings` gives the same layout), so nothing is traced twice.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import NamedSharding

from lightcomp import _checks, tree
from lightcomp.transform._base import Transform

PyTree = Any


def _mesh_of(params: PyTree):
    """The mesh of the first ``NamedSharding``'d concrete leaf of ``params``, or None."""
    if _checks.is_traced(params):
        return None
    for leaf in jax.tree.leaves(params):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(leaf, jax.Array) and isinstance(sharding, NamedSharding):
            return sharding.mesh
    return None


def placed_like(out: PyTree, params: PyTree) -> PyTree:
    """``out`` with its array leaves placed as the parameters of ``params`` they mirror.

    Unchanged when ``params`` are traced or carry no ``NamedSharding``.
    """
    mesh = _mesh_of(params)
    if mesh is None or _checks.is_traced(out):
        return out
    specs = tree.mirror_specs(out, tree.param_specs(params, mesh), mesh)
    flat, treedef = jax.tree_util.tree_flatten(out)
    placed = [
        jax.device_put(x, NamedSharding(mesh, spec)) if isinstance(x, jax.Array) else x
        for x, spec in zip(flat, jax.tree.leaves(specs), strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, placed)


def follow_params(t: Transform) -> Transform:
    """``t`` whose states and effective parameters are placed like the parameters.

    On ``NamedSharding``'d concrete parameters each function runs jitted (compiled once
    per layout, instead of op by op across devices) and its result is placed by
    `placed_like`; on anything else (one device, numpy, traced) it runs as it is.
    """
    jitted = Transform(jax.jit(t.init), jax.jit(t.apply), jax.jit(t.update))

    def init(params, key):
        if _mesh_of(params) is None:
            return t.init(params, key)
        return placed_like(jitted.init(params, key), params)

    def apply(params, state):
        if _mesh_of(params) is None:
            return t.apply(params, state)
        return placed_like(jitted.apply(params, state), params)

    def update(params, state, grads, step):
        if _mesh_of(params) is None:
            return t.update(params, state, grads, step)
        return placed_like(jitted.update(params, state, grads, step), params)

    return Transform(init, apply, update)
