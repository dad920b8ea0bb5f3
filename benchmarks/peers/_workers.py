"""The step-timing worker processes of the benchmarks and their interleaved timing (stdlib only)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

WORKERS = Path(__file__).resolve().parent


class Worker:
    """A step-timing process that answers one JSON request per line on stdin."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], label: str):
        self.name, self.label = name, label
        # stderr to a file: a chatty worker (TensorFlow's logs) must never fill a pipe and stall
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env={**os.environ, **env},
            bufsize=1,
        )
        self.info: dict = {}

    def wait_ready(self) -> None:
        """Blocks until the worker has compiled and warmed up its steps."""
        self.info = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                self.stderr.seek(0)
                err = self.stderr.read()
                raise RuntimeError(f"{self.name} worker exited: {err.strip()[-2000:]}")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)

    def time(self, variant: str, iters: int) -> float:
        self.proc.stdin.write(json.dumps({"variant": variant, "iters": iters}) + "\n")
        self.proc.stdin.flush()
        return float(self._read()["ms"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.stderr.close()


def worker_argv(
    python: str, worker: str, args: argparse.Namespace, extra: list[str] | None = None
) -> list[str]:
    return [
        python,
        str(WORKERS / worker),
        *(extra or []),
        "--batch",
        str(args.batch),
        "--warmup",
        str(args.warmup),
    ]


def interleave(workers: list[Worker], variants, rounds: int, iters: int):
    """``({worker: {variant: [ms per round]}}, seconds)``: rounds rotated so none runs first."""
    times = {w.name: {v: [] for v in variants} for w in workers}
    t0 = time.perf_counter()
    try:
        for r in range(rounds):
            k = r % len(variants)
            for variant in variants[k:] + variants[:k]:
                j = r % len(workers)
                for w in workers[j:] + workers[:j]:
                    times[w.name][variant].append(w.time(variant, iters))
    finally:
        for w in workers:
            w.close()
    return times, time.perf_counter() - t0


def round_ratio(times, name: str, variant: str, other: str, other_variant: str) -> float:
    """Median over rounds of the ratio measured within each round (same machine load)."""
    num, den = times[name][variant], times[other][other_variant]
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def wait_all(started: list[Worker], local) -> tuple[list[Worker], dict[str, str]]:
    """The workers that compiled and warmed up; the others' reasons (a local failure raises)."""
    workers, unavailable = [], {}
    for w in started:
        try:
            w.wait_ready()
            workers.append(w)
        except RuntimeError as e:
            w.close()
            if w.name in local:
                for other in started:
                    other.close()
                raise
            unavailable[w.name] = f"could not run: {str(e).splitlines()[-1][:300]}"
    return workers, unavailable
