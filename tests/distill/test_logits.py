"""Tests for lightcomp/distill/_logits.py: the logit losses against direct NumPy formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import distill
from tests.distill.helpers import logits, np_ce, np_log_softmax, np_soft_kl

# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("shape", [(6, 10), (3, 4, 7)])
def test_soft_kl_matches_numpy(jitted, temperature, shape):
    s, t = logits(1, shape), logits(2, shape)
    want = np_soft_kl(s, t, temperature)
    got = distill.soft_kl(s, t, temperature)
    chex.assert_shape(got, ())
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jitted["soft_kl"](s, t, temperature), got, rtol=1e-5, atol=1e-6)


def test_soft_kl_gradient_is_t_times_prob_difference():
    # d/ds T**2 KL(p_t || p_s) = T * (p_s - p_t) / batch  (Hinton et al. 2015, eq. 2)
    s, t, temp = logits(3), logits(4), 3.0
    g = jax.jit(jax.grad(distill.soft_kl))(s, t, temp)
    ps, pt = np.exp(np_log_softmax(s / temp)), np.exp(np_log_softmax(t / temp))
    np.testing.assert_allclose(g, temp * (ps - pt) / s.shape[0], rtol=1e-4, atol=1e-7)


def test_hard_ce_matches_numpy(jitted):
    s, t = logits(5), logits(6)
    want = np_ce(s, t.argmax(-1))
    np.testing.assert_allclose(distill.hard_ce(s, t), want, rtol=1e-5)
    np.testing.assert_allclose(jitted["hard_ce"](s, t), want, rtol=1e-5)


def test_mse_matches_numpy(jitted):
    s, t = logits(7, (5, 3, 4)), logits(8, (5, 3, 4))
    want = ((s.astype(np.float64) - t) ** 2).mean()
    np.testing.assert_allclose(distill.mse(s, t), want, rtol=1e-5)
    np.testing.assert_allclose(jitted["mse"](s, t), want, rtol=1e-5)


def test_cross_entropy_integer_and_one_hot_labels(jitted):
    s = logits(9)
    labels = np.random.default_rng(9).integers(0, s.shape[-1], s.shape[0]).astype(np.int32)
    want = np_ce(s, labels)
    np.testing.assert_allclose(distill.cross_entropy(s, labels), want, rtol=1e-5)
    np.testing.assert_allclose(jitted["cross_entropy"](s, labels), want, rtol=1e-5)
    one_hot = np.eye(s.shape[-1], dtype=np.float32)[labels]
    np.testing.assert_allclose(distill.cross_entropy(s, one_hot), want, rtol=1e-5)


# --------------------------------------------------------------------------- stability, dtypes


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_logits_are_upcast(dtype):
    s, t = logits(15), logits(16)
    got = distill.loss(jnp.asarray(s, dtype), jnp.asarray(t, dtype), temperature=2.0)
    assert got.dtype == jnp.float32
    ref = np_soft_kl(
        np.asarray(jnp.asarray(s, dtype), np.float32),
        np.asarray(jnp.asarray(t, dtype), np.float32),
        2.0,
    )
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_extreme_logits_stay_finite():
    s = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 1.0]], np.float32)
    t = np.array([[-1e4, 1e4, 0.0], [3e4, -3e4, 1.0]], np.float32)
    labels = np.array([1, 0], np.int32)
    for kind in distill.KINDS:
        fn = jax.jit(jax.value_and_grad(distill.loss), static_argnames=("kind",))
        value, grad = fn(s, t, labels, temperature=1.0, kind=kind)
        assert np.isfinite(value) and np.all(np.isfinite(grad))


# --------------------------------------------------------------------------- bad input


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"student_logits has shape \(6, 10\).*\(6, 9\)"):
        distill.soft_kl(logits(0), logits(1, (6, 9)))
    with pytest.raises(ValueError, match="student_logits"):
        jax.jit(distill.loss)(logits(0), logits(1, (5, 10)))
    with pytest.raises(ValueError, match=r"labels must have shape .*\(6,\)"):
        distill.cross_entropy(logits(0), np.zeros(5, np.int32))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        distill.soft_kl(logits(0), logits(1), temperature)
    with pytest.raises(ValueError, match="temperature"):
        distill.loss(logits(0), logits(1), temperature=temperature)


@pytest.mark.parametrize("temperature", [True, "4", np.ones(2)])
def test_temperature_must_be_a_real_scalar(temperature):
    with pytest.raises(TypeError, match="temperature"):
        distill.soft_kl(logits(0), logits(1), temperature)
    with pytest.raises(TypeError, match="temperature"):
        distill.loss(logits(0), logits(1), temperature=temperature, kind="mse")


def test_bad_kind_labels_and_dtypes():
    with pytest.raises(ValueError, match="kind"):
        distill.loss(logits(0), logits(1), kind="cosine")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        distill.cross_entropy(logits(0), np.full(6, 10, np.int32))
    with pytest.raises(TypeError, match="floating"):
        distill.mse(np.ones((2, 3), np.int32), np.ones((2, 3), np.int32))
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        distill.cross_entropy(logits(0), np.zeros(6, bool))
    with pytest.raises(ValueError, match="rank"):
        distill.soft_kl(np.float32(1.0), np.float32(1.0))
