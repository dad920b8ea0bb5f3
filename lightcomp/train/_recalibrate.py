"""`recalibrate`: BatchNorm running statistics recomputed for (compressed) weights."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import _checks
from lightcomp.train._stateful import StatefulApply

PyTree = Any


def _input_batches(batches: Any, batch_size: int) -> Iterable[Any]:
    """Batch mappings' ``"inputs"``, or an array of inputs in chunks of ``batch_size`` rows."""
    if isinstance(batches, (np.ndarray, jax.Array)):
        return (batches[i : i + batch_size] for i in range(0, len(batches), batch_size))
    return (b["inputs"] if isinstance(b, Mapping) else b for b in batches)


def _probe(apply: StatefulApply, flags: list[bool], treedef):
    """Jitted ``(params, leaves, inputs, key) -> (stats, valid)`` of one batch.

    Each running statistic is an exponential moving average ``new = m * old + (1 - m) *
    batch_stat`` (Flax's BatchNorm, linen and nnx). Two train-mode forward passes that
    differ only in ``old`` (0 and 1; the normalisation uses batch statistics, so the
    outputs are the same) give ``m = new_1 - new_0`` and ``batch_stat = new_0 / (1 - m)``.
    """

    def run(params, leaves, inputs, key, fill):
        probe = [fill(x) if f else x for x, f in zip(leaves, flags, strict=True)]
        _, new = apply.run(params, jax.tree.unflatten(treedef, probe), inputs, key)
        return jax.tree.leaves(new)

    @jax.jit
    def probe(params, leaves, inputs, key):
        r0 = run(params, leaves, inputs, key, jnp.zeros_like)
        r1 = run(params, leaves, inputs, key, jnp.ones_like)
        stats, valid = [], []
        for f, a, b in zip(flags, r0, r1, strict=True):
            if not f:
                stats.append(None)
                valid.append(None)
                continue
            a, b = a.astype(jnp.float32), b.astype(jnp.float32)
            keep = 1.0 - (b - a)  # 1 - momentum
            ok = keep > 1e-6
            stats.append(jnp.where(ok, a / jnp.where(ok, keep, 1.0), 0.0))
            valid.append(ok)
        return stats, valid

    return probe


def recalibrate(
    apply: StatefulApply,
    params: PyTree,
    batches: Iterable[Any] | np.ndarray,
    *,
    model_state: PyTree = None,
    key: jax.Array | None = None,
    batch_size: int = 256,
) -> PyTree:
    """Recomputes BatchNorm running statistics for ``params`` over a few batches.

    After pruning or quantization the running means and variances the model learnt no
    longer describe its activations (a distilled student can lose most of its test
    accuracy this way). This runs the train-mode forward pass over ``batches`` and
    replaces every running statistic with the average of its batch statistics (weighted
    by rows: the cumulative average, as PyTorch's ``update_bn``), whatever the layer's
    momentum. Other state is returned unchanged; nothing is trained.

    Args:
      apply: a train-mode `StatefulApply`: ``linen_apply(module, train=True)`` or
        ``nnx_apply(model, train=True)[0]``.
      params: the parameters to calibrate for (e.g. `effective_params` of a compressed
        student).
      batches: a finite iterable of batches (``{"inputs": ...}`` mappings or input
        arrays), or one array of inputs split into ``batch_size`` rows.
      model_state: the model state to start from (``state.model_state``); default the
        adapter's own. Its statistics leaves (linen ``batch_stats``, nnx ``BatchStat``)
        are recomputed.
      key: a PRNG key for dropout during the passes (default ``jax.random.key(0)``).
      batch_size: rows per pass when ``batches`` is one array.

    Returns:
      The new model state (same structure, shapes and dtypes).

    Raises:
      TypeError: ``apply`` is not a `StatefulApply`.
      ValueError: it is not in train mode, has no statistics, or ``batches`` is empty.

    References:
      Ioffe & Szegedy 2015, "Batch Normalization" (population statistics after
      training); Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima and
      Better Generalization" (recomputing them for new weights).
    """
    if not isinstance(apply, StatefulApply):
        raise TypeError(
            "apply must be a StatefulApply (lightcomp.train.linen_apply / nnx_apply), "
            f"got {type(apply).__name__}"
        )
    if apply.train is not True or apply.statistics is None:
        raise ValueError(
            "recalibrate needs a train-mode forward that reports its statistics: "
            "linen_apply(module, train=True) or nnx_apply(model, train=True)"
        )
    batch_size = _checks.check_int(batch_size, "batch_size", lo=1)
    key = jax.random.key(0) if key is None else key
    _checks.check_key(key)
    state = apply.model_state if model_state is None else model_state
    leaves, treedef = jax.tree.flatten(state)
    flags = list(apply.statistics(state))
    if len(flags) != len(leaves) or not any(flags):
        raise ValueError("model_state holds no running statistics to recalibrate")
    probe = _probe(apply, flags, treedef)
    sums, valid, rows = None, None, 0
    for i, inputs in enumerate(_input_batches(batches, batch_size)):
        n = int(np.shape(inputs)[0])
        stats, ok = probe(params, leaves, inputs, jax.random.fold_in(key, i))
        scaled = jax.tree.map(lambda s: s * n, stats)  # None (not a statistic) stays None
        sums = scaled if sums is None else jax.tree.map(jnp.add, sums, scaled)
        valid = ok if valid is None else jax.tree.map(jnp.logical_and, valid, ok)
        rows += n
    if rows == 0:
        raise ValueError("batches is empty")
    out = [
        x if s is None else jnp.where(v, s / rows, x.astype(jnp.float32)).astype(x.dtype)
        for x, s, v in zip(leaves, sums, valid, strict=True)
    ]
    return jax.tree.unflatten(treedef, out)
