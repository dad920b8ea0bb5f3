"""Cost of lightcomp's composed distillation step against a hand-written JAX step (CPU).

Student LeNet-300-100 (784-300-100-10), teacher 784-1200-1200-10, batch 256 of
random data, SGD with momentum 0.9, loss 0.5 CE + 0.5 T^2 KL (T = 4). Timed in
one process, alternating variant by variant each round (the order rotates), as
the median over rounds of the mean step time of a block of steps, after warm-up:

  (a)  a plain jitted KD step written by hand with optax (the baseline)
  (b)  ``lightcomp.train.make_step`` with ``lightcomp.identity()``
  (c)  make_step with pruning 50% + 8-bit per-channel weight fake quant
  (d)  (c) plus weight sharing with k = 16 trained centroids
  (b-cache) (b) reading cached teacher logits from the batch (no teacher forward)
  (b-bf16)  (b) with the teacher (params pre-cast, inputs) in bfloat16
  (ce)  for scale: a hand-written plain student cross-entropy step (no teacher)
  (c-hand)  (c) written by hand: a fixed 50% magnitude mask and 8-bit per-channel fake quant
            inside the forward, masked gradients and weights, one jit
  (c-wrap)  (c) in your own loop: ``lightcomp.wrap_optax`` + ``lightcomp.effective`` in a
            hand-written optax step

Targets: (b)/(a) <= 1.02, (c)/(a) <= 1.05, (d)/(a) <= 1.10, (c-wrap)/(c) <= 1.02.

The accuracy effect of the teacher options is measured on the built-in digits
task: a 64-256-256-10 teacher, a 64-32-10 student distilled with the float32
teacher, cached float32 logits and a bfloat16 teacher (same seeds), test accuracy.

Usage::

    python benchmarks/bench_step.py            # full: ~3-5 min on 2 cores
    python benchmarks/bench_step.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lightcomp as lc

IN_FEATURES = 784
STUDENT = (300, 100, 10)
TEACHER = (1200, 1200, 10)
LR, MOMENTUM = 0.01, 0.9
ALPHA, TEMPERATURE = 0.5, 4.0
TARGETS = {"b": 1.02, "c": 1.05, "d": 1.10}
WRAP_TARGET = 1.02  # (c-wrap) / (c): the wrapped optimizer costs no more than make_step


def _kd_loss(s, t, y):
    ce = optax.softmax_cross_entropy_with_integer_labels(s, y).mean()
    log_ps = jax.nn.log_softmax(s / TEMPERATURE)
    log_pt = jax.nn.log_softmax(t / TEMPERATURE)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1).mean() * TEMPERATURE**2
    return ALPHA * kl + (1 - ALPHA) * ce


def build(batch: int):
    """Returns ``{name: run(iters)}`` runners, each owning its state."""
    key = jax.random.key(0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, IN_FEATURES), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, size=(batch,)), jnp.int32)
    t_apply, t_params = lc.models.init_mlp(TEACHER, IN_FEATURES, jax.random.fold_in(key, 1))
    s_apply, s_params = lc.models.init_mlp(STUDENT, IN_FEATURES, jax.random.fold_in(key, 2))
    opt = optax.sgd(LR, momentum=MOMENTUM)
    data = {"inputs": x, "labels": y}

    # (a) and (ce): written by hand, one jax.jit each.
    def hand_step(kd: bool):
        def loss_fn(p, tp, xb, yb):
            s = s_apply(p, xb)
            if not kd:
                return optax.softmax_cross_entropy_with_integer_labels(s, yb).mean()
            t = jax.lax.stop_gradient(t_apply(tp, xb))
            return _kd_loss(s, t, yb)

        @jax.jit
        def step(p, o, tp, xb, yb):
            loss, g = jax.value_and_grad(loss_fn)(p, tp, xb, yb)
            u, o = opt.update(g, o, p)
            return optax.apply_updates(p, u), o, loss

        return step

    runners = {}
    for name, kd in (("a", True), ("ce", False)):
        step = hand_step(kd)
        holder = [(s_params, opt.init(s_params))]

        def run(iters, step=step, holder=holder):
            p, o = holder[0]
            for _ in range(iters):
                p, o, _ = step(p, o, t_params, x, y)
            jax.block_until_ready((p, o))
            holder[0] = (p, o)

        runners[name] = run

    runners["c-hand"] = _hand_compressed(s_apply, s_params, t_apply, t_params, opt, x, y)
    runners["c-wrap"] = _wrapped(s_apply, s_params, t_apply, t_params, opt, x, y)
    prune_quant = (
        lc.transform.pruning(0.5),
        lc.transform.fake_quantization(8, axis=-1),
    )
    transforms = {
        "b": lc.identity(),
        "c": lc.chain(*prune_quant),
        "d": lc.chain(prune_quant[0], lc.transform.weight_sharing(16), prune_quant[1]),
    }
    transforms["b-cache"] = transforms["b-bf16"] = transforms["b"]
    t_bf16 = lc.train.cast_floating(t_params, jnp.bfloat16)
    cached = {**data, "teacher_logits": jax.jit(t_apply)(t_params, x)}
    for name, tr in transforms.items():
        kwargs = {"alpha": ALPHA, "temperature": TEMPERATURE}
        if name == "b-bf16":
            kwargs["teacher_dtype"] = jnp.bfloat16
        step = jax.jit(lc.train.make_step(s_apply, t_apply, opt, tr, **kwargs))
        state = lc.train.init_state(s_params, opt, tr, jax.random.fold_in(key, 3))
        tp = {"b-cache": None, "b-bf16": t_bf16}.get(name, t_params)
        batch_ = cached if name == "b-cache" else data
        holder = [state]

        def run(iters, step=step, holder=holder, tp=tp, batch_=batch_):
            s = holder[0]
            for _ in range(iters):
                s, _ = step(s, tp, batch_)
            jax.block_until_ready(s)
            holder[0] = s

        runners[name] = run
    return runners


def _hand_compressed(s_apply, s_params, t_apply, t_params, opt, x, y):
    """(c) by hand: mask and fake quant in the forward, masked gradients, one jit."""
    masks = lc.prune.masks(lc.prune.magnitude(s_params), 0.5)

    def forward_params(p):
        def one(w, m):
            if m is None:
                return w
            return lc.quant.fake_quant(jnp.where(m, w, 0.0), 8, axis=-1)

        return jax.tree.map(one, p, masks, is_leaf=lambda v: v is None)

    @jax.jit
    def step(p, o, tp, xb, yb):
        def loss_fn(p):
            t = jax.lax.stop_gradient(t_apply(tp, xb))
            return _kd_loss(s_apply(forward_params(p), xb), t, yb)

        g = lc.prune.zero_pruned(jax.grad(loss_fn)(p), masks)
        u, o = opt.update(g, o, p)
        return lc.prune.zero_pruned(optax.apply_updates(p, u), masks), o

    p0 = lc.prune.apply_masks(s_params, masks)
    holder = [(p0, opt.init(p0))]

    def run(iters):
        p, o = holder[0]
        for _ in range(iters):
            p, o = step(p, o, t_params, x, y)
        jax.block_until_ready((p, o))
        holder[0] = (p, o)

    return run


def _wrapped(s_apply, s_params, t_apply, t_params, opt, x, y):
    """(c) in a hand-written optax loop through ``lightcomp.wrap_optax``."""
    tr = lc.chain(lc.transform.pruning(0.5), lc.transform.fake_quantization(8, axis=-1))
    tx = lc.wrap_optax(opt, tr, jax.random.key(3))

    @jax.jit
    def step(p, o, tp, xb, yb):
        def loss_fn(p):
            t = jax.lax.stop_gradient(t_apply(tp, xb))
            return _kd_loss(s_apply(lc.effective(p, o), xb), t, yb)

        u, o = tx.update(jax.grad(loss_fn)(p), o, p)
        return optax.apply_updates(p, u), o

    holder = [(s_params, tx.init(s_params))]

    def run(iters):
        p, o = holder[0]
        for _ in range(iters):
            p, o = step(p, o, t_params, x, y)
        jax.block_until_ready((p, o))
        holder[0] = (p, o)

    return run


def time_all(runners, *, rounds: int, iters: int, warmup: int):
    for run in runners.values():
        run(warmup)
    names = list(runners)
    samples = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            runners[n](iters)
            samples[n].append((time.perf_counter() - t0) * 1e3 / iters)
    return samples


def accuracy_effect(quick: bool) -> list[tuple[str, float, float]]:
    """Digits: distill a student with a float32 teacher, cached logits and a bf16 teacher."""
    d = lc.data.load_digits(seed=0)
    key = jax.random.key(10)
    t_apply, t_params = lc.models.init_mlp((256, 256, 10), 64, jax.random.fold_in(key, 1))
    # Train the teacher with plain cross-entropy.
    t_opt = optax.adam(3e-3)

    @jax.jit
    def t_step(p, o, xb, yb):
        def f(p):
            s = t_apply(p, xb)
            return optax.softmax_cross_entropy_with_integer_labels(s, yb).mean()

        g = jax.grad(f)(p)
        u, o = t_opt.update(g, o, p)
        return optax.apply_updates(p, u), o

    o = t_opt.init(t_params)
    it = lc.data.batches(d.x_train, d.y_train, 128, seed=1)
    for _ in range(20 if quick else 600):
        b = next(it)
        t_params, o = t_step(t_params, o, b["inputs"], b["labels"])
    teacher_acc = lc.train.evaluate(t_apply, t_params, (d.x_test, d.y_test))["accuracy"]
    s_apply, s_params = lc.models.init_mlp((32, 10), 64, jax.random.fold_in(key, 2))
    opt = optax.adam(3e-3)
    tr = lc.identity()
    n_steps = 20 if quick else 800
    logits32 = lc.train.teacher_logits(t_apply, t_params, d.x_train)
    t_bf16 = lc.train.cast_floating(t_params, jnp.bfloat16)
    logits16 = lc.train.teacher_logits(t_apply, t_bf16, d.x_train, dtype=jnp.bfloat16)
    rows = []
    for name, tp, kw, batches in (
        ("float32 teacher", t_params, {}, lc.data.batches(d.x_train, d.y_train, 64, seed=2)),
        (
            "cached float32 logits",
            None,
            {},
            lc.train.cached_batches(d.x_train, d.y_train, logits32, 64, seed=2),
        ),
        (
            "bfloat16 teacher",
            t_bf16,
            {"teacher_dtype": jnp.bfloat16},
            lc.data.batches(d.x_train, d.y_train, 64, seed=2),
        ),
    ):
        step = lc.train.make_step(s_apply, t_apply, opt, tr, **kw)
        state = lc.train.init_state(s_params, opt, tr, jax.random.fold_in(key, 3))
        state, _ = lc.train.fit(step, state, tp, batches, steps=n_steps, progress=False)
        acc = lc.train.evaluate(s_apply, state.params, (d.x_test, d.y_test))["accuracy"]
        rows.append((name, acc))
    logit_err = float(np.max(np.abs(logits16 - logits32)))
    agree = float(np.mean(logits16.argmax(-1) == logits32.argmax(-1)))
    return teacher_acc, rows, logit_err, agree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None, help="steps per timed block")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 25)
    iters = args.iters or (5 if args.quick else 20)
    print(f"jax {jax.__version__}, optax {optax.__version__}, devices {jax.devices()}")

    runners = build(args.batch)
    samples = time_all(runners, rounds=rounds, iters=iters, warmup=3 if args.quick else 10)
    med = {n: statistics.median(v) for n, v in samples.items()}
    print(f"\n{rounds} rounds x {iters} steps per variant, alternating; ms per step:")
    for n, v in samples.items():
        q = np.percentile(v, [25, 75])
        print(f"  {n:8s} median {med[n]:7.3f}  IQR {q[0]:.3f}-{q[1]:.3f}  min {min(v):.3f}")

    teacher_acc, acc_rows, logit_err, agree = accuracy_effect(args.quick)

    labels = {
        "ce": "plain student CE step, by hand (no teacher; for scale)",
        "a": "(a) KD step by hand, jax + optax, one jit",
        "b": "(b) make_step + identity()",
        "c": "(c) make_step + pruning 50% + 8-bit per-channel fake quant",
        "d": "(d) (c) + weight sharing k=16",
        "b-cache": "(b) with cached teacher logits",
        "b-bf16": "(b) with a bfloat16 teacher",
        "c-hand": "(c) written by hand (mask + fake quant, one jit)",
        "c-wrap": "(c) in your own loop: wrap_optax + effective",
    }
    print(f"\ndigits: teacher 64-256-256-10 test accuracy {teacher_acc:.4f}; student 64-32-10:")
    for name, acc in acc_rows:
        print(f"  {name:24s} test accuracy {acc:.4f}")
    print(
        f"  bf16 vs f32 teacher logits on the train set: max |diff| {logit_err:.4f}, "
        f"argmax agreement {agree:.4f}"
    )

    # Ratios are medians over rounds of the ratio within each round: the variants of one
    # round run back to back, so a load change on a shared machine cancels out.
    def paired(n, d):
        return statistics.median(x / y for x, y in zip(samples[n], samples[d], strict=True))

    vs_a = {n: paired(n, "a") for n in samples}
    missed = [n for n, t in TARGETS.items() if vs_a[n] > t]
    print(
        f"\nLeNet-300-100 KD step, batch {args.batch}, CPU ({len(jax.devices())} device), "
        f"median of {rounds} rounds x {iters} steps; ratios are medians of per-round ratios:\n"
    )
    print("| variant | ms / step | vs (a) | target |")
    print("|---|---|---|---|")
    for n in ("a", "b", "c", "d", "c-hand", "c-wrap", "b-cache", "b-bf16", "ce"):
        target = (
            f"<= {TARGETS[n]:.2f}" + (" MISSED" if n in missed else " met") if n in TARGETS else ""
        )
        print(f"| {labels[n]} | {med[n]:.3f} | {vs_a[n]:.3f} | {target} |")
    wrap = paired("c-wrap", "c")
    print(
        f"\n(c-wrap) / (c) = {wrap:.3f} (target <= {WRAP_TARGET:.2f}: "
        f"{'met' if wrap <= WRAP_TARGET else 'MISSED'}); (c-wrap) / (c-hand) = "
        f"{paired('c-wrap', 'c-hand'):.3f}; (c) / (c-hand) = {paired('c', 'c-hand'):.3f}"
    )
    acc = dict(acc_rows)
    print(
        "digits student test accuracy: "
        + ", ".join(f"{k} {v:.4f}" for k, v in acc.items())
        + f" (teacher {teacher_acc:.4f})"
    )
    if args.quick:
        print("quick mode: few rounds; the ratios are not measurements")


if __name__ == "__main__":
    main()
