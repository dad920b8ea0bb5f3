"""Memory of the compressed distillation step against the plain one.

For the LeNet-300-100 distillation step (student 784-300-100-10, teacher
784-1200-1200-10, batch 256, SGD with momentum), each compression chain is
jitted and compiled once; XLA's own accounting of the compiled step
(``compiled.memory_analysis()``: arguments, outputs, temporaries, aliasing)
gives its peak memory, with the state donated as a training loop runs it.
Beside it, the bytes of the training state the caller carries between steps:
the student's parameters, the optimizer state, and the compression state
(masks, assignments, centroids, ranges).

The factor that matters: the persistent parameter memory (params + compression
state) over the params alone. Compression must not double it: a pruning mask is
one byte per weight (bool), a k-means assignment one byte (uint8), against four
bytes per float32 weight.

Usage::

    python benchmarks/bench_memory.py            # LeNet-300-100, batch 256
    python benchmarks/bench_memory.py --quick    # a small MLP, to check that it works
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lightcomp as lc


def tree_bytes(tree) -> int:
    """Bytes of every array leaf in ``tree`` (None leaves count nothing)."""
    return int(sum(np.dtype(x.dtype).itemsize * x.size for x in jax.tree.leaves(tree)))


def chains(quick: bool) -> dict[str, lc.Transform]:
    """The compression chains measured, plain first."""
    out = {
        "plain (identity)": lc.identity(),
        "prune 50%": lc.transform.pruning(0.5),
        "fake quant 8-bit per-channel": lc.transform.fake_quantization(8, axis=-1),
        "prune 50% + fake quant 8": lc.chain(
            lc.transform.pruning(0.5), lc.transform.fake_quantization(8, axis=-1)
        ),
        "prune 50% + share k=16 + fake quant 8": lc.chain(
            lc.transform.pruning(0.5),
            lc.transform.weight_sharing(16),
            lc.transform.fake_quantization(8, axis=-1),
        ),
    }
    if quick:
        keep = ("plain (identity)", "prune 50% + share k=16 + fake quant 8")
        out = {k: out[k] for k in keep}
    return out


def measure(
    name: str, transform, *, student, teacher, batch_size: int, in_features: int, quick: bool
) -> dict:
    """Compiles the step for ``transform``; returns its state and XLA memory figures."""
    key = jax.random.key(0)
    student_apply, student_params = lc.models.init_mlp(student, in_features, key)
    teacher_apply, teacher_params = lc.models.init_mlp(teacher, in_features, jax.random.key(1))
    optimizer = optax.sgd(0.01, momentum=0.9)
    state = lc.train.init_state(student_params, optimizer, transform, jax.random.key(2))
    step = lc.train.make_step(student_apply, teacher_apply, optimizer, transform)
    batch = {
        "inputs": jnp.zeros((batch_size, in_features), jnp.float32),
        "labels": jnp.zeros((batch_size,), jnp.int32),
    }
    figures = {
        "name": name,
        "params": tree_bytes(state.params),
        "opt_state": tree_bytes(state.opt_state),
        "comp_state": tree_bytes(state.comp_state),
        "teacher": tree_bytes(teacher_params),
    }
    variants = (("peak", (0,)),) if quick else (("peak", (0,)), ("peak_nodonate", ()))
    for label, donate in variants:
        compiled = (
            jax.jit(step, donate_argnums=donate).lower(state, teacher_params, batch).compile()
        )
        figures[label] = _peak_bytes(compiled.memory_analysis())
    figures.setdefault("peak_nodonate", None)
    return figures


def _peak_bytes(stats) -> int:
    """XLA's peak estimate; where a backend leaves it 0, arguments + outputs - aliased + temps."""
    peak = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
    if peak:
        return peak
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small MLP and two chains")
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        student, teacher, in_features, batch = (32, 10), (64, 10), 64, args.batch or 32
    else:
        student, teacher, in_features, batch = (
            (300, 100, 10),
            (1200, 1200, 10),
            784,
            args.batch or 256,
        )

    rows = [
        measure(
            name,
            t,
            student=student,
            teacher=teacher,
            batch_size=batch,
            in_features=in_features,
            quick=args.quick,
        )
        for name, t in chains(args.quick).items()
    ]
    plain = rows[0]
    arch = "-".join(map(str, (in_features, *student)))
    print(
        f"\nMemory of the distillation step: student {arch}, teacher "
        f"{'-'.join(map(str, (in_features, *teacher)))}, batch {batch}, SGD momentum; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}. KiB."
    )
    print()
    print(
        "| chain | params | opt state | comp state | (params + comp) / params "
        "| step peak (donated) | peak / plain | peak without the teacher's params "
        "| that / plain | peak, not donated |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    plain_student = plain["peak"] - plain["teacher"]
    for r in rows:
        factor = (r["params"] + r["comp_state"]) / r["params"]
        worst = max(worst, factor)
        student_peak = r["peak"] - r["teacher"]
        print(
            f"| {r['name']} | {_kib(r['params'])} | {_kib(r['opt_state'])} | "
            f"{_kib(r['comp_state'])} | {factor:.2f}x | {_kib(r['peak'])} | "
            f"{r['peak'] / plain['peak']:.2f}x | {_kib(student_peak)} | "
            f"{student_peak / plain_student:.2f}x | "
            f"{'-' if r['peak_nodonate'] is None else _kib(r['peak_nodonate'])} |"
        )
    verdict = "OK" if worst < 2.0 else "FAIL"
    print(
        f"\nlargest parameter-memory factor: {worst:.2f}x "
        f"({verdict}: compression must not double parameter memory)"
    )
    return 0 if worst < 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
