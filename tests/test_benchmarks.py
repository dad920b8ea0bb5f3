"""The benchmark suite keeps working: every ``benchmarks/bench_*.py --quick`` and ``run_all.py``.

The quick runs are marked ``bench`` and left out of the default run (they take minutes
of CPU, beyond the suite's time budget): ``python -m pytest -m bench tests/test_benchmarks.py``.

Each benchmark runs in its own process, as a user runs it; the test checks that
it exits 0 and prints a table last (Markdown, or a rich table). ``bench_peers``
runs with an empty peers directory, so it must say that the peers are not
installed and still report lightcomp's own step.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(BENCH.glob("bench_*.py"))
QUICK_TIMEOUT_S = 480  # a quick mode takes seconds on an idle machine; this is for a loaded one


def _load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_all = _load_run_all()


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    # one host device is what a user running a benchmark has; conftest's 8 are for the tests
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


def _table_rows(text: str) -> list[list[str]]:
    table = run_all.final_table(text)
    rows = [ln for ln in table.splitlines() if ln.startswith("|")]
    assert rows, f"no Markdown table printed last:\n{text[-2000:]}"
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]


def test_every_benchmark_is_found():
    names = {p.stem for p in run_all.discover()}
    assert {"bench_peers", "bench_memory"} <= names
    assert [p.stem for p in run_all.discover(["memory"])] == ["bench_memory"]
    with pytest.raises(ValueError, match="--only"):
        run_all.discover(["no_such_benchmark"])


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Every benchmark's ``--quick`` run, two at a time (each is its own process); stem -> result.

    ``bench_peers`` gets an empty peers directory: it must report that the peers are not
    installed and still measure lightcomp.
    """
    no_peers = tmp_path_factory.mktemp("no-peers")

    def one(script):
        args = [str(script), "--quick"]
        if script.stem in ("bench_peers", "bench_serve"):
            args += ["--venv-dir", str(no_peers)]
        try:
            return _run(args, timeout=QUICK_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:  # fails that benchmark's test only
            return e

    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        return dict(zip([p.stem for p in SCRIPTS], pool.map(one, SCRIPTS), strict=True))


@pytest.mark.bench  # minutes of CPU: `python -m pytest -m bench tests/test_benchmarks.py`
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_quick_mode(script, quick_runs):
    proc = quick_runs[script.stem]
    if isinstance(proc, subprocess.TimeoutExpired):
        pytest.fail(f"{script.name} --quick ran past {QUICK_TIMEOUT_S} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = run_all.final_table(proc.stdout)
    if table.startswith("```"):  # a rich table: run_all keeps it in a code block
        assert any(c in run_all._BOX for c in table), f"no table printed last:\n{table}"
        return
    rows = _table_rows(proc.stdout)
    assert len(rows) >= 3, rows  # header, separator, at least one measured row
    if script.stem == "bench_peers":
        names = [r[0] for r in rows[2:]]
        assert names[:2] == ["lightcomp", "jax"], names
        lightcomp = rows[2]
        assert all(float(v) > 0 for v in lightcomp[1:4]), lightcomp
        assert float(lightcomp[5]) == pytest.approx(1.0)
        assert "tfmot: NOT MEASURED: not installed" in proc.stdout
        assert "torch: NOT MEASURED: not installed" in proc.stdout
    if script.stem == "bench_serve":
        assert [r[0] for r in rows[2:7]] == ["lightcomp"] * 5, rows
        assert all(float(r[4]) > 0 for r in rows[2:7]), rows
        assert "qwix: NOT MEASURED: not installed" in proc.stdout
        assert "aqtp: NOT MEASURED: not installed" in proc.stdout
    if script.stem == "bench_memory":
        assert "OK: compression must not double parameter memory" in proc.stdout


def test_final_table_picks_the_last_markdown_table():
    out = "log\n| x |\n|---|\n| 0 |\n\nold\n\ntitle\n  context\n\n| a | b |\n|---|---|\n| 1 | 2 |\nOK\n"
    expected = "title  \ncontext  \n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nOK  "
    assert run_all.final_table(out) == expected
    assert run_all.final_table("| a |\n|---|\n| 1 |") == "| a |\n|---|\n| 1 |"


def test_final_table_falls_back_to_a_boxed_or_last_paragraph():
    boxed = "start\n\n┏━━━┓\n┃ a ┃\n┗━━━┛\n\ndone.\n"
    assert run_all.final_table(boxed) == "```\n┏━━━┓\n┃ a ┃\n┗━━━┛\n```"
    assert run_all.final_table("one\n\ntwo\nthree\n") == "```\ntwo\nthree\n```"
    assert run_all.final_table("") == "_(no output)_"


def test_run_all_rewrites_results_with_machine_versions_and_failures(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "bench_good.py").write_text(
        textwrap.dedent(
            """
            import sys
            print("warming up")
            print("| case | ms |")
            print("|---|---|")
            print("| quick" if "--quick" in sys.argv else "| full", "| 1.5 |")
            """
        )
    )
    (bench / "bench_bad.py").write_text("raise SystemExit('broken on purpose')\n")
    out = tmp_path / "RESULTS.md"
    proc = _run(
        [str(BENCH / "run_all.py"), "--quick", "--bench-dir", str(bench), "--output", str(out)],
        timeout=60,
    )
    assert proc.returncode == 1  # one benchmark failed
    text = out.read_text()
    for needle in ("jax ", "flax ", "optax ", "numpy ", "cores", "UTC", "Quick mode"):
        assert needle in text, needle
    assert "| [bench_good](#bench_good) | ok |" in text
    assert "| quick | 1.5 |" in text
    assert "| [bench_bad](#bench_bad) | failed (exit 1) |" in text
    assert "broken on purpose" in text
    assert run_all.machine()["cores"].isdigit()
