"""Tests for lightcomp.train.teacher_logits and cached_batches."""

import chex
import jax
import numpy as np
import pytest

import lightcomp as lc
from lightcomp import train
from tests.train.helpers import BATCH, CLASSES, LEN, family, token_apply, token_batch, token_params


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


def test_token_logits_stateful_teacher_and_cached_weights():
    """Token logits [n, len, vocab] of a BatchNorm teacher (eval mode, its statistics)."""
    f = family("resnet")
    x = np.concatenate([b["inputs"] for b in f.batches[:2]])
    logits = train.teacher_logits(
        f.eval_apply, f.teacher_params, x, batch_size=40, model_state=f.teacher_state
    )
    want = jax.jit(f.eval_apply.run)(f.teacher_params, f.teacher_state, x)[0]
    np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
    params = token_params(8)
    b = token_batch(9)
    tokens = train.teacher_logits(token_apply, params, b["inputs"], batch_size=20)
    assert tokens.shape == (BATCH, LEN, CLASSES)
    np.testing.assert_allclose(tokens, token_apply(params, b["inputs"]), rtol=1e-5, atol=1e-5)
    it = train.cached_batches(b["inputs"], b["labels"], tokens, 8, weights=b["weights"], seed=1)
    first = next(it)
    rows = [int(np.flatnonzero((b["inputs"] == r).all(axis=(1, 2)))[0]) for r in first["inputs"]]
    np.testing.assert_array_equal(first["weights"], b["weights"][rows])
    np.testing.assert_array_equal(first["teacher_logits"], tokens[rows])
    with pytest.raises(ValueError, match="eval-mode"):
        train.teacher_logits(f.train_apply, f.params, x, model_state=f.model_state)
    with pytest.raises(ValueError, match="differ in length"):
        next(train.cached_batches(b["inputs"], b["labels"], tokens, 8, weights=b["weights"][:3]))
