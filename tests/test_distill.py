"""Tests for lightcomp.distill: distillation losses against direct NumPy formulas."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp import distill

# --------------------------------------------------------------------------- NumPy references


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    z = x - x.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_soft_kl(s, t, temp):
    ls, lt = _np_log_softmax(s / temp), _np_log_softmax(t / temp)
    kl = (np.exp(lt) * (lt - ls)).sum(-1)
    return temp**2 * kl.mean()


def _np_ce(s, labels):
    ls = _np_log_softmax(s)
    return -np.take_along_axis(ls, labels[..., None], -1)[..., 0].mean()


def _np_attention(f, p):
    a = (np.abs(np.asarray(f, np.float64)) ** p).mean(-1).reshape(f.shape[0], -1)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _logits(seed, shape=(6, 10), scale=3.0):
    rng = np.random.default_rng(seed)
    return (scale * rng.normal(size=shape)).astype(np.float32)


@pytest.fixture(scope="module")
def jitted():
    return {
        "soft_kl": jax.jit(distill.soft_kl),
        "hard_ce": jax.jit(distill.hard_ce),
        "mse": jax.jit(distill.mse),
        "cross_entropy": jax.jit(distill.cross_entropy),
        "loss": jax.jit(distill.loss, static_argnames=("kind",)),
        "feature_mse": jax.jit(distill.feature_mse),
        "attention_transfer": jax.jit(distill.attention_transfer, static_argnames=("p",)),
    }


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("shape", [(6, 10), (3, 4, 7)])
def test_soft_kl_matches_numpy(jitted, temperature, shape):
    s, t = _logits(1, shape), _logits(2, shape)
    want = _np_soft_kl(s, t, temperature)
    got = distill.soft_kl(s, t, temperature)
    chex.assert_shape(got, ())
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jitted["soft_kl"](s, t, temperature), got, rtol=1e-5, atol=1e-6)


def test_soft_kl_gradient_is_t_times_prob_difference():
    # d/ds T**2 KL(p_t || p_s) = T * (p_s - p_t) / batch  (Hinton et al. 2015, eq. 2)
    s, t, temp = _logits(3), _logits(4), 3.0
    g = jax.jit(jax.grad(distill.soft_kl))(s, t, temp)
    ps, pt = np.exp(_np_log_softmax(s / temp)), np.exp(_np_log_softmax(t / temp))
    np.testing.assert_allclose(g, temp * (ps - pt) / s.shape[0], rtol=1e-4, atol=1e-7)


def test_hard_ce_matches_numpy(jitted):
    s, t = _logits(5), _logits(6)
    want = _np_ce(s, t.argmax(-1))
    np.testing.assert_allclose(distill.hard_ce(s, t), want, rtol=1e-5)
    np.testing.assert_allclose(jitted["hard_ce"](s, t), want, rtol=1e-5)


def test_mse_matches_numpy(jitted):
    s, t = _logits(7, (5, 3, 4)), _logits(8, (5, 3, 4))
    want = ((s.astype(np.float64) - t) ** 2).mean()
    np.testing.assert_allclose(distill.mse(s, t), want, rtol=1e-5)
    np.testing.assert_allclose(jitted["mse"](s, t), want, rtol=1e-5)


def test_cross_entropy_integer_and_one_hot_labels(jitted):
    s = _logits(9)
    labels = np.random.default_rng(9).integers(0, s.shape[-1], s.shape[0]).astype(np.int32)
    want = _np_ce(s, labels)
    np.testing.assert_allclose(distill.cross_entropy(s, labels), want, rtol=1e-5)
    np.testing.assert_allclose(jitted["cross_entropy"](s, labels), want, rtol=1e-5)
    one_hot = np.eye(s.shape[-1], dtype=np.float32)[labels]
    np.testing.assert_allclose(distill.cross_entropy(s, one_hot), want, rtol=1e-5)


@pytest.mark.parametrize("kind", ["kl", "hard", "mse"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_loss_mixes_label_and_distillation_terms(jitted, kind, alpha):
    s, t, temp = _logits(10), _logits(11), 2.5
    labels = np.random.default_rng(12).integers(0, 10, 6).astype(np.int32)
    dist = {
        "kl": _np_soft_kl(s, t, temp),
        "hard": _np_ce(s, t.argmax(-1)),
        "mse": ((s.astype(np.float64) - t) ** 2).mean(),
    }[kind]
    want = alpha * dist + (1 - alpha) * _np_ce(s, labels)
    kw = dict(alpha=alpha, temperature=temp, kind=kind)
    np.testing.assert_allclose(distill.loss(s, t, labels, **kw), want, rtol=1e-5)
    np.testing.assert_allclose(jitted["loss"](s, t, labels, **kw), want, rtol=1e-5)
    parts = distill.loss_parts(s, t, labels, **kw)
    assert set(parts) == {"loss", "distill", "label"}
    np.testing.assert_allclose(parts["distill"], dist, rtol=1e-5)
    # without labels: the distillation term alone, whatever alpha
    np.testing.assert_allclose(distill.loss(s, t, **kw), dist, rtol=1e-5)


def test_feature_mse_with_and_without_projection(jitted):
    rng = np.random.default_rng(13)
    fs = rng.normal(size=(4, 3, 3, 5)).astype(np.float32)
    ft = rng.normal(size=(4, 3, 3, 8)).astype(np.float32)
    proj = distill.init_feature_projection(jax.random.key(0), 5, 8)
    chex.assert_shape(proj["kernel"], (5, 8))
    chex.assert_shape(proj["bias"], (8,))
    proj = {"kernel": proj["kernel"], "bias": jnp.asarray(rng.normal(size=8), jnp.float32)}
    k, b = np.asarray(proj["kernel"], np.float64), np.asarray(proj["bias"], np.float64)
    want = ((fs.astype(np.float64) @ k + b - ft) ** 2).mean()
    np.testing.assert_allclose(distill.feature_mse(fs, ft, proj), want, rtol=1e-5)
    np.testing.assert_allclose(jitted["feature_mse"](fs, ft, proj), want, rtol=1e-5)
    same = rng.normal(size=(4, 3, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(
        distill.feature_mse(fs, same), ((fs.astype(np.float64) - same) ** 2).mean(), rtol=1e-5
    )
    # the projection is trainable: the loss has a gradient for it
    g = jax.jit(jax.grad(lambda p: distill.feature_mse(fs, ft, p)))(proj)
    assert float(jnp.abs(g["kernel"]).sum()) > 0


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_attention_transfer_matches_numpy(jitted, p):
    rng = np.random.default_rng(14)
    fs = rng.normal(size=(3, 4, 5, 6)).astype(np.float32)
    ft = rng.normal(size=(3, 4, 5, 16)).astype(np.float32)  # channel counts may differ
    want = ((_np_attention(fs, p) - _np_attention(ft, p)) ** 2).sum(-1).mean()
    np.testing.assert_allclose(distill.attention_transfer(fs, ft, p=p), want, rtol=1e-5)
    np.testing.assert_allclose(jitted["attention_transfer"](fs, ft, p=p), want, rtol=1e-5)
    g = jax.jit(jax.grad(distill.attention_transfer))(fs, fs)
    assert np.all(np.isfinite(g)) and np.allclose(g, 0.0, atol=1e-6)


# --------------------------------------------------------------------------- stability, dtypes


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_logits_are_upcast(dtype):
    s, t = _logits(15), _logits(16)
    got = distill.loss(jnp.asarray(s, dtype), jnp.asarray(t, dtype), temperature=2.0)
    assert got.dtype == jnp.float32
    ref = _np_soft_kl(
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


_JIT_SOFT_KL = jax.jit(distill.soft_kl)
_JIT_PARTS = jax.jit(
    lambda s, t, y, a, temp: distill.loss_parts(s, t, y, alpha=a, temperature=temp)
)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    temperature=st.floats(0.1, 50.0),
    alpha=st.floats(0.0, 1.0),
)
def test_properties_nonnegative_zero_at_equality_convex_mix(seed, temperature, alpha):
    s, t = _logits(seed, (3, 5)), _logits(seed + 1, (3, 5))
    assert float(_JIT_SOFT_KL(s, t, temperature)) >= -1e-5
    assert abs(float(_JIT_SOFT_KL(s, s, temperature))) < 1e-5
    labels = np.zeros(3, np.int32)
    parts = _JIT_PARTS(s, t, labels, alpha, temperature)
    lo = min(float(parts["distill"]), float(parts["label"]))
    hi = max(float(parts["distill"]), float(parts["label"]))
    assert lo - 1e-4 <= float(parts["loss"]) <= hi + 1e-4


# --------------------------------------------------------------------------- bad input


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"student_logits has shape \(6, 10\).*\(6, 9\)"):
        distill.soft_kl(_logits(0), _logits(1, (6, 9)))
    with pytest.raises(ValueError, match="student_logits"):
        jax.jit(distill.loss)(_logits(0), _logits(1, (5, 10)))
    with pytest.raises(ValueError, match=r"labels must have shape .*\(6,\)"):
        distill.cross_entropy(_logits(0), np.zeros(5, np.int32))
    with pytest.raises(ValueError, match="channels"):
        distill.attention_transfer(np.ones((2, 4, 4, 3)), np.ones((2, 5, 4, 3)))
    with pytest.raises(ValueError, match="projection"):
        distill.feature_mse(np.ones((2, 3), np.float32), np.ones((2, 4), np.float32))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        distill.soft_kl(_logits(0), _logits(1), temperature)
    with pytest.raises(ValueError, match="temperature"):
        distill.loss(_logits(0), _logits(1), temperature=temperature)


@pytest.mark.parametrize("temperature", [True, "4", np.ones(2)])
def test_temperature_must_be_a_real_scalar(temperature):
    with pytest.raises(TypeError, match="temperature"):
        distill.soft_kl(_logits(0), _logits(1), temperature)
    with pytest.raises(TypeError, match="temperature"):
        distill.loss(_logits(0), _logits(1), temperature=temperature, kind="mse")


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        distill.loss(_logits(0), _logits(1), np.zeros(6, np.int32), alpha=alpha)


@pytest.mark.parametrize("alpha", [True, "0.5"])
def test_alpha_is_a_number_not_a_bool(alpha):
    with pytest.raises(TypeError, match="alpha"):
        distill.loss_parts(_logits(0), _logits(1), np.zeros(6, np.int32), alpha=alpha)


def test_traced_alpha_and_temperature_are_accepted():
    s, t = _logits(17), _logits(18)
    labels = np.arange(6, dtype=np.int32)
    got = _JIT_PARTS(s, t, labels, jnp.float32(0.25), jnp.float32(3.0))
    want = 0.25 * _np_soft_kl(s, t, 3.0) + 0.75 * _np_ce(s, labels)
    np.testing.assert_allclose(got["loss"], want, rtol=1e-5)


def test_bad_feature_arguments():
    with pytest.raises(ValueError, match="in_features must be >= 1"):
        distill.init_feature_projection(jax.random.key(0), 0, 4)
    with pytest.raises(TypeError, match="out_features must be an int"):
        distill.init_feature_projection(jax.random.key(0), 4, 2.0)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        distill.init_feature_projection(0, 4, 4)
    fs = np.ones((2, 3, 3, 4), np.float32)
    with pytest.raises(ValueError, match="p must be"):
        distill.attention_transfer(fs, fs, p=0.0)
    with pytest.raises(TypeError, match="p must be a number"):
        distill.attention_transfer(fs, fs, p=True)
    with pytest.raises(ValueError, match="projection must be"):
        distill.feature_mse(fs, fs, {"kernel": np.eye(4, dtype=np.float32)})
    with pytest.raises(ValueError, match="do not map"):
        distill.feature_mse(fs, fs, {"kernel": np.eye(3, dtype=np.float32), "bias": np.zeros(3)})


def test_bad_kind_labels_and_dtypes():
    with pytest.raises(ValueError, match="kind"):
        distill.loss(_logits(0), _logits(1), kind="cosine")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\)"):
        distill.cross_entropy(_logits(0), np.full(6, 10, np.int32))
    with pytest.raises(TypeError, match="floating"):
        distill.mse(np.ones((2, 3), np.int32), np.ones((2, 3), np.int32))
    with pytest.raises(TypeError, match="labels must be integer class indices"):
        distill.cross_entropy(_logits(0), np.zeros(6, bool))
    with pytest.raises(ValueError, match="rank"):
        distill.soft_kl(np.float32(1.0), np.float32(1.0))
