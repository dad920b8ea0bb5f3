"""Tests for lightcomp.wrap_optax and lightcomp.effective: compression in your own loop."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from flax.training import train_state

import lightcomp as lc
from lightcomp import train
from tests.train.helpers import BATCH, CLASSES, HIDDEN, mlp

STEPS = 12


def _transform():
    """Gradual pruning, learned centroids and learned step sizes: every kind of state."""
    schedule = lc.prune.polynomial_schedule(0.0, 0.75, 0, 8, frequency=2)
    return lc.chain(
        lc.pruning(schedule, select=r"kernel$"),
        lc.weight_sharing(8, select=r"kernel$"),
        lc.fake_quantization(8, learned_scale=True, select=r"kernel$"),
    )


def _loss(apply, params, batch):
    logits = apply(params, batch["inputs"])
    return lc.distill.cross_entropy(logits, batch["labels"])


@pytest.fixture(scope="module")
def setup(digits):
    apply, params = mlp((HIDDEN, CLASSES), 4)
    batches = lc.data.batches(digits.x_train, digits.y_train, BATCH, seed=5)
    return apply, params, [next(batches) for _ in range(STEPS)]


@pytest.fixture(scope="module")
def reference(setup):
    """The same training through make_step (labels only): the state after STEPS steps."""
    apply, params, data = setup
    t, opt = _transform(), optax.adam(1e-2)
    step = jax.jit(train.make_step(apply, None, opt, t, alpha=0.0))
    state = jax.jit(lambda p: train.init_state(p, opt, t, jax.random.key(0)))(params)
    for b in data:
        state, _ = step(state, None, b)
    return state


def _init_key():
    return jax.random.split(jax.random.key(0))[0]  # the half init_state gives the transform


def _compare(params, comp_state, reference):
    chex.assert_trees_all_close(params, reference.params, rtol=1e-4, atol=1e-5)
    masks, ref_masks = lc.masks_of(comp_state), lc.masks_of(reference.comp_state)
    chex.assert_trees_all_equal(masks, ref_masks)
    chex.assert_trees_all_equal(comp_state[1].assignments, reference.comp_state[1].assignments)
    for w, m in zip(
        jax.tree.leaves(params), jax.tree.leaves(masks, is_leaf=lambda x: x is None), strict=True
    ):
        if m is not None:
            assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)  # exactly zero
    report = lc.prune.sparsity_report(masks, select=lambda p, x: True)
    np.testing.assert_allclose(report["total"]["sparsity"], 0.75, atol=0.01)


def test_a_plain_optax_loop_equals_make_step(setup, reference):
    apply, params, data = setup
    tx = lc.wrap_optax(optax.adam(1e-2), _transform(), _init_key())
    opt_state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, opt_state, batch):
        grads = jax.grad(lambda p: _loss(apply, lc.effective(p, opt_state), batch))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for b in data:
        params, opt_state = step(params, opt_state, b)
    _compare(params, opt_state.comp_state, reference)
    assert int(opt_state.count) == STEPS


def test_flax_train_state_loop(setup, reference, tmp_path):
    apply, params, data = setup
    tx = lc.wrap_optax(optax.adam(1e-2), _transform(), _init_key())
    state = train_state.TrainState.create(apply_fn=apply, params=params, tx=tx)

    @jax.jit
    def step(state, batch):
        def loss(p):
            return _loss(state.apply_fn, lc.effective(p, state.opt_state), batch)

        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    for b in data:
        state = step(state, b)
    _compare(state.params, state.opt_state.comp_state, reference)
    # saved and restored with orbax as part of the optimizer state
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "ts", state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "ts", target=state)
    chex.assert_trees_all_equal(restored.opt_state.comp_state, state.opt_state.comp_state)
    # and packed straight from the optimizer state
    packed = lc.export.pack(state.params, state.opt_state)
    chex.assert_trees_all_equal(
        lc.export.unpack(packed), lc.effective(state.params, state.opt_state)
    )


def test_nnx_optimizer_loop(digits):
    model = lc.models.NnxMLP((64, HIDDEN, CLASSES), rngs=nnx.Rngs(0))
    t = lc.chain(lc.pruning(0.5, select=r"kernel$"), lc.fake_quantization(8, select=r"kernel$"))
    optimizer = nnx.Optimizer(
        model, lc.wrap_optax(optax.adam(1e-2), t, jax.random.key(1)), wrt=nnx.Param
    )

    @nnx.jit
    def step(model, optimizer, x, y):
        def loss(model):
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)
            eff = lc.effective(params, optimizer.opt_state)
            logits = nnx.merge(graphdef, eff, rest)(x)
            return lc.distill.cross_entropy(logits, y)

        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    batches = lc.data.batches(digits.x_train, digits.y_train, 64, seed=1)
    losses = []
    for _ in range(20):
        b = next(batches)
        losses.append(float(step(model, optimizer, b["inputs"], b["labels"])))
    assert losses[-1] < losses[0]
    for layer in model.layers:
        w = np.asarray(layer.kernel[...])
        assert abs(np.mean(w == 0.0) - 0.5) < 0.02  # pruned weights stay exactly zero


def test_multisteps_updates_every_k(setup):
    apply, params, data = setup
    tx = optax.MultiSteps(lc.wrap_optax(optax.sgd(0.1), _transform(), _init_key()), 2)
    opt_state = tx.init(params)
    for b in data[:4]:
        grads = jax.grad(lambda p: _loss(apply, lc.effective(p, opt_state), b))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    assert int(lc.train.find_compression_state(opt_state).count) == 2


def test_effective_finds_the_state_in_any_nesting(setup):
    _, params, _ = setup
    t = lc.pruning(0.5, select=r"kernel$")
    inner = lc.wrap_optax(optax.sgd(0.1), t, jax.random.key(0))
    tx = optax.chain(optax.clip_by_global_norm(1.0), inner)
    state = tx.init(params)
    eff = jax.jit(lc.effective)(params, state)
    chex.assert_trees_all_equal(eff, t.apply(params, t.init(params, jax.random.key(0))))
    # the straight-through gradient: the identity with respect to the raw params
    g = jax.grad(lambda p: sum(jnp.sum(x) for x in jax.tree.leaves(lc.effective(p, state))))(params)
    chex.assert_trees_all_close(g, jax.tree.map(jnp.ones_like, params))


def test_bad_input_is_named(setup):
    _, params, _ = setup
    with pytest.raises(ValueError, match="opt_state holds no lightcomp compression state"):
        lc.effective(params, optax.adam(1e-3).init(params))
    with pytest.raises(TypeError, match="key"):
        lc.wrap_optax(optax.adam(1e-3), lc.pruning(0.5), 0)
    with pytest.raises(TypeError, match="transform"):
        lc.wrap_optax(optax.adam(1e-3), lambda p: p, jax.random.key(0))
    with pytest.raises(TypeError, match="optimizer"):
        lc.wrap_optax(object(), lc.pruning(0.5), jax.random.key(0))
    tx = lc.wrap_optax(optax.adam(1e-3), lc.pruning(0.5, select=r"kernel$"), jax.random.key(0))
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, state)
    other = {"Dense_0": params["Dense_0"]}
    with pytest.raises(ValueError, match="Dense_1"):
        tx.update(params, state, other)
