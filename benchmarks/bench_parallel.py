"""Multi-device distillation: steps per second on 1, 2, 4, 8 devices, and all-reduce bytes.

Runs the same compressed distillation step (pruning + k-means weight sharing + 8-bit
fake quantization, MLP student, MLP teacher, digits-shaped batches) three ways:
``jax.jit`` over a mesh (`lightcomp.parallel.data_parallel`), ``jax.shard_map``
(`shard_map_step`) and ``jax.pmap`` (`pmap_step`), on the first 1, 2, 4 and 8 devices,
with the same global batch. Then it measures the bytes of the gradient all-reduce
from the compiled HLO (every ``all-reduce`` result, summed) with and without
gradient quantization (`lightcomp.parallel.compressed_pmean`), beside the figure
`allreduce_bytes` predicts.

On a CPU-only machine the "devices" are host threads on the same cores
(``--xla_force_host_platform_device_count``): there is no extra compute, so the
steps/s figures show the overhead of splitting the batch and of the collectives,
not a speed-up. Run on GPUs/TPUs for scaling figures.

    python benchmarks/bench_parallel.py            # full
    python benchmarks/bench_parallel.py --quick    # seconds, for CI smoke runs
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P
from rich.console import Console
from rich.table import Table

import lightcomp as lc
from lightcomp import parallel

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2}
_DTYPE_BYTES.update({"s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8})
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")


def hlo_allreduce_bytes(hlo: str) -> dict[str, int]:
    """Bytes of every ``all-reduce`` result in compiled HLO text, by element type."""
    out: dict[str, int] = {}
    for line in hlo.splitlines():
        if " all-reduce(" not in line and " all-reduce-start(" not in line:
            continue
        result = line.split("=", 1)[1].split("all-reduce", 1)[0]
        for dtype, dims in _SHAPE.findall(result):
            n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            out[dtype] = out.get(dtype, 0) + n * _DTYPE_BYTES[dtype]
    return out


def build(hidden: int, batch: int, seed: int = 0):
    apply, params = lc.models.init_mlp([hidden, hidden, 10], 64, jax.random.key(seed))
    t_apply, t_params = lc.models.init_mlp([2 * hidden, 2 * hidden, 10], 64, jax.random.key(1))
    opt = optax.adam(1e-3)
    transform = lc.chain(
        lc.transform.pruning(lc.prune.polynomial_schedule(0.0, 0.8, 0, 100), update_every=10),
        lc.transform.weight_sharing(16, recluster_every=50, iters=8),
        lc.transform.fake_quantization(8),
    )
    init = jax.jit(lambda p, k: lc.train.init_state(p, opt, transform, k))
    state = init(params, jax.random.key(2))
    rng = np.random.default_rng(0)
    data = {
        "inputs": rng.random((batch, 64), dtype=np.float32),
        "labels": rng.integers(0, 10, batch).astype(np.int32),
    }

    def make(axis_name=None):
        return lc.train.make_step(apply, t_apply, opt, transform, axis_name=axis_name)

    return make, state, t_params, data


def time_steps(fn, state, t_params, batch, steps: int, repeats: int = 3) -> float:
    """Steps per second: the best of ``repeats`` windows of ``steps`` (shared, noisy hosts)."""
    for _ in range(2):  # compile; then the state comes back laid out as the step keeps it
        state, m = fn(state, t_params, batch)
    jax.block_until_ready((state, m))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = fn(state, t_params, batch)
        jax.block_until_ready((state, m))
        best = min(best, time.perf_counter() - t0)
    return steps / best


def throughput(make, state, t_params, batch, n: int, steps: int) -> dict[str, float]:
    devices = jax.devices()[:n]
    mesh = parallel.make_mesh(n, 1, devices=devices)
    out = {}
    dp = parallel.data_parallel(make(), mesh)
    out["jit + mesh"] = time_steps(dp, parallel.replicate(state, mesh), t_params, batch, steps)
    sm = parallel.shard_map_step(make("data"), mesh)
    out["shard_map"] = time_steps(sm, parallel.replicate(state, mesh), t_params, batch, steps)
    pm = parallel.pmap_step(make("batch"), devices=devices)
    out["pmap"] = time_steps(pm, state, t_params, parallel.shard_batch(batch, n), steps)
    return out


def allreduce_table(state, n: int) -> list[tuple[str, int, int | None]]:
    """(method, bytes measured in the HLO, bytes predicted) for the gradient tree."""
    learned, _ = lc.partition(state.comp_state)
    grads = jax.tree.map(lambda x: x if lc.tree.is_floating(x) else None, (state.params, learned))
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), grads)
    mesh = parallel.make_mesh(n, 1)
    rows = []
    for bits in (None, 8, 4):

        def reduce(g, key, bits=bits):
            g = jax.tree.map(lambda x: x[0], g)
            if bits is None:
                return jax.lax.pmean(g, "data")
            return parallel.compressed_pmean(g, "data", bits, key)

        fn = jax.jit(
            jax.shard_map(
                reduce, mesh=mesh, in_specs=(P("data"), P()), out_specs=P(), check_vma=False
            )
        )
        hlo = fn.lower(stacked, jax.random.key(0)).compile().as_text()
        measured = sum(hlo_allreduce_bytes(hlo).values())
        pred = parallel.allreduce_bytes(grads, n, bits)
        name = "float32 pmean" if bits is None else f"{bits}-bit codes ({pred['wire_dtype']} sums)"
        rows.append(
            (name, measured, pred["float_bytes"] if bits is None else pred["compressed_bytes"])
        )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    hidden, batch, steps = (32, 64, 5) if args.quick else (256, 512, 30)
    steps = args.steps or steps
    console = Console()
    n_all = len(jax.devices())
    counts = [n for n in (1, 2, 4, 8) if n <= n_all and batch % n == 0]
    if args.quick:  # a smoke run: one device and all of them
        counts = sorted({counts[0], counts[-1]})
    make, state, t_params, data = build(hidden, batch)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    console.print(
        f"platform {jax.devices()[0].platform}, {n_all} devices, student {n_params:,} params, "
        f"global batch {batch}, {steps} timed steps each"
    )
    if jax.devices()[0].platform == "cpu":
        console.print(
            "[yellow]CPU host devices share the same cores: steps/s show the overhead of "
            "splitting the batch and of the collectives, not a speed-up.[/yellow]"
        )
    results = {}
    for n in counts:
        results[n] = throughput(make, state, t_params, data, n, steps)
        console.print(
            f"  {n} device(s): " + ", ".join(f"{k} {v:.1f}" for k, v in results[n].items())
        )
    bytes_rows = allreduce_table(state, max(counts))

    table = Table(
        title=f"steps/s, best of 3 x {steps} steps (global batch {batch}; "
        f"{jax.devices()[0].platform})"
    )
    table.add_column("devices", justify="right")
    for k in next(iter(results.values())):
        table.add_column(k, justify="right")
    for n, r in results.items():
        table.add_row(str(n), *(f"{v:.1f}" for v in r.values()))
    btable = Table(title=f"gradient all-reduce per device per step ({max(counts)} devices)")
    btable.add_column("method")
    btable.add_column("bytes (compiled HLO)", justify="right")
    btable.add_column("bytes (allreduce_bytes)", justify="right")
    btable.add_column("vs float32", justify="right")
    base = bytes_rows[0][1]
    for name, measured, pred in bytes_rows:
        btable.add_row(name, f"{measured:,}", f"{pred:,}", f"{base / measured:.2f}x")
    console.print(table)
    console.print(btable)


if __name__ == "__main__":
    main()
