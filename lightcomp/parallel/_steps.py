"""Three ways to run one distillation step on many devices: pmap, jit over a mesh, shard_map.

All give the numbers of one device on the same global batch:

- `pmap_step`: ``jax.pmap`` with the state and teacher unreplicated (``in_axes=None``)
  and the batch split over a leading device axis by `shard_batch` (the step is built
  with ``axis_name="batch"``; since JAX 0.8 ``pmap`` is itself built on ``jit`` +
  ``shard_map``);
- `data_parallel`: ``jax.jit`` with ``NamedSharding``s: batch split over the mesh's
  ``"data"`` axis, state and teacher replicated (or large leaves split over a
  ``"model"`` axis by `lightcomp.parallel.state_shardings`), state buffers donated; XLA
  inserts the gradient all-reduce (the step needs no ``axis_name``);
- `shard_map_step`: ``jax.shard_map`` over the mesh with an explicit ``lax.pmean``
  (the step is built with an ``axis_name``: the mesh's ``"data"`` axis, or bound under
  the step's own name, e.g. ``"batch"``).

A student with BatchNorm (`lightcomp.train.linen_apply`, `nnx_apply`) has its
statistics synchronised on every path: those of the global batch under `data_parallel`,
averaged over the devices of the step's axis under `pmap_step` and `shard_map_step`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lightcomp import tree
from lightcomp._checks import check_bool, check_callable, check_int

PyTree = Any
Step = Callable[[Any, PyTree, Mapping[str, Any]], tuple[Any, dict]]


def _check_divisible(batch: PyTree, n: int, over: str) -> None:
    """Every leaf of ``batch`` has one leading axis size, which ``n`` divides (``over`` says why)."""
    first = None
    for path, x in tree.leaves_with_paths(batch, argname="batch"):
        shape = np.shape(x)
        if not shape:
            raise ValueError(
                f"batch leaf {path!r} is a scalar; it needs a leading batch axis to split over {over}"
            )
        if first is None:
            first = (path, shape[0])
        elif shape[0] != first[1]:
            raise ValueError(
                f"batch leaf {path!r} has {shape[0]} rows but leaf {first[0]!r} has "
                f"{first[1]}: every leaf needs the same leading batch size"
            )
        if shape[0] % n:
            raise ValueError(f"batch leaf {path!r} has {shape[0]} rows, not divisible by {over}")


def shard_batch(batch: PyTree, n_devices: int | None = None) -> PyTree:
    """Reshapes every leaf ``[batch, ...]`` to ``[n_devices, batch // n_devices, ...]``.

    Device ``i`` gets rows ``i * per_device : (i + 1) * per_device``, so the mean of the
    per-device means equals the global mean. NumPy leaves stay NumPy (no transfer).

    Args:
      batch: a pytree of arrays with a common leading batch dimension
        (``{"inputs": [b, ...], "labels": [b]}``).
      n_devices: default ``jax.local_device_count()``.

    Returns:
      ``batch`` with every leaf reshaped to ``[n_devices, b // n_devices, ...]``.

    Raises:
      TypeError: ``n_devices`` not an int.
      ValueError: ``n_devices`` < 1, a scalar leaf, leaves of different leading sizes,
        or a batch size not divisible by ``n_devices`` (names the leaf).
    """
    n = jax.local_device_count() if n_devices is None else check_int(n_devices, "n_devices", lo=1)
    _check_divisible(batch, n, f"n_devices={n}")

    def split(x):
        shape = np.shape(x)
        new = (n, shape[0] // n, *shape[1:])
        return x.reshape(new) if hasattr(x, "reshape") else np.reshape(x, new)

    return jax.tree.map(split, batch)


_UNSAID = object()


def _step_axis(step: Any, axis_name: Any, default: str) -> str:
    """The axis a step averages over: the step's own (``step.axis_name``), else
    ``axis_name``, else ``default``.

    A step from `lightcomp.train.make_step` says its axis; mapping it over another one,
    or mapping one built without any, would leave gradients unaveraged.
    """
    if axis_name is not None and not isinstance(axis_name, str):
        raise TypeError(f"axis_name must be a string, got {axis_name!r}")
    own = getattr(step, "axis_name", _UNSAID)
    if own is _UNSAID:
        return default if axis_name is None else axis_name
    if own is None:
        raise ValueError(
            "the step was built without axis_name, so it would not average gradients "
            f"across devices: build it with make_step(..., axis_name={axis_name or default!r})"
        )
    if axis_name is not None and axis_name != own:
        raise ValueError(
            f"the step averages over axis_name={own!r}, but it would be mapped over "
            f"{axis_name!r}: pass the same name to make_step and here"
        )
    return own


def pmap_step(
    step: Step,
    *,
    axis_name: str | None = None,
    devices: Sequence[jax.Device] | None = None,
    donate_state: bool = False,
) -> Callable:
    """``jax.pmap`` of a distillation step: state and teacher unreplicated, batch per device.

    ``step`` must come from ``lightcomp.train.make_step(..., axis_name=...)``, so
    gradients, metrics and BatchNorm statistics (a BatchNorm whose ``axis_name`` is that
    axis, as Flax's ResNet's ``"batch"``) are averaged over the devices and every device
    computes the same new state (masks, centroids and ranges are refreshed from averaged
    gradients).

    Args:
      step: ``step(state, teacher_params, batch) -> (state, metrics)``.
      axis_name: the step's ``axis_name`` (default: the one the step says it was built
        with, ``step.axis_name``; ``"batch"`` for a step that does not say).
      devices: the devices to map over (default: all local devices).
      donate_state: donate the input state's buffers.

    Returns:
      ``pstep(state, teacher_params, sharded_batch) -> (state, metrics)`` where
      ``sharded_batch = shard_batch(batch, n_devices)`` and each metric has a leading
      device axis (all rows equal). The returned state is one array per leaf, replicated
      on the mapped devices (a ``NamedSharding`` with spec ``P()``), ready for the next
      call and for `lightcomp.checkpoint.save`.

    Raises:
      TypeError: ``step`` not callable, ``axis_name`` not a string, ``donate_state`` not a bool.
      ValueError: a step built without an axis name, or with another one.
    """
    check_callable(step, "step")
    axis_name = _step_axis(step, axis_name, "batch")
    donate_state = check_bool(donate_state, "donate_state")
    return jax.pmap(
        step,
        axis_name=axis_name,
        in_axes=(None, None, 0),
        out_axes=(None, 0),
        devices=devices,
        donate_argnums=(0,) if donate_state else (),
    )


def _mesh_axis_size(step: Any, mesh: Any, axis: Any, argname: str) -> int:
    """Checks a step and a mesh with an axis named ``axis`` -> that axis's size."""
    check_callable(step, "step")
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if axis not in mesh.shape:
        raise ValueError(f"{argname} {axis!r} is not an axis of the mesh {dict(mesh.shape)}")
    return mesh.shape[axis]


def _checked(jitted: Callable, n: int, axis: str) -> Callable:
    """``jitted`` behind a check that the batch splits over the mesh axis ``axis`` of size ``n``."""

    def run(state, teacher_params, batch):
        _check_divisible(batch, n, f"the {axis!r} axis of size {n}")
        return jitted(state, teacher_params, batch)

    run.jitted = jitted  # for .lower(...) / cost analysis
    return run


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
    otherwise (see `lightcomp.parallel.state_shardings` for a ``"model"`` axis); the
    input state's buffers are donated, so a run holds one copy of the state.

    Args:
      step: ``step(state, teacher_params, batch) -> (state, metrics)``.
      mesh: a ``jax.sharding.Mesh`` with a ``data_axis`` (see `lightcomp.parallel.make_mesh`).
      data_axis: the mesh axis the batch's leading dimension is split over.
      state_shardings: a sharding for the whole state or a tree of them
        (default replicated).
      teacher_shardings: the same for the teacher's params (default replicated).
      donate: donate the input state's buffers (do not reuse a state passed in).

    Returns:
      ``fn(state, teacher_params, batch) -> (state, metrics)``; the batch is the global
      batch (numpy or jax), its leading dimension divisible by the data axis size.
      Metrics come back replicated. ``fn.jitted`` is the underlying jitted function.

    Raises:
      TypeError: ``step`` not callable, ``mesh`` not a ``Mesh``, ``donate`` not a bool.
      ValueError: ``data_axis`` not an axis of ``mesh``; at a call, a batch leaf that
        does not split over the data axis (names the leaf).
    """
    n = _mesh_axis_size(step, mesh, data_axis, "data_axis")
    donate = check_bool(donate, "donate")
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
    return _checked(jitted, n, data_axis)


def shard_map_step(
    step: Step,
    mesh: Mesh,
    *,
    axis_name: str | None = None,
    data_axis: str = "data",
    donate: bool = False,
) -> Callable:
    """The step under ``jax.shard_map``: per-device code with an explicit ``lax.pmean``.

    ``step`` must come from ``lightcomp.train.make_step(..., axis_name=...)``; state and
    teacher enter replicated (``P()``), the batch split over the mesh's batch axis, and
    the new state and metrics leave replicated. When ``axis_name`` is not an axis of the
    mesh, the mesh's ``data_axis`` is bound under that name: a step built with
    ``axis_name="batch"`` (the name Flax's ResNet gives its BatchNorm) runs on
    `make_mesh`'s ``("data", "model")`` mesh with its BatchNorm statistics averaged over
    the ``"data"`` devices. The result is jitted.

    Args:
      step: a step that averages over ``axis_name``.
      mesh: a mesh with an axis ``axis_name``, or a ``data_axis`` (other axes see the
        same data).
      axis_name: the step's axis (default: ``step.axis_name``, else ``"data"``).
      data_axis: the mesh axis bound as ``axis_name`` when the mesh has no such axis.
      donate: donate the input state's buffers.

    Returns:
      ``fn(state, teacher_params, batch) -> (state, metrics)`` on the global batch;
      ``fn.jitted`` is the underlying jitted function.

    Raises:
      TypeError: ``step`` not callable, ``mesh`` not a ``Mesh``, ``donate`` not a bool.
      ValueError: neither ``axis_name`` nor ``data_axis`` is an axis of ``mesh``; a step
        built without an axis name or with another one; at a call, a batch leaf that
        does not split over the axis (names the leaf).
    """
    check_callable(step, "step")
    axis_name = _step_axis(step, axis_name, "data")
    if isinstance(mesh, Mesh) and axis_name not in mesh.shape and data_axis in mesh.shape:
        names = tuple(axis_name if a == data_axis else a for a in mesh.axis_names)
        mesh = Mesh(mesh.devices, names)
    n = _mesh_axis_size(step, mesh, axis_name, "axis_name")
    donate = check_bool(donate, "donate")
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
    return _checked(jitted, n, axis_name)
