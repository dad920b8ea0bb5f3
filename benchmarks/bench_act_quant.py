"""Activation quantization in the training forward: what each path costs against a plain
``fake_quant``.

The LeNet-300-100 student (784-300-100-10, batch 256) with 8-bit symmetric per-channel weights
(``fake_quant(w, 8, axis=-1)``); one jitted ``value_and_grad`` of its squared output, with
each Dense input quantized 8-bit symmetric per tensor by:

  - ``fake_quant``: ``lightcomp.quant.fake_quant(x, 8)`` written by hand before each Dense
    (the reference);
  - ``clipped range``: ``fake_quant(x, 8, ste="clipped", range=minmax_range(x))``, the way
    a dynamic range was written before ``ranges="dynamic"``;
  - ``dynamic``: ``activation_quant(8, symmetric=True, ranges="dynamic", compute="float")``
    (interception, the model unchanged);
  - ``dynamic, int8``: the same with ``weight_bits=8``: int8 x int8 -> int32 dots, STE;
  - ``dynamic, int8 codes in bfloat16``: ``operands="bfloat16"``, the same exact sums;
  - ``ema``: ``activation_quant(8, symmetric=True)`` with EMA ranges (``update``).

Timed in interleaved rounds (median of the per-round ratio to ``fake_quant``).

Usage::

    python benchmarks/bench_act_quant.py            # 9 rounds of 50 calls
    python benchmarks/bench_act_quant.py --quick    # 2 rounds of 5 calls
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import models, quant

SIZES = (300, 100, 10)


def _paths(model, params, x):
    """``name -> jitted (params, x) -> (loss, grads)``."""
    fn = lambda p, x: model.apply({"params": p}, x)
    eff = lambda p: jax.tree.map(lambda w: quant.fake_quant(w, 8, axis=-1) if w.ndim == 2 else w, p)

    def by_hand(quantize):
        def forward(p, x):
            p = eff(p)
            for i in range(len(SIZES)):
                layer = p[f"Dense_{i}"]
                x = quantize(x) @ layer["kernel"] + layer["bias"]
                x = jax.nn.relu(x) if i < len(SIZES) - 1 else x
            return x

        return forward

    def clipped(x):
        return quant.fake_quant(x, 8, ste="clipped", range=quant.minmax_range(x))

    def intercepted(aq, state):
        return lambda p, x: aq.update(fn, state, eff(p), x)[0]

    dyn = quant.activation_quant(8, symmetric=True, ranges="dynamic", compute="float")
    dyn8 = quant.activation_quant(8, symmetric=True, ranges="dynamic", weight_bits=8)
    dyn16 = quant.activation_quant(
        8, symmetric=True, ranges="dynamic", weight_bits=8, operands="bfloat16"
    )
    ema = quant.activation_quant(8, symmetric=True)
    forwards = {
        "fake_quant": by_hand(lambda x: quant.fake_quant(x, 8)),
        "clipped range": by_hand(clipped),
        "dynamic": intercepted(dyn, {}),
        "dynamic, int8": intercepted(dyn8, {}),
        "dynamic, int8 codes in bfloat16": intercepted(dyn16, {}),
        "ema": intercepted(ema, ema.init(fn, params, x)),
    }
    return {
        k: jax.jit(jax.value_and_grad(lambda p, x, f=f: jnp.sum(f(p, x) ** 2)))
        for k, f in forwards.items()
    }


def _op_histogram(fn, *args) -> collections.Counter:
    """The instruction histogram of ``fn``'s optimized (compiled) XLA program."""
    return collections.Counter(
        re.findall(r"= \S+ (\w[\w-]*)\(", fn.lower(*args).compile().as_text())
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    rounds, calls = (2, 5) if args.quick else (9, 50)
    model = models.MLP(SIZES)
    x = jnp.asarray(np.random.default_rng(0).random((args.batch, 784), np.float32))
    params = model.init(jax.random.key(0), x)["params"]
    paths = _paths(model, params, x)
    for f in paths.values():
        jax.block_until_ready(f(params, x))
    times = {k: [] for k in paths}
    for r in range(rounds):
        names = list(paths)
        names = names[r % len(names) :] + names[: r % len(names)]
        for k in names:
            t0 = time.perf_counter()
            for _ in range(calls):
                out = paths[k](params, x)
            jax.block_until_ready(out)
            times[k].append((time.perf_counter() - t0) * 1e3 / calls)
    ref = times["fake_quant"]
    print(
        f"\nLeNet-300-100 student forward + backward, batch {args.batch}, 8-bit weights and "
        f"per-tensor activations; {rounds} interleaved rounds of {calls} calls (median ms; "
        "ratio: median of the per-round ratios to fake_quant by hand)."
    )
    same = _op_histogram(paths["dynamic"], params, x) == _op_histogram(
        paths["fake_quant"], params, x
    )
    print(f"ranges='dynamic' compiles to the program of fake_quant by hand (same ops): {same}")
    print("\n| activation path | ms | vs fake_quant |")
    print("|---|---|---|")
    for k, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(ts, ref, strict=True))
        print(f"| {k} | {statistics.median(ts):.2f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
