"""Partition specs of parameters, and of the trees that mirror them (masks, moments, ranges).

A parameter's spec comes from its own sharding (a ``jax.Array`` placed with a
``NamedSharding``), or from Flax's logical axis names: a linen ``nn.Partitioned`` /
``nn.LogicallyPartitioned`` box (``nn.with_partitioning``, ``nn.with_logical_partitioning``)
or an nnx ``Variable``'s ``out_sharding`` / ``sharding_names`` metadata
(``nnx.with_partitioning``), mapped to mesh axes by ``rules`` (``[(logical, mesh axis)]``,
as ``flax.linen.logical_axis_rules``).

A tree that mirrors the parameters (a pruning mask, an Adam moment, a k-means assignment, a
per-channel range) names each leaf by a path that ends with its parameter's path
(``opt_state/0/mu/Dense_0/kernel`` mirrors ``Dense_0/kernel``): `mirror_specs` gives each
such leaf its parameter's spec, restricted to the axes where the two shapes agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lightcomp.tree._paths import path_str

PyTree = Any
Rules = Sequence[tuple[str, Any]]


def _is_box(x: Any) -> bool:
    """A linen partitioning box, or an nnx Variable (both hold the value and the names)."""
    return (hasattr(x, "names") and hasattr(x, "unbox")) or hasattr(x, "get_metadata")


def _box_names(x: Any) -> tuple | None:
    """The axis names a box or Variable declares, or None."""
    if hasattr(x, "names") and hasattr(x, "unbox"):
        return tuple(x.names)
    meta = x.get_metadata() if hasattr(x, "get_metadata") else {}
    for key in ("out_sharding", "sharding_names", "sharding"):
        names = meta.get(key)
        if isinstance(names, (tuple, list, P)):
            return tuple(names)
    return None


def _box_value(x: Any) -> Any:
    if hasattr(x, "unbox"):
        return x.unbox()
    return x.get_value() if hasattr(x, "get_value") else x.value


def _mesh_axes(name: Any, rules: Mapping | None, path: str, mesh_axes: Sequence[str]):
    """A logical name (or a tuple of them) as mesh axes; a name without a rule is an error."""
    if name is None:
        return None
    if isinstance(name, (tuple, list)):
        out = [a for n in name for a in _as_tuple(_mesh_axes(n, rules, path, mesh_axes))]
        return tuple(out) or None
    if rules is not None and name in rules:
        return rules[name]
    if name in mesh_axes and rules is None:
        return name
    raise ValueError(
        f"leaf {path!r}: logical axis {name!r} has no rule mapping it to a mesh axis "
        f"(rules: {dict(rules) if rules else None}; mesh axes: {tuple(mesh_axes)})"
    )


def _as_tuple(axes: Any) -> tuple:
    return () if axes is None else tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)


def param_specs(
    params: PyTree, mesh: jax.sharding.Mesh, rules: Rules | None = None
) -> dict[str, tuple[P, tuple | None]]:
    """``{path: (PartitionSpec, shape)}`` for every parameter whose layout is known.

    Args:
      params: a parameter pytree: arrays placed with a ``NamedSharding``, linen boxes, an
        ``nnx.State`` with sharding metadata, or ``PartitionSpec`` leaves (logical or mesh
        names).
      mesh: the mesh the specs are for (its axis names and sizes are checked).
      rules: ``[(logical name, mesh axis or None)]`` for logical names.

    Returns:
      The specs over mesh axes and the shapes (None for bare ``PartitionSpec`` leaves) by
      `path_str` path; leaves with no layout are absent.

    Raises:
      ValueError: a logical name with no rule, a mesh axis the mesh lacks, or mesh axes
        whose size does not divide the leaf's dimension (naming the leaf and the axis).
    """
    table = None if rules is None else dict(rules)
    out = {}
    flat = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: _is_box(x) or isinstance(x, P)
    )[0]
    for key_path, leaf in flat:
        path = path_str(key_path)
        names, value = None, leaf
        if isinstance(leaf, P):
            names, value = tuple(leaf), None
        elif _is_box(leaf):
            names, value = _box_names(leaf), _box_value(leaf)
        elif isinstance(getattr(leaf, "sharding", None), NamedSharding) and hasattr(leaf, "shape"):
            out[path] = (check_spec(leaf.sharding.spec, leaf.shape, mesh, path), leaf.shape)
            continue
        if names is None:
            continue
        spec = P(*(_mesh_axes(n, table, path, mesh.axis_names) for n in names))
        shape = getattr(value, "shape", None)
        out[path] = (check_spec(spec, shape, mesh, path), None if shape is None else shape)
    return out


def check_spec(spec: P, shape: Sequence[int] | None, mesh: jax.sharding.Mesh, path: str) -> P:
    """``spec`` if every mesh axis it names exists and divides its dimension of ``shape``.

    Raises:
      ValueError: ``leaf '<path>': mesh axes ... of size n do not divide dimension d``.
    """
    for d, axes in enumerate(spec):
        for a in _as_tuple(axes):
            if a not in mesh.shape:
                raise ValueError(
                    f"leaf {path!r}: mesh axis {a!r} (dimension {d}) is not an axis of the "
                    f"mesh {dict(mesh.shape)}"
                )
        if shape is None or not _as_tuple(axes):
            continue
        if d >= len(shape):
            raise ValueError(f"leaf {path!r}: spec {spec} has more entries than shape {shape}")
        size = 1
        for a in _as_tuple(axes):
            size *= mesh.shape[a]
        if shape[d] % size:
            raise ValueError(
                f"leaf {path!r}: mesh axes {axes!r} of size {size} do not divide dimension "
                f"{d} (of size {shape[d]}) of shape {tuple(shape)}"
            )
    return spec


def adapt_spec(spec: P, shape: Sequence[int], like: Sequence[int] | None, mesh) -> P:
    """``spec`` of a leaf shaped ``like``, for a leaf shaped ``shape`` that mirrors it.

    Equal shapes keep the spec; a shape of the same rank whose dimensions equal those of
    ``like`` or are 1 (a per-channel scale ``[1, out]``) keeps the axes of the equal,
    divisible dimensions; anything else (centroids ``[k]``, scalars) is replicated.
    ``like`` None (the parameter's shape is unknown) takes ``shape`` for it.
    """
    shape = tuple(shape)
    like = shape if like is None else tuple(like)
    if shape == like and len(spec) <= len(shape):
        return spec
    if len(shape) != len(like) or any(s not in (1, t) for s, t in zip(shape, like, strict=True)):
        return P()
    if len(spec) > len(shape):
        return P()
    out = []
    for d, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
        size = 1
        for a in _as_tuple(axes):
            size *= mesh.shape[a]
        out.append(axes if axes is not None and shape[d] == like[d] and shape[d] % size == 0
                   else None)  # fmt: skip
    return P(*out)


def mirror_specs(tree: PyTree, specs: Mapping[str, tuple[P, tuple]], mesh) -> PyTree:
    """For every leaf of ``tree``, its parameter's spec adapted to its shape, or ``P()``.

    Args:
      tree: any pytree (a training state, a compression state, an optimizer state).
      specs: ``{param path: (spec, param shape or None)}`` (`param_specs`).
      mesh: the mesh of the specs.

    Returns:
      ``tree``'s structure with, at each leaf, its parameter's ``PartitionSpec`` where its
      path ends with a parameter's path (the longest such), ``P()`` (replicated) elsewhere.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    for key_path, leaf in flat:
        parts = path_str(key_path).split("/")
        found = next(
            ("/".join(parts[i:]) for i in range(len(parts)) if "/".join(parts[i:]) in specs),
            None,
        )
        if found is None or not hasattr(leaf, "shape"):
            out.append(P())
            continue
        spec, like = specs[found]
        if like is None and len(spec) <= len(leaf.shape):  # a bare spec: checked here
            check_spec(spec, leaf.shape, mesh, found)
        out.append(adapt_spec(spec, leaf.shape, like, mesh))
    return jax.tree.unflatten(treedef, out)
