"""Tests for lightcomp/distill/_mix.py: `loss` and `loss_parts` against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp import distill
from tests.distill.helpers import logits, np_ce, np_soft_kl

_JIT_SOFT_KL = jax.jit(distill.soft_kl)
_JIT_PARTS = jax.jit(
    lambda s, t, y, a, temp: distill.loss_parts(s, t, y, alpha=a, temperature=temp)
)


@pytest.mark.parametrize("kind", ["kl", "hard", "mse"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_loss_mixes_label_and_distillation_terms(jitted, kind, alpha):
    s, t, temp = logits(10), logits(11), 2.5
    labels = np.random.default_rng(12).integers(0, 10, 6).astype(np.int32)
    dist = {
        "kl": np_soft_kl(s, t, temp),
        "hard": np_ce(s, t.argmax(-1)),
        "mse": ((s.astype(np.float64) - t) ** 2).mean(),
    }[kind]
    want = alpha * dist + (1 - alpha) * np_ce(s, labels)
    kw = dict(alpha=alpha, temperature=temp, kind=kind)
    np.testing.assert_allclose(distill.loss(s, t, labels, **kw), want, rtol=1e-5)
    np.testing.assert_allclose(jitted["loss"](s, t, labels, **kw), want, rtol=1e-5)
    parts = distill.loss_parts(s, t, labels, **kw)
    assert set(parts) == {"loss", "distill", "label"}
    np.testing.assert_allclose(parts["distill"], dist, rtol=1e-5)
    # without labels: the distillation term alone for alpha > 0; alpha = 0 asks for labels
    if alpha > 0:
        np.testing.assert_allclose(distill.loss(s, t, **kw), dist, rtol=1e-5)
    else:
        with pytest.raises(ValueError, match=r"alpha=0\.0.*labels is None"):
            distill.loss(s, t, **kw)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    temperature=st.floats(0.1, 50.0),
    alpha=st.floats(0.0, 1.0),
)
def test_properties_nonnegative_zero_at_equality_convex_mix(seed, temperature, alpha):
    s, t = logits(seed, (3, 5)), logits(seed + 1, (3, 5))
    assert float(_JIT_SOFT_KL(s, t, temperature)) >= -1e-5
    assert abs(float(_JIT_SOFT_KL(s, s, temperature))) < 1e-5
    labels = np.zeros(3, np.int32)
    parts = _JIT_PARTS(s, t, labels, alpha, temperature)
    lo = min(float(parts["distill"]), float(parts["label"]))
    hi = max(float(parts["distill"]), float(parts["label"]))
    assert lo - 1e-4 <= float(parts["loss"]) <= hi + 1e-4


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        distill.loss(logits(0), logits(1), np.zeros(6, np.int32), alpha=alpha)


@pytest.mark.parametrize("alpha", [True, "0.5"])
def test_alpha_is_a_number_not_a_bool(alpha):
    with pytest.raises(TypeError, match="alpha"):
        distill.loss_parts(logits(0), logits(1), np.zeros(6, np.int32), alpha=alpha)


def test_traced_alpha_and_temperature_are_accepted():
    s, t = logits(17), logits(18)
    labels = np.arange(6, dtype=np.int32)
    got = _JIT_PARTS(s, t, labels, jnp.float32(0.25), jnp.float32(3.0))
    want = 0.25 * np_soft_kl(s, t, 3.0) + 0.75 * np_ce(s, labels)
    np.testing.assert_allclose(got["loss"], want, rtol=1e-5)
