"""Fake quantization to a narrower float format (bfloat16, float16, float8)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp._checks import check_bool, check_finite, check_floating
from lightcomp.quant._ste import pass_through

_CASTS = {
    "bfloat16": jnp.bfloat16,
    "float16": jnp.float16,
    "float8_e4m3fn": jnp.float8_e4m3fn,
    "float8_e5m2": jnp.float8_e5m2,
}
_CAST_ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "e4m3": "float8_e4m3fn",
    "float8_e4m3": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
}


def _target(dtype: Any):
    name = _CAST_ALIASES.get(dtype, dtype) if isinstance(dtype, str) else None
    if name is None:
        try:
            name = np.dtype(dtype).name
        except TypeError as e:
            raise TypeError(f"dtype must be one of {list(_CASTS)}, got {dtype!r}") from e
    if name not in _CASTS:
        raise ValueError(f"dtype must be one of {list(_CASTS)}, got {dtype!r}")
    return _CASTS[name]


def cast(x: jax.Array, dtype: Any, *, saturate: bool = True) -> jax.Array:
    """Rounds ``x`` to a narrower float format and back (fake quantization to a float type).

    Round to nearest even, as ``astype``. The gradient is the identity (straight-through).

    Args:
      x: floating array (float32, bfloat16, float16).
      dtype: ``jnp.bfloat16``, ``jnp.float16``, ``jnp.float8_e4m3fn`` or ``jnp.float8_e5m2``
        (or the names ``"bfloat16"``, ``"float16"``, ``"e4m3"``, ``"e5m2"``).
      saturate: clip to the format's largest finite value first (otherwise float16 / e5m2
        overflow to inf and e4m3fn, which has no inf, to NaN).

    Returns:
      ``x``'s shape and dtype holding values representable in ``dtype``.

    Raises:
      TypeError / ValueError: a non-float ``x``, an unknown ``dtype``, a non-bool
        ``saturate``, NaN/inf in a concrete ``x``.

    References:
      Micikevicius et al. 2022, "FP8 Formats for Deep Learning" (e4m3 / e5m2).

    Example:
      >>> lc.quant.cast(jnp.array([1.0, 1.1, 500.0]), "e4m3")
      Array([  1. ,   1.125, 448.   ], dtype=float32)
    """
    check_floating(x, "x")
    target = _target(dtype)
    saturate = check_bool(saturate, "saturate")
    check_finite(x, "x")
    y = jax.lax.stop_gradient(x).astype(jnp.float32)
    if saturate:
        big = float(jnp.finfo(target).max)
        y = jnp.clip(y, -big, big)
    y = y.astype(target).astype(x.dtype)
    return pass_through(x, jax.lax.stop_gradient(y), None)
