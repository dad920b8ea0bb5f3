"""Pruning: what channel pruning + ``lightcomp.prune.shrink`` buys, and what masks cost.

1. An MLP ``64 -> W -> W -> 10`` (ReLU, batch 256) is channel-pruned by L2 norm at 50% and
   75% per layer (``masks(..., granularity="channel")``) and shrunk with
   ``prune.shrink(..., activation=jax.nn.relu)``. The masked model and the shrunk one
   compute the same function (max |difference| printed); the jitted forward of each is
   timed (median of many calls after a warm-up call) and the parameter counts compared.
2. The time of one jitted ``masks(magnitude(params), s)`` over LeNet-300-100's weights
   (784-300-100-10, 266,200 kernel weights) for each scope and granularity, i.e. the cost of
   re-computing masks inside a training step.

Usage::

    python benchmarks/bench_prune.py            # W = 1024, 300 timed calls
    python benchmarks/bench_prune.py --quick    # W = 256, 30 timed calls

The machine may be shared: absolute times drift, the ratios in one run are what count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import models, prune


def _median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _mlp_params(features, in_features, seed):
    r = np.random.default_rng(seed)
    params, fan_in = {}, in_features
    for i, f in enumerate(features):
        params[f"Dense_{i}"] = {
            "kernel": jnp.asarray(r.normal(size=(fan_in, f)) / np.sqrt(fan_in), jnp.float32),
            "bias": jnp.asarray(0.1 * r.normal(size=(f,)), jnp.float32),
        }
        fan_in = f
    return params


def _forward(features):
    model = models.MLP(tuple(features))
    return jax.jit(lambda p, x: model.apply({"params": p}, x))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, fewer calls")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    width = 256 if args.quick else 1024
    repeats = 30 if args.quick else 300
    print(f"jax {jax.__version__} ({jax.default_backend()}), {jax.device_count()} device(s)")

    features = (width, width, 10)
    order = [f"Dense_{i}" for i in range(3)]
    params = _mlp_params(features, 64, args.seed)
    x = jnp.asarray(np.random.default_rng(args.seed + 1).random((256, 64)), jnp.float32)
    full = _forward(features)
    count = lambda t: sum(v.size for v in jax.tree.leaves(t))
    rows = []
    for s in (0.5, 0.75):
        m = prune.masks(prune.magnitude(params), s, granularity="channel")
        masked = prune.apply_masks(params, m)
        small = prune.shrink(params, m, order, activation=jax.nn.relu)
        widths = tuple(small[name]["kernel"].shape[1] for name in order)
        shrunk = _forward(widths)
        diff = float(jnp.max(jnp.abs(full(masked, x) - shrunk(small, x))))
        t_full = _median_time(full, masked, x, repeats=repeats)
        t_small = _median_time(shrunk, small, x, repeats=repeats)
        rows.append((s, widths, count(params), count(small), t_full, t_small, diff))
        print(f"channel sparsity {s}: widths {features} -> {widths}", flush=True)

    lenet = _mlp_params((300, 100, 10), 784, args.seed)
    scores = prune.magnitude(lenet)
    cases = [
        ("layer", "element", {}),
        ("global", "element", {}),
        ("layer", "channel", {}),
        ("layer", "block", {"block": 2}),
        ("layer", "n:m", {"n": 2, "m": 4}),
    ]
    mask_rows = []
    for scope, gran, kw in cases:
        fn = jax.jit(
            lambda sc, s, scope=scope, gran=gran, kw=kw: prune.masks(
                sc, None if gran == "n:m" else s, scope=scope, granularity=gran, **kw
            )
        )
        t = _median_time(fn, scores, jnp.float32(0.5), repeats=max(5, repeats // 10))
        mask_rows.append((scope, gran, kw, t))

    print()
    print("| masks (LeNet-300-100, 266,200 weights) | scope | ms per call |")
    print("|---|---|---|")
    for scope, gran, kw, t in mask_rows:
        name = gran + (f" {kw}" if kw else "")
        print(f"| {name} | {scope} | {t * 1e3:.2f} |")
    print()
    print(
        "| channel sparsity | widths | params (full -> shrunk) | forward ms masked "
        "| forward ms shrunk | speed-up | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for s, widths, n_full, n_small, t_full, t_small, diff in rows:
        print(
            f"| {s:.0%} | {features} -> {widths} | {n_full:,} -> {n_small:,} "
            f"({n_full / n_small:.1f}x) | {t_full * 1e3:.3f} | {t_small * 1e3:.3f} "
            f"| {t_full / t_small:.2f}x | {diff:.1e} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
