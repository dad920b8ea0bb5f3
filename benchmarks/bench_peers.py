"""The LeNet-300-100 distillation step in lightcomp and in the tools people use today.

One step of knowledge distillation (student 784-300-100-10, frozen teacher
784-1200-1200-10, batch 256, SGD with momentum 0.9) in three variants:

  (a) the plain student cross-entropy step;
  (b) (a) + the frozen teacher and the KD loss 0.5 CE + 0.5 T^2 KL (T = 4);
  (c) (b) + a fixed 50% magnitude mask + 8-bit symmetric per-output-channel
      weight fake quantization (STE), pruned weights kept at 0.

Implementations, each in its own process, timed in the same run and
interleaved round by round so that the machine's load hits them alike:

  - lightcomp: ``lightcomp.train.make_step`` with ``chain(pruning, fake_quantization)``;
  - jax: the same step written by hand with JAX + optax, one ``jax.jit``;
  - tfmot: TensorFlow + TensorFlow Model Optimization (``prune_low_magnitude``,
    then pruning-preserving quantization-aware training with a per-channel
    weight quantizer), ``tf.function``; tfmot-xla: the same compiled by XLA;
  - torch: PyTorch (``torch.nn.utils.prune`` + ``torch.ao`` per-channel
    ``FakeQuantize`` on ``torch.ao.nn.qat.Linear``), eager.

The peers are optional: ``--setup`` creates one virtual environment per peer
(under ``--venv-dir``) and installs it there; a peer that is not installed is
reported as such and the others are still measured. Inputs are random (the
same seed everywhere): a step's time does not depend on the data.

With ``--qat`` it measures the (c') step instead: (b) + 8-bit symmetric per-channel
weights and 8-bit dynamic activations in the student's forward (no mask), for lightcomp
(``make_step`` + ``fake_quantization`` + ``linen_apply(act_quant=...)``, integer dots;
also its float fake-quant path and per-row activation ranges), qwix (``QtProvider``) and AQT
(``AqtDotGeneral`` in training mode), each peer in its own environment from ``--setup``.

Usage::

    python benchmarks/bench_peers.py --setup     # create the peers' environments (downloads)
    python benchmarks/bench_peers.py             # measure
    python benchmarks/bench_peers.py --quick     # a few steps, to check that it works
    python benchmarks/bench_peers.py --qat       # the (c') step: lightcomp, qwix, AQT
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from peers._workers import Worker, interleave, round_ratio, wait_all, worker_argv

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "peers"
# benchmarks/.peers/<venv>/ (git-ignored), or wherever LIGHTCOMP_PEERS_DIR says
DEFAULT_VENV_DIR = Path(os.environ.get("LIGHTCOMP_PEERS_DIR", HERE / ".peers"))

# What each peer's environment installs. torch==2.13.0 is the CPU build; TensorFlow
# Model Optimization needs Keras 2, which TensorFlow >= 2.16 ships as tf-keras.
PEERS: dict[str, dict] = {
    "tfmot": {
        "venv": "tfmot",
        "packages": ["tensorflow", "tf-keras", "tensorflow-model-optimization", "numpy"],
        "worker": "tfmot_step.py",
        "args": [],
        "env": {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
        "label": "TF + tfmot (prune_low_magnitude, then PQAT), tf.function graph",
    },
    "tfmot-xla": {
        "venv": "tfmot",
        "packages": ["tensorflow", "tf-keras", "tensorflow-model-optimization", "numpy"],
        "worker": "tfmot_step.py",
        "args": ["--xla"],
        "env": {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
        "label": "the same, tf.function(jit_compile=True) (XLA)",
    },
    "torch": {
        "venv": "torch",
        "packages": ["torch==2.13.0", "numpy"],
        "worker": "torch_step.py",
        "args": [],
        "env": {},
        "label": "PyTorch (nn.utils.prune + torch.ao FakeQuantize), eager",
    },
    # serving peers of bench_serve.py (integer forward), on the same jax / flax as lightcomp
    "qwix": {
        "venv": "qwix",
        "packages": ["qwix==0.1.8", "jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8", "numpy"],
        "worker": "serve_qwix.py",
        "args": [],
        "env": {},
        "label": "qwix PTQ (int8 weights and dynamic activations), jax.jit",
        "kd": False,
    },
    "aqtp": {
        "venv": "aqtp",
        "packages": ["aqtp==0.9.0", "jax==0.10.2", "jaxlib==0.10.2", "flax==0.12.8", "numpy"],
        "worker": "serve_aqt.py",
        "args": [],
        "env": {},
        "label": "AQT serve mode (frozen int8 weights, dynamic activations), jax.jit",
        "kd": False,
    },
}
KD_PEERS = [p for p, spec in PEERS.items() if spec.get("kd", True)]
LOCAL = {
    "lightcomp": {"worker": "lightcomp_step.py", "label": "lightcomp (make_step + chain)"},
    "jax": {"worker": "jax_step.py", "label": "JAX + optax by hand, one jit"},
}
VARIANTS = ("a", "b", "c")
# the (c') step (--qat): name -> (environment or None for this one, worker, args, label)
QAT: dict[str, tuple[str | None, str, list[str], str]] = {
    "lightcomp": (None, "lightcomp_qat.py", [], "make_step, int8 x int8 -> int32 dots, STE"),
    "lightcomp-float": (
        None,
        "lightcomp_qat.py",
        ["--compute", "float"],
        "the same numbers by float fake quantization",
    ),
    "lightcomp-rows": (
        None,
        "lightcomp_qat.py",
        ["--act", "tokens"],
        "int8 dots, one activation range per row (as qwix and AQT)",
    ),
    "lightcomp-bf16": (
        None,
        "lightcomp_qat.py",
        ["--operands", "bfloat16"],
        "int8 codes carried in bfloat16, the same exact sums",
    ),
    "lightcomp-layer": (
        None,
        "lightcomp_qat.py",
        ["--weights", "layer"],
        "int8 dots, the kernels quantized in the layer (weight_bits), no transform",
    ),
    "qwix": ("qwix", "qwix_step.py", [], "qwix QtProvider, int8 weights and activations"),
    "aqtp": ("aqtp", "aqt_step.py", [], "AQT AqtDotGeneral, fully_quantized(8, bwd_bits=None)"),
}
QAT_VARIANTS = ("b", "q")


def _venv_python(venv_dir: Path, peer: str) -> Path:
    return venv_dir / PEERS[peer]["venv"] / "bin" / "python"


def setup(venv_dir: Path, peers: list[str]) -> dict[str, str]:
    """Creates (or updates) one virtual environment per peer; returns peer -> 'ok ...' or why not."""
    status: dict[str, str] = {}
    done: dict[str, str] = {}
    for peer in peers:
        venv = PEERS[peer]["venv"]
        if venv in done:
            status[peer] = done[venv]
            continue
        env_path = venv_dir / venv
        print(f"[setup] {peer}: creating {env_path}", flush=True)
        try:
            base = getattr(sys, "_base_executable", sys.executable)
            subprocess.run([base, "-m", "venv", str(env_path)], check=True)
            pip = [str(_venv_python(venv_dir, peer)), "-m", "pip", "install", "--quiet"]
            subprocess.run([*pip, "--upgrade", "pip"], check=True)
            print(f"[setup] {peer}: pip install {' '.join(PEERS[peer]['packages'])}", flush=True)
            subprocess.run([*pip, *PEERS[peer]["packages"]], check=True)
            probe = _probe(venv_dir, peer)
            if probe is None:
                raise RuntimeError("installed, but the worker's imports fail")
            status[peer] = "ok: " + probe
        except (subprocess.CalledProcessError, OSError, RuntimeError) as e:
            status[peer] = f"FAILED: {e}"
        done[venv] = status[peer]
        print(f"[setup] {peer}: {status[peer]}", flush=True)
    return status


def _probe(venv_dir: Path, peer: str) -> str | None:
    """Versions string if the peer's environment imports, else None."""
    python = _venv_python(venv_dir, peer)
    if not python.exists():
        return None
    env = {**os.environ, **PEERS[peer]["env"]}
    try:
        out = subprocess.run(
            [str(python), str(WORKERS / PEERS[peer]["worker"]), "--versions"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip().splitlines()[-1]


def qat(args: argparse.Namespace, venv_dir: Path, iters: int, rounds: int) -> int:
    """The (c') comparison: lightcomp's quantized KD step vs qwix's and AQT's, interleaved."""
    started, unavailable = [], {}
    for name, (venv, worker, extra, label) in QAT.items():
        python = sys.executable if venv is None else str(venv_dir / venv / "bin" / "python")
        if not Path(python).exists():
            unavailable[name] = f"not installed (no environment at {Path(python).parent.parent})"
            continue
        started.append(Worker(name, worker_argv(python, worker, args, extra), {}, label))
    local = [n for n, spec in QAT.items() if spec[0] is None]
    workers, more = wait_all(started, local)
    unavailable.update(more)
    times, elapsed = interleave(workers, QAT_VARIANTS, rounds, iters)
    med = {n: {v: statistics.median(ts) for v, ts in d.items()} for n, d in times.items()}
    print(
        f"\nLeNet-300-100 KD step (c'): 8-bit symmetric per-channel weights, 8-bit dynamic "
        f"activations, batch {args.batch}; {rounds} interleaved rounds of {iters} steps (median "
        f"ms per step; ratios: median of the per-round ratios), {elapsed:.0f} s, "
        f"{os.cpu_count()} CPU cores."
    )
    for w in workers:
        print(f"  {w.name}: {w.label}; {w.info.get('versions', '')}; {w.info.get('check', '')}")
    for name, why in unavailable.items():
        print(f"  {name}: NOT MEASURED: {why}")
    peers = [w.name for w in workers if QAT[w.name][0] is not None]
    if peers:
        best = min(peers, key=lambda n: med[n]["q"])
        r = round_ratio(times, "lightcomp", "q", best, "q")
        verdict = "met" if r <= 1.0 else "MISSED"
        print(f"target: lightcomp (c') <= 1.0x the faster peer ({best}): {verdict} ({r:.2f}x)")
    print()
    print("| implementation | (b) ms | (c') ms | (c')/(b) | (c') / lightcomp (c') |")
    print("|---|---|---|---|---|")
    for w in workers:
        m = med[w.name]
        print(
            f"| {w.name} | {m['b']:.2f} | {m['q']:.2f} | {round_ratio(times, w.name, 'q', w.name, 'b'):.3f}"
            f" | {round_ratio(times, w.name, 'q', 'lightcomp', 'q'):.2f} |"
        )
    for name in unavailable:
        print(f"| {name} | not measured | | | |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setup", action="store_true", help="create the peers' environments first")
    parser.add_argument("--venv-dir", type=Path, default=DEFAULT_VENV_DIR)
    parser.add_argument(
        "--peers",
        default=",".join(KD_PEERS),
        help="comma-separated subset of the peers; '' for none (qwix, aqtp: --setup only, "
        "they are measured by bench_serve.py)",
    )
    parser.add_argument("--quick", action="store_true", help="few steps and rounds")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=None, help="steps per timing")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--qat", action="store_true", help="the (c') step: lightcomp, qwix, AQT")
    args = parser.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in PEERS:
            parser.error(f"--peers: unknown peer {p!r}; choose from {sorted(PEERS)}")
    iters = args.iters or (5 if args.quick else 40)
    rounds = args.rounds or (1 if args.quick else 5)
    if args.quick:
        args.warmup = min(args.warmup, 2)

    installed = setup(args.venv_dir, peers) if args.setup else {}
    if args.qat:
        return qat(args, args.venv_dir, iters, rounds)
    peers = [p for p in peers if p in KD_PEERS]  # serving peers: set up here, timed by bench_serve

    unavailable: dict[str, str] = {}
    # all workers start (import, compile, warm up) at once; timing then goes one at a time
    started: list[Worker] = [
        Worker(name, worker_argv(sys.executable, spec["worker"], args), {}, spec["label"])
        for name, spec in LOCAL.items()
    ]
    for peer in peers:
        python = _venv_python(args.venv_dir, peer)
        if not python.exists():
            unavailable[peer] = (
                f"not installed (no environment at {python.parent.parent}; "
                "run with --setup to create it)"
            )
            continue
        started.append(
            Worker(
                peer,
                worker_argv(str(python), PEERS[peer]["worker"], args, PEERS[peer]["args"]),
                PEERS[peer]["env"],
                PEERS[peer]["label"],
            )
        )
    workers, more = wait_all(started, LOCAL)
    unavailable.update(more)
    times, elapsed = interleave(workers, VARIANTS, rounds, iters)
    med = {n: {v: statistics.median(ts) for v, ts in d.items()} for n, d in times.items()}

    def ratio(name: str, variant: str, other: str, other_variant: str) -> float:
        return round_ratio(times, name, variant, other, other_variant)

    print(
        f"\nLeNet-300-100 KD step, batch {args.batch}, SGD momentum; {rounds} interleaved rounds "
        f"of {iters} steps each (median ms per step; ratios: median of the per-round ratios), "
        f"{elapsed:.0f} s of timing, {os.cpu_count()} CPU cores."
    )
    for w in workers:
        print(f"  {w.name}: {w.label}; {w.info.get('versions', '')}; {w.info.get('check', '')}")
    for peer, why in installed.items():
        print(f"  {peer}: setup {why}")
    for peer, why in unavailable.items():
        print(f"  {peer}: NOT MEASURED: {why}")
    print()
    print("| implementation | (a) ms | (b) ms | (c) ms | (c)/(b) | (c) / lightcomp (c) |")
    print("|---|---|---|---|---|---|")
    for w in workers:
        m = med[w.name]
        print(
            f"| {w.name} | {m['a']:.2f} | {m['b']:.2f} | {m['c']:.2f} | "
            f"{ratio(w.name, 'c', w.name, 'b'):.3f} | {ratio(w.name, 'c', 'lightcomp', 'c'):.2f} |"
        )
    for peer in unavailable:
        print(f"| {peer} | not measured | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
