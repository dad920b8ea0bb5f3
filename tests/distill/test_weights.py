"""Tests for token weights (lightcomp/distill/_weights.py) through every logit loss.

Sequence models: logits ``[batch, len, classes]``, labels ``[batch, len]`` and a padding
mask or per-token weights ``[batch, len]``; every loss is the weighted mean over tokens.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp import distill
from tests.distill.helpers import logits, np_ce, np_mse, np_soft_kl, np_wmean, token_weights

SHAPE = (3, 5, 7)  # [batch, len, vocab]


def _labels(seed, shape=SHAPE):
    return np.random.default_rng(seed).integers(0, shape[-1], shape[:-1]).astype(np.int32)


@pytest.mark.parametrize("as_floats", [False, True])
def test_every_loss_is_a_weighted_token_mean(jitted, as_floats):
    s, t, y = logits(1, SHAPE), logits(2, SHAPE), _labels(3)
    mask = token_weights(4, SHAPE[:-1])
    w = mask * np.random.default_rng(5).random(SHAPE[:-1]) if as_floats else mask
    temp = 2.0
    want = {
        "soft_kl": np_soft_kl(s, t, temp, w),
        "hard_ce": np_ce(s, t.argmax(-1), w),
        "mse": np_mse(s, t, w),
        "cross_entropy": np_ce(s, y, w),
    }
    got = {
        "soft_kl": distill.soft_kl(s, t, temp, weights=w),
        "hard_ce": distill.hard_ce(s, t, weights=w),
        "mse": distill.mse(s, t, weights=w),
        "cross_entropy": distill.cross_entropy(s, y, weights=w),
    }
    args = {"soft_kl": (s, t, temp), "hard_ce": (s, t), "mse": (s, t), "cross_entropy": (s, y)}
    for name, value in got.items():
        assert value.dtype == jnp.float32
        np.testing.assert_allclose(value, want[name], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(jitted[name](*args[name], weights=w), value, rtol=1e-5)
    parts = distill.loss_parts(s, t, y, alpha=0.3, temperature=temp, weights=w)
    want_loss = 0.3 * want["soft_kl"] + 0.7 * want["cross_entropy"]
    np.testing.assert_allclose(parts["loss"], want_loss, rtol=1e-5)
    np.testing.assert_allclose(
        jitted["loss"](s, t, y, alpha=0.3, temperature=temp, weights=w), parts["loss"], rtol=1e-5
    )


def test_padding_counts_for_nothing():
    """Changing the logits or labels of padded tokens does not change any loss."""
    s, t, y = logits(6, SHAPE), logits(7, SHAPE), _labels(8)
    mask = token_weights(9, SHAPE[:-1])
    noise = logits(10, SHAPE, scale=50.0) * ~mask[..., None]
    y2 = np.where(mask, y, (y + 1) % SHAPE[-1])
    for kind in distill.KINDS:
        a = distill.loss(s, t, y, kind=kind, weights=mask)
        b = distill.loss(s + noise, t - noise, y2, kind=kind, weights=mask)
        np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=kind)


def test_no_weights_and_all_ones_agree_and_2d_is_unchanged():
    s, t, y = logits(11, SHAPE), logits(12, SHAPE), _labels(13)
    ones = np.ones(SHAPE[:-1], np.float32)
    for kind in distill.KINDS:
        np.testing.assert_allclose(
            distill.loss(s, t, y, kind=kind, weights=ones),
            distill.loss(s, t, y, kind=kind),
            rtol=1e-6,
        )
    # 2-D logits without weights: soft_kl's contract, T**2 * mean over the batch, exactly
    s2, t2 = logits(14), logits(15)
    temp = jnp.float32(3.0)
    log_ps, log_pt = jax.nn.log_softmax(s2 / temp), jax.nn.log_softmax(t2 / temp)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)
    np.testing.assert_allclose(distill.soft_kl(s2, t2, 3.0), temp**2 * jnp.mean(kl), rtol=1e-6)


def test_all_padding_is_zero_not_nan():
    s, t, y = logits(16, SHAPE), logits(17, SHAPE), _labels(18)
    zeros = np.zeros(SHAPE[:-1], bool)
    value, grad = jax.value_and_grad(distill.loss)(s, t, y, weights=zeros)
    assert float(value) == 0.0 and np.all(grad == 0.0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.01, 100.0))
def test_weighted_mean_is_scale_free_and_bounded(seed, scale):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(4, 6)).astype(np.float32)
    w = rng.random((4, 6)).astype(np.float32)
    got = float(distill.weighted_mean(v, w))
    np.testing.assert_allclose(got, np_wmean(v, w), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        float(distill.weighted_mean(v, w * scale)), got, rtol=1e-4, atol=1e-6
    )
    assert v.min() - 1e-5 <= got <= v.max() + 1e-5


@pytest.mark.parametrize(
    ("weights", "exc", "match"),
    [
        (np.ones((3, 4)), ValueError, r"weights must have shape \(3, 5\).*got \(3, 4\)"),
        (np.ones(3), ValueError, r"weights must have shape \(3, 5\)"),
        (-np.ones((3, 5)), ValueError, "weights must be >= 0"),
        (np.full((3, 5), np.nan), ValueError, "NaN"),
        (np.full((3, 5), "a"), TypeError, "boolean mask or real weights"),
    ],
)
def test_bad_weights(weights, exc, match):
    s, t = logits(19, SHAPE), logits(20, SHAPE)
    with pytest.raises(exc, match=match):
        distill.soft_kl(s, t, weights=weights)
    with pytest.raises(exc, match=match):
        distill.loss(s, t, _labels(21), weights=weights)
