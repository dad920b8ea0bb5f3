"""Tests for lightcomp.train.teacher_logits and cached_batches."""

import chex
import jax
import numpy as np

import lightcomp as lc
from lightcomp import train
from tests.train.helpers import BATCH, CLASSES


def test_teacher_logit_cache_matches_teacher_forward(plain_step, teacher, digits):
    t_apply, t_params, _ = teacher
    logits = train.teacher_logits(t_apply, t_params, digits.x_train, batch_size=500)
    assert logits.shape == (len(digits.x_train), CLASSES) and logits.dtype == np.float32
    np.testing.assert_allclose(
        logits, jax.jit(t_apply)(t_params, digits.x_train), rtol=1e-5, atol=1e-5
    )
    plain = lc.data.batches(digits.x_train, digits.y_train, BATCH, seed=9)
    cached = train.cached_batches(digits.x_train, digits.y_train, logits, BATCH, seed=9)
    b_plain, b_cached = next(plain), next(cached)
    np.testing.assert_array_equal(b_plain["inputs"], b_cached["inputs"])
    np.testing.assert_allclose(
        b_cached["teacher_logits"], t_apply(t_params, b_cached["inputs"]), rtol=1e-5, atol=1e-5
    )
    step, state = plain_step
    s1, m1 = step(state, t_params, b_plain)
    s2, m2 = step(state, None, b_cached)
    chex.assert_trees_all_close(s1.params, s2.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(m1, m2, rtol=1e-5, atol=1e-6)
