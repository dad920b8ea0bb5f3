"""`loss`: the distillation term mixed with the label cross-entropy, and its parts."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lightcomp._checks import check_choice, is_traced
from lightcomp.distill._logits import (
    KINDS,
    check_scalar,
    check_temperature,
    distill_term,
    label_ce,
    logit_pair,
)


def loss_parts(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array | None = None,
    *,
    alpha: float = 0.5,
    temperature: float = 4.0,
    kind: str = "kl",
    weights: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """`loss` and its parts, for metrics.

    Args:
      student_logits, teacher_logits, labels, alpha, temperature, kind, weights: as `loss`.

    Returns:
      ``{"loss": total, "distill": distillation term}`` plus ``"label"`` (the
      cross-entropy with the labels) when ``labels`` is given; float32 scalars, each a
      mean over the (weighted) tokens.

    Raises:
      TypeError, ValueError: as `loss`.
    """
    kind = check_choice(kind, KINDS, "kind")
    check_scalar(alpha, "alpha", lo=0.0, hi=1.0)
    check_temperature(temperature)
    if labels is None and not is_traced(alpha) and float(alpha) == 0.0:
        raise ValueError(
            "alpha=0.0 weighs the distillation term by 0 and leaves the label loss alone, "
            "but labels is None: pass labels, or alpha > 0 to distill"
        )
    s, t, w = logit_pair(student_logits, teacher_logits, weights)
    d = distill_term(kind, s, t, temperature, w)
    if labels is None:
        return {"loss": d, "distill": d}
    ce = label_ce(s, labels, w)
    a = jnp.asarray(alpha, jnp.float32)
    return {"loss": a * d + (1.0 - a) * ce, "distill": d, "label": ce}


def loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array | None = None,
    *,
    alpha: float = 0.5,
    temperature: float = 4.0,
    kind: str = "kl",
    weights: jax.Array | None = None,
) -> jax.Array:
    """The distillation objective: ``alpha * distill + (1 - alpha) * cross_entropy(labels)``.

    Both terms are means over the tokens (every axis but the class axis), weighted by
    ``weights`` when given, so a sequence model's padding counts for nothing.

    Args:
      student_logits: ``[batch, ..., classes]`` floating.
      teacher_logits: the same shape.
      labels: integer ``[batch, ...]`` or floating ``[batch, ..., classes]``, concrete
        integer labels in ``[0, classes)``; None for distillation alone (then the result
        is the distillation term, for any ``alpha > 0``; ``alpha=0`` is refused).
      alpha: weight of the distillation term, in ``[0, 1]``.
      temperature: softening temperature for ``kind="kl"``, in
        `lightcomp.distill.TEMPERATURE_RANGE` (checked when concrete).
      kind: ``"kl"`` (`soft_kl`), ``"hard"`` (`hard_ce`) or ``"mse"`` (`mse`).
      weights: ``[batch, ...]`` (``logits.shape[:-1]``): a padding mask (bool) or
        per-token weights >= 0; None weighs every token 1.

    Returns:
      A float32 scalar.

    Raises:
      TypeError: non-float logits, an ``alpha`` or ``temperature`` that is not a real
        scalar (booleans are not numbers), weights neither boolean nor real.
      ValueError: bad ``kind``, ``alpha`` outside ``[0, 1]`` (or 0 without labels), a
        ``temperature`` outside `lightcomp.distill.TEMPERATURE_RANGE`, NaN or inf in either
        or in concrete logits, labels outside ``[0, classes)``, shapes that do not fit
        (weights included).

    References:
      Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

    Example:
      >>> s = jnp.array([[[4.0, 0.0], [0.0, 4.0]]])    # [batch, tokens, classes]
      >>> y = jnp.array([[0, 0]])
      >>> pad = jnp.array([[True, False]])             # the second token is padding
      >>> round(float(lc.distill.loss(s, s, y, alpha=0.0, weights=pad)), 4)
      0.0181
    """
    return loss_parts(
        student_logits,
        teacher_logits,
        labels,
        alpha=alpha,
        temperature=temperature,
        kind=kind,
        weights=weights,
    )["loss"]
