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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from lightcomp import _checks, data, export, models, parallel, prune, train, transform, tree
from lightcomp.demo_tables import markdown_table, print_table, result_table

__all__ = [
    "MLP_SIZES",
    "DemoConfig",
    "Net",
    "Stage",
    "check_config",
    "check_devices",
    "float_bytes",
    "markdown_table",
    "pack_student",
    "print_table",
    "result_table",
    "run",
    "run_stages",
    "stages",
]

MLP_SIZES = (512, 256)  # the teacher's hidden layers (and the student's) by default

_BIASES = tree.select(include=r"bias$", predicate=lambda path, leaf: tree.is_floating(leaf))


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
      teacher: hidden layer sizes of the teacher MLP (default ``(512, 256)``), or the
        channels of the teacher CNN (default ``(32, 64)``).
      student: the same for the student (default: the teacher's).
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
    teacher: tuple[int, ...] | None = None
    student: tuple[int, ...] | None = None
    batch_size: int = 128
    learning_rate: float = 2e-3
    progress: bool = True


def check_config(cfg: DemoConfig) -> None:
    """Checks every option of ``cfg`` before any work is done.

    Raises:
      ValueError: an option is out of range, ``devices`` does not divide the batch
        size, or ``out`` is not a writable file path; the message names the option
        (``--sparsity``, ``--seed``, ...).
      TypeError: an option has the wrong type (a bool where an int is expected, too).
    """
    if not isinstance(cfg, DemoConfig):
        raise TypeError(f"cfg must be a DemoConfig, got {type(cfg).__name__}")
    _checks.check_number(cfg.sparsity, "--sparsity", lo=0.0, hi=1.0, hi_open=True)
    _checks.check_int(cfg.bits, "--bits", lo=2, hi=16)
    _checks.check_int(cfg.clusters, "--clusters", lo=2, hi=256)
    _checks.check_int(cfg.steps, "--steps", lo=1)
    _checks.check_int(cfg.seed, "--seed", lo=0, hi=2**32 - 1)  # scikit-learn's seed range
    _checks.check_int(cfg.devices, "--devices", lo=1)
    _checks.check_int(cfg.batch_size, "batch_size", lo=1)
    _checks.check_number(cfg.learning_rate, "learning_rate", lo=0.0, lo_open=True)
    _checks.check_bool(cfg.progress, "progress")
    for name, sizes in (("teacher", cfg.teacher), ("student", cfg.student)):
        if sizes is None:
            continue
        if not isinstance(sizes, (tuple, list)):
            raise TypeError(f"{name} must be a tuple of hidden layer sizes, got {sizes!r}")
        for h in sizes:
            _checks.check_int(h, f"{name} hidden layer size", lo=1)
    if cfg.batch_size % cfg.devices:
        raise ValueError(f"--devices {cfg.devices} must divide the batch size {cfg.batch_size}")
    _check_out(cfg.out)


def _check_out(out_arg: Any) -> None:
    if not isinstance(out_arg, (str, os.PathLike)):
        raise TypeError(f"--out must be a file path, got {type(out_arg).__name__}")
    out = Path(out_arg)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ValueError(f"--out {str(out_arg)!r} is a directory")
    if not parent.is_dir():
        raise ValueError(f"--out {str(out_arg)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"--out {str(out_arg)!r} is not writable")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the demo: what is trained, from what, through which transform.

    Attributes:
      name: the table's label.
      model: which network of the run is trained (``"teacher"``, ``"student"``, ...).
      start: ``"init"`` (fresh initialisation) or the name of the stage whose effective
        parameters it starts from.
      transform: the compression transform of the stage.
      distill: distill from the float teacher (False: labels only, ``alpha=0``).
      steps: training steps.
      seed: seed of the stage's batches.
      key: index of the stage's PRNG key among the run's keys.
      convert: ``(params, model_state) -> (params, model_state)`` applied to the ``start``
        stage's result instead of training (BatchNorm folding); None for a trained stage.
    """

    name: str
    model: str
    start: str
    transform: transform.Transform
    distill: bool
    steps: int
    seed: int
    key: int
    convert: Callable[[Any, Any], tuple[Any, Any]] | None = None


def stages(cfg: DemoConfig) -> list[Stage]:
    """Deep Compression's stages for ``cfg``: teacher, float student, prune, share, quantize."""
    end = max(1, cfg.steps // 2)  # the cubic schedule reaches its sparsity half-way
    schedule = prune.polynomial_schedule(0.0, cfg.sparsity, 0, end, frequency=max(1, end // 10))
    keep = transform.pruning(cfg.sparsity)
    share = transform.weight_sharing(cfg.clusters, preserve_zeros=True)
    quantize = transform.chain(
        keep,
        share,
        transform.fake_quantization(cfg.bits, axis=None),
        transform.fake_quantization(8, axis=None, select=_BIASES),
    )
    s = cfg.steps
    return [
        Stage("float teacher", "teacher", "init", transform.identity(), False, 2 * s, cfg.seed, 2),
        Stage("float student", "student", "init", transform.identity(), True, s, cfg.seed + 1, 3),
        Stage("prune", "student", "float student", transform.pruning(schedule), True, s,
              cfg.seed + 2, 4),
        Stage("share", "student", "prune", transform.chain(keep, share), True, s, cfg.seed + 3,
              5),
        Stage("quantize", "student", "share", quantize, True, s, cfg.seed + 4, 6),
    ]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Net:
    """One network of a demo: its forward passes and its initial variables.

    Attributes:
      train_apply: ``(params, inputs) -> logits``, or a train-mode `lightcomp.train.StatefulApply`
        (``linen_apply(module, train=True)``) for a model with BatchNorm.
      eval_apply: the same in eval mode (may be ``train_apply`` for a stateless net).
      params: the initial parameters.
      model_state: the initial non-parameter state (``{"batch_stats": ...}``; ``{}``).
    """

    train_apply: Any
    eval_apply: Any
    params: Any
    model_state: Any = dataclasses.field(default_factory=dict)


def _zeros(params: Any) -> float:
    leaves = jax.tree.leaves(params)
    count = sum(int(np.size(x)) for x in leaves)
    return sum(int(np.sum(np.asarray(x) == 0)) for x in leaves) / max(count, 1)


def float_bytes(net: Net) -> int:
    """float32 bytes of a net's parameters and model state (what serving it in float needs)."""
    leaves = jax.tree.leaves((net.params, net.model_state))
    return 4 * sum(int(np.size(x)) for x in leaves)


def _train(cfg: DemoConfig, spec: Stage, net: Net, start, teacher, key, ds) -> tuple[Any, Any]:
    """Trains one stage; returns its effective parameters and model state."""
    params, model_state = start
    opt = optax.adam(cfg.learning_rate)
    t_net, t_params, t_state = teacher if spec.distill else (None, None, None)
    kw = {} if spec.distill else {"alpha": 0.0}
    if cfg.devices > 1:
        kw["axis_name"] = "batch"
    t_apply = t_net.eval_apply if t_net is not None else None
    step = train.make_step(net.train_apply, t_apply, opt, spec.transform, **kw)
    if cfg.devices > 1:
        step = parallel.pmap_step(
            step, axis_name="batch", devices=jax.local_devices()[: cfg.devices]
        )
    # one compilation instead of many eager dispatches of the transform's init
    init = jax.jit(
        lambda p, k, ms, ts: train.init_state(
            p, opt, spec.transform, k, model_state=ms, teacher_state=ts
        )
    )
    state = init(params, key, model_state, t_state if spec.distill else {})
    effective = jax.jit(spec.transform.apply)
    test = (ds.x_test, ds.y_test)

    def eval_fn(st):
        eff = effective(st.params, st.comp_state)
        acc = train.evaluate(net.eval_apply, eff, test, model_state=st.model_state)
        return {"accuracy": acc["accuracy"]}

    batches = data.batches(ds.x_train, ds.y_train, cfg.batch_size, seed=spec.seed)
    if cfg.devices > 1:
        batches = (parallel.shard_batch(b, cfg.devices) for b in batches)
    state, _ = train.fit(
        step,
        state,
        t_params,
        batches,
        steps=spec.steps,
        log_every=max(spec.steps // 20, 1),
        eval_fn=eval_fn,
        progress=cfg.progress,
        description=f"{spec.name:<14}",
    )
    return effective(state.params, state.comp_state), state.model_state


def pack_student(params: Any, model_state: Any = None) -> export.Packed:
    """The packed file's content: ``params``, or ``{"params", **model_state}`` with a state."""
    if not jax.tree.leaves(model_state or {}):
        return export.pack(params)
    return export.pack({"params": params, **model_state})


def _measure(name: str, net: Net, trained, test, sizes: dict) -> tuple[dict, Any]:
    """The table row of a stage and its packed parameters (and model state)."""
    params, model_state = trained
    packed = pack_student(params, model_state)
    rep = export.report(packed)
    acc = train.evaluate(net.eval_apply, params, test, model_state=model_state)["accuracy"]
    row = {
        "stage": name,
        "accuracy": acc,
        "sparsity": _zeros(params),
        "bits_per_weight": rep["bits_per_weight"],
        "bytes": rep["file_bytes"],
        "ratio_vs_teacher": sizes["teacher"] / rep["file_bytes"],
        "ratio_vs_student": sizes["student"] / rep["file_bytes"],
    }
    return row, packed


def run_stages(
    cfg: DemoConfig,
    nets: dict[str, Net],
    specs: list[Stage],
    ds: data.Digits,
    on_stage: Callable[[dict], None] | None = None,
) -> dict:
    """Runs ``specs`` in order on ``nets``, measures each stage, writes and reloads the last.

    A stage trains ``nets[spec.model]`` from ``spec.start`` (``"init"``: the net's own
    variables; otherwise the effective parameters and model state a former stage left),
    or, with ``spec.convert``, turns the former stage's ``(params, model_state)`` into
    those of ``nets[spec.model]`` without training (e.g. BatchNorm folding).

    Returns:
      the dict `run` documents; ``"teacher"``/``"student"`` float sizes are those of
      ``nets["teacher"]`` and ``nets["student"]``.
    """
    keys = jax.random.split(jax.random.key(cfg.seed), 7)
    sizes = {k: float_bytes(nets[k]) for k in ("teacher", "student")}
    test = (ds.x_test, ds.y_test)
    trained, rows, packed = {}, [], None
    for spec in specs:
        net = nets[spec.model]
        start = (net.params, net.model_state) if spec.start == "init" else trained[spec.start]
        if spec.convert is not None:
            trained[spec.name] = spec.convert(*start)
        else:
            t_params, t_state = trained.get("float teacher", (None, None))
            teacher = (nets["teacher"], t_params, t_state)
            key = keys[spec.key]
            trained[spec.name] = _train(cfg, spec, net, start, teacher, key, ds)
        row, packed = _measure(spec.name, net, trained[spec.name], test, sizes)
        rows.append(row)
        if on_stage is not None:
            on_stage(row)
    final_net = nets[specs[-1].model]
    final, final_state = trained[rows[-1]["stage"]]
    size = export.save(cfg.out, packed)
    loaded = export.unpack(export.load(cfg.out))
    written = final if not jax.tree.leaves(final_state) else {"params": final, **final_state}
    same = all(
        np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
        for a, b in zip(jax.tree.leaves(written), jax.tree.leaves(loaded), strict=True)
    )
    if jax.tree.leaves(final_state):
        loaded, loaded_state = loaded["params"], {k: loaded[k] for k in final_state}
    else:
        loaded_state = final_state
    acc = train.evaluate(final_net.eval_apply, loaded, test, model_state=loaded_state)
    return {
        "rows": rows,
        "teacher_accuracy": rows[0]["accuracy"],
        "student_accuracy": rows[1]["accuracy"],
        "final_accuracy": rows[-1]["accuracy"],
        "loaded_accuracy": acc["accuracy"],
        "bit_exact": same,
        "file": str(cfg.out),
        "file_bytes": size,
        "report": export.report(packed),
        "config": cfg,
    }


def run(cfg: DemoConfig, on_stage: Callable[[dict], None] | None = None) -> dict:
    """Trains the teacher MLP, distills and compresses the student, writes and reloads the file.

    Args:
      cfg: the configuration (checked with `check_config` first).
      on_stage: called with each stage's table row as soon as it is measured (the command
        prints it); nothing here prints besides the progress bars of ``cfg.progress``.

    Returns:
      ``{"rows": [per-stage dicts: stage, accuracy, sparsity, bits_per_weight, bytes,
      ratio_vs_teacher, ratio_vs_student], "teacher_accuracy", "student_accuracy",
      "final_accuracy", "loaded_accuracy", "bit_exact", "file", "file_bytes", "report",
      "config"}``.
    """
    check_config(cfg)
    check_devices(cfg)
    ds = data.load_digits(seed=cfg.seed)
    keys = jax.random.split(jax.random.key(cfg.seed), 7)
    n_in = ds.x_train.shape[1]
    teacher = cfg.teacher or MLP_SIZES
    nets = {}
    for i, (name, sizes) in enumerate((("teacher", teacher), ("student", cfg.student or teacher))):
        apply, params = models.init_mlp((*sizes, 10), n_in, keys[i])
        nets[name] = Net(apply, apply, params)
    return run_stages(cfg, nets, stages(cfg), ds, on_stage)


def check_devices(cfg: DemoConfig) -> None:
    """Raises ValueError when fewer than ``cfg.devices`` devices are available."""
    if jax.local_device_count() < cfg.devices:
        raise ValueError(
            f"--devices {cfg.devices}: only {jax.local_device_count()} device(s) available"
        )
