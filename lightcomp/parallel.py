"""Running the distillation step on many devices: pmap, jit over a mesh, shard_map.

Three ways to run the same pure step (`lightcomp.train.make_step`), all giving the
numbers of one device on the same global batch:

- `pmap_step`: ``jax.pmap`` with the state and teacher unreplicated (``in_axes=None``)
  and the batch split over a leading device axis by `shard_batch` (the step is
  built with ``axis_name="batch"``; since JAX 0.8 ``pmap`` is itself built on
  ``jit`` + ``shard_map``);
- `data_parallel`: ``jax.jit`` with ``NamedSharding``s: batch split over the mesh's
  ``"data"`` axis, state and teacher replicated (or large leaves split over a
  ``"model"`` axis by `state_shardings`), state buffers donated; XLA inserts the
  gradient all-reduce (the step needs no ``axis_name``);
- `shard_map_step`: ``jax.shard_map`` over the mesh with an explicit ``lax.pmean``
  (the step is built with ``axis_name="data"``).

`compressed_pmean` is an all-reduce of gradients quantized with
`lightcomp.quant.quantize_grads` (unbiased stochastic rounding, one scale per leaf
shared by all devices through a ``pmax``, integer codes summed in the narrowest
integer type that cannot overflow); `allreduce_bytes` says how many bytes that saves.

Beyond one host the same code runs after ``jax.distributed.initialize()`` (one
process per host, ``jax.devices()`` then lists every device of the job, a mesh spans
them all); lightcomp adds no launcher of its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lightcomp import quant as _quant
from lightcomp import tree as _tree

__all__ = [
    "allreduce_bytes",
    "compressed_mean",
    "compressed_pmean",
    "data_parallel",
    "make_mesh",
    "model_spec",
    "place",
    "pmap_step",
    "replicate",
    "shard_batch",
    "shard_map_step",
    "state_shardings",
]

PyTree = Any
Step = Callable[[Any, PyTree, Mapping[str, Any]], tuple[Any, dict]]


# --------------------------------------------------------------------------- batches


def shard_batch(batch: PyTree, n_devices: int | None = None) -> PyTree:
    """Reshapes every leaf ``[batch, ...]`` to ``[n_devices, batch // n_devices, ...]``.

    Device ``i`` gets rows ``i * per_device : (i + 1) * per_device``, so the mean of the
    per-device means equals the global mean. NumPy leaves stay NumPy (no transfer).

    Args:
      batch: a pytree of arrays with a common leading batch dimension
        (``{"inputs": [b, ...], "labels": [b]}``).
      n_devices: default ``jax.local_device_count()``.

    Raises:
      ValueError: ``n_devices`` < 1, a scalar leaf, or a batch size not divisible by
        ``n_devices`` (names the leaf).
    """
    n = jax.local_device_count() if n_devices is None else n_devices
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n_devices must be an int >= 1, got {n_devices!r}")
    leaves = _tree.leaves_with_paths(batch, argname="batch")
    for path, x in leaves:
        shape = np.shape(x)
        if len(shape) == 0:
            raise ValueError(f"batch leaf {path!r} is a scalar; it needs a leading batch axis")
        if shape[0] % n:
            raise ValueError(
                f"batch leaf {path!r} has {shape[0]} rows, not divisible by n_devices={n}"
            )

    def split(x):
        shape = np.shape(x)
        new = (n, shape[0] // n, *shape[1:])
        return x.reshape(new) if hasattr(x, "reshape") else np.reshape(x, new)

    return jax.tree.map(split, batch)


# --------------------------------------------------------------------------- pmap


def pmap_step(
    step: Step,
    *,
    axis_name: str = "batch",
    devices: Sequence[jax.Device] | None = None,
    donate_state: bool = False,
) -> Callable:
    """``jax.pmap`` of a distillation step: state and teacher unreplicated, batch per device.

    ``step`` must come from ``lightcomp.train.make_step(..., axis_name=axis_name)``, so
    gradients and metrics are ``lax.pmean``'d and every device computes the same new
    state (masks, centroids and ranges are refreshed from averaged gradients).

    Args:
      step: ``step(state, teacher_params, batch) -> (state, metrics)``.
      axis_name: the step's ``axis_name``.
      devices: the devices to map over (default: all local devices).
      donate_state: donate the input state's buffers.

    Returns:
      ``pstep(state, teacher_params, sharded_batch) -> (state, metrics)`` where
      ``sharded_batch = shard_batch(batch, n_devices)`` and each metric has a leading
      device axis (all rows equal). The returned state is one array per leaf, replicated
      on the mapped devices (a ``NamedSharding`` with spec ``P()``), ready for the next
      call and for `lightcomp.checkpoint.save`.
    """
    if not callable(step):
        raise TypeError(f"step must be callable, got {type(step).__name__}")
    if not isinstance(axis_name, str):
        raise TypeError(f"axis_name must be a string, got {axis_name!r}")
    return jax.pmap(
        step,
        axis_name=axis_name,
        in_axes=(None, None, 0),
        out_axes=(None, 0),
        devices=devices,
        donate_argnums=(0,) if donate_state else (),
    )


# --------------------------------------------------------------------------- meshes


def make_mesh(data: int | None = None, model: int = 1, *, devices=None) -> Mesh:
    """A ``("data", "model")`` mesh of ``data * model`` devices (GSPMD ``Auto`` axes).

    Args:
      data: size of the data axis; default: all devices divided by ``model``.
      model: size of the model axis (1 for pure data parallelism).
      devices: default ``jax.devices()`` (every device of a multi-host job).
    """
    devs = list(jax.devices() if devices is None else devices)
    if not isinstance(model, int) or model < 1:
        raise ValueError(f"model must be an int >= 1, got {model!r}")
    if data is None:
        if len(devs) % model:
            raise ValueError(f"model={model} does not divide the {len(devs)} devices")
        data = len(devs) // model
    if not isinstance(data, int) or data < 1:
        raise ValueError(f"data must be an int >= 1, got {data!r}")
    if data * model > len(devs):
        raise ValueError(f"data * model = {data * model} is more than the {len(devs)} devices")
    grid = np.asarray(devs[: data * model], dtype=object).reshape(data, model)
    # jax.make_mesh defaults to Explicit axes; Auto keeps the classic jit + NamedSharding
    # semantics that data_parallel relies on.
    return Mesh(grid, ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """A copy of ``tree`` on all devices of ``mesh`` (``P()``).

    The copy shares no buffer with ``tree``, so donating it (as `data_parallel` does)
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
    """
    shape = tuple(int(s) for s in shape)
    if n <= 1 or len(shape) < 2 or math.prod(shape) < min_size:
        return P()
    for d in reversed(range(len(shape))):
        if shape[d] % n == 0 and shape[d] >= n:
            return P(*([None] * d), axis_name)
    return P()


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
    centroids, ranges, rng) gets `model_spec` of its shape when ``include`` accepts
    its path, else ``P()`` (replicated). Leaves of equal shape get equal layouts, so
    a kernel and the compression state that mirrors it stay aligned. Any layout
    gives the same numbers: XLA adds the collectives a transform needs (per-tensor
    ranges, k-means over a split kernel).

    Args:
      state: a `DistillState` (or params, or any pytree of arrays).
      mesh: a mesh with a ``model_axis`` (size 1 replicates everything).
      model_axis: the mesh axis large leaves are split over.
      min_size: leaves with fewer elements stay replicated.
      include: None (every leaf may be split), a regex searched in the leaf path
        (``"params/"``), or ``predicate(path, leaf) -> bool``.

    Returns:
      A tree of ``NamedSharding`` with ``state``'s structure, for `data_parallel`'s
      ``state_shardings`` or ``jax.device_put``.
    """
    if model_axis not in mesh.shape:
        raise ValueError(f"model_axis {model_axis!r} is not an axis of the mesh {dict(mesh.shape)}")
    if include is None:
        accept = lambda path, leaf: True
    elif isinstance(include, str):
        pattern = re.compile(include)
        accept = lambda path, leaf: pattern.search(path) is not None
    elif callable(include):
        accept = include
    else:
        raise TypeError(f"include must be None, a regex or a predicate, got {include!r}")
    n = mesh.shape[model_axis]
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    out = []
    for key_path, leaf in flat:
        path = _tree.path_str(key_path)
        shape = np.shape(leaf)
        if _is_key(leaf) or not accept(path, leaf):
            spec = P()
        else:
            spec = model_spec(shape, n, axis_name=model_axis, min_size=min_size)
        out.append(NamedSharding(mesh, spec))
    return jax.tree.unflatten(treedef, out)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def data_parallel(
    step: Step,
    mesh: Mesh,
    *,
    data_axis: str = "data",
    state_shardings: PyTree | None = None,
    teacher_shardings: PyTree | None = None,
    donate: bool = True,
) -> Callable:
    """The step under ``jax.jit`` with the batch split over ``data_axis`` of ``mesh``.

    The step is the single-device one (no ``axis_name``): XLA's partitioner turns the
    mean over the global batch into per-device means and an all-reduce. Params and
    compression state are replicated (``P()``) unless ``state_shardings`` says
    otherwise (see `state_shardings` for a ``"model"`` axis); the input state's
    buffers are donated, so a run holds one copy of the state.

    Args:
      step: ``step(state, teacher_params, batch) -> (state, metrics)``.
      mesh: a ``jax.sharding.Mesh`` with a ``data_axis`` (see `make_mesh`).
      data_axis: the mesh axis the batch's leading dimension is split over.
      state_shardings: a sharding for the whole state or a tree of them
        (default replicated).
      teacher_shardings: the same for the teacher's params (default replicated).
      donate: donate the input state's buffers (do not reuse a state passed in).

    Returns:
      ``fn(state, teacher_params, batch) -> (state, metrics)``; the batch is the global
      batch (numpy or jax), its leading dimension divisible by the data axis size.
      Metrics come back replicated.
    """
    if not callable(step):
        raise TypeError(f"step must be callable, got {type(step).__name__}")
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if data_axis not in mesh.shape:
        raise ValueError(f"data_axis {data_axis!r} is not an axis of the mesh {dict(mesh.shape)}")
    n = mesh.shape[data_axis]
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(data_axis))
    s_state = replicated if state_shardings is None else state_shardings
    s_teacher = replicated if teacher_shardings is None else teacher_shardings
    jitted = jax.jit(
        step,
        in_shardings=(s_state, s_teacher, batch_sharding),
        out_shardings=(s_state, replicated),
        donate_argnums=(0,) if donate else (),
    )

    def run(state, teacher_params, batch):
        _check_divisible(batch, n, data_axis)
        return jitted(state, teacher_params, batch)

    run.jitted = jitted  # for .lower(...) / cost analysis
    return run


def _check_divisible(batch: PyTree, n: int, axis: str) -> None:
    for path, x in _tree.leaves_with_paths(batch, argname="batch"):
        shape = np.shape(x)
        if not shape or shape[0] % n:
            raise ValueError(
                f"batch leaf {path!r} of shape {shape} cannot be split over the "
                f"{axis!r} axis of size {n}"
            )


def shard_map_step(
    step: Step, mesh: Mesh, *, axis_name: str = "data", donate: bool = False
) -> Callable:
    """The step under ``jax.shard_map``: per-device code with an explicit ``lax.pmean``.

    ``step`` must come from ``lightcomp.train.make_step(..., axis_name=axis_name)``;
    state and teacher enter replicated (``P()``), the batch split over ``axis_name``
    (``P(axis_name)``), and the new state and metrics leave replicated. The result
    is jitted.

    Args:
      step: a step that averages over ``axis_name``.
      mesh: a mesh with an axis ``axis_name`` (other axes see the same data).
      axis_name: the mesh axis the batch is split over.
      donate: donate the input state's buffers.

    Returns:
      ``fn(state, teacher_params, batch) -> (state, metrics)`` on the global batch.
    """
    if not callable(step):
        raise TypeError(f"step must be callable, got {type(step).__name__}")
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis_name not in mesh.shape:
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {dict(mesh.shape)}")
    n = mesh.shape[axis_name]
    # check_vma=False: with the varying-manual-axes checks on, JAX's autodiff already
    # psums the gradient of a replicated (P()) input across the axis, and the step's own
    # lax.pmean would then return n times the mean. Off, the per-device gradients are
    # local and the explicit pmean is the one all-reduce, as under pmap.
    mapped = jax.shard_map(
        step,
        mesh=mesh,
        in_specs=(P(), P(), P(axis_name)),
        out_specs=(P(), P()),
        check_vma=False,
    )
    # Shardings pinned on the jit too, so the first call (a single-device state) and the
    # next ones (the replicated state it returned) share one compilation.
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(
        mapped,
        in_shardings=(replicated, replicated, NamedSharding(mesh, P(axis_name))),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,) if donate else (),
    )

    def run(state, teacher_params, batch):
        _check_divisible(batch, n, axis_name)
        return jitted(state, teacher_params, batch)

    run.jitted = jitted
    return run


# --------------------------------------------------------------------------- compressed all-reduce


def _wire_dtype(bits: int, n: int) -> np.dtype:
    """The narrowest signed integer type that holds a sum of ``n`` codes in ``[-qmax, qmax]``."""
    _, qmax = _quant.qrange(bits)
    bound = int(qmax) * int(n)
    for dt in (np.int8, np.int16, np.int32):
        if bound <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"a sum of {n} codes of {bits} bits does not fit in int32")


def compressed_pmean(grads: PyTree, axis_name: str, bits: int, key: jax.Array) -> PyTree:
    """Mean of ``grads`` over ``axis_name`` through quantized integer codes (inside pmap/shard_map).

    Each device quantizes its gradients with `lightcomp.quant.quantize_grads` to
    ``bits`` with one scale per leaf, ``scale = pmax_devices(max|g|) / qmax`` (shared, so
    codes add up), and unbiased stochastic rounding with a per-device key; the codes are
    summed with ``lax.psum`` in the narrowest integer type that cannot overflow
    (``n * qmax`` must fit), and ``sum * scale / n`` is the mean. Every device gets the
    same result, and ``E[result] = pmean(grads)``.

    Args:
      grads: pytree of floating arrays (None leaves kept).
      axis_name: the mapped axis.
      bits: 2..16 bits per code.
      key: a PRNG key; folded with the device index.

    Returns:
      The averaged gradients, dtypes of ``grads``.

    References:
      Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient Quantization and
      Encoding", 2017.
    """
    n = lax.axis_size(axis_name)
    wire = _wire_dtype(bits, n)
    # Work on the flat list of array leaves: None leaves (state-shaped gradient trees)
    # drop out of the flattening and come back with the unflattening.
    flat_g, treedef = jax.tree.flatten(grads)
    scales = lax.pmax(_quant.grad_scales(flat_g, bits), axis_name)
    key = jax.random.fold_in(key, lax.axis_index(axis_name))
    qgrads = _quant.quantize_grads(flat_g, bits, key, scales=scales)

    def reduce(g, q, s):
        total = lax.psum(q.values.astype(wire), axis_name)
        return (total.astype(jnp.float32) * (s / n)).astype(g.dtype)

    out = [reduce(g, q, s) for g, q, s in zip(flat_g, qgrads, scales, strict=True)]
    return jax.tree.unflatten(treedef, out)


def compressed_mean(axis_name: str, bits: int = 8) -> Callable[[PyTree, jax.Array], PyTree]:
    """``reduce(grads, key) -> grads``: `compressed_pmean` with its configuration bound.

    The form a step's gradient all-reduce hook takes in place of ``lax.pmean``.
    """
    if not isinstance(axis_name, str):
        raise TypeError(f"axis_name must be a string, got {axis_name!r}")
    _quant.grad_scales({}, bits)  # validates bits eagerly (ValueError naming bits)

    def reduce(grads, key):
        return compressed_pmean(grads, axis_name, bits, key)

    return reduce


def allreduce_bytes(grads: PyTree, n_devices: int, bits: int | None = None) -> dict[str, Any]:
    """Bytes one device contributes to a gradient all-reduce, plain and compressed.

    Plain: each leaf in its own dtype. Compressed (`compressed_pmean` with ``bits``): each
    leaf's codes in the integer type the sum travels in, plus one float32 scale per
    leaf for the ``pmax``. (A ring all-reduce moves about twice this per device.)

    Args:
      grads: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. the params).
      n_devices: devices in the all-reduce (sets the integer width of the sums).
      bits: code width, or None for the plain figure only.

    Returns:
      ``{"float_bytes", "compressed_bytes", "saved_bytes", "ratio", "wire_dtype"}``
      (the last four None when ``bits`` is None).
    """
    if not isinstance(n_devices, int) or n_devices < 1:
        raise ValueError(f"n_devices must be an int >= 1, got {n_devices!r}")
    leaves = [x for _, x in _tree.leaves_with_paths(grads, argname="grads")]
    plain = sum(math.prod(np.shape(x)) * jnp.dtype(x.dtype).itemsize for x in leaves)
    out: dict[str, Any] = {
        "float_bytes": int(plain),
        "compressed_bytes": None,
        "saved_bytes": None,
        "ratio": None,
        "wire_dtype": None,
    }
    if bits is None:
        return out
    wire = _wire_dtype(bits, n_devices)
    comp = sum(math.prod(np.shape(x)) * wire.itemsize + 4 for x in leaves)
    out.update(
        compressed_bytes=int(comp),
        saved_bytes=int(plain - comp),
        ratio=plain / comp if comp else None,
        wire_dtype=str(wire),
    )
    return out
