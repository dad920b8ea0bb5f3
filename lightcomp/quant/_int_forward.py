"""The integer forward of quantization-aware training, with a straight-through backward.

`int_ste_dot_general`, `int_ste_conv` and `int_ste_einsum` take float activations and float
(fake-quantized) kernels, quantize both to codes of <= 8 bits and contract the codes with
`int_dot_general` / `int_conv_general_dilated` (int8 x int8 -> int32, one float32 rescale).
The backward pass is the fake-quant one, in float: the gradient of
``op(fake_quant(x), fake_quant(w))`` with the straight-through estimator for both (the
clipped one for an activation outside a fixed range). So the forward equals the fake-quant
forward up to float32 accumulation order, and training is unchanged.

The kernel is quantized symmetrically with one scale per output unit (every axis the op does
not contract). On a kernel `lightcomp.transform.fake_quantization` already left on that grid
(its default ``axis="units"``, with the same bits) this reproduces its codes exactly: the
largest code of each unit is ``qmax``, so the re-derived scale equals the stored one up to
one float32 rounding.

The activation keeps one scale per tensor or per index of non-contracted axes (a token's
row); a scale along a contracted axis (per input channel) would not factor out of the sum,
and `int_compatible` says so before any work is done.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import opt_einsum
from jax import lax

from lightcomp.quant._int_dot import BF16_EXACT_TERMS, int_conv_general_dilated, int_dot_general
from lightcomp.quant._layout import Layout, layout
from lightcomp.quant._numerics import encode, int_dtype
from lightcomp.quant._qtensor import QTensor, dequantize


@dataclasses.dataclass(frozen=True)
class IntForward:
    """How the integer forward quantizes its operands (static, hashable).

    Attributes:
      bits: activation width, 2..8.
      symmetric: signed activation codes; otherwise unsigned with a zero point.
      weight_bits: kernel width, 2..8 (symmetric, per output unit).
      axis: the activation's kept axes: None (one scale per tensor) or a tuple of axes
        (``"tokens"``: every axis but the last, resolved by `act_layout`).
      clipped: the clipped straight-through estimator for the activation (zero gradient
        where it fell outside a fixed range).
      operands: ``"int8"`` (int32 accumulation) or ``"bfloat16"`` (the same codes and exact
        sums on bfloat16 dot units, for up to 1024 contracted terms; int8 beyond).
    """

    bits: int
    symmetric: bool
    weight_bits: int
    axis: Any = None
    clipped: bool = True
    operands: str = "int8"


def act_layout(shape: tuple[int, ...], axis: Any) -> Layout:
    """The activation's `Layout`: None per tensor, ``"tokens"`` every axis but the last."""
    if axis == "tokens":
        axis = tuple(range(len(shape) - 1)) or None
    return layout(shape, axis)


def int_compatible(lay: Layout, contracted: tuple[int, ...]) -> bool:
    """True when an activation in ``lay`` can enter an integer contraction over ``contracted``."""
    return lay.group_size is None and not set(lay.axes) & set(contracted)


def _codes(x, lay: Layout, lo_hi, bits: int, symmetric: bool) -> tuple[QTensor, jax.Array]:
    """``x`` as a `QTensor` in ``lay`` (the range ``lo_hi`` or its own) and the unclipped mask."""
    q, scale, zp, inside = encode(x, bits, symmetric, lay, lo_hi, "nearest", None)
    idt = int_dtype(bits, symmetric)
    qt = QTensor(
        values=lay.unview(q).astype(idt),
        scale=lay.scale_from_view(scale),
        zero_point=None if symmetric else lay.scale_from_view(zp).astype(idt),
        bits=bits,
        symmetric=symmetric,
        axis=lay.axis,
        group_size=None,
        group_axis=None,
        dtype=x.dtype,
    )
    return qt, lay.unview(inside)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _ste(spec, contract, kept_w, int_op, x, w, lo_hi):
    return _ste_fwd(spec, contract, kept_w, int_op, x, w, lo_hi)[0]


def _ste_fwd(spec: IntForward, contract: Callable, kept_w, int_op, x, w, lo_hi):
    del contract
    x_lay = act_layout(x.shape, spec.axis)
    qx, inside = _codes(x, x_lay, lo_hi, spec.bits, spec.symmetric)
    qw, _ = _codes(w, layout(w.shape, kept_w or None), None, spec.weight_bits, True)
    terms = math.prod(w.shape[a] for a in range(w.ndim) if a not in kept_w)
    operands = spec.operands if terms <= BF16_EXACT_TERMS else "int8"
    y = int_op(qx, qw, operands).astype(jnp.result_type(x.dtype, w.dtype))
    gate = inside if spec.clipped and lo_hi is not None else None
    return y, (qx, qw, gate, lo_hi)


def _ste_bwd(spec, contract, kept_w, int_op, res, g):
    del spec, kept_w, int_op
    qx, qw, gate, lo_hi = res
    _, vjp = jax.vjp(contract, dequantize(qx), dequantize(qw))
    dx, dw = vjp(g)
    if gate is not None:
        dx = dx * gate.astype(dx.dtype)
    zero = None if lo_hi is None else jax.tree.map(jnp.zeros_like, lo_hi)
    return dx, dw, zero


_ste.defvjp(_ste_fwd, _ste_bwd)


def int_ste_dot_general(
    x: jax.Array,
    w: jax.Array,
    dimension_numbers: Any,
    spec: IntForward,
    lo_hi: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """``lax.dot_general(fake_quant(x), fake_quant(w))`` computed on int8 codes (STE backward).

    Args:
      x: the activations (float), contracted on ``dimension_numbers``' left side.
      w: the kernel (float), quantized per output unit (its non-contracted axes).
      dimension_numbers: as `jax.lax.dot_general` (non-negative axes).
      spec: the `IntForward` configuration.
      lo_hi: the activation's ``(min, max)`` in its layout's view (a fixed or EMA range),
        or None for its own (dynamic).

    Returns:
      The contraction, in the operands' result dtype.
    """
    (_, rc_), _ = dimension_numbers
    kept_w = tuple(a for a in range(w.ndim) if a not in rc_)
    contract = functools.partial(lax.dot_general, dimension_numbers=dimension_numbers)
    int_op = functools.partial(_int_dot, dimension_numbers)
    return _ste(spec, contract, kept_w, int_op, x, w, lo_hi)


def _int_dot(dimension_numbers, qx, qw, operands):
    return int_dot_general(qx, qw, dimension_numbers, operands=operands)


def int_ste_conv(
    x: jax.Array,
    w: jax.Array,
    conv_kwargs: tuple[tuple[str, Any], ...],
    spec: IntForward,
    lo_hi: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """``lax.conv_general_dilated(fake_quant(x), fake_quant(w), **conv_kwargs)`` on int8 codes.

    Args:
      x: the input (float); its scale per tensor (or per batch index).
      w: the kernel (float), quantized per output feature.
      conv_kwargs: ``(name, value)`` pairs of `jax.lax.conv_general_dilated` (hashable:
        ``window_strides``, ``padding``, ``lhs_dilation``, ``rhs_dilation``,
        ``dimension_numbers``, ``feature_group_count``).
      spec, lo_hi: as `int_ste_dot_general`.

    Returns:
      The convolution, in the operands' result dtype.
    """
    kw = dict(conv_kwargs)
    dn = lax.conv_dimension_numbers(x.shape, w.shape, kw.get("dimension_numbers"))
    kw["dimension_numbers"] = dn
    kept_w = (dn.rhs_spec[0],)
    contract = functools.partial(_float_conv, tuple(kw.items()))
    int_op = functools.partial(_int_conv, tuple(kw.items()))
    return _ste(spec, contract, kept_w, int_op, x, w, lo_hi)


def _float_conv(kw, a, b):
    return lax.conv_general_dilated(a, b, **dict(kw))


def _int_conv(kw, qx, qw, operands):
    kw = dict(kw)
    return int_conv_general_dilated(
        qx,
        qw,
        kw["window_strides"],
        kw["padding"],
        kw.get("lhs_dilation"),
        kw.get("rhs_dilation"),
        kw["dimension_numbers"],
        kw.get("feature_group_count", 1),
        operands=operands,
    )


def einsum_parts(eq: str, x_shape, w_shape) -> tuple[str, str, str]:
    """The explicit subscripts ``(lhs, rhs, out)`` of a two-operand einsum."""
    shapes = [jax.ShapeDtypeStruct(tuple(s), "f4") for s in (x_shape, w_shape)]
    ops, out, _ = opt_einsum.parser.parse_einsum_input((eq.replace(" ", ""), *shapes))
    a, b = ops.split(",")
    return a, b, out


def einsum_dims(eq: str, x_shape, w_shape) -> tuple[Any, tuple[int, ...] | None]:
    """A two-operand einsum as ``(dot_general dimension_numbers, output permutation or None)``.

    Raises:
      ValueError: an equation that sums an axis of one operand alone or repeats an index.
    """
    a, b, out = einsum_parts(eq, x_shape, w_shape)
    stray = [c for c in a + b if c not in out and not (c in a and c in b)]
    if stray or len(set(a)) != len(a) or len(set(b)) != len(b):
        raise ValueError(f"einsum {eq!r} sums an axis of one operand alone or repeats an index")
    batch = [c for c in a if c in b and c in out]
    contract = [c for c in a if c in b and c not in out]
    order = batch + [c for c in a if c not in b] + [c for c in b if c not in a]
    dims = (
        (tuple(a.index(c) for c in contract), tuple(b.index(c) for c in contract)),
        (tuple(a.index(c) for c in batch), tuple(b.index(c) for c in batch)),
    )
    perm = tuple(order.index(c) for c in out)
    return dims, None if perm == tuple(range(len(out))) else perm


def int_ste_einsum(
    eq: str,
    x: jax.Array,
    w: jax.Array,
    spec: IntForward,
    lo_hi: tuple[jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """``jnp.einsum(eq, fake_quant(x), fake_quant(w))`` as one integer ``dot_general``."""
    dims, perm = einsum_dims(eq, x.shape, w.shape)
    y = int_ste_dot_general(x, w, dims, spec, lo_hi)
    return y if perm is None else jnp.transpose(y, perm)
