"""The dampened Gram matrix and the factor of its inverse that the OBS sweep reads.

References:
  Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
  Transformers", 2022 (the Cholesky reformulation: rows of the upper factor of ``H^-1``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def prepare(w: jax.Array, h: jax.Array, dampening: float) -> tuple[jax.Array, jax.Array]:
    """Dead inputs (``diag H == 0``) get ``H_jj = 1`` and zero weights; then the dampening.

    Args:
      w: float32 ``[O, I]``.
      h: float32 ``[I, I]``.
      dampening: ``lambda`` as a fraction of the mean of ``diag H``, added to the diagonal.

    Returns:
      ``(w, h)``.
    """
    diag = jnp.diagonal(h)
    dead = diag == 0
    h = h + jnp.diag(dead.astype(h.dtype))
    w = jnp.where(dead[None, :], 0.0, w)
    lam = dampening * jnp.mean(jnp.diagonal(h))
    return w, h + lam * jnp.eye(h.shape[0], dtype=h.dtype)


def inverse_factor(h: jax.Array) -> jax.Array:
    """The upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``), float32 ``[I, I]``.

    With ``J`` the reversal, ``J H J = L L^T`` gives ``H = R R^T`` for the upper ``R = J L J``,
    so ``U = R^-1 = J L^-1 J``: one Cholesky and one triangular inverse, no explicit inverse
    of ``H``. NaN when ``H`` is not positive definite.
    """
    return lower_inverse(jnp.linalg.cholesky(h[::-1, ::-1]))[::-1, ::-1]


def lower_inverse(low: jax.Array, leaf: int = 256) -> jax.Array:
    """The inverse of a lower triangular ``[n, n]`` matrix, by halves.

    ``[[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]`` down to blocks of ``leaf``
    (a triangular solve each): two products per level instead of a solve against the
    identity, which does the work of a full matrix (three times the flops).

    Args:
      low: float32 lower triangular ``[n, n]``.
      leaf: the size solved directly.

    Returns:
      float32 lower triangular ``[n, n]``.
    """
    n = low.shape[0]
    if n <= leaf:
        return jax.scipy.linalg.solve_triangular(low, jnp.eye(n, dtype=low.dtype), lower=True)
    k = -(-n // (2 * leaf)) * leaf
    a_inv, c_inv = lower_inverse(low[:k, :k], leaf), lower_inverse(low[k:, k:], leaf)
    b = -jnp.matmul(c_inv, jnp.matmul(low[k:, :k], a_inv, precision=_HI), precision=_HI)
    top = jnp.concatenate([a_inv, jnp.zeros((k, n - k), low.dtype)], axis=1)
    return jnp.concatenate([top, jnp.concatenate([b, c_inv], axis=1)], axis=0)


def pad(w: jax.Array, h: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """Zero columns for ``w`` and an identity block for ``h`` up to a multiple of ``width``."""
    n = w.shape[-1]
    extra = -n % width
    if not extra:
        return w, h
    w = jnp.pad(w, ((0, 0), (0, extra)))
    h = jnp.pad(h, ((0, extra), (0, extra)))
    return w, h + jnp.diag(jnp.concatenate([jnp.zeros(n), jnp.ones(extra)]).astype(h.dtype))
