"""The logit losses: soft KL, hard-label and matching terms, and the label cross-entropy.

Each takes logits ``[batch, ..., classes]`` (token logits of a sequence model too),
computes in float32 whatever the input dtype, works in log space, and returns the
float32 mean over the tokens (every position but the class axis), weighted by
``weights`` ``[batch, ...]`` when given (a padding mask or per-token weights).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lightcomp._checks import check_finite, check_floating, check_number, is_traced
from lightcomp.distill._weights import check_weights, token_mean

KINDS = ("kl", "hard", "mse")
"""The distillation terms `lightcomp.distill.loss` can mix with the label loss."""

TEMPERATURE_RANGE = (1e-2, 1e2)
"""The temperatures `soft_kl` accepts. Above 100 the float32 ``T**2 * KL`` cancels (its
relative error passes 1e-3 for unit-scale logits and grows as ``T**2``; at ``T = 1e30`` it
is NaN); below 0.01 ``logits / T`` nears float32's range."""


def as_float(x: Any, argname: str, min_ndim: int = 1) -> jax.Array:
    """Checks ``x`` is a floating array of rank >= ``min_ndim`` (finite where concrete) and
    upcasts it to float32."""
    check_floating(x if hasattr(x, "dtype") else _as_array(x, argname), argname)
    x = jnp.asarray(x)
    check_finite(x, argname, why="a loss of them would be NaN")
    if x.ndim < min_ndim:
        raise ValueError(
            f"{argname} must have rank >= {min_ndim} (batch first), got shape {tuple(x.shape)}"
        )
    return x.astype(jnp.float32)


def _as_array(x: Any, argname: str) -> Any:
    """``x`` (a list, a number) as a NumPy array; what NumPy cannot make numeric is a TypeError."""
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{argname} must be an array, got {type(x).__name__}: {e}") from e


def check_same_shape(a: jax.Array, b: jax.Array, names: tuple[str, str]) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{names[0]} has shape {tuple(a.shape)} but {names[1]} has shape "
            f"{tuple(b.shape)}; they must be equal"
        )


def logit_pair(student_logits: Any, teacher_logits: Any, weights: Any = None):
    """Both logits as float32 arrays of one shape and the checked float32 token weights."""
    s = as_float(student_logits, "student_logits")
    t = as_float(teacher_logits, "teacher_logits")
    check_same_shape(s, t, ("student_logits", "teacher_logits"))
    return s, t, check_weights(weights, s.shape[:-1])


def check_scalar(value: Any, argname: str, **bounds: Any) -> None:
    """A real scalar within ``bounds`` (as `check_number`); a traced one (annealed) passes."""
    if not is_traced(value):
        check_number(value, argname, **bounds)


def check_temperature(value: Any) -> None:
    """A real scalar in `TEMPERATURE_RANGE`; a traced one (annealed) passes."""
    if is_traced(value):
        return
    t = check_number(value, "temperature", lo=0.0, lo_open=True)
    lo, hi = TEMPERATURE_RANGE
    if not lo <= t <= hi:
        raise ValueError(
            f"temperature must be in [{lo}, {hi}], got {t}: outside it the float32 "
            "T**2 * KL loses its precision (see lightcomp.distill.TEMPERATURE_RANGE)"
        )


def distill_term(kind: str, s: jax.Array, t: jax.Array, temperature: Any, w=None) -> jax.Array:
    """The term ``kind`` of `loss` on float32 logits of one shape and weights (checked)."""
    if kind == "kl":
        temp = jnp.asarray(temperature, jnp.float32)
        log_ps = jax.nn.log_softmax(s / temp, axis=-1)
        log_pt = jax.nn.log_softmax(t / temp, axis=-1)
        kl = optax.losses.kl_divergence_with_log_targets(log_ps, log_pt, axis=-1)
        return temp**2 * token_mean(kl, w)
    if kind == "hard":
        target = jnp.argmax(t, axis=-1)
        return token_mean(optax.losses.softmax_cross_entropy_with_integer_labels(s, target), w)
    error = optax.losses.squared_error(s, t)
    return jnp.mean(error) if w is None else token_mean(jnp.mean(error, axis=-1), w)


def soft_kl(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    temperature: float = 4.0,
    *,
    weights: jax.Array | None = None,
) -> jax.Array:
    """Temperature-softened KL divergence of the student from the teacher, times ``T**2``.

    ``T**2 * mean_batch( sum_j p_t[j] * (log p_t[j] - log p_s[j]) )`` with
    ``p = softmax(logits / T)``. The ``T**2`` factor keeps the gradient's scale
    independent of ``T`` (the soft targets' gradients scale as ``1 / T**2``). For token
    logits the mean runs over every token, weighted by ``weights`` when given.

    Args:
      student_logits: ``[batch, ..., classes]`` floating.
      teacher_logits: the same shape.
      temperature: ``T`` in `TEMPERATURE_RANGE` (a Python number, or a traced scalar for
        annealing, then unchecked).
      weights: ``[batch, ...]`` (``logits.shape[:-1]``): a padding mask (bool) or
        per-token weights >= 0; None weighs every token 1.

    Returns:
      A float32 scalar >= 0.

    Raises:
      TypeError: non-float logits, a ``temperature`` that is not a real scalar.
      ValueError: different shapes, rank 0, NaN/inf in concrete logits, a ``temperature``
        outside `TEMPERATURE_RANGE` or NaN/inf, weights of another shape.

    References:
      Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

    Example:
      >>> s = jnp.array([[2.0, 0.0, -1.0]])
      >>> float(lc.distill.soft_kl(s, s, temperature=2.0))
      0.0
    """
    check_temperature(temperature)
    s, t, w = logit_pair(student_logits, teacher_logits, weights)
    return distill_term("kl", s, t, temperature, w)


def hard_ce(
    student_logits: jax.Array, teacher_logits: jax.Array, *, weights: jax.Array | None = None
) -> jax.Array:
    """Cross-entropy of the student against the teacher's argmax class, mean over tokens.

    Args:
      student_logits: ``[batch, ..., classes]`` floating.
      teacher_logits: the same shape.
      weights: ``[batch, ...]`` token weights or padding mask, or None (as `soft_kl`).

    Returns:
      A float32 scalar.
    """
    s, t, w = logit_pair(student_logits, teacher_logits, weights)
    return distill_term("hard", s, t, None, w)


def mse(
    student_logits: jax.Array, teacher_logits: jax.Array, *, weights: jax.Array | None = None
) -> jax.Array:
    """Logit matching: the mean over tokens and classes of ``(s - t)**2``.

    Args:
      student_logits: ``[batch, ..., classes]`` floating.
      teacher_logits: the same shape.
      weights: ``[batch, ...]`` token weights or padding mask, or None (as `soft_kl`);
        each token's term is its mean over the classes.

    Returns:
      A float32 scalar.

    References:
      Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?".
    """
    s, t, w = logit_pair(student_logits, teacher_logits, weights)
    return distill_term("mse", s, t, None, w)


def cross_entropy(
    logits: jax.Array, labels: jax.Array, *, weights: jax.Array | None = None
) -> jax.Array:
    """Softmax cross-entropy with labels, mean over tokens.

    Args:
      logits: ``[batch, ..., classes]`` floating.
      labels: integer class indices ``[batch, ...]`` (``logits.shape[:-1]``), or a
        floating distribution per token (one-hot or smoothed) of ``logits``'s shape.
      weights: ``[batch, ...]`` token weights or padding mask, or None (as `soft_kl`).

    Returns:
      A float32 scalar.

    Raises:
      TypeError: non-float logits, labels neither integer nor floating.
      ValueError: shapes do not fit, or concrete integer labels outside ``[0, classes)``.
    """
    x = as_float(logits, "logits")
    return label_ce(x, labels, check_weights(weights, x.shape[:-1]))


def label_ce(x: jax.Array, labels: Any, w: jax.Array | None = None) -> jax.Array:
    """`cross_entropy` of float32 logits ``x`` and weights (checked) with ``labels`` (checked here)."""
    y = labels if hasattr(labels, "dtype") else _as_array(labels, "labels")
    if not (jnp.issubdtype(y.dtype, jnp.floating) or jnp.issubdtype(y.dtype, jnp.integer)) or (
        y.dtype == jnp.bool_
    ):
        raise TypeError(f"labels must be integer class indices or floating, got {y.dtype}")
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.floating):
        check_same_shape(x, y, ("logits", "labels (floating, one row per token)"))
        return token_mean(optax.losses.softmax_cross_entropy(x, y.astype(jnp.float32)), w)
    if tuple(y.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"integer labels must have shape logits.shape[:-1] = {tuple(x.shape[:-1])}, "
            f"got {tuple(y.shape)}"
        )
    if not is_traced(y) and y.size:
        lo, hi = int(np.min(np.asarray(y))), int(np.max(np.asarray(y)))
        if lo < 0 or hi >= x.shape[-1]:
            raise ValueError(
                f"labels must be in [0, {x.shape[-1]}) for {x.shape[-1]} classes, "
                f"got values in [{lo}, {hi}]"
            )
    return token_mean(optax.losses.softmax_cross_entropy_with_integer_labels(x, y), w)
