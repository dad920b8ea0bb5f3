"""Integer serving: the quantized LeNet-300-100 forward at batch 1024 against float32.

Each implementation runs in its own process and times, in the same interleaved rounds,
its own float32 forward and its quantized serving forward (8-bit symmetric per-output-
channel weights, 8-bit activations quantized dynamically), both under ``jax.jit``:

  - lightcomp: ``lc.serve.linen(lc.models.MLP)`` on ``lc.serve.from_packed(lc.export.pack(...))``
    (int8 codes, per-tensor activations); also 4-bit kernels held two per byte or one int8
    per code, and a 16-value weight-sharing codebook served as int8 codes or as a gather
    inside the forward followed by a float32 matmul (the choices ``lc.serve`` makes);
  - qwix: post-training quantization (``PtqProvider``, int8 weights and activations);
  - aqtp: AQT's serve mode (weights frozen to int8 by ``QuantMode.CONVERT``, activations
    quantized per row).

The ratio quantized / float32 is taken within each worker and round (the same machine
load), then the median over rounds. The peers are optional and live in their own virtual
environments (``--setup`` creates them, as in ``bench_peers.py``; they pin lightcomp's jax
and flax). Also checked: given AQT's frozen scales, lightcomp's grid (absmax/127 with codes
+-127, round half to even) gives AQT's int8 codes.

Usage::

    python benchmarks/bench_serve.py --setup     # create the peers' environments (downloads)
    python benchmarks/bench_serve.py             # measure
    python benchmarks/bench_serve.py --quick     # a few calls, to check that it works
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))

import bench_peers as BP  # noqa: E402

SERVE_PEERS = ("qwix", "aqtp")
TARGET = 0.40  # lightcomp's int8 serving forward, as a fraction of float32 on CPU
LIGHTCOMP_VARIANTS = {
    "int8": "w8a8 (lc.serve.linen)",
    "int8_bf16": "w8a8, operands='bfloat16' (the same exact sums)",
    "w4": "w4a8, 4-bit codes two per byte (PackedInt4)",
    "w4_int8": "w4a8, 4-bit codes one int8 each",
    "w4_jnp_int4": "w4a8, 4-bit codes as jnp.int4 (by hand, no lc.serve)",
    "book_int8": "16 shared values on an 8-bit grid, int8 codes",
    "book_float": "16 shared values: gather in the forward, float32 matmul",
}


def _workers(args, peers, dump: str):
    started = [
        BP.Worker(
            "lightcomp",
            [sys.executable, str(BP.WORKERS / "serve_lightcomp.py"), *_common(args)],
            {},
            "lightcomp (lc.serve.linen on lc.serve.from_packed)",
        )
    ]
    unavailable = {}
    for peer in peers:
        python = BP._venv_python(args.venv_dir, peer)
        if not python.exists():
            unavailable[peer] = (
                f"not installed (no environment at {python.parent.parent}; "
                "run with --setup to create it)"
            )
            continue
        extra = ["--dump", dump] if peer == "aqtp" else []
        argv = [str(python), str(BP.WORKERS / BP.PEERS[peer]["worker"]), *_common(args), *extra]
        started.append(BP.Worker(peer, argv, BP.PEERS[peer]["env"], BP.PEERS[peer]["label"]))
    workers = []
    for w in started:
        try:
            w.wait_ready()
            workers.append(w)
        except RuntimeError as e:
            w.close()
            if w.name == "lightcomp":
                for other in started:
                    other.close()
                raise
            unavailable[w.name] = f"could not run: {str(e).splitlines()[-1][:300]}"
    return workers, unavailable


def _common(args) -> list[str]:
    return ["--batch", str(args.batch), "--warmup", str(args.warmup)]


def _variants(name: str) -> list[str]:
    return ["f32", *(LIGHTCOMP_VARIANTS if name == "lightcomp" else ["int8"])]


def _measure(workers, rounds: int, iters: int) -> dict[str, dict[str, list[float]]]:
    times = {w.name: {v: [] for v in _variants(w.name)} for w in workers}
    for r in range(rounds):
        k = r % len(workers)
        for w in workers[k:] + workers[:k]:  # no worker always first
            vs = _variants(w.name)
            j = r % len(vs)
            for v in vs[j:] + vs[:j]:
                times[w.name][v].append(w.time(v, iters))
    return times


def _ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setup", action="store_true", help="create the peers' environments first")
    parser.add_argument("--venv-dir", type=Path, default=BP.DEFAULT_VENV_DIR)
    parser.add_argument("--peers", default=",".join(SERVE_PEERS), help="subset; '' for none")
    parser.add_argument("--quick", action="store_true", help="few calls and rounds")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=None, help="forward calls per timing")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in SERVE_PEERS:
            parser.error(f"--peers: unknown peer {p!r}; choose from {list(SERVE_PEERS)}")
    iters = args.iters or (3 if args.quick else 40)
    rounds = args.rounds or (1 if args.quick else 9)
    if args.quick:
        args.warmup = min(args.warmup, 1)
    installed = BP.setup(args.venv_dir, peers) if args.setup else {}

    with tempfile.TemporaryDirectory() as tmp:
        dump = str(Path(tmp) / "aqt_codes.npz")
        workers, unavailable = _workers(args, peers, dump)
        t0 = time.perf_counter()
        try:
            times = _measure(workers, rounds, iters)
        finally:
            for w in workers:
                w.close()
        elapsed = time.perf_counter() - t0
        codes = None
        if Path(dump).exists():
            from serve_lightcomp import lightcomp_codes

            codes = lightcomp_codes(dump)
    _report(args, workers, times, unavailable, installed, codes, rounds, iters, elapsed)
    return 0


def _report(args, workers, times, unavailable, installed, codes, rounds, iters, elapsed):
    med = {n: {v: statistics.median(t) for v, t in d.items()} for n, d in times.items()}
    print(
        f"\nLeNet-300-100 serving forward, batch {args.batch}; {rounds} interleaved rounds of "
        f"{iters} calls each (median ms per call; ratios: median of the per-round ratios to the "
        f"same process's float32 forward), {elapsed:.0f} s of timing, {os.cpu_count()} CPU cores."
    )
    for w in workers:
        print(f"  {w.name}: {w.label}; {w.info.get('versions', '')}; {w.info.get('check', '')}")
    for peer, why in installed.items():
        print(f"  {peer}: setup {why}")
    for peer, why in unavailable.items():
        print(f"  {peer}: NOT MEASURED: {why}")
    if codes is not None:
        print(
            f"  AQT's int8 weight codes reproduced by lightcomp's grid given AQT's scales: {codes}"
        )
    if "lightcomp" in times:
        for v in ("int8", "int8_bf16"):
            ours = _ratio(times["lightcomp"][v], times["lightcomp"]["f32"])
            verdict = "MET" if ours <= TARGET else "MISSED"
            label = LIGHTCOMP_VARIANTS[v]
            print(f"  target: lightcomp {label} <= {TARGET:.2f}x float32: {verdict} ({ours:.3f}x)")
    print()
    print(
        "| implementation | serving | float32 ms | quantized ms | quantized / float32 "
        "| quantized / lightcomp w8a8 |"
    )
    print("|---|---|---|---|---|---|")
    base = times.get("lightcomp", {}).get("int8")
    for w in workers:
        t, m = times[w.name], med[w.name]
        labels = LIGHTCOMP_VARIANTS if w.name == "lightcomp" else {"int8": "w8a8"}
        for v, label in labels.items():
            rel = f"{_ratio(t[v], base):.2f}" if base else ""
            print(
                f"| {w.name} | {label} | {m['f32']:.2f} | {m[v]:.2f} | "
                f"{_ratio(t[v], t['f32']):.2f} | {rel} |"
            )
    for peer in unavailable:
        print(f"| {peer} | not measured | | | | |")


if __name__ == "__main__":
    sys.exit(main())
