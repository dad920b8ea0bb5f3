"""Order-preserving float32 <-> int32 keys.

XLA sorts and compares int32 keys several times faster than float32 on CPU, and an
int32 range can be bisected exactly (32 counting passes find the k-th smallest value
without a sort). Both k-means (sorting weights) and pruning (finding thresholds) use
these keys.

The map flips the magnitude bits of negative floats: ``-inf < ... < -0.0 < +0.0 < ...
< +inf`` becomes increasing int32 order. It is an involution, so the same function
turns keys back into floats.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def float_to_key(x: jax.Array, *, merge_zeros: bool = False) -> jax.Array:
    """float32 ``[...]`` -> int32 ``[...]`` in the same order.

    Args:
      x: float32 array (cast by the caller).
      merge_zeros: count -0.0 as +0.0 (pruning's ties), at the price of invertibility.
    """
    if merge_zeros:
        x = jnp.where(x == 0, jnp.zeros((), x.dtype), x)
    b = jax.lax.bitcast_convert_type(x, jnp.int32)
    return b ^ ((b >> 31) & jnp.int32(0x7FFFFFFF))


def key_to_float(keys: jax.Array) -> jax.Array:
    """Inverse of `float_to_key` (without ``merge_zeros``): int32 keys -> float32."""
    b = keys ^ ((keys >> 31) & jnp.int32(0x7FFFFFFF))
    return jax.lax.bitcast_convert_type(b, jnp.float32)
