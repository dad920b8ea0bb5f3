"""Packed size vs accuracy of the digits MLP compressed by `lightcomp.demo` (Deep Compression).

Target: a packed student >= 40x smaller than the same network in float32, with test
accuracy at most 1 point below the float teacher. Every size is the size of the
file `lightcomp.export.save` writes (header included), loaded back and re-evaluated.

    python benchmarks/bench_compression.py            # default config + trade-off curve
    python benchmarks/bench_compression.py --quick    # a tiny run (seconds), for CI

Writes benchmarks/compression_tradeoff.png (accuracy vs compression ratio) and prints a
Markdown table last.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from lightcomp import demo

HERE = Path(__file__).resolve().parent


def _one(cfg: demo.DemoConfig) -> dict:
    t0 = time.perf_counter()
    r = demo.run(cfg)
    final = r["rows"][-1]
    assert r["bit_exact"] and r["loaded_accuracy"] == r["final_accuracy"]
    return {
        "sparsity": cfg.sparsity,
        "bits": cfg.bits,
        "clusters": cfg.clusters,
        "teacher_acc": r["teacher_accuracy"],
        "student_acc": r["student_accuracy"],
        "acc": r["loaded_accuracy"],
        "bytes": r["file_bytes"],
        "bpw": final["bits_per_weight"],
        "ratio": final["ratio_vs_student"],
        "ratio_teacher": final["ratio_vs_teacher"],
        "seconds": time.perf_counter() - t0,
        "table": demo.markdown_table(r),
    }


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for bits in sorted({r["bits"] for r in rows}):
        pts = sorted((r["ratio"], 100 * r["acc"], r["sparsity"]) for r in rows if r["bits"] == bits)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{bits}-bit weights")
        for x, y, s in pts:
            ax.annotate(f"{s:.0%}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.axhline(100 * rows[0]["teacher_acc"], color="k", ls="--", lw=1, label="float teacher")
    ax.axhline(100 * rows[0]["teacher_acc"] - 1, color="gray", ls=":", lw=1, label="teacher - 1 pt")
    ax.axvline(40, color="r", ls=":", lw=1, label="40x")
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio vs float32 (packed file bytes)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("digits MLP: accuracy / size trade-off (labels: sparsity)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny network, few steps, two points")
    p.add_argument("--steps", type=int, default=None, help="steps per stage (default 400)")
    p.add_argument("--plot", default=str(HERE / "compression_tradeoff.png"))
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp()
    if args.quick:
        base = dict(steps=args.steps or 10, teacher=(16,), progress=False)
        grid = [(0.8, 4)]
        default = (0.8, 4)
    else:
        base = dict(steps=args.steps or 400, progress=False)
        grid = [(s, b) for b in (3, 5) for s in (0.8, 0.9, 0.95, 0.97)]
        default = (0.9, 3)  # the demo's defaults
    rows = []
    for s, b in grid:
        cfg = demo.DemoConfig(sparsity=s, bits=b, out=f"{tmp}/m_{s}_{b}.lcpk", **base)
        rows.append(_one(cfg))
        r = rows[-1]
        print(
            f"sparsity {s:.2f} bits {b}: acc {100 * r['acc']:.2f}% (teacher "
            f"{100 * r['teacher_acc']:.2f}%), {r['bytes']:,} bytes, {r['ratio']:.1f}x, "
            f"{r['seconds']:.0f} s",
            flush=True,
        )
    if not args.quick:
        _plot(rows, Path(args.plot))
        print(f"plot: {args.plot}")
    best = next(r for r in rows if (r["sparsity"], r["bits"]) == default)
    print("\nDefault configuration (lightcomp demo):\n")
    print(best["table"])
    drop = 100 * (best["teacher_acc"] - best["acc"])
    ok = best["ratio"] >= 40 and drop <= 1.0
    print(
        f"\ntarget (>= 40x vs float32, <= 1 pt below the teacher): "
        f"{'OK' if ok else 'MISSED'}: {best['ratio']:.1f}x, {drop:+.2f} pt"
        + (" (quick mode: tiny network, not the target configuration)" if args.quick else "")
    )
    print()
    print(
        "| sparsity | bits | clusters | test acc | teacher acc | packed bytes | bits/weight | x vs float32 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sparsity']:.2f} | {r['bits']} | {r['clusters']} | {100 * r['acc']:.2f}% | "
            f"{100 * r['teacher_acc']:.2f}% | {r['bytes']:,} | {r['bpw']:.3f} | {r['ratio']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
