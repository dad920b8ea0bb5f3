"""The layout of a quantization: which elements of a tensor share a scale.

A `Layout` is static and hashable (a ``jit`` static argument, a dict key). It says how a
tensor of ``shape`` is viewed for its statistics (the group axis split into
``(n_groups, group_size)``), which axes of that view a scale reduces over, and the shape
in which a scale is stored. Every quantizer of `lightcomp.quant` (fake quantization,
integer tensors, calibration, LSQ, activations) reads the same layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from lightcomp._checks import check_int, norm_axis


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the scales of a tensor live (static, hashable); build it with `layout`.

    The tensor is seen in its *view*: the group axis split into ``(n_groups, group_size)``
    when ``group_size`` is set, the tensor itself otherwise. A scale is shared by the
    elements along `reduce_axes` of the view.

    Attributes:
      shape: the tensor's shape.
      axes: the kept axes (non-negative, increasing); every combination of their indices has
        its own scale (heads x head_dim of an attention kernel); ``()`` for one scale per
        tensor.
      group_size: consecutive elements along ``group_axis`` sharing a scale, or None.
      group_axis: the (non-negative) axis split into groups; None without ``group_size``.
    """

    shape: tuple[int, ...]
    axes: tuple[int, ...] = ()
    group_size: int | None = None
    group_axis: int | None = None

    @property
    def axis(self) -> int | tuple[int, ...] | None:
        """The ``axis`` argument of `layout` that gives these axes: an int for one kept axis,
        a tuple for several, None for one scale per tensor (or per group)."""
        if not self.axes:
            return None
        return self.axes[0] if len(self.axes) == 1 else self.axes

    @property
    def per_tensor(self) -> bool:
        """True when the whole tensor shares one scale."""
        return not self.axes and self.group_size is None

    @property
    def view_shape(self) -> tuple[int, ...]:
        """The grouped view: ``shape`` with the group axis split into ``(n_groups, group_size)``."""
        if self.group_size is None:
            return self.shape
        g = self.group_axis
        n = self.shape[g]
        return (*self.shape[:g], n // self.group_size, self.group_size, *self.shape[g + 1 :])

    @property
    def reduce_axes(self) -> tuple[int, ...]:
        """Axes of the view that share a scale (a statistic reduces over them)."""
        if self.group_size is None:
            keep = set(self.axes)
        else:
            g = self.group_axis
            keep = {g} | {a + (a > g) for a in self.axes}
        return tuple(i for i in range(len(self.view_shape)) if i not in keep)

    @property
    def view_scale_shape(self) -> tuple[int, ...]:
        """A scale's shape against the view (keepdims: 1 on `reduce_axes`)."""
        red = set(self.reduce_axes)
        return tuple(1 if i in red else d for i, d in enumerate(self.view_shape))

    @property
    def scale_shape(self) -> tuple[int, ...]:
        """A stored scale's shape (`QTensor.scale`, ranges, LSQ step sizes).

        ``()`` per tensor; otherwise the tensor's rank with 1 on shared axes, the axis's
        size on each kept axis and ``n_groups`` on the group axis.
        """
        if self.per_tensor:
            return ()
        s = list(self.view_scale_shape)
        if self.group_size is not None:
            del s[self.group_axis + 1]
        return tuple(s)

    def view(self, x: jax.Array) -> jax.Array:
        """``x`` (of ``shape``) in the view."""
        return x.reshape(self.view_shape)

    def unview(self, x: jax.Array) -> jax.Array:
        """Inverse of `view`."""
        return x.reshape(self.shape)

    def scale_to_view(self, s: jax.Array) -> jax.Array:
        """A scale of `scale_shape` (or a scalar) -> broadcastable against the view."""
        if self.group_size is None or jnp.ndim(s) == 0:
            return s
        return jnp.expand_dims(s, self.group_axis + 1)

    def scale_from_view(self, s: jax.Array) -> jax.Array:
        """A statistic broadcastable to `view_scale_shape` -> `scale_shape`."""
        return jnp.broadcast_to(s, self.view_scale_shape).reshape(self.scale_shape)


def _kept_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """``axis`` (None, an int or a tuple of ints) -> the kept axes, non-negative, increasing."""
    if isinstance(axis, (tuple, list)):
        axes = tuple(norm_axis(a, ndim) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"axis {tuple(axis)} names an axis twice (rank {ndim})")
        return tuple(sorted(axes))
    ax = norm_axis(axis, ndim)
    return () if ax is None else (ax,)


def layout(
    shape: Any,
    axis: int | tuple[int, ...] | None = None,
    group_size: int | None = None,
    group_axis: int | None = None,
) -> Layout:
    """The `Layout` of a tensor of ``shape`` (validated here, once).

    Args:
      shape: the tensor's shape (a sequence of ints).
      axis: the axis that keeps its own scale (-1 for Flax kernels), or a tuple of axes
        whose every combination keeps its own (``(1, 2)``: per head and head_dim of an
        attention query kernel ``[embed, heads, head_dim]``); None: one scale.
      group_size: ``group_size`` consecutive elements along ``group_axis`` share a scale
        (per ``axis`` entry if ``axis`` is given); must divide that axis.
      group_axis: the axis split into groups; default -2 (a kernel's input axis), 0 for a
        vector. Only with ``group_size``; must differ from ``axis``.

    Returns:
      A frozen, hashable `Layout`.

    Raises:
      ValueError / TypeError: an axis out of range, repeated or not an int, a ``group_size``
        that is not a positive int dividing its axis, ``group_axis`` without ``group_size``
        or one of the kept axes.

    Example:
      >>> lay = lc.quant.layout((64, 32), axis=-1, group_size=16)
      >>> lay.view_shape, lay.scale_shape, lay.reduce_axes
      ((4, 16, 32), (4, 32), (1,))
      >>> lc.quant.layout((8, 2, 4), axis=(1, 2)).scale_shape  # per head and head_dim
      (1, 2, 4)
    """
    shape = tuple(check_int(d, "shape", lo=0) for d in shape)
    ndim = len(shape)
    axes = _kept_axes(axis, ndim)
    if group_size is None:
        if group_axis is not None:
            raise ValueError("group_axis is only meaningful with group_size")
        return Layout(shape, axes)
    group_size = check_int(group_size, "group_size", lo=1)
    if ndim == 0:
        raise ValueError("group_size needs an array of rank >= 1")
    if group_axis is None:
        group_axis = -2 if ndim >= 2 else 0
    gax = norm_axis(group_axis, ndim, "group_axis")
    if gax in axes:
        raise ValueError(f"group_axis ({group_axis}) must not be a kept axis (axis={axis})")
    n = shape[gax]
    if n % group_size:
        raise ValueError(f"group_size={group_size} does not divide axis {gax} of size {n}")
    return Layout(shape, axes, group_size, gax)


def scale_in_view(value: Any, lay: Layout, argname: str) -> jax.Array:
    """A per-scale value given by a user -> broadcastable against ``lay``'s view.

    Accepted: a scalar, a ``[C]`` vector along a single kept axis (rank >= 2), an array of
    the kept axes' sizes (``[heads, head_dim]`` for ``axis=(1, 2)``), or an array that
    broadcasts to ``lay.scale_shape``. The dtype is kept.

    Raises:
      ValueError: the value fits none of these (names ``argname``).
    """
    v = jnp.asarray(value)
    if v.ndim == 0:
        return v
    if lay.axes and v.ndim == len(lay.axes) and len(lay.shape) > v.ndim:
        sizes = tuple(lay.shape[a] for a in lay.axes)
        if tuple(v.shape) != sizes and len(sizes) == 1:
            raise ValueError(
                f"{argname} has {v.shape[0]} entries but axis {lay.axis} has {sizes[0]}"
            )
        if tuple(v.shape) != sizes:
            raise ValueError(f"{argname} has shape {tuple(v.shape)}, axes {lay.axes} have {sizes}")
        v = v.reshape(tuple(lay.shape[i] if i in lay.axes else 1 for i in range(len(lay.shape))))
    try:
        v = jnp.broadcast_to(v, lay.scale_shape)
    except ValueError as e:
        raise ValueError(
            f"{argname} of shape {v.shape} does not match the scale shape {lay.scale_shape}"
        ) from e
    return lay.scale_to_view(v)
