"""Knowledge-distillation losses.

Every loss takes logits (or features) with a leading batch dimension, computes
in float32 whatever the input dtype (bfloat16 and float16 logits are upcast),
works in log space (``jax.nn.log_softmax``: no ``log(0)``), and returns a
float32 scalar: the mean over the batch (and over any other leading axes, e.g.
sequence positions). Shapes are checked when the function is traced and a
mismatch is a ``ValueError`` naming both shapes.

The teacher's outputs are used as given; the distillation step runs the teacher
without gradient, so nothing here stops gradients.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lightcomp._checks import (
    check_choice,
    check_floating,
    check_int,
    check_key,
    check_number,
    is_traced,
)

__all__ = [
    "KINDS",
    "attention_transfer",
    "cross_entropy",
    "feature_mse",
    "hard_ce",
    "init_feature_projection",
    "loss",
    "loss_parts",
    "mse",
    "soft_kl",
]

KINDS = ("kl", "hard", "mse")
"""The distillation terms `loss` can mix with the label loss."""


def _as_float(x: Any, argname: str, min_ndim: int = 1) -> jax.Array:
    """Checks ``x`` is a floating array of rank >= ``min_ndim`` and upcasts it to float32."""
    x = jnp.asarray(x)
    check_floating(x, argname)
    if x.ndim < min_ndim:
        raise ValueError(
            f"{argname} must have rank >= {min_ndim} (batch first), got shape {tuple(x.shape)}"
        )
    return x.astype(jnp.float32)


def _check_same_shape(a: jax.Array, b: jax.Array, names: tuple[str, str]) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{names[0]} has shape {tuple(a.shape)} but {names[1]} has shape "
            f"{tuple(b.shape)}; they must be equal"
        )


def _logit_pair(student_logits: Any, teacher_logits: Any) -> tuple[jax.Array, jax.Array]:
    """Both logits as float32 arrays of one shape (the check every distillation loss makes)."""
    s = _as_float(student_logits, "student_logits")
    t = _as_float(teacher_logits, "teacher_logits")
    _check_same_shape(s, t, ("student_logits", "teacher_logits"))
    return s, t


def _check_scalar(value: Any, argname: str, **bounds: Any) -> None:
    """A real scalar within ``bounds`` (as `check_number`); a traced one (annealed) passes."""
    if not is_traced(value):
        check_number(value, argname, **bounds)


# --------------------------------------------------------------------------- logit losses


def _distill_term(kind: str, s: jax.Array, t: jax.Array, temperature: Any) -> jax.Array:
    """The term ``kind`` of `loss` on float32 logits of one shape (checked by the caller)."""
    if kind == "kl":
        temp = jnp.asarray(temperature, jnp.float32)
        log_ps = jax.nn.log_softmax(s / temp, axis=-1)
        log_pt = jax.nn.log_softmax(t / temp, axis=-1)
        kl = optax.losses.kl_divergence_with_log_targets(log_ps, log_pt, axis=-1)
        return temp**2 * jnp.mean(kl)
    if kind == "hard":
        target = jnp.argmax(t, axis=-1)
        return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(s, target))
    return jnp.mean(optax.losses.squared_error(s, t))


def soft_kl(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: float = 4.0
) -> jax.Array:
    """Temperature-softened KL divergence of the student from the teacher, times ``T**2``.

    ``T**2 * mean_batch( sum_j p_t[j] * (log p_t[j] - log p_s[j]) )`` with
    ``p = softmax(logits / T)``. The ``T**2`` factor keeps the gradient's scale
    independent of ``T`` (the soft targets' gradients scale as ``1 / T**2``).

    Args:
      student_logits: ``[batch, ..., classes]`` floating.
      teacher_logits: the same shape.
      temperature: ``T > 0`` (a Python number, or a traced scalar for annealing).

    Returns:
      A float32 scalar >= 0.

    Raises:
      TypeError: non-float logits, a ``temperature`` that is not a real scalar.
      ValueError: different shapes, rank 0, ``temperature <= 0`` or NaN/inf.

    References:
      Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

    Example:
      >>> s = jnp.array([[2.0, 0.0, -1.0]])
      >>> float(lc.distill.soft_kl(s, s, temperature=2.0))
      0.0
    """
    _check_scalar(temperature, "temperature", lo=0.0, lo_open=True)
    return _distill_term("kl", *_logit_pair(student_logits, teacher_logits), temperature)


def hard_ce(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """Cross-entropy of the student against the teacher's argmax class, mean over the batch.

    Args:
      student_logits: ``[batch, ..., classes]`` floating.
      teacher_logits: the same shape.

    Returns:
      A float32 scalar.
    """
    return _distill_term("hard", *_logit_pair(student_logits, teacher_logits), None)


def mse(student_logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
    """Logit matching: the mean over batch and classes of ``(s - t)**2``.

    Args:
      student_logits: ``[batch, ..., classes]`` floating.
      teacher_logits: the same shape.

    Returns:
      A float32 scalar.

    References:
      Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?".
    """
    return _distill_term("mse", *_logit_pair(student_logits, teacher_logits), None)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy with labels, mean over the batch.

    Args:
      logits: ``[batch, ..., classes]`` floating.
      labels: integer class indices ``[batch, ...]`` (``logits.shape[:-1]``), or a
        floating distribution per example (one-hot or smoothed) of ``logits``'s shape.

    Returns:
      A float32 scalar.

    Raises:
      TypeError: non-float logits, labels neither integer nor floating.
      ValueError: shapes do not fit, or concrete integer labels outside ``[0, classes)``.
    """
    return _label_ce(_as_float(logits, "logits"), labels)


def _label_ce(x: jax.Array, labels: Any) -> jax.Array:
    """`cross_entropy` of float32 logits ``x`` (checked) with ``labels`` (checked here)."""
    y = jnp.asarray(labels)
    if jnp.issubdtype(y.dtype, jnp.floating):
        _check_same_shape(x, y, ("logits", "labels (floating, one row per example)"))
        return jnp.mean(optax.losses.softmax_cross_entropy(x, y.astype(jnp.float32)))
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"labels must be integer class indices or floating, got {y.dtype}")
    if tuple(y.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"integer labels must have shape logits.shape[:-1] = {tuple(x.shape[:-1])}, "
            f"got {tuple(y.shape)}"
        )
    if not is_traced(y) and y.size:
        lo, hi = int(jnp.min(y)), int(jnp.max(y))
        if lo < 0 or hi >= x.shape[-1]:
            raise ValueError(
                f"labels must be in [0, {x.shape[-1]}) for {x.shape[-1]} classes, "
                f"got values in [{lo}, {hi}]"
            )
    return jnp.mean(optax.losses.softmax_cross_entropy_with_integer_labels(x, y))


# --------------------------------------------------------------------------- features


def init_feature_projection(
    key: jax.Array, in_features: int, out_features: int, *, dtype: Any = jnp.float32
) -> dict[str, jax.Array]:
    """Initial parameters of the linear map that takes student features to the teacher's width.

    The kernel is LeCun-normal (variance ``1 / in_features``, as Flax's ``Dense``),
    the bias zero. Train it with the student (it is an ordinary parameter pytree).

    Args:
      key: PRNG key.
      in_features: the student's feature width (last axis).
      out_features: the teacher's feature width.
      dtype: parameter dtype.

    Returns:
      ``{"kernel": [in_features, out_features], "bias": [out_features]}``.

    References:
      Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (the regressor).
    """
    check_key(key)
    in_features = check_int(in_features, "in_features", lo=1)
    out_features = check_int(out_features, "out_features", lo=1)
    kernel = jax.nn.initializers.lecun_normal()(key, (in_features, out_features), dtype)
    return {"kernel": kernel, "bias": jnp.zeros((out_features,), dtype)}


def feature_mse(
    student_features: jax.Array,
    teacher_features: jax.Array,
    projection: dict[str, jax.Array] | None = None,
) -> jax.Array:
    """Mean squared error between intermediate features, with an optional learned projection.

    With ``projection`` (from `init_feature_projection`), the student's features
    are first mapped ``f @ kernel + bias`` over the last axis (a 1x1 convolution
    for ``[batch, h, w, c]`` maps), so a thin student can match a wide teacher.

    Args:
      student_features: ``[batch, ..., c_s]`` floating.
      teacher_features: ``[batch, ..., c_t]``; ``c_t == c_s`` unless ``projection`` is given.
      projection: ``{"kernel": [c_s, c_t], "bias": [c_t]}`` or None.

    Returns:
      A float32 scalar: the mean over every element of ``(proj(s) - t)**2``.

    Raises:
      ValueError: shapes that do not fit (the message says to pass a projection
        when only the widths differ).

    References:
      Romero et al. 2015, "FitNets: Hints for Thin Deep Nets".
    """
    s = _as_float(student_features, "student_features")
    t = _as_float(teacher_features, "teacher_features")
    if projection is not None:
        if not isinstance(projection, dict) or set(projection) != {"kernel", "bias"}:
            raise ValueError(
                "projection must be {'kernel': [c_s, c_t], 'bias': [c_t]} "
                "(see init_feature_projection)"
            )
        k = _as_float(projection["kernel"], "projection['kernel']", 2)
        b = _as_float(projection["bias"], "projection['bias']")
        if k.ndim != 2 or k.shape[0] != s.shape[-1] or b.shape != (k.shape[1],):
            raise ValueError(
                f"projection kernel {tuple(k.shape)} / bias {tuple(b.shape)} do not map "
                f"student width {s.shape[-1]} to [c_t] (kernel must be [c_s, c_t], bias [c_t])"
            )
        s = s @ k + b
    elif s.shape[:-1] == t.shape[:-1] and s.shape[-1] != t.shape[-1]:
        raise ValueError(
            f"student_features width {s.shape[-1]} differs from teacher_features width "
            f"{t.shape[-1]}; pass projection=init_feature_projection(key, "
            f"{s.shape[-1]}, {t.shape[-1]})"
        )
    _check_same_shape(s, t, ("student_features (projected)", "teacher_features"))
    return _distill_term("mse", s, t, None)


def _attention_map(f: jax.Array, p: float) -> jax.Array:
    # [batch, ..., c] -> [batch, positions], L2-normalised per example.
    a = jnp.mean(jnp.abs(f) ** p, axis=-1).reshape(f.shape[0], -1)
    norm = jnp.sqrt(jnp.sum(a * a, axis=-1, keepdims=True))
    return a / jnp.maximum(norm, 1e-12)


def attention_transfer(
    student_features: jax.Array, teacher_features: jax.Array, *, p: float = 2.0
) -> jax.Array:
    """Activation-based attention transfer between convolutional feature maps.

    The attention map of ``A`` (``[batch, h, w, c]``, channels last as Flax) is
    ``Q = mean_c |A_c|**p`` flattened to ``[batch, h*w]`` and L2-normalised per
    example; the loss is ``mean_batch ||Q_s - Q_t||_2**2``. Channel counts may
    differ (maps are per position); spatial sizes must agree. The squared
    distance (as in the authors' code) keeps the gradient finite when the maps
    coincide.

    Args:
      student_features: ``[batch, h, w, c_s]`` (any rank >= 3 with channels last).
      teacher_features: ``[batch, h, w, c_t]``.
      p: the power of the activation magnitudes, > 0 (the paper uses 2).

    Returns:
      A float32 scalar in ``[0, 4]``.

    Raises:
      ValueError: batch or spatial shapes differ, rank < 3, ``p <= 0``.

    References:
      Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (ICLR).
    """
    _check_scalar(p, "p", lo=0.0, lo_open=True)
    s = _as_float(student_features, "student_features", 3)
    t = _as_float(teacher_features, "teacher_features", 3)
    if s.shape[:-1] != t.shape[:-1]:
        raise ValueError(
            f"student_features {tuple(s.shape)} and teacher_features {tuple(t.shape)} must "
            "agree on batch and spatial shape (channels, the last axis, may differ)"
        )
    qs, qt = _attention_map(s, p), _attention_map(t, p)
    return jnp.mean(jnp.sum((qs - qt) ** 2, axis=-1))


# --------------------------------------------------------------------------- the mix


def loss_parts(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array | None = None,
    *,
    alpha: float = 0.5,
    temperature: float = 4.0,
    kind: str = "kl",
) -> dict[str, jax.Array]:
    """`loss` and its parts, for metrics.

    Args:
      student_logits, teacher_logits, labels, alpha, temperature, kind: as `loss`.

    Returns:
      ``{"loss": total, "distill": distillation term}`` plus ``"label"`` (the
      cross-entropy with the labels) when ``labels`` is given; float32 scalars.

    Raises:
      TypeError, ValueError: as `loss`.
    """
    kind = check_choice(kind, KINDS, "kind")
    _check_scalar(alpha, "alpha", lo=0.0, hi=1.0)
    _check_scalar(temperature, "temperature", lo=0.0, lo_open=True)
    s, t = _logit_pair(student_logits, teacher_logits)
    d = _distill_term(kind, s, t, temperature)
    if labels is None:
        return {"loss": d, "distill": d}
    ce = _label_ce(s, labels)
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
) -> jax.Array:
    """The distillation objective: ``alpha * distill + (1 - alpha) * cross_entropy(labels)``.

    Args:
      student_logits: ``[batch, ..., classes]`` floating.
      teacher_logits: the same shape.
      labels: integer ``[batch, ...]`` or floating ``[batch, ..., classes]``; None
        for distillation alone (then the result is the distillation term, whatever ``alpha``).
      alpha: weight of the distillation term, in ``[0, 1]``.
      temperature: softening temperature for ``kind="kl"`` (> 0).
      kind: ``"kl"`` (`soft_kl`), ``"hard"`` (`hard_ce`) or ``"mse"`` (`mse`).

    Returns:
      A float32 scalar.

    Raises:
      TypeError: non-float logits, an ``alpha`` or ``temperature`` that is not a real
        scalar (booleans are not numbers).
      ValueError: bad ``kind``, ``alpha`` outside ``[0, 1]``, ``temperature <= 0``, NaN or
        inf in either, shapes that do not fit.

    References:
      Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".
    """
    return loss_parts(
        student_logits, teacher_logits, labels, alpha=alpha, temperature=temperature, kind=kind
    )["loss"]
