"""Device meshes and layouts: a ``("data", "model")`` mesh, replicated and sharded copies.

Beyond one host the same code runs after ``jax.distributed.initialize()`` (one process
per host, ``jax.devices()`` then lists every device of the job, a mesh spans them all);
lightcomp adds no launcher of its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lightcomp._checks import check_int, is_prng_key
from lightcomp.tree import path_str

PyTree = Any


def make_mesh(data: int | None = None, model: int = 1, *, devices=None) -> Mesh:
    """A ``("data", "model")`` mesh of ``data * model`` devices (GSPMD ``Auto`` axes).

    Args:
      data: size of the data axis; default: all devices divided by ``model``.
      model: size of the model axis (1 for pure data parallelism).
      devices: default ``jax.devices()`` (every device of a multi-host job).

    Returns:
      A ``jax.sharding.Mesh`` of the first ``data * model`` devices, shape ``[data, model]``.

    Raises:
      TypeError: ``data`` or ``model`` not an int.
      ValueError: a size < 1, ``model`` not dividing the devices (``data`` None), or
        more devices asked for than there are.
    """
    devs = list(jax.devices() if devices is None else devices)
    model = check_int(model, "model", lo=1)
    if data is None:
        if len(devs) % model:
            raise ValueError(f"model={model} does not divide the {len(devs)} devices")
        data = len(devs) // model
    data = check_int(data, "data", lo=1)
    if data * model > len(devs):
        raise ValueError(f"data * model = {data * model} is more than the {len(devs)} devices")
    grid = np.asarray(devs[: data * model], dtype=object).reshape(data, model)
    # jax.make_mesh defaults to Explicit axes; Auto keeps the classic jit + NamedSharding
    # semantics that data_parallel relies on.
    return Mesh(grid, ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """A copy of ``tree`` on all devices of ``mesh`` (``P()``).

    The copy shares no buffer with ``tree``, so donating it (as ``data_parallel`` does)
    leaves ``tree`` and anything it shares buffers with (the params given to
    ``init_state``) intact.
    """
    return place(tree, NamedSharding(mesh, P()))


def place(tree: PyTree, shardings: PyTree) -> PyTree:
    """A copy of ``tree`` laid out by ``shardings`` (one sharding or a tree of them).

    ``jax.device_put`` may hand back the source buffer as one shard of the result (even
    with ``may_alias=False`` in this JAX), and donating that shard would delete the
    source; copying first makes the result safe to donate.
    """
    copied = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)
    return jax.device_put(copied, shardings)


def model_spec(
    shape: Sequence[int], n: int, *, axis_name: str = "model", min_size: int = 2**14
) -> P:
    """The partition spec that splits one leaf over a model axis of size ``n``, or ``P()``.

    A leaf of at least ``min_size`` elements and rank >= 2 is split along its last
    dimension divisible by ``n`` (for Flax kernels ``[in, out]``: the output
    features, the per-channel axis of quantization); other leaves are replicated.
    Depending only on the shape, it gives a kernel, its Adam moments, its pruning
    mask and its cluster assignments the same layout.

    Example:
      >>> spec = lc.parallel.model_spec((64, 512), 4)
      >>> spec == jax.sharding.PartitionSpec(None, "model")
      True
    """
    shape = tuple(int(s) for s in shape)
    if n <= 1 or len(shape) < 2 or math.prod(shape) < min_size:
        return P()
    for d in reversed(range(len(shape))):
        if shape[d] % n == 0 and shape[d] >= n:
            return P(*([None] * d), axis_name)
    return P()


def _accept(include: Any) -> Callable[[str, Any], bool]:
    if include is None:
        return lambda path, leaf: True
    if isinstance(include, str):
        pattern = re.compile(include)
        return lambda path, leaf: pattern.search(path) is not None
    if callable(include):
        return include
    raise TypeError(f"include must be None, a regex or a predicate, got {include!r}")


def state_shardings(
    state: PyTree,
    mesh: Mesh,
    *,
    model_axis: str = "model",
    min_size: int = 2**14,
    include: str | Callable[[str, Any], bool] | None = None,
) -> PyTree:
    """``NamedSharding``s for a whole state: large leaves split over ``model_axis``.

    Every array leaf of ``state`` (params, optimizer moments, masks, assignments,
    centroids, ranges) gets `model_spec` of its shape when ``include`` accepts its path,
    else ``P()`` (replicated); a PRNG key is always replicated. Leaves of equal shape get
    equal layouts, so a kernel and the compression state that mirrors it stay aligned.
    Any layout gives the same numbers: XLA adds the collectives a transform needs
    (per-tensor ranges, k-means over a split kernel).

    Args:
      state: a `DistillState` (or params, or any pytree of arrays).
      mesh: a mesh with a ``model_axis`` (size 1 replicates everything).
      model_axis: the mesh axis large leaves are split over.
      min_size: leaves with fewer elements stay replicated.
      include: None (every leaf may be split), a regex searched in the leaf path
        (``"params/"``), or ``predicate(path, leaf) -> bool``.

    Returns:
      A tree of ``NamedSharding`` with ``state``'s structure, for ``data_parallel``'s
      ``state_shardings`` or ``jax.device_put``.

    Raises:
      ValueError: ``model_axis`` not an axis of ``mesh``.
      TypeError: ``include`` neither None, a string nor callable.
    """
    if model_axis not in mesh.shape:
        raise ValueError(f"model_axis {model_axis!r} is not an axis of the mesh {dict(mesh.shape)}")
    accept = _accept(include)
    n = mesh.shape[model_axis]
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    out = []
    for key_path, leaf in flat:
        path = path_str(key_path)
        if is_prng_key(leaf) or not accept(path, leaf):
            spec = P()
        else:
            spec = model_spec(np.shape(leaf), n, axis_name=model_axis, min_size=min_size)
        out.append(NamedSharding(mesh, spec))
    return jax.tree.unflatten(treedef, out)
