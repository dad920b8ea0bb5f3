"""Runs every ``benchmarks/bench_*.py`` and rewrites ``benchmarks/RESULTS.md`` with their tables.

Each benchmark runs in its own process (``python benchmarks/bench_X.py [--quick]``)
under a time limit per script and a budget for the whole run (15 minutes: the
suite must fit a 2-core machine); the table it prints last, with the paragraph
just before it, is taken from its output and written into the results file with
the date, the versions of jax / flax / optax / numpy (other versions, such as
the peers', as each benchmark prints them), the machine (CPU model, cores,
memory) and the wall time of each script. A benchmark that fails or times
out is recorded as such, with the tail of its output, and the others still run.

Usage::

    python benchmarks/run_all.py                 # everything, writes benchmarks/RESULTS.md
    python benchmarks/run_all.py --quick         # every benchmark's --quick mode
    python benchmarks/run_all.py --only peers,memory --output /tmp/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "RESULTS.md"
# The whole suite has 15 minutes on a 2-core machine; no single script may take it all.
DEFAULT_TIMEOUT_S = 420
DEFAULT_BUDGET_S = 900
_BOX = set("│┃┌┏└┗├┣━─┳┻╇╈╭╮╰╯═║╔╗╚╝")


def discover(only: list[str] | None = None, directory: Path = HERE) -> list[Path]:
    """The benchmark scripts ``bench_*.py`` in ``directory``, sorted by name.

    Args:
      only: short names (``peers`` for ``bench_peers.py``) to keep; None keeps all.
      directory: where to look; this file's folder by default.

    Raises:
      ValueError: if ``only`` names a benchmark that does not exist.
    """
    scripts = sorted(directory.glob("bench_*.py"))
    if only is None:
        return scripts
    names = {p.stem.removeprefix("bench_"): p for p in scripts}
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ValueError(f"--only: no benchmark named {unknown}; have {sorted(names)}")
    return [names[n] for n in only]


def final_table(output: str) -> str:
    """The table a benchmark printed last, as Markdown.

    A Markdown table (lines starting with ``|``) is returned as it is, with the
    paragraph printed just before it (title, context) and the non-empty lines
    printed after it (notes, verdicts). Otherwise the last
    paragraph that holds box-drawing characters (a rich table), or else the last
    paragraph, is returned inside a code fence.
    """
    lines = [ln.rstrip() for ln in _strip_ansi(output).splitlines()]
    last = None
    for i, ln in enumerate(lines):
        if ln.lstrip().startswith("|"):
            last = i
    if last is not None:
        start = last
        while start > 0 and lines[start - 1].lstrip().startswith("|"):
            start -= 1
        # the paragraph just before the table (its title and context), one blank line allowed
        head_end = start - 1 if start > 0 and not lines[start - 1].strip() else start
        head_start = head_end
        while head_start > 0 and lines[head_start - 1].strip():
            head_start -= 1
        head = [ln.strip() + "  " for ln in lines[head_start:head_end]]  # hard line breaks
        trailer = [ln.strip() for ln in lines[last + 1 :] if ln.strip()]
        table = [ln.strip() for ln in lines[start : last + 1]]
        # blank lines around the table: Markdown would read a line right after it as a row
        trailer = [ln + "  " for ln in trailer]
        parts = [*head, *([""] if head else []), *table, *([""] if trailer else []), *trailer]
        return "\n".join(parts)
    paragraphs, current = [], []
    for ln in [*lines, ""]:
        if ln.strip():
            current.append(ln)
        elif current:
            paragraphs.append(current)
            current = []
    if not paragraphs:
        return "_(no output)_"
    boxed = [p for p in paragraphs if any(c in _BOX for ln in p for c in ln)]
    chosen = boxed[-1] if boxed else paragraphs[-1]
    return "```\n" + "\n".join(chosen) + "\n```"


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _notes(output: str) -> list[str]:
    """Lines a benchmark prints to say what it could not measure (e.g. a missing peer)."""
    keys = ("NOT MEASURED", "not installed", "could not")
    return [ln.strip() for ln in output.splitlines() if any(k in ln for k in keys)][:10]


def machine() -> dict[str, str]:
    """CPU model, core count, memory and OS of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    cpu = ln.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "unknown"
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": str(cores),
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    """Installed versions of the packages the figures depend on."""
    out = {}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn", "lightcomp"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_one(script: Path, *, quick: bool, timeout_s: float) -> dict:
    """Runs one benchmark script; returns its status, wall time, output and final table."""
    cmd = [sys.executable, str(script), *(["--quick"] if quick else [])]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, cwd=script.parent.parent
        )
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        out, err = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        status = f"timed out after {timeout_s:.0f} s"
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    wall = time.perf_counter() - t0
    return {
        "name": script.stem,
        "command": " ".join(["python", f"{script.parent.name}/{script.name}", *cmd[2:]]),
        "status": status,
        "wall_s": wall,
        "table": final_table(out) if status == "ok" else None,
        "notes": _notes(out),
        "tail": "\n".join((out + "\n" + err).strip().splitlines()[-15:]),
    }


def _skipped(script: Path, budget: float) -> dict:
    return {
        "name": script.stem,
        "command": f"python {script.parent.name}/{script.name}",
        "status": f"skipped (the {budget:.0f} s budget was spent)",
        "wall_s": 0.0,
        "table": None,
        "notes": [],
        "tail": "",
    }


def render(results: list[dict], *, quick: bool, total_s: float) -> str:
    """The RESULTS.md text."""
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    m, v = machine(), versions()
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run_all.py{' --quick' if quick else ''}` on {now}"
        f" in {total_s / 60:.1f} min. Every figure below is this run's output;"
        " times are wall-clock on a machine that may be shared, so compare the ratios"
        " measured within one run.",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['memory']} memory, {m['os']}",
        f"- python {m['python']}; " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]
    if quick:
        lines += [
            "",
            "**Quick mode**: few steps and small sizes; these figures check that the"
            " benchmarks run, they do not measure anything well.",
        ]
    lines += ["", "| benchmark | status | wall time |", "|---|---|---|"]
    for r in results:
        lines.append(f"| [{r['name']}](#{r['name']}) | {r['status']} | {r['wall_s']:.0f} s |")
    for r in results:
        lines += [
            "",
            f"## {r['name']}",
            "",
            f"`{r['command']}` ({r['status']}, {r['wall_s']:.0f} s)",
        ]
        if r["notes"]:
            lines += [""] + [f"> {n}" for n in r["notes"]]
        lines.append("")
        if r["table"] is not None:
            lines.append(r["table"])
        else:
            lines += ["```", r["tail"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="run each benchmark's --quick mode")
    parser.add_argument(
        "--only", default=None, help="comma-separated short names, e.g. peers,memory"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--bench-dir", type=Path, default=HERE, help="where the bench_*.py are")
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per script"
    )
    parser.add_argument(
        "--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for the whole run"
    )
    args = parser.parse_args(argv)
    try:
        scripts = discover(args.only.split(",") if args.only else None, args.bench_dir)
    except ValueError as e:
        parser.error(str(e))
    if not scripts:
        parser.error(f"no bench_*.py found in {args.bench_dir}")

    results, t0 = [], time.perf_counter()
    for script in scripts:
        left = args.budget - (time.perf_counter() - t0)
        if left < 10:
            print(f"[run_all] {script.name}: skipped, the {args.budget:.0f} s budget is spent")
            results.append(_skipped(script, args.budget))
            continue
        print(f"[run_all] {script.name} ...", flush=True)
        r = run_one(script, quick=args.quick, timeout_s=min(args.timeout, left))
        print(f"[run_all] {script.name}: {r['status']} in {r['wall_s']:.0f} s", flush=True)
        results.append(r)
    total = time.perf_counter() - t0
    text = render(results, quick=args.quick, total_s=total)
    args.output.write_text(text)
    print("\n" + text)
    print(f"[run_all] wrote {args.output} ({total / 60:.1f} min)")
    failed = [r["name"] for r in results if r["status"] != "ok"]
    if failed:
        print(f"[run_all] not ok: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
