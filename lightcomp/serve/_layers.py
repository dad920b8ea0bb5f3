"""The integer forward of Flax's Dense, DenseGeneral, Einsum and Conv (linen and nnx alike).

Each layer is computed from its own attributes, as Flax computes it, with the input
quantized (`lightcomp.serve._inputs`) and the kernel a `lightcomp.quant.QTensor`: one
`lightcomp.quant.int_dot_general` or `lightcomp.quant.int_conv_general_dilated`, the bias
added in float32, the result cast to the layer's dtype. linen's and nnx's layers differ
only in attribute names (``features`` / ``out_features``, ``shape`` / ``kernel_shape``),
read by `_attr`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx
from flax.linen.linear import canonicalize_padding
from jax import lax

from lightcomp import quant
from lightcomp.serve._inputs import InputQuant, quantize_inputs

# layer class -> kind; nn.ConvLocal, the transposed convolutions and nn.Embed are not here
KINDS: dict[type, str] = {
    nn.Dense: "dense",
    nn.DenseGeneral: "dense_general",
    nn.Einsum: "einsum",
    nn.Conv: "conv",
    nnx.Linear: "dense",
    nnx.LinearGeneral: "dense_general",
    nnx.Einsum: "einsum",
    nnx.Conv: "conv",
}
_STANDARD_OPS = (None, lax.dot_general, lax.conv_general_dilated, jnp.einsum)
_OP_ATTRS = (
    "dot_general",
    "dot_general_cls",
    "conv_general_dilated",
    "conv_general_dilated_cls",
    "einsum_op",
)


def kind_of(module: Any) -> str | None:
    """The served kind of a layer (``"dense"``, ``"dense_general"``, ``"einsum"``, ``"conv"``)."""
    return next((k for cls, k in KINDS.items() if type(module) is cls), None) or next(
        (k for cls, k in KINDS.items() if isinstance(module, cls)), None
    )


def _attr(mod: Any, *names: str) -> Any:
    for name in names:
        if hasattr(mod, name):
            return getattr(mod, name)
    raise AttributeError(f"{type(mod).__name__} has none of {names}")


def _tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def check_layer(mod: Any, path: str) -> str:
    """The layer's kind; another layer type (TypeError) or a custom op (ValueError) names ``path``."""
    kind = kind_of(mod)
    if kind is None:
        raise TypeError(
            f"layer {path!r} is a {type(mod).__name__}: integer serving runs Dense, DenseGeneral, "
            "Einsum and Conv (linen) / Linear, LinearGeneral, Einsum and Conv (nnx)"
        )
    for name in _OP_ATTRS:
        op = getattr(mod, name, None)
        if not any(op is std for std in _STANDARD_OPS):
            raise ValueError(
                f"layer {path!r} ({type(mod).__name__}) has a custom {name}; integer serving "
                "runs its own integer op and cannot honour it"
            )
    return kind


def served_kind(mod: Any, path: str, holds_qtensor: bool, in_float: bool) -> str | None:
    """The kind to serve a layer as, or None to run it as written (in float).

    Raises:
      TypeError: a layer that runs in float (not a served type, or named in
        ``float_layers``) holds a `lightcomp.quant.QTensor`.
    """
    kind = kind_of(mod)
    if kind is None or in_float:
        if holds_qtensor:
            why = "runs in float (float_layers)" if kind else "is not a served layer type"
            raise TypeError(
                f"layer {path!r} ({type(mod).__name__}) {why} but holds a QTensor; "
                "give it float parameters"
            )
        return None
    return check_layer(mod, path)


def _kernel(kernel: Any, path: str, expected: tuple) -> quant.QTensor:
    """The layer's kernel, checked: a `QTensor` of the expected shape (its scales: by the op)."""
    if not isinstance(kernel, quant.QTensor):
        raise TypeError(
            f"layer {path!r}: kernel is a {getattr(kernel, 'dtype', type(kernel).__name__)} "
            "array; integer serving needs a lightcomp.quant.QTensor (lc.serve.from_packed gives "
            "one for a kernel packed on an integer grid of <= 8 bits), or name the layer in "
            "float_layers to run it in float"
        )
    if tuple(kernel.shape) != tuple(expected):
        raise ValueError(
            f"layer {path!r}: the kernel's shape {tuple(kernel.shape)} does not fit the layer, "
            f"which expects {tuple(expected)}"
        )
    return kernel


def _at(path: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; a TypeError / ValueError it raises gets ``layer 'path': ``."""
    try:
        return fn(*args, **kwargs)
    except (TypeError, ValueError) as e:
        raise type(e)(f"layer {path!r}: {e}") from e


def _out_dtype(mod, x, kernel, bias):
    dtype = getattr(mod, "dtype", None)
    if dtype is not None:
        return dtype
    return jnp.result_type(x.dtype, kernel.dtype, *(() if bias is None else (bias.dtype,)))


def _contract(x, kernel, bias, dims, perm, bias_shape, dtype, act, rng, path):
    """``dot_general(x, kernel, dims)`` on integers, transposed by ``perm``, plus the bias."""
    qx = quantize_inputs(x, act, rng, path)
    y = _at(path, quant.int_dot_general, qx, kernel, dims, operands=act.operands)
    if perm is not None:
        y = jnp.transpose(y, perm)
    if bias is not None:
        y = y + jnp.reshape(bias, bias_shape).astype(jnp.float32)
    return y.astype(dtype)


def dense(mod, path, x, kernel, bias, act, rng):
    """``nn.Dense`` / ``nnx.Linear``: ``x @ kernel + bias`` over the last axis."""
    features = _attr(mod, "features", "out_features")
    kernel = _kernel(kernel, path, (x.shape[-1], features))
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    bias_shape = (1,) * (x.ndim - 1) + (-1,)
    dtype = _out_dtype(mod, x, kernel, bias)
    return _contract(x, kernel, bias, dims, None, bias_shape, dtype, act, rng, path)


def dense_general(mod, path, x, kernel, bias, act, rng):
    """``nn.DenseGeneral`` / ``nnx.LinearGeneral``: contract ``axis``, keep ``batch_dims``."""
    features = _tuple(_attr(mod, "features", "out_features"))
    batch = getattr(mod, "batch_dims", None)
    batch = _tuple(batch) if batch is not None else tuple(getattr(mod, "batch_axis", {}).keys())
    norm = lambda axes: tuple(sorted(a % x.ndim for a in axes))
    axis, batch = norm(_tuple(mod.axis)), norm(batch)
    nb = len(batch)
    expected = (*(x.shape[a] for a in batch), *(x.shape[a] for a in axis), *features)
    contract_ind = tuple(range(nb, nb + len(axis)))
    kernel = _kernel(kernel, path, expected)
    dims = ((axis, contract_ind), (batch, tuple(range(nb))))
    kept = [a for a in range(x.ndim) if a not in axis]
    bias_shape = tuple(x.shape[a] if a in batch else 1 for a in kept) + features
    dtype = _out_dtype(mod, x, kernel, bias)
    return _contract(x, kernel, bias, dims, None, bias_shape, dtype, act, rng, path)


def einsum(mod, path, x, kernel, bias, act, rng, einsum_str=None):
    """``nn.Einsum`` / ``nnx.Einsum``: a two-operand einsum as one integer ``dot_general``."""
    eq = (einsum_str if einsum_str is not None else mod.einsum_str).replace(" ", "")
    shape = tuple(_attr(mod, "shape", "kernel_shape"))
    try:  # the equation read as quant's integer forward reads it
        _, b, out = quant.einsum_parts(eq, x.shape, shape)
        dims, perm = quant.einsum_dims(eq, x.shape, shape)
    except ValueError as e:
        raise ValueError(f"layer {path!r}: {e}") from None
    kernel = _kernel(kernel, path, shape)
    bias_shape = tuple(shape[b.index(c)] if c in b else 1 for c in out)
    dtype = _out_dtype(mod, x, kernel, bias)
    return _contract(x, kernel, bias, dims, perm, bias_shape, dtype, act, rng, path)


def conv(mod, path, x, kernel, bias, act, rng):
    """``nn.Conv`` / ``nnx.Conv``: channels last, Flax's padding modes, batch dims flattened."""
    ksize = _tuple(mod.kernel_size)
    n = len(ksize)

    def each(v):
        return (1 if v is None else v,) * n if not isinstance(v, (tuple, list)) else tuple(v)

    strides, in_dil, k_dil = each(mod.strides), each(mod.input_dilation), each(mod.kernel_dilation)
    batch_shape = x.shape[: x.ndim - (n + 1)]
    x = x.reshape((-1, *x.shape[x.ndim - (n + 1) :]))
    padding = canonicalize_padding(mod.padding, n)
    if padding in ("CIRCULAR", "REFLECT"):  # padded in float, before quantization, as Flax does
        dilated = [(k - 1) * d + 1 for k, d in zip(ksize, k_dil, strict=True)]
        pads = [(0, 0), *[((k - 1) // 2, k // 2) for k in dilated], (0, 0)]
        x = jnp.pad(x, pads, mode={"CIRCULAR": "wrap", "REFLECT": "reflect"}[padding])
        padding = "VALID"
    elif padding == "CAUSAL":
        if n != 1:
            raise ValueError(f"layer {path!r}: causal padding needs a 1-D convolution")
        x = jnp.pad(x, [(0, 0), (k_dil[0] * (ksize[0] - 1), 0), (0, 0)])
        padding = "VALID"
    groups = mod.feature_group_count
    features = _attr(mod, "features", "out_features")
    kernel = _kernel(kernel, path, (*ksize, x.shape[-1] // groups, features))
    if mod.mask is not None:  # a 0/1 mask on the weights, as Flax multiplies it
        codes = jnp.where(jnp.asarray(mod.mask) != 0, quant.int_values(kernel.values), 0)
        kernel = dataclasses.replace(kernel, values=codes.astype(jnp.int8))
    nd = x.ndim
    dn = lax.ConvDimensionNumbers(
        (0, nd - 1, *range(1, nd - 1)),
        (nd - 1, nd - 2, *range(nd - 2)),
        (0, nd - 1, *range(1, nd - 1)),
    )
    qx = quantize_inputs(x, act, rng, path)
    y = _at(
        path,
        quant.int_conv_general_dilated,
        qx,
        kernel,
        strides,
        padding,
        in_dil,
        k_dil,
        dn,
        groups,
        operands=act.operands,
    )
    if bias is not None:
        y = y + bias.reshape((1,) * (y.ndim - bias.ndim) + bias.shape).astype(jnp.float32)
    y = y.astype(_out_dtype(mod, x, kernel, bias))
    return y.reshape(batch_shape + y.shape[1:]) if len(batch_shape) != 1 else y


FORWARDS = {"dense": dense, "dense_general": dense_general, "einsum": einsum, "conv": conv}


def forward(kind, mod, path, x, kernel, bias, act: InputQuant, rng, *args, **kwargs):
    """The integer forward of a layer of ``kind``; call arguments beyond ``x`` are checked."""
    extra = dict(kwargs)
    if kind == "einsum" and args:
        extra["einsum_str"], args = args[0], args[1:]
    sharding = extra.pop("out_sharding", None)
    if args or sharding is not None or set(extra) - {"einsum_str"}:
        raise TypeError(
            f"layer {path!r}: integer serving takes the input (and an einsum_str) only, "
            f"got {len(args)} more positional and {sorted(extra)} keyword arguments"
        )
    return FORWARDS[kind](mod, path, x, kernel, bias, act, rng, **extra)
