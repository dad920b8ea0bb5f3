"""The line protocol between `bench_peers.py` and its step-timing workers (stdlib only).

A worker builds its three steps (a), (b), (c), runs ``warmup`` steps of each
(compilation, graph tracing, allocator warm-up), prints one JSON line
``{"ready": true, "versions": ...}`` and then answers each request line
``{"variant": "a"|"b"|"c", "iters": n}`` with ``{"ms": milliseconds per step}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

# The LeNet-300-100 task of the comparison.
IN_FEATURES = 784
STUDENT = (300, 100, 10)
TEACHER = (1200, 1200, 10)
LEARNING_RATE = 0.01
MOMENTUM = 0.9
ALPHA = 0.5  # weight of the soft (KL) term; 1 - ALPHA on the hard cross-entropy
TEMPERATURE = 4.0
SPARSITY = 0.5
BITS = 8
SEED = 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--versions", action="store_true", help="print versions and exit")
    parser.add_argument("--xla", action="store_true", help="compile with XLA where the peer can")
    return parser.parse_args()


def batch_arrays(batch: int):
    """The same random batch in every worker: inputs float32 [batch, 784], labels int [batch]."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    x = rng.random((batch, IN_FEATURES), dtype=np.float32)
    y = rng.integers(0, STUDENT[-1], size=(batch,)).astype(np.int32)
    return x, y


def describe(kernels) -> str:
    """What variant (c) trains: zero fraction and most distinct values per output channel.

    Args:
      kernels: the effective (masked, fake-quantized) student kernels as NumPy arrays
        ``[in, out]`` (output channels on the last axis).
    """
    import numpy as np

    zeros = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    levels = max(len(np.unique(k[:, j])) for k in kernels for j in range(k.shape[1]))
    return f"(c) trains {zeros:.1%} zeros, at most {levels} distinct values per channel"


def serve(
    runners: dict[str, Callable[[int], None]],
    versions: str,
    warmup: int,
    check: Callable[[], str] | None = None,
) -> None:
    """Warms up, announces readiness, then times ``runners[variant](iters)`` on request.

    Each runner runs ``iters`` steps and returns only once their results exist
    (it blocks on the last step's outputs). ``check`` describes, after the warm-up,
    the effective weights variant (c) trains (see `describe`).
    """
    for run in runners.values():
        run(max(warmup, 1))
    info = {"ready": True, "versions": versions, "check": check() if check else ""}
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        iters = int(req["iters"])
        t0 = time.perf_counter()
        runners[req["variant"]](iters)
        ms = (time.perf_counter() - t0) * 1e3 / iters
        print(json.dumps({"ms": ms}), flush=True)


def variants(made: dict[str, tuple[Callable[[int], None], Callable[[], list]]]):
    """``{variant: (run, effective_kernels)}`` -> ``(runners, check)`` for `serve`."""
    runners = {v: run for v, (run, _) in made.items()}
    return runners, lambda: describe(made["c"][1]())


def main(build, versions, args: argparse.Namespace | None = None) -> None:
    """A worker's entry point: ``--versions`` prints them; otherwise build and `serve`."""
    args = args or parse_args()
    if args.versions:
        print(versions())
    else:
        runners, check = build(args.batch)
        serve(runners, versions(), args.warmup, check)
