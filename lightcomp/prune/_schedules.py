"""Sparsity schedules ``step -> sparsity`` (jittable, float32) and RigL's drop fraction."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp._checks import check_fraction, check_int, check_number

Schedule = Callable[[jax.Array], jax.Array]


def constant_schedule(sparsity: float) -> Schedule:
    """``step -> sparsity`` for every step (float32).

    Args:
      sparsity: in [0, 1).

    Returns:
      A jittable schedule ``step -> float32`` (``step`` an int scalar or array).

    Example:
      >>> lc.prune.constant_schedule(0.5)(10)
      Array(0.5, dtype=float32)
    """
    check_fraction(sparsity, "sparsity")

    def schedule(step):
        return jnp.full(jnp.shape(step), sparsity, jnp.float32)

    return schedule


def one_shot_schedule(sparsity: float, at_step: int) -> Schedule:
    """``step -> 0`` before ``at_step``, ``sparsity`` from then on.

    Args:
      sparsity: in [0, 1).
      at_step: the step pruning happens at, an int >= 0.

    Returns:
      A jittable schedule ``step -> float32``.

    Example:
      >>> lc.prune.one_shot_schedule(0.8, 100)(jnp.array([99, 100]))
      Array([0. , 0.8], dtype=float32)
    """
    check_fraction(sparsity, "sparsity")
    check_int(at_step, "at_step", lo=0)

    def schedule(step):
        return jnp.where(jnp.asarray(step) >= at_step, jnp.float32(sparsity), jnp.float32(0.0))

    return schedule


def polynomial_schedule(
    initial: float,
    final: float,
    begin_step: int,
    end_step: int,
    power: float = 3,
    frequency: int = 1,
) -> Schedule:
    """Gradual pruning: ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))**power``.

    ``t`` advances in multiples of ``frequency`` from ``begin_step`` (the value is updated
    every ``frequency`` steps) and is clipped to ``[begin_step, end_step]``: the result is
    ``initial`` up to ``begin_step`` and exactly ``final`` from ``end_step`` on. float32.

    Args:
      initial: sparsity ``s_i`` at ``begin_step``, in [0, 1).
      final: sparsity ``s_f`` at ``end_step``, in [0, 1).
      begin_step: ``t0``, an int >= 0.
      end_step: ``t0 + n dt``, an int > ``begin_step``.
      power: the exponent (3 in the paper), > 0.
      frequency: ``dt``, steps between updates, an int >= 1.

    Returns:
      A jittable schedule ``step -> float32``.

    References:
      Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for
      model compression", 2017.

    Example:
      >>> sched = lc.prune.polynomial_schedule(0.0, 0.8, 0, 100, power=1, frequency=10)
      >>> jax.jit(sched)(jnp.array([0, 55, 100]))
      Array([0. , 0.4, 0.8], dtype=float32)
    """
    check_fraction(initial, "initial")
    check_fraction(final, "final")
    check_int(begin_step, "begin_step", lo=0)
    check_int(end_step, "end_step", lo=0)
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be > begin_step ({begin_step})")
    check_number(power, "power", lo=0.0, lo_open=True)
    check_int(frequency, "frequency", lo=1)
    span = float(end_step - begin_step)

    def schedule(step):
        step = jnp.asarray(step, jnp.int32)
        t = jnp.clip(step, begin_step, end_step) - begin_step
        t = (t // frequency) * frequency
        frac = 1.0 - t.astype(jnp.float32) / span
        value = (final + (initial - final) * frac**power).astype(jnp.float32)
        # final from end_step on, even when the span is not a multiple of frequency
        return jnp.where(step >= end_step, jnp.float32(final), value)

    return schedule


def iterative_schedule(levels: Sequence[float], every: int, *, begin_step: int = 0) -> Schedule:
    """Iterative pruning (prune, retrain, prune more): ``levels[i]`` during round ``i``.

    ``0`` before ``begin_step``; round ``i`` covers steps ``[begin_step + i * every,
    begin_step + (i + 1) * every)``; the last level holds afterwards.

    Args:
      levels: non-decreasing sparsities in [0, 1).
      every: steps per round, an int >= 1.
      begin_step: the first round's first step (an int).

    Returns:
      A jittable schedule ``step -> float32``.

    References:
      Han, Pool, Tran & Dally, "Learning both Weights and Connections for Efficient
      Neural Networks", 2015.

    Example:
      >>> sched = lc.prune.iterative_schedule([0.5, 0.75], every=10)
      >>> sched(jnp.array([0, 9, 10, 50]))
      Array([0.5 , 0.5 , 0.75, 0.75], dtype=float32)
    """
    levels = tuple(levels)
    if not levels:
        raise ValueError("levels must be a non-empty sequence of sparsities")
    for i, v in enumerate(levels):
        check_fraction(v, f"levels[{i}]")
    if any(b < a for a, b in itertools.pairwise(levels)):
        raise ValueError(f"levels must be non-decreasing, got {levels}")
    check_int(every, "every", lo=1)
    check_int(begin_step, "begin_step")
    table = np.asarray(levels, np.float32)

    def schedule(step):
        step = jnp.asarray(step, jnp.int32)
        idx = jnp.clip((step - begin_step) // every, 0, len(levels) - 1)
        return jnp.where(step >= begin_step, jnp.asarray(table)[idx], jnp.float32(0.0))

    return schedule


def cosine_fraction(alpha: float, end_step: int) -> Schedule:
    """RigL's drop fraction ``alpha / 2 * (1 + cos(pi * t / end_step))``, 0 after ``end_step``.

    Args:
      alpha: the initial drop fraction, in [0, 1].
      end_step: the step mask updates stop at, an int >= 1.

    Returns:
      A jittable schedule ``step -> float32`` for `lightcomp.prune.prune_and_regrow`'s
      ``fraction``.

    References:
      Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All Tickets
      Winners", 2020.

    Example:
      >>> frac = lc.prune.cosine_fraction(0.3, end_step=100)
      >>> frac(jnp.array([0, 50, 100])).round(3)
      Array([0.3 , 0.15, 0.  ], dtype=float32)
    """
    check_fraction(alpha, "alpha", allow_one=True)
    check_int(end_step, "end_step", lo=1)

    def schedule(step):
        t = jnp.asarray(step, jnp.float32)
        value = 0.5 * alpha * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, end_step) / end_step))
        return jnp.where(t < end_step, value, 0.0).astype(jnp.float32)

    return schedule
