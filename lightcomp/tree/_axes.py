"""`Axes`: which axes of one leaf are layers of a stack, inputs and outputs."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

AxesTuple = tuple[int, ...]


def _as_axes(value: Any, field: str, *, optional: bool) -> AxesTuple | None:
    if value is None and optional:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_)) for a in value
    ):
        raise TypeError(f"Axes.{field} must be a tuple of ints, got {value!r}")
    out = tuple(int(a) for a in value)
    if any(a < 0 for a in out):
        raise ValueError(f"Axes.{field} must hold non-negative axes, got {out}")
    if len(set(out)) != len(out):
        raise ValueError(f"Axes.{field} names an axis twice: {out}")
    return out


@dataclasses.dataclass(frozen=True)
class Axes:
    """The roles of the axes of one leaf (static, hashable).

    Every axis of the leaf is in exactly one of ``stacked``, ``inputs`` and ``outputs``.

    Attributes:
      stacked: layer axes of a scanned stack (``nn.scan``, ``nnx.scan``, ``nnx.vmap``:
        parameters stacked ``[layers, ...]``); every slice along them is its own layer,
        with its own sparsity count, scales and codebooks.
      inputs: the contracting axes (a Dense kernel's ``in``; a Conv kernel's window and
        ``in``; attention ``out``'s heads and head_dim). None: not derived.
      outputs: the output-unit axes (a Dense kernel's ``out``; attention query/key/value's
        heads and head_dim; an embedding's vocabulary rows). None: not derived.
      names: a name for each axis of the leaf, for messages (not part of equality).

    Example:
      >>> ax = lc.tree.Axes(stacked=(0,), inputs=(1,), outputs=(2, 3))
      >>> ax.group_axis, ax.units, ax.ndim
      (1, (0, 2, 3), 4)
    """

    stacked: AxesTuple = ()
    inputs: AxesTuple | None = ()
    outputs: AxesTuple | None = ()
    names: tuple[str, ...] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("stacked", _as_axes(self.stacked, "stacked", optional=False))
        set_("inputs", _as_axes(self.inputs, "inputs", optional=True))
        set_("outputs", _as_axes(self.outputs, "outputs", optional=True))
        if (self.inputs is None) != (self.outputs is None):
            raise ValueError("Axes.inputs and Axes.outputs are both given or both None")
        every = self.stacked + (self.inputs or ()) + (self.outputs or ())
        if len(set(every)) != len(every):
            raise ValueError(
                f"Axes: an axis is in more than one of stacked, inputs, outputs: {self}"
            )
        if self.names is not None:
            set_("names", tuple(str(n) for n in self.names))

    @property
    def known(self) -> bool:
        """False when the input and output axes were not derived (``inputs is None``)."""
        return self.inputs is not None

    @property
    def ndim(self) -> int | None:
        """The rank of the leaf these axes describe (None when not `known`)."""
        return None if not self.known else len(self.stacked + self.inputs + self.outputs)

    @property
    def group_axis(self) -> int | None:
        """The last input axis: n:m groups and block rows run along it (None without inputs)."""
        return self.inputs[-1] if self.inputs else None

    @property
    def output_axis(self) -> int | None:
        """The last output axis: block columns run along it (None without outputs)."""
        return self.outputs[-1] if self.outputs else None

    @property
    def units(self) -> AxesTuple:
        """``stacked + outputs`` (sorted): the axes that keep their own scale per output unit."""
        return tuple(sorted(self.stacked + (self.outputs or ())))

    def name(self, axis: int) -> str:
        """The name of ``axis`` (``"head_dim"``, ``"layers"``), or ``"axis i"``."""
        if self.names is not None and axis < len(self.names):
            return self.names[axis]
        return f"axis {axis}"

    def describe(self, axis: int, shape: tuple[int, ...]) -> str:
        """``"input axis 1 (head_dim, size 6)"``: an axis of a leaf of ``shape``, for messages."""
        role = (
            "stacked axis"
            if axis in self.stacked
            else "input axis"
            if axis in (self.inputs or ())
            else "output axis"
        )
        inner = f"{self.names[axis]}, " if self.names is not None and axis < len(self.names) else ""
        return f"{role} {axis} ({inner}size {shape[axis]})"

    def check(self, shape: tuple[int, ...], path: str) -> None:
        """Raises ValueError unless these axes cover the axes of ``shape`` exactly once.

        Stacked axes alone are checked when the others are not `known`.
        """
        nd = len(shape)
        out_of_range = [
            a for a in self.stacked + (self.inputs or ()) + (self.outputs or ()) if a >= nd
        ]
        if out_of_range:
            raise ValueError(
                f"axes of leaf {path!r} name axis {out_of_range[0]}, but the leaf has shape "
                f"{tuple(shape)} (rank {nd}): {self}"
            )
        if self.known and self.ndim != nd:
            missing = sorted(set(range(nd)) - set(self.stacked + self.inputs + self.outputs))
            raise ValueError(
                f"axes of leaf {path!r} {tuple(shape)} must put every axis in one of stacked, "
                f"inputs, outputs; axes {missing} are in none: {self}"
            )

    def __repr__(self) -> str:
        if not self.known:
            return f"Axes(stacked={self.stacked}, inputs=None, outputs=None)"
        return f"Axes(stacked={self.stacked}, inputs={self.inputs}, outputs={self.outputs})"


def need_known(ax: Axes, path: str, shape: tuple[int, ...], what: str) -> None:
    """Raises ValueError (naming the leaf and what to pass) when ``ax`` is not `Axes.known`.

    Args:
      ax: the leaf's axes.
      path: the leaf path.
      shape: the leaf's shape.
      what: the operation that needs the input and output axes (``"granularity=NM(2, 4)"``).
    """
    if ax.known:
        return
    rest = [a for a in range(len(shape)) if a not in ax.stacked]
    guess = Axes(ax.stacked, tuple(rest[:-1]), tuple(rest[-1:]))
    raise ValueError(
        f"{what} needs the input and output axes of leaf {path!r} {tuple(shape)}, which cannot "
        "be derived (a kernel outside Flax's Dense, Conv, attention and Embed layouts, e.g. an "
        "nn.Einsum or DenseGeneral kernel); say which axes are which, e.g. "
        f"overrides={{{path!r}: {guess!r}}} to lightcomp.tree.axes, or axes= of the same "
        "form to a transform"
    )
