"""Tests for lightcomp.quant.activation_quant: activation fake quantization of linen models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc
from lightcomp import quant

X = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (16, 64)).astype(np.float32))
APPLY, PARAMS = lc.models.init_mlp((16, 10), 64, jax.random.key(0))


def _by_hand(params, x, ranges, bits=8):
    """The MLP's forward with each Dense input fake-quantized (unsigned) by the given ranges."""
    h = quant.fake_quant(x, bits, symmetric=False, range=ranges[0])
    h = jax.nn.relu(h @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    h = quant.fake_quant(h, bits, symmetric=False, range=ranges[1])
    return h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]


def test_linen_update_and_apply_match_hand_written_forward():
    aq = quant.activation_quant(8)
    state = aq.init(APPLY, PARAMS, X)
    assert sorted(state) == ["Dense_0", "Dense_1"]
    chex.assert_shape(state["Dense_0"]["inputs"].min, ())
    out, state1 = aq.update(APPLY, state, PARAMS, X)
    # first update: the ranges are each layer's input min/max
    np.testing.assert_allclose(state1["Dense_0"]["inputs"].max, X.max(), rtol=1e-6)
    h_min = float(state1["Dense_1"]["inputs"].min)
    assert h_min == 0.0  # after ReLU
    ranges = [state1[k]["inputs"].range for k in ("Dense_0", "Dense_1")]
    np.testing.assert_array_equal(out, _by_hand(PARAMS, X, ranges))
    # EMA step with a scaled batch follows the formula
    _, state2 = aq.update(APPLY, state1, PARAMS, 2 * X)
    np.testing.assert_allclose(
        state2["Dense_0"]["inputs"].max, 0.99 * X.max() + 0.01 * 2 * X.max(), rtol=1e-6
    )
    # frozen ranges: apply uses them, jitted or not
    frozen = aq.apply(APPLY, state2, PARAMS, X)
    ranges2 = [state2[k]["inputs"].range for k in ("Dense_0", "Dense_1")]
    np.testing.assert_array_equal(frozen, _by_hand(PARAMS, X, ranges2))
    jitted = jax.jit(lambda s, p, x: aq.apply(APPLY, s, p, x))(state2, PARAMS, X)
    np.testing.assert_array_equal(jitted, frozen)
    _, js = jax.jit(lambda s, p, x: aq.update(APPLY, s, p, x))(state1, PARAMS, 2 * X)
    chex.assert_trees_all_close(js, state2, rtol=1e-6)
    # an empty range (never updated) falls back to the tensor's own min/max
    p0, p1 = PARAMS["Dense_0"], PARAMS["Dense_1"]
    h = jax.nn.relu(quant.fake_quant(X, 8, symmetric=False) @ p0["kernel"] + p0["bias"])
    want = quant.fake_quant(h, 8, symmetric=False) @ p1["kernel"] + p1["bias"]
    np.testing.assert_array_equal(aq.apply(APPLY, state, PARAMS, X), want)


def test_linen_per_channel_ranges():
    aq = quant.activation_quant(8, axis=-1)
    state = aq.init(APPLY, PARAMS, X)
    chex.assert_shape(state["Dense_0"]["inputs"].min, (1, 64))
    chex.assert_shape(state["Dense_1"]["inputs"].min, (1, 16))
    _, state = aq.update(APPLY, state, PARAMS, X)
    np.testing.assert_array_equal(state["Dense_0"]["inputs"].max, X.max(0, keepdims=True))


def test_linen_gradients_flow_and_outputs_option():
    aq = quant.activation_quant(4, outputs=True, ste="identity")
    state = aq.init(APPLY, PARAMS, X)
    assert set(state["Dense_1"]) == {"inputs", "outputs"}
    g = jax.grad(lambda p: aq.update(APPLY, state, p, X)[0].sum())(PARAMS)
    assert all(bool(jnp.any(v != 0)) for v in jax.tree.leaves(g))
    out = aq.update(APPLY, state, PARAMS, X)[0]
    assert not np.array_equal(out, APPLY(PARAMS, X))


def test_linen_conv_layers_and_predicate():
    model = lc.models.CNN(channels=(4,))
    x = jnp.asarray(lc.data.load_digits(image=True).x_test[:8])
    params = model.init(jax.random.key(1), x)["params"]
    fn = lambda p, x: model.apply({"params": p}, x)
    assert sorted(quant.activation_quant(8).init(fn, params, x)) == ["Conv_0", "Dense_0"]
    only_conv = quant.activation_quant(8, layers=lambda path, mod: path.startswith("Conv"))
    assert sorted(only_conv.init(fn, params, x)) == ["Conv_0"]


def test_linen_bad_input():
    aq = quant.activation_quant(8)
    with pytest.raises(ValueError, match="Dense_1"):
        aq.update(APPLY, {"Dense_0": aq.init(APPLY, PARAMS, X)["Dense_0"]}, PARAMS, X)
    with pytest.raises(ValueError, match="no layer"):
        aq.init(lambda x: x * 2, X)
    with pytest.raises(TypeError, match="state"):
        aq.update(APPLY, [1], PARAMS, X)
    with pytest.raises(ValueError, match="NaN"):
        aq.update(APPLY, aq.init(APPLY, PARAMS, X), PARAMS, X.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="bits"):
        quant.activation_quant(1)
    with pytest.raises(ValueError, match="decay"):
        quant.activation_quant(8, decay=1.0)
    with pytest.raises(TypeError, match="layers"):
        quant.activation_quant(8, layers=3)
    with pytest.raises(TypeError, match="axis"):
        quant.activation_quant(8, axis=1.0)
    with pytest.raises(ValueError, match="ste"):
        quant.activation_quant(8, ste="soft")
    with pytest.raises(TypeError, match="outputs"):
        quant.activation_quant(8, outputs="yes")


@pytest.mark.parametrize("axis", [None, "tokens"])
def test_dynamic_ranges_quantize_with_each_call_own_range(ref, axis):
    aq = quant.activation_quant(8, symmetric=True, ranges="dynamic", axis=axis)
    assert aq.init(APPLY, PARAMS, X) == {}
    out, state = aq.update(APPLY, {}, PARAMS, X)
    assert state == {}
    keep = (0,) if axis == "tokens" else None
    p0, p1 = PARAMS["Dense_0"], PARAMS["Dense_1"]
    h = ref.quant(np.asarray(X), 8, True, keep)[0] @ np.asarray(p0["kernel"]) + np.asarray(
        p0["bias"]
    )
    h = ref.quant(np.maximum(h, 0), 8, True, keep)[0]
    want = h @ np.asarray(p1["kernel"]) + np.asarray(p1["bias"])
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(jax.jit(lambda p, x: aq.apply(APPLY, {}, p, x))(PARAMS, X), out)


def test_calibrated_ranges_stay_fixed():
    ema = quant.activation_quant(8)
    _, calibrated = ema.update(APPLY, ema.init(APPLY, PARAMS, X), PARAMS, X)
    fixed = quant.activation_quant(8, ranges="calibrated")
    out, state = fixed.update(APPLY, calibrated, PARAMS, 3 * X)
    chex.assert_trees_all_equal(state, calibrated)
    np.testing.assert_array_equal(out, ema.apply(APPLY, calibrated, PARAMS, 3 * X))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(axis="tokens"), "ranges='dynamic'"),
        (dict(ranges="running"), "ranges must be one of"),
        (dict(compute="int4"), "compute must be one of"),
        (dict(weight_bits=True), "weight_bits"),
        (dict(compute="int8"), "weight_bits <= 8"),
        (dict(weight_bits=8, operands="fp8"), "operands must be one of"),
    ],
)
def test_bad_configuration_is_refused_at_construction(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        quant.activation_quant(8, **kwargs)
