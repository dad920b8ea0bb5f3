"""Tests for lightcomp.train: the distillation state, the jitted step, adapters and helpers."""

from __future__ import annotations

import itertools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import lightcomp as lc
from lightcomp import train

IN, HIDDEN, CLASSES, BATCH = 64, 32, 10, 32


# --------------------------------------------------------------------------- shared fixtures


def _np_mlp(sizes, seed):
    rng = np.random.default_rng(seed)
    return {
        f"Dense_{i}": {
            "kernel": (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32),
            "bias": rng.normal(size=b).astype(np.float32),
        }
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    }


def _mlp(features, seed):
    """``(apply, params)`` of a `lightcomp.models.MLP` on 64 inputs, params drawn in NumPy.

    (Drawing in NumPy avoids compiling linen's eager initialisers, which would
    dominate this file's run time.)
    """
    model = lc.models.MLP(tuple(features))
    params = jax.tree.map(jnp.asarray, _np_mlp((IN, *features), seed))
    for layer in params.values():
        layer["bias"] = jnp.zeros_like(layer["bias"])

    def apply(p, x):
        return model.apply({"params": p}, x)

    return apply, params


@pytest.fixture(scope="module")
def digits():
    return lc.data.load_digits(seed=0)


@pytest.fixture(scope="module")
def teacher(digits):
    """A 64-128-10 MLP trained with cross-entropy on the digits (shared by the module)."""
    apply, params = _mlp((128, CLASSES), 0)
    opt = optax.adam(3e-3)

    @jax.jit
    def step(p, o, x, y):
        def f(p):
            return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

        u, o = opt.update(jax.grad(f)(p), o, p)
        return optax.apply_updates(p, u), o

    o = opt.init(params)
    it = lc.data.batches(digits.x_train, digits.y_train, 128, seed=1)
    for _ in range(300):
        b = next(it)
        params, o = step(params, o, b["inputs"], b["labels"])
    acc = train.evaluate(apply, params, (digits.x_test, digits.y_test))["accuracy"]
    return apply, params, acc


@pytest.fixture(scope="module")
def student():
    return _mlp((HIDDEN, CLASSES), 1)


@pytest.fixture(scope="module")
def batch(digits):
    return next(lc.data.batches(digits.x_train, digits.y_train, BATCH, seed=3))


def _compress():
    return lc.chain(lc.transform.pruning(0.8), lc.transform.fake_quantization(8, axis=-1))


@pytest.fixture(scope="module")
def adam_run(teacher, student, batch):
    """A pruned + 8-bit student under AdamW: (transform, optimizer, step, initial state)."""
    t_apply, _, _ = teacher
    s_apply, s_params = student
    tr = _compress()
    opt = optax.adamw(1e-2, weight_decay=1e-2)
    step = jax.jit(train.make_step(s_apply, t_apply, opt, tr))
    state = train.init_state(s_params, opt, tr, jax.random.key(2))
    return tr, opt, step, state


@pytest.fixture(scope="module")
def plain_step(teacher, student):
    """The shared jitted plain KD step: identity(), sgd(0.1), the default loss."""
    t_apply, _, _ = teacher
    s_apply, s_params = student
    opt = optax.sgd(0.1)
    step = jax.jit(train.make_step(s_apply, t_apply, opt, lc.identity()))
    return step, train.init_state(s_params, opt, lc.identity(), jax.random.key(0))


def _masks(state):
    return lc.transform.masks_of(state.comp_state)


# --------------------------------------------------------------------------- state


def test_init_state_structure(adam_run, student):
    _, opt, _, state = adam_run
    _, s_params = student
    chex.assert_trees_all_equal_structs(state.params, s_params)
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    learned, _ = lc.partition(state.comp_state)
    expected = opt.init((state.params, learned))
    chex.assert_trees_all_equal_structs(state.opt_state, expected)
    masks = _masks(state)
    # pruned entries are zero from the start, and the mask prunes 80% of each kernel
    for path in ("Dense_0", "Dense_1"):
        m = np.asarray(masks[path]["kernel"])
        w = np.asarray(state.params[path]["kernel"])
        assert np.all(w[~m] == 0.0)
        assert abs((~m).mean() - 0.8) < 0.01
    # DistillState is a pytree: it round-trips through flatten / unflatten
    leaves, treedef = jax.tree.flatten(state)
    chex.assert_trees_all_equal(
        _comparable(jax.tree.unflatten(treedef, leaves)), _comparable(state)
    )


# --------------------------------------------------------------------------- the step


def test_pruned_weights_stay_zero_with_adam(adam_run, teacher, digits):
    tr, _, step, state = adam_run
    _, t_params, _ = teacher
    it = lc.data.batches(digits.x_train, digits.y_train, BATCH, seed=4)
    start = state
    for _ in range(25):
        state, metrics = step(state, t_params, next(it))
    masks = _masks(state)
    for path in ("Dense_0", "Dense_1"):
        m = np.asarray(masks[path]["kernel"])
        w = np.asarray(state.params[path]["kernel"])
        w0 = np.asarray(start.params[path]["kernel"])
        assert np.all(w[~m] == 0.0), path  # exactly zero, through Adam's momentum and decay
        assert np.all(w[m] != w0[m]), path  # the kept weights did train
        eff = np.asarray(train.effective_params(state, tr)[path]["kernel"])
        assert np.all(eff[~m] == 0.0)
    assert int(state.step) == 25
    np.testing.assert_allclose(float(metrics["sparsity"]), 0.8, atol=0.01)
    assert step._cache_size() == 1  # the traced step index never recompiles


def _comparable(state):
    return state.replace(rng=jax.random.key_data(state.rng))


def test_step_jitted_equals_eager(adam_run, teacher, student, batch):
    tr, opt, jstep, start = adam_run
    t_apply, t_params, _ = teacher
    s_apply, _ = student
    step = train.make_step(s_apply, t_apply, opt, tr)
    s_e, m_e = step(start, t_params, batch)
    s_j, m_j = jstep(start, t_params, batch)
    chex.assert_trees_all_equal_structs(s_e, s_j)
    chex.assert_trees_all_close(_comparable(s_e), _comparable(s_j), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(m_e, m_j, rtol=1e-5, atol=1e-6)


def test_learned_centroids_train_and_assignments_stay(teacher, student, batch):
    t_apply, t_params, _ = teacher
    s_apply, s_params = student
    tr = lc.chain(
        lc.transform.pruning(0.5),
        lc.transform.weight_sharing(4, init="linear"),
        lc.transform.fake_quantization(8, axis=-1),
    )
    opt = optax.adam(1e-2)
    step = jax.jit(train.make_step(s_apply, t_apply, opt, tr))
    init = jax.jit(train.init_state, static_argnums=(1, 2))  # one compilation, not many eager ops
    start = state = init(s_params, opt, tr, jax.random.key(5))
    for _ in range(2):
        state, _ = step(state, t_params, batch)
    learned0, fixed0 = lc.partition(start.comp_state)
    learned1, fixed1 = lc.partition(state.comp_state)
    moved = [
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(learned0), jax.tree.leaves(learned1), strict=True)
    ]
    assert moved and all(moved)
    for a, b in zip(jax.tree.leaves(fixed0), jax.tree.leaves(fixed1), strict=True):
        if not lc.tree.is_floating(a):
            np.testing.assert_array_equal(a, b)
    masks = _masks(state)
    w = np.asarray(state.params["Dense_0"]["kernel"])
    assert np.all(w[~np.asarray(masks["Dense_0"]["kernel"])] == 0.0)


def _np_forward(params, x):
    """A ReLU MLP over ``Dense_0, Dense_1, ...`` in NumPy."""
    n = len(params)
    for i in range(n):
        layer = params[f"Dense_{i}"]
        x = x @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"])
        if i < n - 1:
            x = np.maximum(x, 0.0)
    return x


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_metrics_and_update_against_numpy(plain_step, teacher, student, batch):
    """One SGD step with identity(): loss parts, accuracies and the update, checked in NumPy."""
    t_apply, t_params, _ = teacher
    s_apply, s_params = student
    lr, alpha, temp = 0.1, 0.5, 4.0  # the plain step: sgd(0.1), lightcomp.distill.loss defaults
    step, state = plain_step
    new, m = step(state, t_params, batch)

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), s_params)
    tp = jax.tree.map(lambda a: np.asarray(a, np.float64), t_params)
    x, y = np.asarray(batch["inputs"], np.float64), np.asarray(batch["labels"])
    s, t = _np_forward(p, x), _np_forward(tp, x)
    ce = -_np_log_softmax(s)[np.arange(len(y)), y].mean()
    lps, lpt = _np_log_softmax(s / temp), _np_log_softmax(t / temp)
    kl = temp**2 * (np.exp(lpt) * (lpt - lps)).sum(-1).mean()
    np.testing.assert_allclose(m["label_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(m["distill_loss"], kl, rtol=1e-4)
    np.testing.assert_allclose(m["loss"], alpha * kl + (1 - alpha) * ce, rtol=1e-5)
    np.testing.assert_allclose(m["accuracy"], (s.argmax(-1) == y).mean())
    np.testing.assert_allclose(m["agreement"], (s.argmax(-1) == t.argmax(-1)).mean())
    assert float(m["sparsity"]) == 0.0

    def f(params):
        sl, tl = s_apply(params, batch["inputs"]), t_apply(t_params, batch["inputs"])
        return lc.distill.loss(sl, tl, batch["labels"], alpha=alpha, temperature=temp)

    g = jax.grad(f)(s_params)
    expected = jax.tree.map(lambda a, b: a - lr * b, s_params, g)
    chex.assert_trees_all_close(new.params, expected, rtol=1e-5, atol=1e-7)


def test_transform_update_gets_traced_step_and_integer_leaves_are_kept(teacher, batch):
    """A custom transform records the step it is updated at; an int leaf rides along untouched."""
    t_apply, t_params, _ = teacher

    def init(params, key):
        del params, key
        return {"seen": jnp.int32(-1), "scale": lc.Learned(jnp.float32(1.0))}

    def apply(params, state):
        return lc.tree.map_selected(lambda w: w * state["scale"].value, params)

    def update(params, state, grads, step):
        del params, grads
        return {**state, "seen": jnp.where(step % 2 == 0, step, state["seen"])}

    tr = lc.Transform(init, apply, update)
    apply_fn, params = _mlp((HIDDEN, CLASSES), 7)
    params = {**params, "calls": jnp.int32(7)}

    def s_apply(p, x):
        return apply_fn({k: v for k, v in p.items() if k != "calls"}, x)

    opt = optax.adam(1e-2)
    step = jax.jit(train.make_step(s_apply, t_apply, opt, tr))
    state = train.init_state(params, opt, tr, jax.random.key(0))
    for _ in range(5):
        state, _ = step(state, t_params, batch)
    assert int(state.comp_state["seen"]) == 4
    assert int(state.params["calls"]) == 7 and state.params["calls"].dtype == jnp.int32
    assert float(state.comp_state["scale"].value) != 1.0  # a learned scalar, trained
    assert step._cache_size() == 1


def test_teacher_logit_cache_matches_teacher_forward(plain_step, teacher, digits):
    t_apply, t_params, _ = teacher
    logits = train.teacher_logits(t_apply, t_params, digits.x_train, batch_size=500)
    assert logits.shape == (len(digits.x_train), CLASSES) and logits.dtype == np.float32
    np.testing.assert_allclose(
        logits, jax.jit(t_apply)(t_params, digits.x_train), rtol=1e-5, atol=1e-5
    )
    plain = lc.data.batches(digits.x_train, digits.y_train, BATCH, seed=9)
    cached = train.cached_batches(digits.x_train, digits.y_train, logits, BATCH, seed=9)
    b_plain, b_cached = next(plain), next(cached)
    np.testing.assert_array_equal(b_plain["inputs"], b_cached["inputs"])
    np.testing.assert_allclose(
        b_cached["teacher_logits"], t_apply(t_params, b_cached["inputs"]), rtol=1e-5, atol=1e-5
    )
    step, state = plain_step
    s1, m1 = step(state, t_params, b_plain)
    s2, m2 = step(state, None, b_cached)
    chex.assert_trees_all_close(s1.params, s2.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(m1, m2, rtol=1e-5, atol=1e-6)


def test_bfloat16_teacher(teacher, student, batch):
    t_apply, t_params, _ = teacher
    s_apply, s_params = student
    t16 = train.cast_floating(t_params, jnp.bfloat16)
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(t16))
    opt = optax.sgd(0.1)
    state = train.init_state(s_params, opt, lc.identity(), jax.random.key(0))
    _, m32 = jax.jit(train.make_step(s_apply, t_apply, opt, lc.identity()))(state, t_params, batch)
    step16 = jax.jit(
        train.make_step(s_apply, t_apply, opt, lc.identity(), teacher_dtype=jnp.bfloat16)
    )
    _, m16 = step16(state, t16, batch)
    assert m16["loss"].dtype == jnp.float32
    np.testing.assert_allclose(m16["loss"], m32["loss"], rtol=2e-2)
    np.testing.assert_allclose(m16["agreement"], m32["agreement"], atol=2 / BATCH)
    with pytest.raises(TypeError, match="teacher_dtype"):
        train.make_step(s_apply, t_apply, opt, lc.identity(), teacher_dtype=jnp.int8)


def test_axis_name_pmap_matches_one_device(adam_run, teacher, student, batch):
    t_apply, t_params, _ = teacher
    s_apply, _ = student
    n = 2
    if jax.local_device_count() < n:
        pytest.skip("needs 2 devices")
    tr, opt, step, state = adam_run
    one, m_one = step(state, t_params, batch)
    pstep = jax.pmap(
        train.make_step(s_apply, t_apply, opt, tr, axis_name="batch"),
        axis_name="batch",
        in_axes=(None, None, 0),
        out_axes=(None, 0),
        devices=jax.local_devices()[:n],
    )
    split = jax.tree.map(lambda a: np.asarray(a).reshape(n, -1, *np.shape(a)[1:]), batch)
    many, m_many = pstep(state, t_params, split)
    chex.assert_trees_all_close(one.params, many.params, rtol=1e-5, atol=1e-6)
    for k in ("loss", "accuracy", "agreement", "sparsity"):
        np.testing.assert_allclose(m_many[k], np.full(n, m_one[k]), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- the acceptance run


def test_distilled_pruned_8bit_mlp_within_two_points_of_teacher(teacher, digits):
    """80% pruning + 8-bit weights: the student keeps its teacher's accuracy (digits, 300 steps)."""
    t_apply, t_params, t_acc = teacher
    tr = _compress()
    opt = optax.adam(1e-3)
    s_params = train.keep_layers(t_params, [0, 1])  # parameter distillation: start from the teacher
    step = train.make_step(t_apply, t_apply, opt, tr, alpha=0.7, temperature=4.0)
    state = train.init_state(s_params, opt, tr, jax.random.key(11))
    batches = lc.data.batches(digits.x_train, digits.y_train, 128, seed=12)
    state, history = train.fit(
        step, state, t_params, batches, steps=300, log_every=100, progress=False
    )
    assert [row["step"] for row in history] == [100, 200, 300]
    acc = train.evaluate(t_apply, train.effective_params(state, tr), (digits.x_test, digits.y_test))
    assert t_acc > 0.93
    assert acc["accuracy"] >= t_acc - 0.02, (acc, t_acc)
    np.testing.assert_allclose(history[-1]["sparsity"], 0.8, atol=0.01)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make_batch", "match"),
    [
        (lambda b: {"labels": b["labels"]}, '"inputs"'),
        (lambda b: {"inputs": b["inputs"]}, '"labels"'),
        (lambda b: {**b, "labels": b["labels"][:-1]}, "labels"),
        (lambda b: (b["inputs"], b["labels"]), "mapping"),
    ],
)
def test_bad_batch_fails_at_trace_time(plain_step, teacher, batch, make_batch, match):
    step, state = plain_step
    with pytest.raises((ValueError, TypeError), match=match):
        jax.jit(step)(state, teacher[1], make_batch(batch))


def test_bad_logits_state_and_config(plain_step, teacher, student, batch):
    step, state = plain_step
    t_apply, t_params, _ = teacher
    s_apply, s_params = student
    opt = optax.sgd(0.1)
    wide_apply, wide_params = _mlp((CLASSES + 2,), 3)
    with pytest.raises(ValueError, match=r"teacher logits \(32, 12\)"):
        jax.jit(train.make_step(s_apply, wide_apply, opt, lc.identity()))(state, wide_params, batch)
    momentum = optax.sgd(0.1, momentum=0.9)
    m_state = train.init_state(s_params, momentum, lc.identity(), jax.random.key(0))
    other = train.init_state(wide_params, momentum, lc.identity(), jax.random.key(0))
    with pytest.raises(ValueError, match="opt_state"):
        jax.jit(train.make_step(s_apply, t_apply, momentum, lc.identity()))(
            m_state.replace(opt_state=other.opt_state), t_params, batch
        )
    prune = lc.transform.pruning(0.5)
    pruned = train.init_state(s_params, opt, prune, jax.random.key(0))
    wide_pruned = train.init_state(wide_params, opt, prune, jax.random.key(0))
    with pytest.raises(ValueError, match="Dense_1"):  # a compression state for other params
        jax.jit(train.make_step(s_apply, t_apply, opt, prune))(
            pruned.replace(comp_state=wide_pruned.comp_state), t_params, batch
        )
    with pytest.raises(ValueError, match="teacher_params is None"):
        jax.jit(step)(state, None, batch)
    with pytest.raises(ValueError, match="alpha"):
        train.make_step(s_apply, t_apply, opt, lc.identity(), alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        train.make_step(s_apply, t_apply, opt, lc.identity(), temperature=0.0)
    with pytest.raises(TypeError, match="custom loss"):
        train.make_step(
            s_apply, t_apply, opt, lc.identity(), lambda s, t, y: lc.distill.mse(s, t), alpha=0.5
        )
    with pytest.raises(TypeError, match="transform"):
        train.make_step(s_apply, t_apply, opt, lambda p: p)
    with pytest.raises(TypeError, match="optimizer"):
        train.init_state(s_params, object(), lc.identity(), jax.random.key(0))


# --------------------------------------------------------------------------- model adapters


class _DropoutMLP(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.relu(nn.Dense(HIDDEN)(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(CLASSES)(x)


def test_linen_dropout_student_with_rng(teacher, student, batch):
    t_apply, t_params, _ = teacher
    model = _DropoutMLP()
    _, params = student  # the same Dense_0 / Dense_1 shapes
    train_apply = jax.jit(train.linen_apply(model, train=True))
    eval_apply = jax.jit(train.linen_apply(model, train=False))
    opt = optax.sgd(0.1)
    step = jax.jit(train.make_step(train_apply, t_apply, opt, lc.identity(), pass_rng=True))
    s0 = train.init_state(params, opt, lc.identity(), jax.random.key(4))
    s1, m1 = step(s0, t_params, batch)
    s1b, _ = step(s0, t_params, batch)
    chex.assert_trees_all_equal(s1.params, s1b.params)  # same state, same dropout mask
    assert not np.array_equal(jax.random.key_data(s1.rng), jax.random.key_data(s0.rng))
    _, m2 = step(s1, t_params, batch)
    k0 = jax.random.split(s0.rng)[1]
    k1 = jax.random.split(s1.rng)[1]
    out0, out1 = train_apply(params, batch["inputs"], k0), train_apply(params, batch["inputs"], k1)
    assert not np.allclose(out0, out1)  # successive steps draw fresh dropout masks
    det = eval_apply(params, batch["inputs"])
    h = np.maximum(batch["inputs"] @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"], 0)
    expected = h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    np.testing.assert_allclose(det, expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(float(m2["loss"])) and np.isfinite(float(m1["loss"]))


def test_nnx_student(teacher, batch):
    t_apply, t_params, _ = teacher
    module = lc.models.NnxMLP((IN, HIDDEN, CLASSES), rngs=nnx.Rngs(0))
    apply, params = train.nnx_apply(module)
    assert lc.tree.paths(params) == [
        "layers/0/bias",
        "layers/0/kernel",
        "layers/1/bias",
        "layers/1/kernel",
    ]
    np.testing.assert_allclose(apply(params, batch["inputs"]), module(batch["inputs"]), rtol=1e-6)
    tr = lc.transform.pruning(0.5)
    opt = optax.adam(1e-2)
    step = jax.jit(train.make_step(apply, t_apply, opt, tr))
    state = train.init_state(params, opt, tr, jax.random.key(0))
    for _ in range(3):
        state, _ = step(state, t_params, batch)
    masks = lc.transform.masks_of(state.comp_state)
    w = np.asarray(state.params["layers"][0]["kernel"])
    assert np.all(w[~np.asarray(masks["layers"][0]["kernel"])] == 0.0)
    nnx.update(module, state.params)
    np.testing.assert_allclose(module(batch["inputs"]), apply(state.params, batch["inputs"]))


def test_nnx_dropout_train_mode(batch):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(IN, CLASSES, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.lin(x))

    module = Net(nnx.Rngs(0, dropout=1))
    apply, params = train.nnx_apply(module, train=True)
    eval_apply, _ = train.nnx_apply(module, train=False)
    apply, eval_apply = jax.jit(apply), jax.jit(eval_apply)
    x = batch["inputs"]
    a, b = apply(params, x, jax.random.key(1)), apply(params, x, jax.random.key(2))
    assert not np.allclose(a, b)
    np.testing.assert_allclose(apply(params, x, jax.random.key(1)), a)
    w, bias = np.asarray(params["lin"]["kernel"]), np.asarray(params["lin"]["bias"])
    np.testing.assert_allclose(eval_apply(params, x), x @ w + bias, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- parameter distillation


def test_keep_layers(teacher, batch):
    _, t_params, _ = teacher
    deep = _np_mlp((IN, 16, 16, 16, CLASSES), 0)
    kept = train.keep_layers(deep, [0, 2, 3])
    assert list(kept) == ["Dense_0", "Dense_1", "Dense_2"]
    assert kept["Dense_1"] is deep["Dense_2"]
    x = batch["inputs"]
    h = np.maximum(x @ deep["Dense_0"]["kernel"] + deep["Dense_0"]["bias"], 0)
    h = np.maximum(h @ deep["Dense_2"]["kernel"] + deep["Dense_2"]["bias"], 0)
    expected = h @ deep["Dense_3"]["kernel"] + deep["Dense_3"]["bias"]
    np.testing.assert_allclose(_np_forward(kept, x), expected, rtol=1e-6)
    many = _np_mlp((4,) * 12, 1)  # natural order: Dense_10 comes after Dense_9
    assert list(train.keep_layers(many, [8, 9, 10])) == ["Dense_0", "Dense_1", "Dense_2"]
    assert train.keep_layers(many, [9, -1])["Dense_1"] is many["Dense_10"]
    with pytest.raises(ValueError, match="do not chain"):
        train.keep_layers(t_params, [1, 0])
    with pytest.raises(ValueError, match="unknown layer"):
        train.keep_layers(deep, ["Dense_9"])
    with pytest.raises(ValueError, match="out of range"):
        train.keep_layers(deep, [4])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), w0=st.integers(1, 12), w1=st.integers(1, 12))
def test_slice_channels_keeps_largest_and_drops_dead_units(seed, w0, w1):
    rng = np.random.default_rng(seed)
    params = _np_mlp((8, 12, 12, 5), seed)
    sliced = train.slice_channels(params, [w0, w1, None])
    # layer 0 keeps the w0 output units with the largest norm of (kernel column, bias)
    norms = (params["Dense_0"]["kernel"] ** 2).sum(0) + params["Dense_0"]["bias"] ** 2
    idx0 = np.sort(np.argsort(-norms, kind="stable")[:w0])
    np.testing.assert_array_equal(sliced["Dense_0"]["kernel"], params["Dense_0"]["kernel"][:, idx0])
    chex.assert_shape(sliced["Dense_1"]["kernel"], (w0, w1))
    chex.assert_shape(sliced["Dense_2"]["kernel"], (w1, 5))
    # units whose weights and bias are all zero contribute nothing: slicing them away is exact
    dead = params.copy()
    live = rng.permutation(12)[:w0]
    k0 = np.zeros_like(params["Dense_0"]["kernel"])
    b0 = np.zeros_like(params["Dense_0"]["bias"])
    k0[:, live] = params["Dense_0"]["kernel"][:, live] + np.sign(
        params["Dense_0"]["kernel"][:, live]
    )
    b0[live] = 1.0
    dead["Dense_0"] = {"kernel": k0, "bias": b0}
    x = rng.random((4, 8)).astype(np.float32)
    np.testing.assert_allclose(
        _np_forward(train.slice_channels(dead, [w0, None, None]), x),
        _np_forward(dead, x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_slice_channels_errors():
    params = _np_mlp((6, 8, 4), 0)
    with pytest.raises(ValueError, match="2 layers"):
        train.slice_channels(params, [4])
    with pytest.raises(ValueError, match="last layer"):
        train.slice_channels(params, [4, 3])
    with pytest.raises(ValueError, match=r"1\.\.8"):
        train.slice_channels(params, [9, None])


# --------------------------------------------------------------------------- evaluate and fit


def test_evaluate_against_numpy(teacher, digits):
    t_apply, t_params, _ = teacher
    x, y = digits.x_test, digits.y_test
    out = train.evaluate(t_apply, t_params, (x, y), batch_size=100)
    logits = _np_forward(jax.tree.map(lambda a: np.asarray(a, np.float64), t_params), x)
    assert out["count"] == len(y)
    np.testing.assert_allclose(out["accuracy"], (logits.argmax(-1) == y).mean())
    np.testing.assert_allclose(
        out["loss"], -_np_log_softmax(logits)[np.arange(len(y)), y].mean(), rtol=1e-5
    )
    as_batches = [{"inputs": x[i : i + 64], "labels": y[i : i + 64]} for i in range(0, len(x), 64)]
    assert train.evaluate(t_apply, t_params, as_batches)["accuracy"] == out["accuracy"]
    with pytest.raises(ValueError, match="empty"):
        train.evaluate(t_apply, t_params, [])


def test_fit_progress_history_and_eval(plain_step, teacher, digits):
    step, state = plain_step
    _, t_params, _ = teacher
    batches = lc.data.batches(digits.x_train, digits.y_train, BATCH, seed=0)
    seen = []

    def eval_fn(s):
        seen.append(int(s.step))
        return {"accuracy": 0.5}

    state2, history = train.fit(
        step, state, t_params, batches, steps=7, log_every=3, eval_fn=eval_fn, eval_every=5
    )
    assert int(state2.step) == 7
    assert [r["step"] for r in history] == [3, 5, 6, 7]
    assert seen == [5, 7] and history[-1]["eval_accuracy"] == 0.5
    assert {"loss", "accuracy", "agreement", "sparsity"} <= set(history[0])
    with pytest.raises(ValueError, match="ran out"):
        train.fit(step, state, t_params, iter([]), steps=1, progress=False)
