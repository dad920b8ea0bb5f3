"""Tests for lightcomp.train.evaluate and fit."""

import jax
import numpy as np
import pytest

import lightcomp as lc
from lightcomp import train
from tests.train.helpers import (
    BATCH,
    np_forward,
    np_log_softmax,
    token_apply,
    token_batch,
    token_params,
)


def test_evaluate_against_numpy(teacher, digits):
    t_apply, t_params, _ = teacher
    x, y = digits.x_test, digits.y_test
    out = train.evaluate(t_apply, t_params, (x, y), batch_size=100)
    logits = np_forward(jax.tree.map(lambda a: np.asarray(a, np.float64), t_params), x)
    assert out["count"] == len(y)
    np.testing.assert_allclose(out["accuracy"], (logits.argmax(-1) == y).mean())
    np.testing.assert_allclose(
        out["loss"], -np_log_softmax(logits)[np.arange(len(y)), y].mean(), rtol=1e-5
    )
    as_batches = [{"inputs": x[i : i + 64], "labels": y[i : i + 64]} for i in range(0, len(x), 64)]
    assert train.evaluate(t_apply, t_params, as_batches)["accuracy"] == out["accuracy"]
    with pytest.raises(ValueError, match="empty"):
        train.evaluate(t_apply, t_params, [])


def test_fit_progress_history_and_eval(plain_step, teacher, digits):
    step, state = plain_step
    _, t_params, _ = teacher
    batches = lc.data.batches(digits.x_train, digits.y_train, BATCH, seed=0)
    seen = []

    def eval_fn(s):
        seen.append(int(s.step))
        return {"accuracy": 0.5}

    state2, history = train.fit(
        step, state, t_params, batches, steps=7, log_every=3, eval_fn=eval_fn, eval_every=5
    )
    assert int(state2.step) == 7
    assert [r["step"] for r in history] == [3, 5, 6, 7]
    assert seen == [5, 7] and history[-1]["eval_accuracy"] == 0.5
    assert {"loss", "accuracy", "agreement", "sparsity"} <= set(history[0])
    with pytest.raises(ValueError, match="ran out"):
        train.fit(step, state, t_params, iter([]), steps=1, progress=False)


def test_evaluate_token_models_over_weighted_tokens():
    params = token_params(5)
    batches = [token_batch(6, rows=8), token_batch(7, rows=8)]
    out = train.evaluate(token_apply, params, batches)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    correct = nll = total = 0.0
    for b in batches:
        s = np.asarray(b["inputs"], np.float64) @ p["w"] + p["b"]
        w = b["weights"].astype(np.float64)
        correct += (w * (s.argmax(-1) == b["labels"])).sum()
        nll += (
            w * -np.take_along_axis(np_log_softmax(s), b["labels"][..., None], -1)[..., 0]
        ).sum()
        total += w.sum()
    assert out["count"] == 16
    np.testing.assert_allclose(out["accuracy"], correct / total, rtol=1e-6)
    np.testing.assert_allclose(out["loss"], nll / total, rtol=1e-5)
    unweighted = [{k: v for k, v in b.items() if k != "weights"} for b in batches]
    everything = train.evaluate(token_apply, params, unweighted)["accuracy"]
    assert everything != out["accuracy"]  # padding would count without the weights
