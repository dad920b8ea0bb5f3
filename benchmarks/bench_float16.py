"""float16 parameters and optax.adam: which way of training them stays finite.

Three ways to train the same MLP student on the digits (distilled from a float32 teacher,
300 steps of optax.adam(1e-3), batch 64), each reported with its final loss, test accuracy
and the first step whose loss was NaN:

- ``float16 params``: params cast to float16, the optimizer's moments float16 too
  (what ``init_state(cast_floating(params, float16), optax.adam(...))`` did before it was
  refused);
- ``float32 master, float16 forward``: params and moments float32, the student's forward
  pass on ``cast_floating(params, float16)`` (what the refusal's message says to do);
- ``float32``: the reference.

Run: ``python benchmarks/bench_float16.py`` (``--quick``: 20 steps, for the test suite).
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import optax

import lightcomp as lc


def _run(apply, params, teacher, t_params, d, *, float16=False, steps=300, batch=64):
    opt = optax.adam(1e-3)
    step = jax.jit(lc.train.make_step(apply, teacher, opt, lc.identity()))
    state = lc.train.init_state(params, opt, lc.identity(), jax.random.key(0))
    if float16:  # what init_state built from float16 params before it refused them
        state = state.replace(
            params=lc.train.cast_floating(state.params, jnp.float16),
            opt_state=lc.train.cast_floating(state.opt_state, jnp.float16),
        )
    first_nan = None
    batches = lc.data.batches(d.x_train, d.y_train, batch, seed=1)
    for i in range(1, steps + 1):
        state, m = step(state, t_params, next(batches))
        if first_nan is None and not math.isfinite(float(m["loss"])):
            first_nan = i
    try:
        acc = f"{lc.train.evaluate(apply, state.params, (d.x_test, d.y_test))['accuracy']:.2%}"
    except ValueError:  # evaluate refuses a NaN loss
        acc = "NaN loss"
    return float(m["loss"]), acc, first_nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 steps instead of 300")
    steps = 20 if parser.parse_args().quick else 300
    d = lc.data.load_digits()
    apply, params = lc.models.init_mlp((64, 10), 64, jax.random.key(0))
    teacher, t_params = lc.models.init_mlp((128, 10), 64, jax.random.key(1))
    print(f"jax {jax.__version__} ({jax.default_backend()}), optax {optax.__version__}")
    print("| way | final loss | test accuracy | first NaN step |")
    print("|---|---|---|---|")

    def apply16(p, x):
        return apply(lc.train.cast_floating(p, jnp.float16), x.astype(jnp.float16))

    ways = [
        ("float16 params", apply, True),
        ("float32 master, float16 forward", apply16, False),
        ("float32", apply, False),
    ]
    for name, fn, float16 in ways:
        loss, acc, nan_at = _run(fn, params, teacher, t_params, d, float16=float16, steps=steps)
        print(f"| {name} | {loss:.4f} | {acc} | {nan_at or 'none'} |")


if __name__ == "__main__":
    main()
