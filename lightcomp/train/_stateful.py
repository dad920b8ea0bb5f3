"""`StatefulApply`: a model's forward pass as a pure function of its parameters and its state.

A model with non-parameter state (BatchNorm running statistics in linen's
``batch_stats`` collection or nnx ``BatchStat`` variables, nnx rng streams, any
mutable collection, activation-quantization ranges) computes
``forward(params, model_state, inputs, key) -> (logits, new_model_state)``. The
distillation step carries ``model_state`` in `DistillState.model_state` and replaces it
with the new one every step; the teacher's (frozen) state rides in
`DistillState.teacher_state`. A plain ``(params, inputs) -> logits`` function is the
stateless case and runs exactly as before.

Collective axis names. Flax's ResNet gives its BatchNorm ``axis_name="batch"``, so its
train-mode forward calls ``lax.pmean(..., "batch")``. `StatefulApply.run` binds every
such name the step does not map over as an axis of size 1 (``jax.vmap`` over nothing:
the mean over one member is the identity). Under ``jax.jit`` and `data_parallel` the
statistics are then those of the global batch (XLA partitions the reduction); under
`pmap_step` and `shard_map_step` the step's ``axis_name`` is the device axis and
BatchNorm's mean runs over all devices: either way, the numbers of one device on the
same global batch. A train-mode BatchNorm whose axis is not the step's device axis
would keep per-device statistics; the adapters refuse it when the step is traced.

The slot is generic: anything that wraps a forward pass can keep its own part of the
state there, e.g. activation-quantization ranges updated by an EMA inside the step,
``forward(params, {"model": inner, "ranges": ranges}, x, key) -> (logits, {"model":
new_inner, "ranges": new_ranges})``; it is carried, donated, sharded and checkpointed
with the rest of the state. Under a device axis its new value must be the same on every
device (reduce statistics over the axis, as BatchNorm does).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from lightcomp import tree

PyTree = Any
Forward = Callable[[PyTree, PyTree, Any, Any], tuple[Any, PyTree]]


@dataclasses.dataclass(frozen=True, eq=False)
class StatefulApply:
    """A forward pass with a non-parameter state: what `linen_apply` and `nnx_apply` return.

    ``apply(params, inputs, key=None, *, model_state=None) -> logits`` still works as the
    plain ``(params, inputs)`` form (with this object's ``model_state`` by default), so
    an adapter can be called by hand, jitted, or given to `evaluate` and `make_step`.

    Attributes:
      forward: ``(params, model_state, inputs, key) -> (logits, new_model_state)``; ``key``
        is None in eval mode (no randomness). The new state has the old one's structure.
      model_state: the state to start from: nnx, the module's non-``Param`` state (a
        copy); linen, ``{}`` (the collections come from ``module.init``: every one but
        ``"params"``).
      axis_names: the axis names the model's collectives reduce over (BatchNorm's
        ``axis_name``); `run` binds each one the step does not map over.
      train: True for a train-mode forward (statistics updated, dropout on), False for
        eval mode, None when unknown. The teacher and `evaluate` refuse True.
      statistics: ``model_state -> [bool]``, one flag per leaf of ``model_state``
        (``jax.tree.leaves`` order): the running statistics `recalibrate` recomputes.
      guard: ``device_axis -> context manager`` active while the forward is traced; the
        adapters use it to refuse BatchNorm layers that would not synchronise.
    """

    forward: Forward
    model_state: PyTree = dataclasses.field(default_factory=dict)
    axis_names: tuple[str, ...] = ()
    train: bool | None = None
    statistics: Callable[[PyTree], list[bool]] | None = None
    guard: Callable[[str | None], Any] | None = None

    def __post_init__(self):
        if not callable(self.forward):
            raise TypeError(f"forward must be callable, got {type(self.forward).__name__}")
        names = self.axis_names
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"axis_names must be a tuple of strings, got {names!r}")
        object.__setattr__(self, "axis_names", tuple(names))
        if self.train is not None and not isinstance(self.train, bool):
            raise TypeError(f"train must be True, False or None, got {self.train!r}")

    def run(
        self,
        params: PyTree,
        model_state: PyTree,
        inputs: Any,
        key: jax.Array | None = None,
        *,
        device_axis: str | None = None,
    ) -> tuple[Any, PyTree]:
        """``forward`` with the model's axis names bound: ``(logits, new_model_state)``.

        Args:
          params: the (effective) parameters.
          model_state: the state to read (and, in train mode, update).
          inputs: the model's inputs.
          key: a PRNG key for dropout and other randomness, or None.
          device_axis: the axis the caller maps over devices (the step's ``axis_name``);
            None under ``jax.jit`` / `data_parallel`.
        """
        fn = self.forward
        for name in self.axis_names:
            if name != device_axis:
                fn = bind_axis(fn, name)
        guard = self.guard(device_axis) if self.guard is not None else contextlib.nullcontext()
        with guard:
            return fn(params, model_state, inputs, key)

    def __call__(self, params: PyTree, inputs: Any, key=None, *, model_state: PyTree = None):
        """The logits alone: ``run(params, model_state or self.model_state, inputs, key)[0]``."""
        state = self.model_state if model_state is None else model_state
        return self.run(params, state, inputs, key)[0]


def bind_axis(fn: Callable, name: str) -> Callable:
    """``fn`` with ``name`` bound as a mapped axis of size 1 (collectives over it: identity)."""
    return jax.vmap(fn, in_axes=None, out_axes=None, axis_name=name, axis_size=1)


def as_stateful(apply: Any, pass_rng: bool) -> StatefulApply:
    """A `StatefulApply` as is; a plain ``(params, inputs[, key])`` function as a stateless one."""
    if isinstance(apply, StatefulApply):
        return apply

    def forward(params, model_state, inputs, key):
        out = apply(params, inputs, key) if pass_rng else apply(params, inputs)
        return out, model_state

    return StatefulApply(forward)


def norm_axis_names(axis_name: str | Sequence[str] | None, argname: str = "axis_name"):
    """None, a name or a sequence of names -> a tuple of names."""
    if axis_name is None:
        return ()
    names = (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)
    if not all(isinstance(n, str) and n for n in names):
        raise TypeError(
            f"{argname} must be a string, a sequence of strings or None, got {axis_name!r}"
        )
    return names


def check_norm_axis(
    where: str, axis_name: str | None, device_axis: str | None, bound: tuple[str, ...], hint: str
) -> None:
    """A train-mode BatchNorm at ``where`` must reduce over an axis its step binds.

    Raises:
      ValueError: under a device axis, a BatchNorm reducing over no axis or another one
        (its statistics would be per device); without one, an axis nobody binds.
    """
    if device_axis is None:
        if axis_name is not None and axis_name not in bound:
            raise ValueError(
                f"BatchNorm {where!r} averages its statistics over axis_name={axis_name!r}, "
                f"which the adapter does not bind; pass {hint}(..., axis_name={axis_name!r})"
            )
        return
    if axis_name is None:
        raise ValueError(
            f"BatchNorm {where!r} has axis_name=None: mapped over the device axis "
            f"{device_axis!r}, each device would keep the statistics of its own rows only, "
            f"not those of the global batch. Give it axis_name={device_axis!r} (Flax's "
            "ResNet uses 'batch'), or run the step with lightcomp.parallel.data_parallel "
            "(one global batch, no axis name needed)"
        )
    if axis_name != device_axis:
        raise ValueError(
            f"BatchNorm {where!r} averages its statistics over axis_name={axis_name!r}, but "
            f"the step maps over {device_axis!r}: build the step with make_step(..., "
            f"axis_name={axis_name!r}); pmap_step and shard_map_step map over the step's axis"
        )


def check_model_state(new: PyTree, old: PyTree, who: str) -> None:
    """At trace time: the state a forward returned mirrors the one it was given.

    Raises:
      ValueError: another structure, shape or dtype (names the first leaf that differs).
    """
    if jax.tree.structure(new) != jax.tree.structure(old):
        bad = tree.first_mismatch(old, new) or "<structure>"
        raise ValueError(
            f"{who} returned a model state of another structure than it was given "
            f"(first difference at {bad!r}); start from the state the model expects "
            "(init_state(..., model_state=...))"
        )
    for (path, a), b in zip(
        tree.leaves_with_paths(old, argname="model_state"), jax.tree.leaves(new), strict=True
    ):
        da, db = _dtype(a), _dtype(b)
        if jnp.shape(a) != jnp.shape(b) or da != db:
            raise ValueError(
                f"{who} returned model state leaf {path!r} as {db}{list(jnp.shape(b))}, "
                f"but it was given {da}{list(jnp.shape(a))}"
            )


def _dtype(x: Any) -> Any:
    return x.dtype if hasattr(x, "dtype") else jnp.result_type(x)
