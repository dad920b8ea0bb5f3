"""The serving task of `bench_serve.py`, shared by its workers (stdlib + NumPy only).

The LeNet-300-100 MLP (784-300-100-10, ReLU) with the same random float32 weights in every
worker, served at batch 1024: a worker times its own float32 forward and its quantized one
(8-bit symmetric per-output-channel weights, 8-bit dynamic activations), each a ``jax.jit``
of the library's own serving path, over the same protocol as `bench_peers.py`
(`_protocol.serve`).
"""

from __future__ import annotations

import argparse

import _protocol as P

IN_FEATURES = 784
SIZES = (300, 100, 10)
BATCH = 1024
SEED = 0


def weights():
    """``[(kernel [in, out], bias [out])]`` float32, kernels ~ N(0, 1/fan_in), the same everywhere."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    out, fan_in = [], IN_FEATURES
    for n in SIZES:
        w = (rng.standard_normal((fan_in, n)) / np.sqrt(fan_in)).astype(np.float32)
        b = (0.01 * rng.standard_normal(n)).astype(np.float32)
        out.append((w, b))
        fan_in = n
    return out


def inputs(batch: int):
    """float32 ``[batch, 784]`` in [0, 1), the same everywhere."""
    import numpy as np

    return np.random.default_rng(SEED + 1).random((batch, IN_FEATURES), dtype=np.float32)


def params_dict(jnp):
    """The weights as a linen ``params`` dict (``Dense_0`` ...)."""
    return {
        f"Dense_{i}": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}
        for i, (w, b) in enumerate(weights())
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--versions", action="store_true", help="print versions and exit")
    parser.add_argument("--dump", default=None, help="write the quantized kernels here (.npz)")
    return parser.parse_args()


def relative_error(y, ref) -> float:
    """``max |y - ref| / max |ref|``."""
    import numpy as np

    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def timed(fn, *args):
    """A runner for `_protocol.serve`: ``iters`` calls of ``fn(*args)``, then one block."""

    def run(iters):
        y = None
        for _ in range(iters):
            y = fn(*args)
        y.block_until_ready()

    return run


def main(build, versions) -> None:
    """A serving worker's entry point: ``build(args) -> (runners, check)``."""
    args = parse_args()
    if args.versions:
        print(versions())
        return
    runners, check = build(args)
    P.serve(runners, versions(), args.warmup, check)
