"""Feature losses: FitNets hints with a learned projection, and attention transfer."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lightcomp._checks import check_int, check_key
from lightcomp.distill._logits import as_float, check_same_shape, check_scalar, distill_term


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
    s = as_float(student_features, "student_features")
    t = as_float(teacher_features, "teacher_features")
    if projection is not None:
        if not isinstance(projection, dict) or set(projection) != {"kernel", "bias"}:
            raise ValueError(
                "projection must be {'kernel': [c_s, c_t], 'bias': [c_t]} "
                "(see init_feature_projection)"
            )
        k = as_float(projection["kernel"], "projection['kernel']", 2)
        b = as_float(projection["bias"], "projection['bias']")
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
    check_same_shape(s, t, ("student_features (projected)", "teacher_features"))
    return distill_term("mse", s, t, None)


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
    check_scalar(p, "p", lo=0.0, lo_open=True)
    s = as_float(student_features, "student_features", 3)
    t = as_float(teacher_features, "teacher_features", 3)
    if s.shape[:-1] != t.shape[:-1]:
        raise ValueError(
            f"student_features {tuple(s.shape)} and teacher_features {tuple(t.shape)} must "
            "agree on batch and spatial shape (channels, the last axis, may differ)"
        )
    qs, qt = _attention_map(s, p), _attention_map(t, p)
    return jnp.mean(jnp.sum((qs - qt) ** 2, axis=-1))
