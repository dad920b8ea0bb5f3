"""Integer matmuls: int8 x int8 -> int32 ``dot_general`` and convolution, one float32 rescale.

Both operands are `QTensor`s whose scales are constant along the contracting axes (one
scale per tensor, or per kept axis that is not contracted: a weight's output unit, an
activation's row). The integer codes are contracted exactly, in int32
(``preferred_element_type``), and the result is rescaled once::

    y = (sum_k q_lhs[k] * q_rhs[k]) * scale_lhs * scale_rhs

so ``int_dot_general(quantize(x), quantize(w, axis=-1), ...)`` equals
``fake_quant(x) @ fake_quant(w, axis=-1)`` up to float32 accumulation order. The right
operand (the weights) is symmetric; the left one (the activations) may be asymmetric
(unsigned codes with a zero point): its codes are shifted to int8 and the zero point enters
as one int32 correction, ``(128 - zero_point) * sum_k q_rhs[k]`` (per output unit).

Codes of 2..4 bits can be held two per byte (`PackedInt4`, packed along the last axis) and
are unpacked inside the compiled function; on XLA's CPU backend a ``jnp.int4`` array still
takes one byte per value, so nibbles are the layout that really halves memory.

int32 accumulation is exact while ``K * 128 * 255 < 2**31`` (``K``, the contracted size, up
to 65,000 terms). ``operands="bfloat16"`` carries the same codes in bfloat16 (every int8 code
is a bfloat16 exactly) with float32 accumulation: every product and partial sum is an
integer below ``2**24``, so the sums are the same exact integers while ``K * 128 * 128 <=
2**24`` (``K <= 1024``), on the bfloat16 dot units some CPUs have (measured in
``benchmarks/bench_serve.py``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lightcomp._checks import check_choice, check_int, norm_axis
from lightcomp.quant._qtensor import QTensor

OPERANDS = ("int8", "bfloat16")
BF16_EXACT_TERMS = 2**24 // (128 * 128)  # contracted terms whose bfloat16 sums stay exact


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class PackedInt4:
    """Integer codes in ``[-8, 7]``, two per byte along the last axis (a pytree).

    Array-like enough to be a `QTensor`'s ``values``: ``shape``, ``dtype`` (int8, the
    dtype it unpacks to), ``reshape`` and ``astype`` unpack first. Build it with
    `pack_int4`.

    Attributes:
      data: uint8 ``[..., ceil(n / 2)]``: element ``2j`` of the last axis in the low
        nibble of byte ``j``, element ``2j + 1`` in the high nibble.
      shape: the unpacked shape (static).
    """

    data: jax.Array
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    @property
    def dtype(self) -> np.dtype:
        """int8, the dtype of `unpack`."""
        return np.dtype(np.int8)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes held: half a byte per value (rounded up per row)."""
        return int(self.data.nbytes)

    def unpack(self) -> jax.Array:
        """The codes as int8 of `shape` (sign-extended nibbles)."""
        s = lax.bitcast_convert_type(self.data, jnp.int8)
        lo = jnp.right_shift(jnp.left_shift(s, 4), 4)  # arithmetic shifts sign-extend
        hi = jnp.right_shift(s, 4)
        both = jnp.stack([lo, hi], axis=-1).reshape(*self.data.shape[:-1], -1)
        return both[..., : self.shape[-1]] if self.shape else both.reshape(())

    def reshape(self, *shape: Any) -> jax.Array:
        return self.unpack().reshape(*shape)

    def astype(self, dtype: Any) -> jax.Array:
        return self.unpack().astype(dtype)


def pack_int4(codes: Any) -> PackedInt4:
    """Packs integer codes in ``[-8, 7]`` two per byte along the last axis.

    Args:
      codes: an integer array (NumPy or JAX) of rank >= 1.

    Returns:
      A `PackedInt4` whose `PackedInt4.unpack` gives ``codes`` as int8.

    Raises:
      TypeError / ValueError: ``codes`` is not an integer array of rank >= 1, or holds a
        value outside ``[-8, 7]``.

    Example:
      >>> p = lc.quant.pack_int4(np.array([[1, -2, 7], [-8, 0, 3]]))
      >>> p.data.shape, p.unpack()
      ((2, 2), Array([[ 1, -2,  7],
             [-8,  0,  3]], dtype=int8))
    """
    c = np.asarray(codes)
    if c.dtype.kind not in "iu" or c.ndim == 0:
        raise TypeError(f"codes must be an integer array of rank >= 1, got {c.dtype} {c.shape}")
    if c.size and (c.min() < -8 or c.max() > 7):
        raise ValueError(f"codes must be in [-8, 7] to pack two per byte, got {c.min()}..{c.max()}")
    c = c.astype(np.int8)
    if c.shape[-1] % 2:
        c = np.concatenate([c, np.zeros((*c.shape[:-1], 1), np.int8)], axis=-1)
    nib = c.view(np.uint8) & np.uint8(0xF)
    data = nib[..., 0::2] | (nib[..., 1::2] << np.uint8(4))
    return PackedInt4(jnp.asarray(data), tuple(np.shape(codes)))


def int_values(values: Any) -> jax.Array:
    """A `QTensor`'s codes as an integer array (`PackedInt4` unpacked)."""
    return values.unpack() if isinstance(values, PackedInt4) else values


def check_operand(qt: Any, argname: str, contracting: Sequence[int], *, lhs: bool) -> None:
    """An integer-matmul operand: a `QTensor` of <= 8 bits, scales not over ``contracting``.

    Raises:
      TypeError: not a `QTensor`, or codes that are not int8 (uint8 for an asymmetric
        left operand).
      ValueError: more than 8 bits, per-group scales, a scale along a contracting axis, or
        an asymmetric right operand.
    """
    if not isinstance(qt, QTensor):
        raise TypeError(
            f"{argname} must be a lightcomp.quant.QTensor (integer codes and scales), "
            f"got {type(qt).__name__}"
        )
    if qt.bits > 8:
        raise ValueError(f"{argname} has {qt.bits}-bit codes; integer matmuls take <= 8 bits")
    want = np.int8 if qt.symmetric else np.uint8
    if np.dtype(qt.values.dtype) != want:
        raise TypeError(f"{argname} codes must be {np.dtype(want).name}, got {qt.values.dtype}")
    if not qt.symmetric and not lhs:
        raise ValueError(f"{argname} must be symmetric (no zero point): it is the weight operand")
    if qt.group_size is not None:
        raise ValueError(
            f"{argname} has per-group scales (group_size={qt.group_size}); integer matmuls "
            "need one scale per tensor or per non-contracted axis"
        )
    if qt.axis is not None and qt.axis in tuple(contracting):
        raise ValueError(
            f"{argname} keeps a scale per index of axis {qt.axis}, which is contracted; "
            "the scale must be constant along the contracting axes"
        )


def _arrange(s: jax.Array, ndim: int, contract, batch, n_other: int, lhs: bool) -> jax.Array:
    """A keepdims per-operand array -> broadcastable against ``dot_general``'s output.

    The output is ``(batch, lhs free, rhs free)``; ``n_other`` is the other operand's
    number of free axes.
    """
    if jnp.ndim(s) == 0:
        return s
    free = [d for d in range(ndim) if d not in contract and d not in batch]
    s = jnp.transpose(s, (*batch, *free, *contract))
    s = s.reshape(s.shape[: len(batch) + len(free)])  # the contracted axes have size 1
    ones = (1,) * n_other
    nb = len(batch)
    return s.reshape(s.shape + ones if lhs else s.shape[:nb] + ones + s.shape[nb:])


def _shifted(qt: QTensor) -> jax.Array:
    """int8 codes: as stored when symmetric; ``q - 128`` (bit flip) when unsigned."""
    v = int_values(qt.values)
    if qt.symmetric:
        return v
    return lax.bitcast_convert_type(v ^ jnp.uint8(0x80), jnp.int8)


def _exact_sums(op, lhs, rhs, operands: str, terms: int, **kw) -> jax.Array:
    """``op`` (``lax.dot_general`` / ``lax.conv_general_dilated``) on int8 codes: int32 sums."""
    check_choice(operands, OPERANDS, "operands")
    if operands == "int8":
        return op(lhs, rhs, preferred_element_type=jnp.int32, **kw)
    if terms > BF16_EXACT_TERMS:
        raise ValueError(
            f"operands='bfloat16' is exact up to {BF16_EXACT_TERMS} contracted terms; this "
            f"contraction has {terms}: use operands='int8'"
        )
    bf = jnp.bfloat16
    return op(lhs.astype(bf), rhs.astype(bf), preferred_element_type=jnp.float32, **kw).astype(
        jnp.int32
    )  # exact: integers below 2**24


def int_dot_general(
    lhs: QTensor,
    rhs: QTensor,
    dimension_numbers: Any,
    *,
    out_dtype: Any = jnp.float32,
    operands: str = "int8",
) -> jax.Array:
    """``lax.dot_general`` of two `QTensor`s: exact int32 accumulation, one float32 rescale.

    Args:
      lhs: activations: int8 codes (symmetric) or uint8 codes with a zero point; one scale
        per tensor or per non-contracted axis.
      rhs: weights: symmetric int8 codes (or `PackedInt4`), one scale per tensor or per
        non-contracted axis (e.g. ``axis=-1`` for a ``[in, out]`` kernel).
      dimension_numbers: ``((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))``,
        as `jax.lax.dot_general`.
      out_dtype: the result's dtype (the rescale is float32).
      operands: ``"int8"`` (int32 accumulation) or ``"bfloat16"`` (the codes in bfloat16,
        float32 accumulation: the same exact sums, for up to 1024 contracted terms).

    Returns:
      ``dot_general(dequantize(lhs), dequantize(rhs))`` of shape ``(batch, lhs free, rhs
      free)``, up to float32 rounding: the integer sum is exact.

    Raises:
      TypeError / ValueError: as `check_operand`, or shapes that do not contract.

    Example:
      >>> x = lc.quant.quantize(jnp.array([[0.5, -1.0], [0.25, 1.0]]))
      >>> w = lc.quant.quantize(jnp.array([[1.0, 2.0], [-1.0, 0.5]]), axis=-1)
      >>> lc.quant.int_dot_general(x, w, (((1,), (0,)), ((), ())))
      Array([[ 1.503937 ,  0.503937 ],
             [-0.7480315,  1.007874 ]], dtype=float32)
    """
    for qt, name in ((lhs, "lhs"), (rhs, "rhs")):
        if not isinstance(qt, QTensor):
            check_operand(qt, name, (), lhs=name == "lhs")  # raises the TypeError
    nl, nr = len(lhs.shape), len(rhs.shape)
    try:
        (lc_, rc_), (lb, rb) = dimension_numbers
        lc_, lb = (tuple(norm_axis(a, nl, "dimension_numbers") for a in t) for t in (lc_, lb))
        rc_, rb = (tuple(norm_axis(a, nr, "dimension_numbers") for a in t) for t in (rc_, rb))
    except (TypeError, ValueError) as e:
        raise type(e)(f"dimension_numbers {dimension_numbers!r}: {e}") from e
    check_operand(lhs, "lhs", lc_, lhs=True)
    check_operand(rhs, "rhs", rc_, lhs=False)
    if [lhs.shape[a] for a in (*lc_, *lb)] != [rhs.shape[a] for a in (*rc_, *rb)]:
        raise ValueError(
            f"lhs {lhs.shape} and rhs {rhs.shape} do not contract by {dimension_numbers}"
        )
    dn = ((lc_, rc_), (lb, rb))
    rv = int_values(rhs.values)
    terms = math.prod(lhs.shape[a] for a in lc_)
    acc = _exact_sums(lax.dot_general, _shifted(lhs), rv, operands, terms, dimension_numbers=dn)
    n_lfree, n_rfree = nl - len(lc_) - len(lb), nr - len(rc_) - len(rb)
    if not lhs.symmetric:
        colsum = jnp.sum(rv.astype(jnp.int32), axis=rc_, keepdims=True)
        zp = 128 - lhs.zero_point.astype(jnp.int32)
        acc = acc + _arrange(zp, nl, lc_, lb, n_rfree, True) * _arrange(
            colsum, nr, rc_, rb, n_lfree, False
        )
    scale = _arrange(lhs.scale, nl, lc_, lb, n_rfree, True) * _arrange(
        rhs.scale, nr, rc_, rb, n_lfree, False
    )
    return (acc.astype(jnp.float32) * scale).astype(out_dtype)


def int_conv_general_dilated(
    lhs: QTensor,
    rhs: QTensor,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    *,
    out_dtype: Any = jnp.float32,
    operands: str = "int8",
) -> jax.Array:
    """``lax.conv_general_dilated`` of two `QTensor`s: exact int32 sums, one float32 rescale.

    Args:
      lhs: the input: one scale (and zero point) per tensor or per batch index.
      rhs: the kernel: symmetric codes, one scale per tensor or per output feature.
      window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count: as `jax.lax.conv_general_dilated` (padding adds zeros of the
        dequantized input: the zero point of an asymmetric one).
      out_dtype: the result's dtype.
      operands: as `int_dot_general` (the contracted terms: window size x input features
        per group).

    Returns:
      ``conv_general_dilated(dequantize(lhs), dequantize(rhs), ...)`` up to float32
      rounding.

    Raises:
      TypeError / ValueError: as `check_operand`, or a bad ``feature_group_count``.
    """
    feature_group_count = check_int(feature_group_count, "feature_group_count", lo=1)
    for qt, name in ((lhs, "lhs"), (rhs, "rhs")):
        if not isinstance(qt, QTensor):
            check_operand(qt, name, (), lhs=name == "lhs")  # raises the TypeError
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    (ln, lcf, *lsp), (ro, ri, *rsp), (on, oc, *_) = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    check_operand(lhs, "lhs", (lcf, *lsp), lhs=True)
    check_operand(rhs, "rhs", (ri, *rsp), lhs=False)
    nd = len(lhs.shape)

    kernel = int_values(rhs.values)
    terms = math.prod(rhs.shape[a] for a in (ri, *rsp))

    def conv(x):
        return _exact_sums(
            lax.conv_general_dilated,
            x,
            kernel,
            operands,
            terms,
            window_strides=window_strides,
            padding=padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dn,
            feature_group_count=feature_group_count,
        )

    def along(s, src_axis, dst_axis):  # a keepdims per-axis array -> the output's axis
        if jnp.ndim(s) == 0:
            return s
        return s.reshape(tuple(-1 if i == dst_axis else 1 for i in range(nd)))

    acc = conv(_shifted(lhs))
    if not lhs.symmetric:
        ones = jnp.ones(tuple(1 if i == ln else d for i, d in enumerate(lhs.shape)), jnp.int8)
        zp = 128 - lhs.zero_point.astype(jnp.int32)
        acc = acc + along(zp, ln, on) * conv(ones)  # window sums of the kernel, padding kept
    scale = along(lhs.scale, ln, on) * along(rhs.scale, ro, oc)
    return (acc.astype(jnp.float32) * scale).astype(out_dtype)
