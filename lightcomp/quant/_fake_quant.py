"""Fake quantization: quantize then dequantize in the forward pass, straight-through backward."""

from __future__ import annotations

import functools

import jax

from lightcomp._checks import check_bool, check_choice, check_finite, check_floating
from lightcomp.quant._calibration import Range, check_range
from lightcomp.quant._layout import Layout, layout
from lightcomp.quant._numerics import check_bits, check_rounding, decode, encode
from lightcomp.quant._ste import STES, pass_through


def checked_args(x, bits, symmetric, axis, group_size, group_axis, rounding, key, rng):
    """Checks the arguments `fake_quant` and `lightcomp.quant.quantize` share.

    Returns:
      ``(bits, symmetric, layout, lo_hi)`` with ``lo_hi`` the range in the layout's view
      (None for the tensor's own).
    """
    check_floating(x, "x")
    bits = check_bits(bits)
    symmetric = check_bool(symmetric, "symmetric")
    check_rounding(rounding, key)
    lay = layout(x.shape, axis, group_size, group_axis)
    lo_hi = check_range(rng, lay) if rng is not None else None
    check_finite(x, "x", why="cannot quantize it")
    return bits, symmetric, lay, lo_hi


# The numeric cores are compiled even when called eagerly: XLA turns a division by a constant
# into a multiplication by its reciprocal under jit but not op by op, so only a compiled core
# gives the same last bit jitted and not.
@functools.partial(jax.jit, static_argnames=("bits", "symmetric", "lay", "rounding", "clipped"))
def _fake_quant_fwd(x, lo_hi, key, *, bits, symmetric, lay, rounding, clipped):
    q, scale, zp, inside = encode(x, bits, symmetric, lay, lo_hi, rounding, key)
    y = lay.unview(decode(q, scale, zp)).astype(x.dtype)
    return y, (lay.unview(inside) if clipped else None)


def fake_quant_in(
    x: jax.Array,
    lay: Layout,
    lo_hi: tuple[jax.Array, jax.Array] | None,
    *,
    bits: int,
    symmetric: bool,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    clipped: bool = False,
) -> jax.Array:
    """`fake_quant` in a given layout, unchecked (``lo_hi`` broadcastable against the view)."""
    y, gate = _fake_quant_fwd(
        x, lo_hi, key, bits=bits, symmetric=symmetric, lay=lay, rounding=rounding, clipped=clipped
    )
    return pass_through(x, jax.lax.stop_gradient(y), gate)


def fake_quant(
    x: jax.Array,
    bits: int = 8,
    *,
    symmetric: bool = True,
    axis: int | tuple[int, ...] | None = None,
    group_size: int | None = None,
    group_axis: int | tuple[int, ...] | None = None,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    ste: str = "identity",
    range: Range | None = None,
) -> jax.Array:
    """Quantizes then dequantizes ``x``; the gradient is a straight-through estimator.

    Args:
      x: floating array of any shape (float32, bfloat16, float16).
      bits: integer width, 2..16.
      symmetric: signed narrow range with no zero point; otherwise unsigned with a zero point.
      axis: the axis that keeps its own scale (-1 for Flax kernels), or a tuple of axes whose
        every combination keeps its own (``(1, 2)``: per head and head_dim of an attention
        query kernel ``[embed, heads, head_dim]``); None: one scale.
      group_size: ``group_size`` consecutive elements along ``group_axis`` share a scale
        (per output channel if ``axis`` is given); must divide that axis.
      group_axis: the axis split into groups; default -2 (a kernel's input axis), 0 for 1-D.
      rounding: ``"nearest"`` (half to even) or ``"stochastic"`` (unbiased; needs ``key``).
      key: PRNG key for stochastic rounding.
      ste: ``"identity"`` passes the gradient unchanged; ``"clipped"`` zeroes it where the
        code was clipped to the integer range.
      range: ``(min, max)``: scalars, ``[x.shape[axis]]`` vectors (arrays of the kept axes'
        sizes for a tuple ``axis``) or scale-shaped arrays,
        used instead of the tensor's own min/max (values outside are clipped).

    Returns:
      An array of ``x``'s shape and dtype equal to ``dequantize(quantize(x, ...))``.

    Raises:
      ValueError / TypeError: bad ``bits``, ``symmetric``, ``axis``, ``group_size``,
        ``rounding``, ``ste``, a missing key, non-float ``x``, ``range`` with min > max,
        NaN/inf in a concrete ``x``.

    References:
      Bengio, Léonard & Courville 2013 (straight-through estimator); Jacob et al. 2018
      (integer-arithmetic-only inference, asymmetric quantization with a zero point).

    Example:
      >>> lc.quant.fake_quant(jnp.array([0.1, -0.5, 0.75, 1.5]), 3)
      Array([ 0. , -0.5,  1. ,  1.5], dtype=float32)
    """
    check_choice(ste, STES, "ste")
    bits, symmetric, lay, lo_hi = checked_args(
        x, bits, symmetric, axis, group_size, group_axis, rounding, key, range
    )
    return fake_quant_in(
        x,
        lay,
        lo_hi,
        bits=bits,
        symmetric=symmetric,
        rounding=rounding,
        key=key,
        clipped=ste == "clipped",
    )
