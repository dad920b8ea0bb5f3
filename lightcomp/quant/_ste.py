"""The straight-through estimator: the value of one array, the gradient of another."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lightcomp._checks import check_floating

STES = ("identity", "clipped")


def straight_through(x: jax.Array, y: jax.Array, gate: jax.Array | None = None) -> jax.Array:
    """Returns ``y``; the incoming gradient passes to ``x`` (times ``gate``) and to ``y``.

    The forward value is ``y`` exactly. In the backward pass ``x`` receives the incoming
    gradient ``g`` (``g * gate`` where ``gate`` is given, e.g. the clipped STE's mask of
    unclipped elements), and ``y`` receives ``g`` as well, so whatever ``y`` was computed
    from (shared centroids, say) is trained too. Put ``y`` under ``jax.lax.stop_gradient``
    for a pure straight-through estimator.

    Args:
      x: floating array whose gradient is straight-through.
      y: floating array of ``x``'s shape and dtype: the value.
      gate: None, or an array (bool or float) broadcastable to ``x``.

    Returns:
      ``y``.

    Raises:
      TypeError / ValueError: non-float ``x`` or ``y``, ``y`` of another shape or dtype, or a
        ``gate`` that does not broadcast to ``x``.

    References:
      Bengio, Léonard & Courville 2013, "Estimating or Propagating Gradients Through
      Stochastic Neurons for Conditional Computation".

    Example:
      >>> x = jnp.array([0.2, 1.7, -3.1])
      >>> f = lambda x: lc.quant.straight_through(x, jax.lax.stop_gradient(jnp.round(x))).sum()
      >>> jax.grad(f)(x)
      Array([1., 1., 1.], dtype=float32)
    """
    check_floating(x, "x")
    check_floating(y, "y")
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(
            f"y must have x's shape and dtype: x is {x.dtype}{list(x.shape)}, "
            f"y is {y.dtype}{list(y.shape)}"
        )
    if gate is not None:
        gate = jnp.asarray(gate)
        try:
            fits = jnp.broadcast_shapes(gate.shape, x.shape) == x.shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"gate of shape {gate.shape} does not broadcast to x {x.shape}")
    return pass_through(x, y, gate)


@jax.custom_vjp
def pass_through(x, y, gate):
    """`straight_through`, unchecked (for callers that built ``y`` from ``x``)."""
    del x, gate
    return y


def _fwd(x, y, gate):
    del x
    return y, gate


def _bwd(gate, g):
    if gate is None:
        return g, g, None
    return g * gate.astype(g.dtype), g, jnp.zeros_like(gate)


pass_through.defvjp(_fwd, _bwd)
