"""Binary and ternary weights with straight-through gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lightcomp._checks import check_choice, check_finite, check_floating, check_number
from lightcomp.quant._layout import Layout, layout
from lightcomp.quant._ste import STES, pass_through


def _gate(x: jax.Array, ste: str) -> jax.Array | None:
    # "clipped": the hard-tanh straight-through gradient, 1 where |x| <= 1 (Hubara et al. 2016).
    return jnp.abs(x) <= 1 if ste == "clipped" else None


def _checked_layout(x, axis, ste) -> Layout:
    check_floating(x, "x")
    check_choice(ste, STES, "ste")
    lay = layout(x.shape, axis)
    check_finite(x, "x")
    return lay


def binarize(x: jax.Array, axis: int | None = None, *, ste: str = "identity") -> jax.Array:
    """``sign(x) * mean|x|`` with one ``mean|x|`` per tensor (or per channel along ``axis``).

    ``sign(0)`` is +1. The gradient is straight-through: identity, or ``"clipped"`` to
    ``|x| <= 1``.

    Args:
      x: floating array.
      axis: the axis that keeps its own scale (-1 for Flax kernels); None: one scale.
      ste: ``"identity"`` or ``"clipped"``.

    Returns:
      ``x``'s shape and dtype; two values per channel.

    References:
      Rastegari et al. 2016 (XNOR-Net, binary-weight networks); Courbariaux et al. 2015
      (BinaryConnect).

    Example:
      >>> lc.quant.binarize(jnp.array([0.5, -1.5, 0.0, 2.0]))
      Array([ 1., -1.,  1.,  1.], dtype=float32)
    """
    lay = _checked_layout(x, axis, ste)
    x32 = jax.lax.stop_gradient(x).astype(jnp.float32)
    alpha = jnp.mean(jnp.abs(x32), axis=lay.reduce_axes, keepdims=True)
    y = (jnp.where(x32 >= 0, 1.0, -1.0) * alpha).astype(x.dtype)
    return pass_through(x, jax.lax.stop_gradient(y), _gate(x, ste))


def ternarize(
    x: jax.Array, axis: int | None = None, threshold: float = 0.7, *, ste: str = "identity"
) -> jax.Array:
    """Ternary weights ``alpha * sign(x) * [|x| > delta]`` with ``delta = threshold * mean|x|``.

    ``alpha`` is the mean of the kept ``|x|``; both per tensor or per channel along ``axis``.
    The gradient is straight-through (identity, or ``"clipped"`` to ``|x| <= 1``).

    Args:
      x: floating array.
      axis: the axis that keeps its own scale; None: one scale.
      threshold: ``delta / mean|x|``, in [0, 1]; TWN's 0.7 approximates the optimum for
        Gaussian weights.
      ste: ``"identity"`` or ``"clipped"``.

    Returns:
      ``x``'s shape and dtype; values in ``{-alpha, 0, alpha}`` per channel.

    References:
      Li, Zhang & Liu 2016, "Ternary Weight Networks".
    """
    threshold = check_number(threshold, "threshold", lo=0.0, hi=1.0)
    lay = _checked_layout(x, axis, ste)
    red = lay.reduce_axes
    a = jnp.abs(jax.lax.stop_gradient(x).astype(jnp.float32))
    delta = threshold * jnp.mean(a, axis=red, keepdims=True)
    keep = a > delta
    n = jnp.sum(keep, axis=red, keepdims=True)
    alpha = jnp.sum(jnp.where(keep, a, 0.0), axis=red, keepdims=True) / jnp.maximum(n, 1)
    y = (jnp.sign(x.astype(jnp.float32)) * keep * alpha).astype(x.dtype)
    return pass_through(x, jax.lax.stop_gradient(y), _gate(x, ste))
