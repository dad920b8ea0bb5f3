"""Averaging over weighted tokens: the mean every loss and metric takes."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp._checks import check_finite, is_traced


def check_weights(
    weights: Any, shape: tuple[int, ...], argname: str = "weights"
) -> jax.Array | None:
    """``weights`` as float32 of ``shape`` (None stays None), checked before any work.

    Args:
      weights: ``[batch, ...]`` per-token weights: a padding mask (bool: True counts) or
        non-negative numbers; None weighs every token 1.
      shape: the shape they must have (the logits' shape without the class axis).
      argname: the argument's name in messages (``'batch["weights"]'`` in the step).

    Returns:
      float32 weights, or None.

    Raises:
      TypeError: weights neither boolean, integer nor floating.
      ValueError: another shape; concrete weights that are negative, NaN or inf.
    """
    if weights is None:
        return None
    w = jnp.asarray(weights) if not isinstance(weights, np.ndarray) else weights
    kind = w.dtype
    if not (
        jnp.issubdtype(kind, jnp.floating)
        or jnp.issubdtype(kind, jnp.integer)
        or jnp.issubdtype(kind, jnp.bool_)
    ):
        raise TypeError(f"{argname} must be a boolean mask or real weights, got {kind}")
    if tuple(w.shape) != tuple(shape):
        raise ValueError(
            f"{argname} must have shape {tuple(shape)} (the logits' shape without the class "
            f"axis: one weight per token), got {tuple(w.shape)}"
        )
    if not is_traced(w):
        check_finite(w, argname)
        if np.any(np.asarray(w, np.float32) < 0):
            raise ValueError(f"{argname} must be >= 0 (a padding mask or token weights)")
    return jnp.asarray(w, jnp.float32)


def token_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
    """`weighted_mean` of float32 ``values`` and checked float32 ``weights`` (or None)."""
    if weights is None:
        return jnp.mean(values)
    total = jnp.sum(weights)
    return jnp.sum(weights * values) / jnp.where(total > 0, total, 1.0)


def weighted_mean(values: Any, weights: Any = None) -> jax.Array:
    """The mean of ``values`` over weighted tokens: ``sum(w * v) / sum(w)``.

    Without weights it is ``jnp.mean(values)``. When every weight is 0 (a batch of
    padding) the result is 0, not NaN.

    Args:
      values: ``[batch, ...]`` per-token values (computed in float32).
      weights: the same shape (a bool padding mask or weights >= 0), or None.

    Returns:
      A float32 scalar.

    Raises:
      TypeError, ValueError: as `check_weights`.

    Example:
      >>> v = jnp.array([[1.0, 2.0, 9.0]])
      >>> float(lc.distill.weighted_mean(v, jnp.array([[1.0, 1.0, 0.0]])))
      1.5
    """
    v = jnp.asarray(values).astype(jnp.float32)
    return token_mean(v, check_weights(weights, v.shape))
