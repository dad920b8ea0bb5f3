"""How a layer's kernel is seen as matrices, and the rows its input gives, per layer type.

A kernel's axes are of three roles: *stacked* axes (each index holds its own matrix:
DenseGeneral's ``batch_dims``, an Einsum letter shared by input, kernel and output),
*input* axes (contracted with the layer's input) and *output* axes. `LayerView` turns a
kernel into float32 matrices ``[S, O, I]`` (rows are outputs, columns inputs: the
papers' ``W``) and back. `derive` reads the roles from the intercepted module itself
(``nn.Dense``, ``nn.DenseGeneral`` and its ``axis``/``batch_dims``, ``nn.Conv`` through
its patches, ``nn.Einsum`` through its equation, and the nnx ``Linear``,
``LinearGeneral``, ``Conv``, ``Einsum``), and gives the input as rows ``[S, N, I]``
whose product with the matrices is the layer's output (before the bias).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

LINEN_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.Einsum)
NNX_LAYERS = (nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.Einsum)
KNOWN = (
    "flax.linen Dense, DenseGeneral, Conv, Einsum and flax.nnx Linear, LinearGeneral, Conv, Einsum"
)


class LayerError(ValueError):
    """A layer whose kernel has no derived matrix view (the message names the layer path)."""


@dataclasses.dataclass(frozen=True)
class LayerView:
    """A kernel seen as ``S`` matrices ``[O, I]`` (static, hashable).

    Attributes:
      path: the kernel's leaf path (``"Block_0/Dense_0/kernel"``).
      kind: the layer's class name.
      shape: the kernel's shape.
      stacked: kernel axes with a matrix per index.
      inputs: kernel axes contracted with the input, in the order the rows flatten them.
      outputs: the remaining kernel axes.
    """

    path: str
    kind: str
    shape: tuple[int, ...]
    stacked: tuple[int, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def _size(self, axes: tuple[int, ...]) -> int:
        return math.prod(self.shape[a] for a in axes)

    @property
    def n_stacked(self) -> int:
        """``S``, the number of matrices."""
        return self._size(self.stacked)

    @property
    def n_in(self) -> int:
        """``I``, the columns of each matrix (the Gram matrix is ``[I, I]``)."""
        return self._size(self.inputs)

    @property
    def n_out(self) -> int:
        """``O``, the rows of each matrix."""
        return self._size(self.outputs)

    @property
    def last_input(self) -> int:
        """The kernel axis along which consecutive columns run (the last input axis)."""
        return self.inputs[-1]

    def to_matrix(self, kernel: jax.Array) -> jax.Array:
        """float32 ``[S, O, I]`` from a kernel of `shape`."""
        order = self.stacked + self.outputs + self.inputs
        m = jnp.transpose(kernel, order).astype(jnp.float32)
        return m.reshape(self.n_stacked, self.n_out, self.n_in)

    def from_matrix(self, m: jax.Array, dtype: Any) -> jax.Array:
        """A kernel of `shape` and ``dtype`` from ``[S, O, I]`` (inverse of `to_matrix`)."""
        order = self.stacked + self.outputs + self.inputs
        k = m.reshape(tuple(self.shape[a] for a in order))
        return jnp.transpose(k, tuple(order.index(a) for a in range(len(self.shape)))).astype(dtype)


def _rows(x: jax.Array, stacked: tuple[int, ...], contracted: tuple[int, ...]) -> jax.Array:
    """``x`` with ``stacked`` axes first, ``contracted`` axes last (in that order) -> [S, N, I]."""
    rest = tuple(a for a in range(x.ndim) if a not in stacked and a not in contracted)
    moved = jnp.transpose(x, stacked + rest + contracted)
    s = math.prod(x.shape[a] for a in stacked)
    i = math.prod(x.shape[a] for a in contracted)
    return moved.reshape(s, -1, i)


def _norm_axes(axes: Any, ndim: int) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    return tuple(sorted(a % ndim for a in axes))


def _general(x, kernel_shape, axis, batch_axes, path, kind) -> tuple[LayerView, jax.Array]:
    """DenseGeneral / LinearGeneral: kernel ``batch + contracted + features``."""
    axis = _norm_axes(axis, x.ndim)
    batch = _norm_axes(batch_axes, x.ndim)
    nb, na = len(batch), len(axis)
    view = LayerView(
        path,
        kind,
        tuple(kernel_shape),
        tuple(range(nb)),
        tuple(range(nb, nb + na)),
        tuple(range(nb + na, len(kernel_shape))),
    )
    return view, _rows(x, batch, axis)


def _pad_pairs(padding: Any, kernel_size, kernel_dilation, path) -> tuple[Any, str | None]:
    """Flax's padding spellings -> lax padding, and the ``jnp.pad`` mode done beforehand."""
    if isinstance(padding, str):
        if padding in ("SAME", "VALID"):
            return padding, None
        dilated = [(k - 1) * d + 1 for k, d in zip(kernel_size, kernel_dilation, strict=True)]
        if padding in ("CIRCULAR", "REFLECT"):
            return [((k - 1) // 2, k // 2) for k in dilated], padding
        if padding == "CAUSAL" and len(kernel_size) == 1:
            return [(dilated[0] - 1, 0)], "CAUSAL"
        raise LayerError(f"layer {path!r}: padding {padding!r} has no patch view")
    if isinstance(padding, int):
        return [(padding, padding)] * len(kernel_size), None
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding], None


def _conv(module, x, kernel_shape, path, kind) -> tuple[LayerView, jax.Array]:
    """Conv: the input as patches ``[N, k1 * k2 * ... * in]``, in the kernel's axis order."""
    ks = tuple(module.kernel_size)
    nd = len(ks)
    if module.feature_group_count != 1:
        raise LayerError(
            f"layer {path!r}: a grouped convolution (feature_group_count="
            f"{module.feature_group_count}) has one Gram matrix per group; not supported"
        )

    def per_dim(v):
        return (1,) * nd if v is None else ((v,) * nd if isinstance(v, int) else tuple(v))

    strides = per_dim(module.strides)
    lhs_dil, rhs_dil = per_dim(module.input_dilation), per_dim(module.kernel_dilation)
    x = x.reshape((-1, *x.shape[x.ndim - nd - 1 :]))  # flax flattens the batch axes too
    pads, mode = _pad_pairs(module.padding, ks, rhs_dil, path)
    if mode is not None:  # flax pads these itself, then convolves with VALID
        how = {"CIRCULAR": "wrap", "REFLECT": "reflect", "CAUSAL": "constant"}[mode]
        x = jnp.pad(x, [(0, 0), *pads, (0, 0)], mode=how)
        pads = "VALID"
    patches = _patches(x, ks, strides, pads, lhs_dil, rhs_dil)
    cin = x.shape[-1]
    rows = patches.reshape(-1, cin, *ks)  # features come out as (in, k1, k2, ...)
    rows = jnp.moveaxis(rows, 1, -1).reshape(1, -1, math.prod(ks) * cin)
    view = LayerView(path, kind, tuple(kernel_shape), (), tuple(range(nd + 1)), (nd + 1,))
    return view, rows


def _patches(x, ks, strides, pads, lhs_dil, rhs_dil) -> jax.Array:
    """``lax.conv_general_dilated_patches`` for channels-last input: ``[N, *out, in * prod(ks)]``."""
    nd = len(ks)
    spatial = "".join("HWDXYZ"[i] for i in range(nd))
    dn = jax.lax.conv_dimension_numbers(
        x.shape, (*ks, x.shape[-1], 1), ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    )
    return jax.lax.conv_general_dilated_patches(
        x,
        ks,
        strides,
        pads,
        lhs_dilation=lhs_dil,
        rhs_dilation=rhs_dil,
        dimension_numbers=dn,
        precision=jax.lax.Precision.HIGHEST,
    )


def _einsum(equation: str, x, kernel_shape, path, kind) -> tuple[LayerView, jax.Array]:
    """Einsum ``"lhs,rhs->out"``: kernel letters are stacked (in lhs and out), input (in
    lhs only) or output (not in lhs)."""
    eq = equation.replace(" ", "")
    try:
        ins, out = eq.split("->")
        lhs, rhs = ins.split(",")
    except ValueError:
        raise LayerError(f"layer {path!r}: einsum {equation!r} is not 'lhs,rhs->out'") from None
    if "." in rhs:
        raise LayerError(f"layer {path!r}: an ellipsis in the kernel of {equation!r}")
    letters = list(lhs)
    if "..." in lhs:  # the axes under the ellipsis are rows
        pos = lhs.index("...")
        lead = x.ndim - (len(lhs) - 3)
        letters = list(lhs[:pos]) + ["."] * lead + list(lhs[pos + 3 :])
    for c in set(lhs) - set(rhs) - set(out) - {"."}:
        raise LayerError(f"layer {path!r}: einsum {equation!r} sums input letter {c!r} alone")
    stacked = tuple(i for i, c in enumerate(rhs) if c in lhs and c in out)
    inputs = tuple(i for i, c in enumerate(rhs) if c in lhs and c not in out)
    outputs = tuple(i for i, c in enumerate(rhs) if c not in lhs)
    if not inputs:
        raise LayerError(f"layer {path!r}: einsum {equation!r} contracts no input axis")
    view = LayerView(path, kind, tuple(kernel_shape), stacked, inputs, outputs)
    x_stacked = tuple(letters.index(rhs[i]) for i in stacked)
    x_inputs = tuple(letters.index(rhs[i]) for i in inputs)
    return view, _rows(x, x_stacked, x_inputs)


def derive(
    module: Any, x: jax.Array, args: tuple, kwargs: dict, path: str, kernel_shape: tuple
) -> tuple[LayerView, jax.Array]:
    """The `LayerView` of an intercepted layer call and its input as rows ``[S, N, I]``.

    Args:
      module: the linen or nnx layer being called.
      x: its input (the first positional argument).
      args: the call's other positional arguments (an Einsum's equation may be one).
      kwargs: the call's keyword arguments.
      path: the kernel's leaf path, for messages.
      kernel_shape: the kernel's shape.

    Raises:
      LayerError: the layer type has no derived input axes, or a configuration without a
        matrix view (a grouped convolution, an einsum that sums an input axis alone).
    """
    kind = type(module).__name__
    x = jnp.asarray(x)
    if isinstance(module, (nn.Dense, nnx.Linear)):
        return _general(x, kernel_shape, -1, (), path, kind)
    if isinstance(module, nn.DenseGeneral):
        return _general(x, kernel_shape, module.axis, module.batch_dims, path, kind)
    if isinstance(module, nnx.LinearGeneral):
        return _general(x, kernel_shape, module.axis, tuple(module.batch_axis), path, kind)
    if isinstance(module, (nn.Conv, nnx.Conv)):
        return _conv(module, x, kernel_shape, path, kind)
    if isinstance(module, (nn.Einsum, nnx.Einsum)):
        equation = kwargs.get("einsum_str", args[0] if args else None) or module.einsum_str
        if not isinstance(equation, str):
            raise LayerError(f"layer {path!r}: Einsum called without an equation")
        return _einsum(equation, x, kernel_shape, path, kind)
    raise LayerError(
        f"layer {path!r} is a {kind}, which has no derived input axes (lightcomp derives "
        f"them for {KNOWN})"
    )


def stacked_view(inner: LayerView, shape: tuple[int, ...], depth: int) -> LayerView:
    """The view of a stacked kernel of ``shape`` whose slices (``depth`` leading layer
    axes, one per enclosing scan) each have the view ``inner``: the layer axes come first
    among the stacked ones, so matrix ``l * S + s`` is matrix ``s`` of layer ``l``."""
    if depth == 0:
        return inner
    shift = lambda axes: tuple(a + depth for a in axes)
    return LayerView(
        inner.path,
        inner.kind,
        tuple(shape),
        tuple(range(depth)) + shift(inner.stacked),
        shift(inner.inputs),
        shift(inner.outputs),
    )


def slice_view(view: LayerView, index: tuple[int, ...]) -> LayerView:
    """The view of one layer ``view.path[index]`` of a stacked kernel (inverse of
    `stacked_view`); ``view`` itself for ``index == ()``."""
    k = len(index)
    if k == 0:
        return view
    unshift = lambda axes: tuple(a - k for a in axes)
    return LayerView(
        f"{view.path}[{', '.join(map(str, index))}]",
        view.kind,
        view.shape[k:],
        unshift(view.stacked[k:]),
        unshift(view.inputs),
        unshift(view.outputs),
    )
