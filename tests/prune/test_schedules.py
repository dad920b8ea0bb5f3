"""lightcomp/prune/_schedules.py: sparsity schedules against their formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import prune as P


def test_polynomial_schedule_matches_formula():
    si, sf, t0, t1, freq = 0.1, 0.9, 10, 110, 7
    sched = P.polynomial_schedule(si, sf, t0, t1, power=3, frequency=freq)
    steps = np.arange(0, 130)
    got = np.asarray(jax.jit(jax.vmap(sched))(jnp.asarray(steps)))
    eager = np.asarray([sched(int(t)) for t in steps[::13]])
    np.testing.assert_allclose(got[::13], eager, rtol=1e-6)
    t = np.clip(steps, t0, t1) - t0
    t = (t // freq) * freq
    ref = np.where(steps >= t1, sf, sf + (si - sf) * (1 - t / (t1 - t0)) ** 3)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert (
        got.dtype == np.float32
        and got[0] == pytest.approx(si, rel=1e-5)
        and got[-1] == np.float32(sf)
    )
    assert np.all(np.diff(got) >= -1e-7)


def test_other_schedules():
    steps = jnp.arange(0, 50)
    np.testing.assert_allclose(
        jax.jit(P.constant_schedule(0.3))(steps), np.full(50, 0.3, np.float32)
    )
    np.testing.assert_allclose(
        jax.jit(P.one_shot_schedule(0.8, 20))(steps),
        np.where(np.arange(50) >= 20, 0.8, 0.0),
        rtol=1e-6,
    )
    it = P.iterative_schedule([0.5, 0.75, 0.875], every=10, begin_step=5)
    ref = np.array([0.0 if t < 5 else [0.5, 0.75, 0.875][min((t - 5) // 10, 2)] for t in range(50)])
    np.testing.assert_allclose(jax.jit(it)(steps), ref, rtol=1e-6)
    np.testing.assert_allclose(it(23), ref[23], rtol=1e-6)
    cf = P.cosine_fraction(0.3, 40)
    ref = np.where(np.arange(50) < 40, 0.15 * (1 + np.cos(np.pi * np.arange(50) / 40)), 0.0)
    np.testing.assert_allclose(jax.jit(cf)(steps), ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cf(10), ref[10], rtol=1e-5)


def test_old_names_are_aliases():
    assert P.constant is P.constant_schedule
    assert P.one_shot is P.one_shot_schedule
    assert P.iterative is P.iterative_schedule


@pytest.mark.parametrize(
    ("make", "err", "match"),
    [
        (lambda: P.polynomial_schedule(0.0, 1.0, 0, 10), ValueError, "final must be finite and in"),
        (lambda: P.polynomial_schedule(-0.1, 0.5, 0, 10), ValueError, "initial must be"),
        (lambda: P.polynomial_schedule(0.0, 0.5, 10, 10), ValueError, "end_step"),
        (lambda: P.polynomial_schedule(0.0, 0.5, -1, 10), ValueError, "begin_step must be >= 0"),
        (lambda: P.polynomial_schedule(0.0, 0.5, 0, 10, frequency=0), ValueError, "frequency"),
        (lambda: P.polynomial_schedule(0.0, 0.5, 0, 10, power=0), ValueError, "power"),
        (lambda: P.polynomial_schedule(0.0, 0.5, 0, 10.0), TypeError, "end_step must be an int"),
        (lambda: P.iterative_schedule([0.5, 0.2], 10), ValueError, "non-decreasing"),
        (lambda: P.iterative_schedule([], 10), ValueError, "non-empty"),
        (lambda: P.iterative_schedule([0.5, 1.0], 10), ValueError, "levels\\[1\\] must be"),
        (lambda: P.iterative_schedule([0.5], 0), ValueError, "every must be >= 1"),
        (lambda: P.constant_schedule(1.0), ValueError, "sparsity"),
        (lambda: P.constant_schedule(True), TypeError, "sparsity must be a number"),
        (lambda: P.one_shot_schedule(0.5, -1), ValueError, "at_step"),
        (lambda: P.cosine_fraction(1.5, 10), ValueError, "alpha"),
        (lambda: P.cosine_fraction(0.3, 0), ValueError, "end_step must be >= 1"),
    ],
)
def test_schedule_errors(make, err, match):
    with pytest.raises(err, match=match):
        make()
