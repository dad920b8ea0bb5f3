"""Tests for lightcomp.train.linen_apply and nnx_apply."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lightcomp as lc
from lightcomp import train
from tests.train.helpers import (
    CLASSES,
    HIDDEN,
    IN,
    NAMES,
    STATEFUL,
    NnxCNN,
    NnxScanMLP,
    family,
    key_data,
    run,
)


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


# --------------------------------------------------------------------------- model families


def _masked_weights_are_zero(state):
    masks = lc.transform.masks_of(state.comp_state)
    flat_m = jax.tree_util.tree_flatten_with_path(masks)[0]
    checked = 0
    for path, m in flat_m:
        w = np.asarray(dict(lc.tree.leaves_with_paths(state.params))[lc.tree.path_str(path)])
        assert np.all(w[~np.asarray(m)] == 0.0), lc.tree.path_str(path)
        checked += 1
    return checked


@pytest.mark.parametrize("name", NAMES)
def test_family_trains_in_make_step(name):
    """Loss falls, pruned kernels stay exactly 0, BatchNorm statistics move, the teacher's stay."""
    f = family(name)
    _, states, metrics = run(name)
    losses = [float(m["loss"]) for m in metrics]
    assert losses[-1] < losses[0], losses
    final = states[-1]
    assert _masked_weights_are_zero(final) >= 2
    assert abs(float(metrics[-1]["sparsity"]) - 0.5) < 0.01
    chex.assert_trees_all_equal_structs(final.model_state, f.model_state)
    start, end = (
        jax.tree.leaves(key_data(f.model_state)),
        jax.tree.leaves(key_data(final.model_state)),
    )
    stats = f.train_apply.statistics(f.model_state)
    moved = [not np.array_equal(a, b) for a, b, s in zip(start, end, stats, strict=True) if s]
    assert (len(moved) > 0 and all(moved)) == (name in STATEFUL), (name, moved)
    if name == "nnx_scan":  # stacked rng streams: one key per layer, carried unchanged
        keys = final.model_state["blocks"]["drop"]["rngs"]["key"][...]
        assert keys.shape == (3,) and jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
    chex.assert_trees_all_equal(key_data(final.teacher_state), key_data(f.teacher_state))
    # evaluation reads the new running statistics and changes nothing
    eff = train.effective_params(final, f.transform)
    out = train.evaluate(f.eval_apply, eff, f.batches[:2], model_state=final.model_state)
    assert 0.0 <= out["accuracy"] <= 1.0 and np.isfinite(out["loss"])


@pytest.mark.parametrize("name", NAMES)
def test_family_checkpoint_resumes_equal(name, tmp_path):
    """Saved after 3 steps (model state included), restored, 3 more steps: the same state."""
    f = family(name)
    step, states, _ = run(name)
    lc.checkpoint.save(tmp_path / "ckpt", states[2], 3)
    back = lc.checkpoint.restore(tmp_path / "ckpt", f.init(seed=7))
    chex.assert_trees_all_equal(key_data(back), key_data(states[2]))
    for b in f.batches[3:]:
        back, _ = step(back, f.teacher_params, b)
    chex.assert_trees_all_equal(key_data(back), key_data(states[-1]))


def test_nnx_adapter_never_touches_the_module_and_works_under_jit():
    """BatchNorm + Dropout with rngs at call (the nnx tutorial's CNN): the user's module
    keeps its statistics, rng streams and mode, eagerly and under jit."""
    module = NnxCNN(rngs=nnx.Rngs(0))
    module.eval()
    before = key_data(nnx.state(module))
    apply, params = train.nnx_apply(module, train=True)
    assert apply.train is True and module.bn.use_running_average is True
    x = np.random.default_rng(0).random((4, 8, 8, 1), dtype=np.float32)
    eager, new_state = apply.run(params, apply.model_state, x, jax.random.key(1))
    jitted = jax.jit(apply)
    a, b = jitted(params, x, jax.random.key(1)), jitted(params, x, jax.random.key(2))
    np.testing.assert_allclose(a, eager, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, b)  # rngs=nnx.Rngs(key) at call: dropout follows the key
    assert not np.allclose(new_state["bn"]["mean"][...], apply.model_state["bn"]["mean"][...])
    chex.assert_trees_all_equal(key_data(nnx.state(module)), before)
    chex.assert_trees_all_equal(
        key_data(apply.model_state), key_data(nnx.state(module, nnx.BatchStat))
    )
    # eval mode reads the running statistics: module(x) in eval mode, exactly
    eval_apply, _ = train.nnx_apply(module, train=False)
    np.testing.assert_allclose(jax.jit(eval_apply)(params, x), module(x), rtol=1e-5, atol=1e-6)


def test_nnx_scanned_layers_keep_stacked_rng_keys():
    """nnx.vmap/nnx.scan blocks holding rng streams: one key per layer, reseeded per call."""
    apply, params = train.nnx_apply(NnxScanMLP(rngs=nnx.Rngs(0, dropout=1)), train=True)
    keys = apply.model_state["blocks"]["drop"]["rngs"]["key"][...]
    assert keys.shape == (3,)
    x = np.random.default_rng(1).random((4, 64), dtype=np.float32)
    run = jax.jit(apply.run)
    out1, s1 = run(params, apply.model_state, x, jax.random.key(1))
    out2, _ = run(params, apply.model_state, x, jax.random.key(2))
    again, _ = run(params, apply.model_state, x, jax.random.key(1))
    assert not np.allclose(out1, out2)
    np.testing.assert_array_equal(out1, again)
    chex.assert_trees_all_equal(key_data(s1), key_data(apply.model_state))


_AQ_MODEL = lc.models.MLP((16, 4))
_AQ_X = jnp.asarray(np.random.default_rng(5).uniform(0, 1, (2, 8, 12)).astype(np.float32))
_AQ_Y = jnp.asarray(np.random.default_rng(6).integers(0, 4, (2, 8)).astype(np.int32))


def _aq_run(compute, ranges="ema", steps=2):
    """``steps`` distillation-free steps of an MLP whose Dense inputs are quantized."""
    params = _AQ_MODEL.init(jax.random.key(0), _AQ_X[0])["params"]
    t, opt = lc.fake_quantization(8), optax.sgd(0.1)
    aq = lc.quant.activation_quant(8, symmetric=True, ranges=ranges, weight_bits=8, compute=compute)
    fn = lambda p, x: _AQ_MODEL.apply({"params": p}, x)
    ms = {"act_ranges": aq.init(fn, params, _AQ_X[0])} if ranges == "ema" else {}
    state = lc.train.init_state(params, opt, t, jax.random.key(1), model_state=ms)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(train.make_step(
        train.linen_apply(_AQ_MODEL, act_quant=aq), None, opt, t, alpha=0.0), n=1))  # fmt: skip
    losses = []
    for i in range(steps):
        state, m = step(state, None, {"inputs": _AQ_X[i % 2], "labels": _AQ_Y[i % 2]})
        losses.append(float(m["loss"]))
    return state, losses


def test_linen_apply_act_quant_ranges_ride_in_the_model_state_every_step():
    state, losses = _aq_run("int8", steps=3)
    ranges = state.model_state["act_ranges"]
    assert int(ranges["Dense_1"]["inputs"].count) == 3
    lo = [float(_AQ_X[i % 2].min()) for i in range(3)]
    want = lo[0]
    for v in lo[1:]:
        want = 0.99 * want + 0.01 * v
    np.testing.assert_allclose(ranges["Dense_0"]["inputs"].min, want, rtol=1e-6)
    fstate, flosses = _aq_run("float", steps=3)
    np.testing.assert_allclose(losses, flosses, rtol=1e-5)
    chex.assert_trees_all_close(state.params, fstate.params, atol=1e-6)
    chex.assert_trees_all_close(state.model_state, fstate.model_state, atol=1e-6)


def test_linen_apply_act_quant_dynamic_needs_no_state_and_missing_ranges_are_named():
    state, _ = _aq_run("int8", ranges="dynamic", steps=1)
    assert state.model_state == {}
    aq = lc.quant.activation_quant(8)
    apply = train.linen_apply(_AQ_MODEL, act_quant=aq)
    params = _AQ_MODEL.init(jax.random.key(0), _AQ_X[0])["params"]
    with pytest.raises(ValueError, match="act_ranges"):
        apply(params, _AQ_X[0])
    frozen = train.linen_apply(_AQ_MODEL, act_quant=aq, update_ranges=False)
    fn = lambda p, x: _AQ_MODEL.apply({"params": p}, x)
    ms = {"act_ranges": aq.init(fn, params, _AQ_X[0])}
    _, new = frozen.run(params, ms, _AQ_X[0])
    chex.assert_trees_all_equal(new, ms)
    with pytest.raises(TypeError, match="act_quant"):
        train.linen_apply(_AQ_MODEL, act_quant="int8")
