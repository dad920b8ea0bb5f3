"""The end-to-end job behind ``lightcomp demo``: Deep Compression of a digits MLP by distillation.

A float teacher MLP is trained on scikit-learn's digits; a student (same layer
sizes by default) is distilled from it in float, then compressed in Deep
Compression's stages, each fine-tuned with distillation from the teacher:

1. **prune**: magnitude pruning on a gradual polynomial schedule up to ``sparsity``
   (reached half-way through the stage);
2. **share**: k-means weight sharing of the surviving weights (``clusters`` per layer,
   zeros preserved, centroids trained);
3. **quantize**: per-tensor ``bits``-bit fake quantization on top of the shared weights
   (biases: 8 bits per tensor).

After every stage the effective parameters are packed with `lightcomp.export.pack`
and the packed size is measured; the last stage is written to a file, loaded back
and evaluated again.

References:
  Han, Mao, Dally, "Deep Compression", ICLR 2016. Hinton, Vinyals, Dean,
  "Distilling the Knowledge in a Neural Network", 2015. Zhu & Gupta, "To prune,
  or not to prune", 2017.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lightcomp import data, distill, export, models, parallel, prune, train, tree
from lightcomp import transform as tf

_BIASES = tree.select(include=r"bias$", predicate=lambda path, leaf: tree.is_floating(leaf))

__all__ = ["DemoConfig", "check_config", "markdown_table", "result_table", "run"]


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Configuration of `run` (the ``lightcomp demo`` options).

    Attributes:
      sparsity: final fraction of each kernel's weights pruned, in [0, 1).
      bits: weight bit width of the quantize stage, 2..16.
      clusters: shared values per kernel in the share stage, 2..256.
      steps: distillation steps per student stage (the teacher trains ``2 * steps``).
      seed: seed of the data split, initialisations and batches.
      out: path of the packed model file.
      devices: devices to ``pmap`` the steps over (the batch is split between them).
      teacher: hidden layer sizes of the teacher MLP.
      student: hidden layer sizes of the student MLP (default: the teacher's).
      batch_size: global batch size (divisible by ``devices``).
      learning_rate: Adam's learning rate.
      progress: show progress bars.
    """

    sparsity: float = 0.9
    bits: int = 3
    clusters: int = 16
    steps: int = 400
    seed: int = 0
    out: str = "digits_mlp.lcpk"
    devices: int = 1
    teacher: tuple[int, ...] = (512, 256)
    student: tuple[int, ...] | None = None
    batch_size: int = 128
    learning_rate: float = 2e-3
    progress: bool = True


def check_config(cfg: DemoConfig) -> None:
    """Raises ValueError naming the first bad option of ``cfg`` (before any work is done)."""
    if not 0.0 <= cfg.sparsity < 1.0:
        raise ValueError(f"--sparsity must be in [0, 1), got {cfg.sparsity}")
    if not 2 <= cfg.bits <= 16:
        raise ValueError(f"--bits must be an integer in 2..16, got {cfg.bits}")
    if not 2 <= cfg.clusters <= 256:
        raise ValueError(f"--clusters must be an integer in 2..256, got {cfg.clusters}")
    if cfg.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {cfg.steps}")
    if cfg.devices < 1:
        raise ValueError(f"--devices must be >= 1, got {cfg.devices}")
    if cfg.batch_size % cfg.devices:
        raise ValueError(f"--devices {cfg.devices} must divide the batch size {cfg.batch_size}")
    if any(h < 1 for h in (*cfg.teacher, *(cfg.student or ()))):
        raise ValueError("hidden layer sizes must be >= 1")
    out = Path(cfg.out)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ValueError(f"--out {cfg.out!r} is a directory")
    if not parent.is_dir():
        raise ValueError(f"--out {cfg.out!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"--out {cfg.out!r} is not writable")


def _count(params: Any) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(params))


def _zeros(params: Any) -> float:
    leaves = jax.tree.leaves(params)
    return sum(int(np.sum(np.asarray(x) == 0)) for x in leaves) / max(_count(params), 1)


def run(cfg: DemoConfig, console: Any = None) -> dict:
    """Trains the teacher, distills and compresses the student, writes and reloads the file.

    Args:
      cfg: the configuration (checked with `check_config` first).
      console: a ``rich.console.Console`` for progress and messages (default: a new one).

    Returns:
      ``{"rows": [per-stage dicts: stage, accuracy, sparsity, bits_per_weight, bytes,
      ratio_vs_teacher, ratio_vs_student], "teacher_accuracy", "student_accuracy",
      "final_accuracy", "loaded_accuracy", "file", "file_bytes", "report"}``.
    """
    check_config(cfg)
    from rich.console import Console

    console = console or Console()
    if jax.local_device_count() < cfg.devices:
        raise ValueError(
            f"--devices {cfg.devices}: only {jax.local_device_count()} device(s) available"
        )
    ds = data.load_digits(seed=cfg.seed)
    n_in = ds.x_train.shape[1]
    key = jax.random.key(cfg.seed)
    k_teacher, k_student, k_t0, k_s0, k_s1, k_s2, k_s3 = jax.random.split(key, 7)
    t_apply, t_params = models.init_mlp((*cfg.teacher, 10), n_in, k_teacher)
    s_sizes = cfg.student or cfg.teacher
    s_apply, s_params = models.init_mlp((*s_sizes, 10), n_in, k_student)
    test = (ds.x_test, ds.y_test)
    devices = jax.local_devices()[: cfg.devices]

    def batches(seed):
        it = data.batches(ds.x_train, ds.y_train, cfg.batch_size, seed=seed)
        if cfg.devices == 1:
            return it
        return (parallel.shard_batch(b, cfg.devices) for b in it)

    def stage(
        name, apply, params, transform, teacher_apply, teacher_params, loss, key, steps, seed
    ):
        opt = optax.adam(cfg.learning_rate)
        step_kw = {"loss": loss} if loss is not None else {}
        if cfg.devices == 1:
            step = train.make_step(apply, teacher_apply, opt, transform, **step_kw)
        else:
            step = train.make_step(
                apply, teacher_apply, opt, transform, axis_name="batch", **step_kw
            )
            step = parallel.pmap_step(step, axis_name="batch", devices=devices)
        # one compilation instead of many eager dispatches of the transform's init
        state = jax.jit(lambda p, k: train.init_state(p, opt, transform, k))(params, key)

        def eval_fn(st):
            eff = jax.jit(transform.apply)(st.params, st.comp_state)
            return {"accuracy": train.evaluate(apply, eff, test)["accuracy"]}

        state, _ = train.fit(
            step,
            state,
            teacher_params,
            batches(seed),
            steps=steps,
            log_every=max(steps // 20, 1),
            eval_fn=eval_fn,
            progress=cfg.progress,
            description=f"{name:<14}",
        )
        effective = jax.jit(transform.apply)(state.params, state.comp_state)
        return state, effective

    # -- the float teacher: cross-entropy with the labels (no teacher of its own)
    def ce_only(student_logits, teacher_logits, labels):
        del teacher_logits
        return distill.cross_entropy(student_logits, labels)

    def no_teacher(params, inputs):
        del params
        return jnp.zeros((inputs.shape[0], 10), jnp.float32)

    _, teacher = stage(
        "teacher", t_apply, t_params, tf.identity(), no_teacher, jnp.zeros(()), ce_only, k_t0,
        2 * cfg.steps, cfg.seed,
    )  # fmt: skip
    float_t = 4 * _count(teacher)
    float_s = 4 * _count(s_params)
    rows = []

    def record(name, apply, effective):
        acc = train.evaluate(apply, effective, test)["accuracy"]
        packed = export.pack(effective)
        rep = export.report(packed)
        rows.append(
            {
                "stage": name,
                "accuracy": acc,
                "sparsity": _zeros(effective),
                "bits_per_weight": rep["bits_per_weight"],
                "bytes": rep["file_bytes"],
                "ratio_vs_teacher": float_t / rep["file_bytes"],
                "ratio_vs_student": float_s / rep["file_bytes"],
            }
        )
        if cfg.progress:
            console.print(
                f"  {name}: test accuracy {acc:.4f}, packed {rep['file_bytes']:,} bytes "
                f"({rows[-1]['ratio_vs_student']:.1f}x smaller than float32)"
            )
        return packed, rep

    record("float teacher", t_apply, teacher)
    # -- stage 0: the float student distilled from the teacher
    _, student = stage(
        "float student", s_apply, s_params, tf.identity(), t_apply, teacher, None, k_s0,
        cfg.steps, cfg.seed + 1,
    )  # fmt: skip
    record("float student", s_apply, student)
    # -- stage 1: gradual magnitude pruning (cubic schedule over the first 3/4 of the stage)
    end = max(1, cfg.steps // 2)
    freq = max(1, end // 10)
    schedule = prune.polynomial_schedule(0.0, cfg.sparsity, 0, end, frequency=freq)
    pruning = tf.pruning(schedule)
    _, pruned = stage(
        "prune", s_apply, student, pruning, t_apply, teacher, None, k_s1, cfg.steps, cfg.seed + 2
    )
    record("prune", s_apply, pruned)
    # -- stage 2: weight sharing of the survivors (zeros kept), masks fixed
    keep = tf.pruning(cfg.sparsity)
    sharing = tf.chain(keep, tf.weight_sharing(cfg.clusters, preserve_zeros=True))
    _, shared = stage(
        "share", s_apply, pruned, sharing, t_apply, teacher, None, k_s2, cfg.steps, cfg.seed + 3
    )
    record("share", s_apply, shared)
    # -- stage 3: fake quantization of the shared weights (one scale per tensor)
    quantize = tf.chain(
        keep,
        tf.weight_sharing(cfg.clusters, preserve_zeros=True),
        tf.fake_quantization(cfg.bits, axis=None),
        tf.fake_quantization(8, axis=None, select=_BIASES),
    )
    _, final = stage(
        "quantize", s_apply, shared, quantize, t_apply, teacher, None, k_s3, cfg.steps,
        cfg.seed + 4,
    )  # fmt: skip
    packed, rep = record("quantize", s_apply, final)
    size = export.save(cfg.out, packed)
    loaded = export.unpack(export.load(cfg.out))
    loaded_acc = train.evaluate(s_apply, loaded, test)["accuracy"]
    same = all(
        np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
        for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(loaded), strict=True)
    )
    return {
        "rows": rows,
        "teacher_accuracy": rows[0]["accuracy"],
        "student_accuracy": rows[1]["accuracy"],
        "final_accuracy": rows[-1]["accuracy"],
        "loaded_accuracy": loaded_acc,
        "bit_exact": same,
        "file": str(cfg.out),
        "file_bytes": size,
        "report": rep,
        "config": cfg,
    }


def result_table(result: dict, title: str = "lightcomp demo: digits MLP"):
    """The per-stage table of a `run` result, as a ``rich.table.Table``."""
    from rich.table import Table

    t = Table(title=title)
    cols = ("stage", "test acc", "sparsity", "bits/weight", "packed bytes", "x vs float teacher",
            "x vs float student")  # fmt: skip
    for c in cols:
        t.add_column(c, justify="left" if c == "stage" else "right")
    for r in result["rows"]:
        t.add_row(
            r["stage"],
            f"{100 * r['accuracy']:.2f}%",
            f"{100 * r['sparsity']:.1f}%",
            f"{r['bits_per_weight']:.3f}",
            f"{r['bytes']:,}",
            f"{r['ratio_vs_teacher']:.1f}",
            f"{r['ratio_vs_student']:.1f}",
        )
    return t


def markdown_table(result: dict) -> str:
    """The same table in Markdown (for READMEs and benchmark logs)."""
    lines = [
        "| stage | test acc | sparsity | bits/weight | packed bytes | x vs float teacher | x vs float student |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['stage']} | {100 * r['accuracy']:.2f}% | {100 * r['sparsity']:.1f}% | "
            f"{r['bits_per_weight']:.3f} | {r['bytes']:,} | {r['ratio_vs_teacher']:.1f} | "
            f"{r['ratio_vs_student']:.1f} |"
        )
    return "\n".join(lines)
