"""Tests for lightcomp.train.make_step: the jitted distillation step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lightcomp as lc
from lightcomp import train
from tests.train.helpers import (
    BATCH,
    CLASSES,
    HIDDEN,
    comparable,
    compress,
    masks,
    mlp,
    np_forward,
    np_log_softmax,
    token_apply,
    token_batch,
    token_params,
)


def test_pruned_weights_stay_zero_with_adam(adam_run, teacher, student, digits):
    tr, opt, _, state = adam_run
    t_apply, t_params, _ = teacher
    # the traced step index never recompiles: one trace for 25 steps
    step = jax.jit(chex.assert_max_traces(train.make_step(student[0], t_apply, opt, tr), n=1))
    it = lc.data.batches(digits.x_train, digits.y_train, BATCH, seed=4)
    start = state
    for _ in range(25):
        state, metrics = step(state, t_params, next(it))
    kept = masks(state)
    for path in ("Dense_0", "Dense_1"):
        m = np.asarray(kept[path]["kernel"])
        w = np.asarray(state.params[path]["kernel"])
        w0 = np.asarray(start.params[path]["kernel"])
        assert np.all(w[~m] == 0.0), path  # exactly zero, through Adam's momentum and decay
        assert np.all(w[m] != w0[m]), path  # the kept weights did train
        eff = np.asarray(train.effective_params(state, tr)[path]["kernel"])
        assert np.all(eff[~m] == 0.0)
    assert int(state.step) == 25
    np.testing.assert_allclose(float(metrics["sparsity"]), 0.8, atol=0.01)


def test_step_jitted_equals_eager(adam_run, teacher, student, batch):
    tr, opt, jstep, start = adam_run
    t_apply, t_params, _ = teacher
    s_apply, _ = student
    step = train.make_step(s_apply, t_apply, opt, tr)
    s_e, m_e = step(start, t_params, batch)
    s_j, m_j = jstep(start, t_params, batch)
    chex.assert_trees_all_equal_structs(s_e, s_j)
    chex.assert_trees_all_close(comparable(s_e), comparable(s_j), rtol=1e-5, atol=1e-6)
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
    kept = masks(state)
    w = np.asarray(state.params["Dense_0"]["kernel"])
    assert np.all(w[~np.asarray(kept["Dense_0"]["kernel"])] == 0.0)


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
    s, t = np_forward(p, x), np_forward(tp, x)
    ce = -np_log_softmax(s)[np.arange(len(y)), y].mean()
    lps, lpt = np_log_softmax(s / temp), np_log_softmax(t / temp)
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
    apply_fn, params = mlp((HIDDEN, CLASSES), 7)
    params = {**params, "calls": jnp.int32(7)}

    def s_apply(p, x):
        return apply_fn({k: v for k, v in p.items() if k != "calls"}, x)

    opt = optax.adam(1e-2)
    step = jax.jit(chex.assert_max_traces(train.make_step(s_apply, t_apply, opt, tr), n=1))
    state = train.init_state(params, opt, tr, jax.random.key(0))
    for _ in range(5):
        state, _ = step(state, t_params, batch)
    assert int(state.comp_state["seen"]) == 4
    assert int(state.params["calls"]) == 7 and state.params["calls"].dtype == jnp.int32
    assert float(state.comp_state["scale"].value) != 1.0  # a learned scalar, trained


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


def test_distilled_pruned_8bit_mlp_within_two_points_of_teacher(teacher, digits):
    """80% pruning + 8-bit weights: the student keeps its teacher's accuracy (digits, 300 steps)."""
    t_apply, t_params, t_acc = teacher
    tr = compress()
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
    wide_apply, wide_params = mlp((CLASSES + 2,), 3)
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


# --------------------------------------------------------------------------- sequence models


@pytest.fixture(scope="module")
def token_run():
    s_params, t_params = token_params(1), token_params(2)
    opt = optax.sgd(0.5)
    step = jax.jit(train.make_step(token_apply, token_apply, opt, lc.identity()))
    state = train.init_state(s_params, opt, lc.identity(), jax.random.key(0))
    return step, state, t_params


def test_token_loss_metrics_and_update_against_numpy(token_run):
    """Token logits, labels and a padding mask: every number is a weighted token mean."""
    step, state, t_params = token_run
    b = token_batch(3)
    new, m = step(state, t_params, b)
    f64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)
    p, tp = f64(state.params), f64(t_params)
    x, y, w = np.asarray(b["inputs"], np.float64), b["labels"], b["weights"].astype(np.float64)
    s, t = x @ p["w"] + p["b"], x @ tp["w"] + tp["b"]
    mean = lambda v: (w * v).sum() / w.sum()
    ce = mean(-np.take_along_axis(np_log_softmax(s), y[..., None], -1)[..., 0])
    lps, lpt = np_log_softmax(s / 4.0), np_log_softmax(t / 4.0)
    kl = 16.0 * mean((np.exp(lpt) * (lpt - lps)).sum(-1))
    np.testing.assert_allclose(m["label_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(m["distill_loss"], kl, rtol=1e-4)
    np.testing.assert_allclose(m["loss"], 0.5 * kl + 0.5 * ce, rtol=1e-5)
    np.testing.assert_allclose(m["accuracy"], mean(s.argmax(-1) == y), rtol=1e-6)
    np.testing.assert_allclose(m["agreement"], mean(s.argmax(-1) == t.argmax(-1)), rtol=1e-6)

    def f(params):
        sl, tl = token_apply(params, b["inputs"]), token_apply(t_params, b["inputs"])
        return lc.distill.loss(sl, tl, b["labels"], weights=b["weights"])

    g = jax.grad(f)(state.params)
    chex.assert_trees_all_close(
        new.params, jax.tree.map(lambda a, d: a - 0.5 * d, state.params, g), rtol=1e-5, atol=1e-6
    )
    # padded tokens count for nothing: other inputs and labels there, the same step
    pad = ~b["weights"]
    other = {
        **b,
        "inputs": np.where(pad[..., None], 100.0, b["inputs"]).astype(np.float32),
        "labels": np.where(pad, 0, b["labels"]).astype(np.int32),
    }
    new2, m2 = step(state, t_params, other)
    chex.assert_trees_all_close(new2.params, new.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(m2, m, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda b: {**b, "weights": b["weights"][:, :-1]}, r'batch\["weights"\] must have shape'),
        (lambda b: {**b, "weights": b["weights"][:-1]}, r'batch\["weights"\] has shape'),
        (lambda b: {**b, "labels": b["labels"][:, 0]}, r'batch\["labels"\] must be int \[32, 8\]'),
    ],
)
def test_token_batches_of_the_wrong_shape(token_run, change, match):
    step, state, t_params = token_run
    with pytest.raises(ValueError, match=match):
        step(state, t_params, change(token_batch(4)))
