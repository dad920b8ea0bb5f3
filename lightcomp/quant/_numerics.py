"""The integer grid: code ranges, scale and zero point, rounding to codes, decoding.

The conventions are the public contract's, spelled out in `lightcomp.quant`'s docstring
(symmetric: signed narrow range, no zero point; asymmetric: unsigned with a zero point, the
range widened to include 0; round half to even; a zero range has scale 0 and codes 0).

The functions below `qrange` trust their callers: configuration is checked by the public
entry points (`check_bits`, `check_rounding`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lightcomp._checks import check_bool, check_choice, check_int, check_key
from lightcomp.quant._layout import Layout

ROUNDINGS = ("nearest", "stochastic")


def check_bits(bits: Any, *, lo: int = 2, hi: int = 16, argname: str = "bits") -> int:
    """``bits`` as an int in ``lo..hi``; 1 bit gets a pointer to `lightcomp.quant.binarize`.

    Raises:
      TypeError: not an int (a bool or a float included).
      ValueError: out of range.
    """
    value = check_int(bits, argname)
    if not lo <= value <= hi:
        extra = " (for 1 bit use lightcomp.quant.binarize)" if value == 1 else ""
        raise ValueError(f"{argname} must be in {lo}..{hi}, got {value}{extra}")
    return value


def check_rounding(rounding: Any, key: Any) -> str:
    """``rounding`` is one of `ROUNDINGS`; ``"stochastic"`` needs a PRNG ``key``."""
    check_choice(rounding, ROUNDINGS, "rounding")
    if rounding == "stochastic":
        if key is None:
            raise ValueError("rounding='stochastic' needs a PRNG key: pass key=jax.random.key(...)")
        check_key(key)
    return rounding


def levels(bits: int, symmetric: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of `qrange`, unchecked."""
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def qrange(bits: int, symmetric: bool = True) -> tuple[int, int]:
    """The integer code range ``(qmin, qmax)``.

    Args:
      bits: 1..16 when symmetric (1 bit: the single code 0), 2..16 otherwise.
      symmetric: signed narrow range, or unsigned.

    Returns:
      ``(-(2**(b-1) - 1), 2**(b-1) - 1)`` (symmetric) or ``(0, 2**b - 1)``.

    Example:
      >>> lc.quant.qrange(4), lc.quant.qrange(4, symmetric=False)
      ((-7, 7), (0, 15))
    """
    symmetric = check_bool(symmetric, "symmetric")
    bits = check_bits(bits, lo=1 if symmetric else 2)
    return levels(bits, symmetric)


def int_dtype(bits: int, symmetric: bool):
    """The code dtype: int8 / uint8 up to 8 bits, int16 / uint16 above."""
    if bits <= 8:
        return jnp.int8 if symmetric else jnp.uint8
    return jnp.int16 if symmetric else jnp.uint16


def scale_zero_point(lo, hi, bits: int, symmetric: bool):
    """float32 ``(scale, zero_point)`` of a range by the contract; ``zero_point`` is 0 if symmetric."""
    qmin, qmax = levels(bits, symmetric)
    if symmetric:
        scale = jnp.maximum(jnp.abs(lo), jnp.abs(hi)) / qmax
        return scale, jnp.zeros_like(scale)
    lo = jnp.minimum(lo, 0.0)
    hi = jnp.maximum(hi, 0.0)
    n = qmax - qmin
    # A range wider than float32's max (e.g. [-3e38, 3e38]) overflows hi - lo; hi/n - lo/n
    # does not. Elsewhere the contract's (hi - lo) / n, to the last bit.
    width = hi - lo
    scale = jnp.where(jnp.isfinite(width), width / n, hi / n - lo / n)
    safe = jnp.where(scale > 0, scale, 1.0)
    zp = jnp.where(scale > 0, jnp.round(-lo / safe), 0.0)
    return scale, zp


def codes(x32, scale, zp, bits: int, symmetric: bool, rounding: str, key):
    """Integer codes (as float32) of ``x32`` and the mask of elements that were not clipped."""
    qmin, qmax = levels(bits, symmetric)
    safe = jnp.where(scale > 0, scale, 1.0)
    v = x32 / safe
    if rounding == "stochastic":
        # floor(v + u), u ~ U[0, 1): E[floor(v + u)] = v (unbiased).
        v = jnp.floor(v + jax.random.uniform(key, x32.shape, jnp.float32))
    else:
        v = jnp.round(v)  # half to even
    v = v + zp
    inside = (v >= qmin) & (v <= qmax)
    q = jnp.where(scale > 0, jnp.clip(v, qmin, qmax), zp)
    return q, inside | (scale <= 0)


def decode(q, scale, zp):
    """``(q - zero_point) * scale``."""
    return (q - zp) * scale


def own_range(xv32: jax.Array, lay: Layout) -> tuple[jax.Array, jax.Array]:
    """``(min, max)`` of a tensor in ``lay``'s view over its `Layout.reduce_axes` (keepdims)."""
    return (
        jnp.min(xv32, axis=lay.reduce_axes, keepdims=True),
        jnp.max(xv32, axis=lay.reduce_axes, keepdims=True),
    )


def encode(x, bits: int, symmetric: bool, lay: Layout, lo_hi, rounding: str, key):
    """Calibrate -> scale and zero point -> codes, in ``lay``'s view.

    Args:
      x: the tensor (no gradient flows through this function's outputs).
      lo_hi: ``(min, max)`` broadcastable against the view, or None for the tensor's own.

    Returns:
      ``(codes, scale, zero_point, inside)``, float32, in the view (scales keepdims).
    """
    xv = lay.view(jax.lax.stop_gradient(x)).astype(jnp.float32)
    lo, hi = lo_hi if lo_hi is not None else own_range(xv, lay)
    # The barrier fixes the float32 scale as stored by `quantize`: without it XLA may fuse the
    # scale's division into its uses and change the last bit, jitted or not.
    scale, zp = jax.lax.optimization_barrier(scale_zero_point(lo, hi, bits, symmetric))
    q, inside = codes(xv, scale, zp, bits, symmetric, rounding, key)
    return q, scale, zp, inside
