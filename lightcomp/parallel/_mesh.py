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
from lightcomp.tree import mirror_specs, param_specs, path_str

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
    params: PyTree = None,
    rules: Sequence[tuple[str, Any]] | None = None,
) -> PyTree:
    """``NamedSharding``s for a whole state: each leaf laid out like the parameter it mirrors.

    When the parameters' layout is known - ``params`` (or ``state.params``) placed with
    ``NamedSharding``s splitting some axis, linen ``nn.Partitioned`` /
    ``nn.LogicallyPartitioned`` boxes, nnx sharding metadata, or ``PartitionSpec`` leaves -
    every leaf whose path ends with a parameter's path (the parameter itself, its optimizer
    moments, its pruning mask, its cluster assignments, its per-channel ranges) gets that
    parameter's spec on the axes where their shapes agree (`lightcomp.tree` mirror specs);
    other leaves (centroids, scalars, PRNG keys) are replicated. Logical names are mapped
    to mesh axes by ``rules`` (``[(logical, mesh axis)]``, as
    ``flax.linen.logical_axis_rules``).

    Otherwise (no layout known) a shape heuristic applies: leaves of at least ``min_size``
    elements and rank >= 2 are split over ``model_axis`` (`model_spec`), the others
    replicated; leaves of equal shape get equal layouts. Any layout gives the same
    numbers: XLA adds the collectives a transform needs.

    Args:
      state: a `DistillState` (or params, or any pytree of arrays).
      mesh: the mesh.
      model_axis: the mesh axis the heuristic splits over.
      min_size: leaves with fewer elements stay replicated (heuristic only).
      include: None (every leaf may be split), a regex searched in the leaf path
        (``"params/"``), or ``predicate(path, leaf) -> bool``; other leaves are replicated.
      params: the parameters whose layout the state follows (default ``state.params``).
      rules: ``[(logical name, mesh axis or None)]`` for Flax logical axis names.

    Returns:
      A tree of ``NamedSharding`` with ``state``'s structure, for ``data_parallel``'s
      ``state_shardings`` or ``jax.device_put``.

    Raises:
      ValueError: ``model_axis`` not an axis of ``mesh`` (heuristic), a logical name with
        no rule, or mesh axes that do not divide a leaf's dimension (naming the leaf path
        and the axis).
      TypeError: ``include`` neither None, a string nor callable.
    """
    accept = _accept(include)
    source = params if params is not None else getattr(state, "params", None)
    specs = {} if source is None else param_specs(source, mesh, rules)
    if params is None and rules is None and not any(any(s) for s, _ in specs.values()):
        specs = {}  # replicated parameters: the heuristic decides, as before
    if specs:
        spec_of = jax.tree.leaves(mirror_specs(state, specs, mesh))
    elif model_axis not in mesh.shape:
        raise ValueError(f"model_axis {model_axis!r} is not an axis of the mesh {dict(mesh.shape)}")
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    out = []
    for i, (key_path, leaf) in enumerate(flat):
        path = path_str(key_path)
        if is_prng_key(leaf) or not accept(path, leaf):
            spec = P()
        elif specs:
            spec = spec_of[i]
        else:
            spec = model_spec(np.shape(leaf), mesh.shape[model_axis], axis_name=model_axis,
                              min_size=min_size)  # fmt: skip
        out.append(NamedSharding(mesh, spec))
    return jax.tree.unflatten(treedef, out)
