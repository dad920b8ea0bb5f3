"""`smaller_module`: the module that runs the parameters `shrink` returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from lightcomp.prune import _layer_tree as layers

PyTree = Any


def _widths(params: PyTree, order: Sequence[str], argname: str) -> list[int]:
    tree = layers.as_nested(params, argname)
    out = []
    for path in order:
        node = layers.layer(tree, path, argname)
        if "kernel" not in node:
            raise ValueError(f"{argname}: layer {path!r} has no 'kernel'")
        out.append(int(node["kernel"].shape[-1]))
    return out


def _int_tuple(value: Any) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) > 0
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _linen(module: nn.Module, old: list[int], new: list[int], field: str | None) -> nn.Module:
    """A clone whose width field (a tuple of ints equal to a run of ``old``) holds ``new``."""
    fields = [f.name for f in dataclasses.fields(module) if f.name not in ("parent", "name")]
    names = [field] if field is not None else fields
    found = []
    for name in names:
        if name not in fields:
            raise ValueError(f"field {name!r} is not a field of {type(module).__name__}")
        value = getattr(module, name)
        if not _int_tuple(value):
            continue
        n = len(value)
        for i in range(len(old) - n + 1):
            if list(value) == old[i : i + n]:
                found.append((name, type(value)(new[i : i + n])))
                break
    if len({name for name, _ in found}) != 1:
        what = "no field" if not found else f"several fields ({[n for n, _ in found]})"
        raise ValueError(
            f"{type(module).__name__}: {what} holds the layer widths {old} as a tuple of ints; "
            "pass field= (the widths field), or declare the smaller model by hand"
        )
    return module.clone(**dict(found[:1]))


def _nnx(model: nnx.Module, small: PyTree, order: Sequence[str]) -> nnx.Module:
    """A clone holding ``small``, its layers' width attributes updated."""
    copy = nnx.clone(model)
    state = nnx.state(copy, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda x: x, nnx.to_pure_dict(small)))
    nnx.update(copy, state)
    mods = {"/".join(map(str, p)): m for p, m in nnx.iter_graph(copy) if isinstance(m, nnx.Module)}
    for path in order:
        mod, kernel = mods.get(path), None
        kernel = getattr(mod, "kernel", None) if mod is not None else None
        if kernel is None:
            raise ValueError(f"model has no layer with a kernel at {path!r}")
        shape = kernel[...].shape
        for attr, value in (("in_features", shape[-2]), ("out_features", shape[-1])):
            if isinstance(getattr(mod, attr, None), int):
                setattr(mod, attr, int(value))
        if isinstance(getattr(mod, "kernel_shape", None), tuple):
            mod.kernel_shape = tuple(shape)
    return copy


def smaller_module(
    module: nn.Module | nnx.Module,
    params: PyTree,
    small: PyTree,
    order: Sequence[str],
    *,
    field: str | None = None,
) -> nn.Module | nnx.Module:
    """The module that computes with the parameters `shrink` returned.

    Linen: a clone of ``module`` whose widths field (a tuple of ints, e.g. `MLP`'s
    ``features`` or `CNN`'s ``channels``, equal to a run of the layers' output widths in
    ``params``) holds the widths of ``small``; the class must take its widths as a field.
    nnx: a copy of the model holding ``small`` (nnx layers compute with their kernels'
    shapes), each layer's ``in_features``, ``out_features`` and ``kernel_shape`` updated.
    The user's module is not changed.

    Args:
      module: the linen module or nnx model ``params`` belong to.
      params: its parameters before `shrink`.
      small: what ``shrink(params, masks, order)`` returned.
      order: the layer paths given to `shrink`.
      field: the linen widths field (default: found by its value).

    Returns:
      The smaller module (linen: unbound; ``module.apply({"params": small}, x)`` runs).

    Raises:
      ValueError: no field (or several) holds the widths, or a layer path is missing.
      TypeError: ``module`` is neither a linen Module nor an nnx Module.

    Example:
      >>> model = lc.models.MLP((8, 2))
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
      >>> m = lc.prune.masks(lc.prune.magnitude(params), 0.5, granularity="channel")
      >>> small = lc.prune.shrink(params, m, ["Dense_0", "Dense_1"])
      >>> lc.prune.smaller_module(model, params, small, ["Dense_0", "Dense_1"]).features
      (4, 2)
    """
    order = list(order)
    if isinstance(module, nnx.Module):
        _widths(small, order, "small")
        return _nnx(module, small, order)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"module must be a flax.linen or flax.nnx Module, got {type(module).__name__}"
        )
    return _linen(module, _widths(params, order, "params"), _widths(small, order, "small"), field)
