"""Post-training compression of a character-level Transformer LM: perplexity and time per method.

1. `lightcomp.posttrain.CharLM` (DenseGeneral attention, unrolled blocks) is trained briefly on
   the Python standard library's own source files (`stdlib_text`; no download) and evaluated
   by perplexity on held-out text from the same library.
2. Every kernel but the output head is compressed one-shot from calibration windows by
   magnitude, Wanda and SparseGPT at 50% unstructured and 2:4, and by round-to-nearest and
   GPTQ at 4 bits (groups of 32 input columns) and 3 bits (one scale per output row); each
   row gives the perplexity, its increase over the float model, and the seconds (whole call,
   calibration and compilation included) per compressed layer.
3. GPTQ against qwix's GPTQ (``qwix.contrib.gptq_core.quantize_weight``, run in qwix's own
   virtual environment on the very same Gram matrices, 4 bits, groups of 32): perplexity and
   time per layer (first call, compilation included, and a second call).
4. Cost versus layer width: SparseGPT (50%) and GPTQ (4 bits) on one ``n x n`` layer with
   the Gram matrix of ``2n`` random input rows, n = 256, 1024, 4096 (second call: compiled).

Usage::

    python benchmarks/bench_posttrain.py            # d=128, 2 blocks, 600 steps; widths to 4096
    python benchmarks/bench_posttrain.py --quick    # a tiny LM, width 256 only, no qwix

The machine may be shared: absolute times drift, the ratios in one run are what count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import lightcomp as lc

P = lc.posttrain
HERE = Path(__file__).resolve().parent
SELECT = lc.tree.select(exclude="head")


def _timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def _lm(quick: bool):
    cfg = dict(d_model=32, layers=1, max_len=32) if quick else dict(d_model=128, layers=2)
    seq = cfg.get("max_len", 128)
    train = P.encode(P.stdlib_text(60_000 if quick else 400_000))
    held = P.encode(P.stdlib_text(8_000 if quick else 30_000, skip_chars=400_000))
    model = P.CharLM(**cfg)
    (apply, params), secs = _timed(
        lambda: P.train_char_lm(train, model, steps=30 if quick else 600, batch=32, seq_len=seq)
    )
    n_calib = 8 if quick else 32
    calib = [jnp.asarray(P.windows(train, seq, n_calib, seed=s)[:, :-1]) for s in (1, 2)]
    ppl = lambda p: P.perplexity(apply, p, held, seq_len=seq)
    return apply, params, calib, ppl, secs, (train, seq)


def _sparsegpt_settings(apply, params, ppl, dense, mag, data, windows=(64, 256)):
    """SparseGPT 50% at the paper's settings (block 128, dampening 0.01, sequential) with more
    calibration windows: the increase over float as a fraction of magnitude's."""
    train, seq = data
    lines = [
        "| SparseGPT 50%, block 128, damp 0.01, sequential | perplexity | increase / magnitude's |",
        "|---|---|---|",
    ]
    for n in windows:
        calib = [
            jnp.asarray(P.windows(train, seq, 32, seed=100 + s)[:, :-1]) for s in range(n // 32)
        ]
        out = P.sparsegpt(apply, params, calib, 0.5, blocksize=128, dampening=0.01, select=SELECT)
        p = ppl(out)
        lines.append(f"| {n} windows of {seq} | {p:.3f} | {(p - dense) / (mag - dense):.2f} |")
    return lines


def _methods(quick: bool):
    nm = lc.prune.NM(2, 4)
    rows = [
        ("magnitude", "50%", lambda a, p, c: P.magnitude(a, p, c, 0.5, select=SELECT)),
        ("Wanda", "50%", lambda a, p, c: P.wanda(a, p, c, 0.5, select=SELECT)),
        ("SparseGPT", "50%", lambda a, p, c: P.sparsegpt(a, p, c, 0.5, select=SELECT)),
        ("magnitude", "2:4", lambda a, p, c: P.magnitude(a, p, c, nm, select=SELECT)),
        ("Wanda", "2:4", lambda a, p, c: P.wanda(a, p, c, nm, select=SELECT)),
        ("SparseGPT", "2:4", lambda a, p, c: P.sparsegpt(a, p, c, nm, select=SELECT)),
        ("RTN", "4-bit g32", lambda a, p, c: P.rtn(a, p, c, 4, group_size=32, select=SELECT)),
        ("GPTQ", "4-bit g32", lambda a, p, c: P.gptq(a, p, c, 4, group_size=32, select=SELECT)),
        ("RTN", "3-bit", lambda a, p, c: P.rtn(a, p, c, 3, select=SELECT)),
        ("GPTQ", "3-bit", lambda a, p, c: P.gptq(a, p, c, 3, select=SELECT)),
    ]
    if quick:
        keep = {("magnitude", "50%"), ("SparseGPT", "50%"), ("RTN", "3-bit"), ("GPTQ", "3-bit")}
        rows = [r for r in rows if (r[0], r[1]) in keep]
    return rows


def _layer_matrices(apply, params, calib):
    grams = P.grams(apply, params, calib, select=SELECT)
    found = lc.posttrain._calibration.plan(apply, params, calib[0], SELECT)  # the views
    leaves = dict(lc.tree.leaves_with_paths(params))
    out = []
    for path, g in grams.items():
        view = found.views[path]
        out.append(
            (path, view, np.asarray(view.to_matrix(leaves[path])[0]), np.asarray(g.matrix[0]))
        )
    return out


def _qwix(args, apply, params, calib, ppl, dense):
    """GPTQ against qwix's, on the same Gram matrices (one calibration pass, float model)."""
    if args.quick:
        return ["qwix: NOT MEASURED: skipped in --quick"], []
    python = Path(args.qwix_python)
    if not python.exists():
        return [f"qwix: NOT MEASURED: not installed ({python} missing)"], []
    mats = _layer_matrices(apply, params, calib)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(
            src,
            **{f"w_{i}": m[2] for i, m in enumerate(mats)},
            **{f"h_{i}": m[3] for i, m in enumerate(mats)},
        )
        env = {**os.environ, "PYTHONPATH": ""}
        proc = subprocess.run(
            [str(python), str(HERE / "peers" / "qwix_gptq.py"), src, dst, "4", "32"],
            capture_output=True,
            text=True,
            env=env,
            timeout=3000,
        )
        if proc.returncode:
            return [f"qwix: NOT MEASURED: its run failed: {proc.stderr[-500:]}"], []
        got = dict(np.load(dst))
    leaves = dict(lc.tree.leaves_with_paths(params))
    ours, firsts, agains, q_qwix = {}, [], [], {}
    for i, (path, view, w, h) in enumerate(mats):
        _, first = _timed(lambda: P.gptq_matrix(w, h, 4, group_size=32).values)
        _, again = _timed(lambda: P.gptq_matrix(w, h, 4, group_size=32).values)
        firsts.append(first)
        agains.append(again)
        ours[path] = view.from_matrix(
            lc.quant.dequantize(P.gptq_matrix(w, h, 4, group_size=32))[None], leaves[path].dtype
        )
        q_qwix[path] = view.from_matrix(jnp.asarray(got[f"q_{i}"])[None], leaves[path].dtype)
    put = lambda new: jax.tree.unflatten(
        jax.tree.structure(params), [new.get(p, v) for p, v in lc.tree.leaves_with_paths(params)]
    )
    n = len(mats)
    rows = [
        ("lightcomp GPTQ (one pass)", ppl(put(ours)), sum(firsts) / n, sum(agains) / n),
        (
            "qwix GPTQ (one pass)",
            ppl(put(q_qwix)),
            sum(got[f"seconds_{i}"] for i in range(n)) / n,
            sum(got[f"again_{i}"] for i in range(n)) / n,
        ),
    ]
    lines = [
        "| 4-bit, groups of 32, same Gram matrices | perplexity | vs float | s/layer (first call) | s/layer (again) |",
        "|---|---|---|---|---|",
    ]
    for name, p, a, b in rows:
        lines.append(f"| {name} | {p:.3f} | {100 * (p / dense - 1):+.1f}% | {a:.2f} | {b:.3f} |")
    return lines, rows


def _widths(quick: bool):
    lines = [
        "| layer n x n | SparseGPT 50% s | GPTQ 4-bit s | first calls: SparseGPT / GPTQ s |",
        "|---|---|---|---|",
    ]
    out = {}
    for n in (256,) if quick else (256, 1024, 4096):
        r = np.random.default_rng(n)
        w = r.normal(size=(n, n)).astype(np.float32)
        x = r.normal(size=(2 * n, n)).astype(np.float32)
        h = x.T @ x
        sgpt, gptq = lambda: P.sparsegpt_matrix(w, h, 0.5)[0], lambda: P.gptq_matrix(w, h, 4).values
        s0, g0 = _timed(sgpt)[1], _timed(gptq)[1]  # compile
        s = min(_timed(sgpt)[1] for _ in range(3))
        g = min(_timed(gptq)[1] for _ in range(3))
        lines.append(f"| {n} x {n} | {s:.2f} | {g:.2f} | {s0:.2f} / {g0:.2f} |")
        out[n] = (s, g)
    return lines, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny LM, seconds")
    parser.add_argument(
        "--qwix-python", default="/work/venvs/qwix/bin/python", help="python of qwix's venv"
    )
    parser.add_argument(
        "--part",
        choices=("all", "methods", "widths", "qwix", "sparsegpt"),
        default="all",
        help="run one part only: widths (no LM), methods, or qwix (GPTQ against qwix's, then "
        "SparseGPT 50%% at the paper's settings with more calibration windows), or sparsegpt "
        "(that last table alone)",
    )
    parser.add_argument(
        "--windows",
        default="64,256",
        help="calibration window counts (multiples of 32) of the SparseGPT-settings table",
    )
    args = parser.parse_args()
    windows = tuple(int(w) for w in args.windows.split(","))
    if any(w < 32 or w % 32 for w in windows):
        parser.error(f"--windows: multiples of 32, got {args.windows!r}")
    if args.part == "widths":
        print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        lines, widths = _widths(args.quick)
        print("\n".join(lines))
        _targets({}, None, [], widths)
        print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        return 0
    apply, params, calib, ppl, train_s, data = _lm(args.quick)
    dense = ppl(params)
    n_layers = len(P.grams(apply, params, calib[:1], select=SELECT))
    print(
        f"float model: perplexity {dense:.3f} after {train_s:.0f} s of training; "
        f"{n_layers} layers compressed (all but the head)"
    )
    results = {}
    if args.part in ("qwix", "sparsegpt"):  # and SparseGPT at the paper's settings
        if args.part == "qwix":
            print("\n".join(_qwix(args, apply, params, calib, ppl, dense)[0]), flush=True)
        mag = ppl(P.magnitude(apply, params, calib, 0.5, select=SELECT))
        print(f"magnitude 50%: {mag:.3f}")
        print("\n".join(_sparsegpt_settings(apply, params, ppl, dense, mag, data, windows)))
        return 0
    for name, setting, fn in _methods(args.quick):
        out, secs = _timed(lambda fn=fn: fn(apply, params, calib))
        results[(name, setting)] = (ppl(out), secs / n_layers)
        print(f"  {name} {setting}: {results[(name, setting)][0]:.3f}", flush=True)
    if not args.quick:
        mag = results[("magnitude", "50%")][0]
        print("\n".join(_sparsegpt_settings(apply, params, ppl, dense, mag, data, windows)) + "\n")
    width_lines, widths = ([], {}) if args.part == "methods" else _widths(args.quick)
    print("\n".join(width_lines) + "\n")
    qwix_lines, qwix_rows = [], []
    if args.part != "methods":
        qwix_lines, qwix_rows = _qwix(args, apply, params, calib, ppl, dense)
    print("\n".join(qwix_lines) + "\n")
    _targets(results, dense, qwix_rows, widths)
    print(f"\nperplexity on held-out standard-library text (float model {dense:.3f})\n")
    print("| method | setting | perplexity | vs float | s / layer |")
    print("|---|---|---|---|---|")
    print(f"| float | - | {dense:.3f} | - | - |")
    for (name, setting), (p, s) in results.items():
        print(f"| {name} | {setting} | {p:.3f} | {100 * (p / dense - 1):+.1f}% | {s:.2f} |")


def _targets(results, dense, qwix_rows, widths):
    def verdict(ok):
        return "met" if ok else "MISSED"

    if ("magnitude", "50%") in results and ("SparseGPT", "50%") in results:
        mag = results[("magnitude", "50%")][0] - dense
        sgpt = results[("SparseGPT", "50%")][0] - dense
        print(
            f"target SparseGPT 50% increase <= 1/3 of magnitude's: {sgpt:.3f} vs {mag:.3f} "
            f"(ratio {sgpt / mag:.2f}): {verdict(sgpt <= mag / 3)}"
        )
    if ("GPTQ", "4-bit g32") in results:
        p = results[("GPTQ", "4-bit g32")][0]
        print(
            f"target GPTQ 4-bit g32 within 2% of float: {100 * (p / dense - 1):+.2f}%: "
            f"{verdict(p <= 1.02 * dense)}"
        )
    if ("GPTQ", "3-bit") in results:
        g, r = results[("GPTQ", "3-bit")][0], results[("RTN", "3-bit")][0]
        print(f"target GPTQ 3-bit below RTN 3-bit: {g:.3f} vs {r:.3f}: {verdict(g < r)}")
    if qwix_rows:
        (_, ours, t_ours, _), (_, theirs, t_theirs, _) = qwix_rows
        print(
            f"target GPTQ perplexity <= qwix's: {ours:.3f} vs {theirs:.3f}: "
            f"{verdict(ours <= theirs)}; time <= qwix's (first call): {t_ours:.2f} vs "
            f"{t_theirs:.2f} s/layer: {verdict(t_ours <= t_theirs)}"
        )
    if 4096 in widths:
        s, g = widths[4096]
        print(
            f"target a 4096 x 4096 layer in seconds: SparseGPT {s:.1f} s, GPTQ {g:.1f} s: "
            f"{verdict(max(s, g) < 10)}"
        )


if __name__ == "__main__":
    sys.exit(main())
