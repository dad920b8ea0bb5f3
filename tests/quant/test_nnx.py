"""Tests for lightcomp.quant.FakeQuantInputs and wrap_nnx: activation quantization of nnx models."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lightcomp as lc
from lightcomp import quant

X = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (16, 64)).astype(np.float32))


def _by_hand(params, x, ranges, bits=8):
    """The MLP's forward with each Dense input fake-quantized (unsigned) by the given ranges."""
    h = quant.fake_quant(x, bits, symmetric=False, range=ranges[0])
    h = jax.nn.relu(h @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
    h = quant.fake_quant(h, bits, symmetric=False, range=ranges[1])
    return h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]


def test_nnx_wrapper_matches_linen_and_freezes_in_eval():
    model = lc.models.NnxMLP((64, 16, 10), rngs=nnx.Rngs(0))
    params = {
        f"Dense_{i}": {"kernel": model.layers[i].kernel[...], "bias": model.layers[i].bias[...]}
        for i in range(2)
    }
    quant.wrap_nnx(model, 8)
    assert isinstance(model.layers[0], quant.FakeQuantInputs)
    y = model(X)
    ranges = [(model.layers[i].in_min[...], model.layers[i].in_max[...]) for i in range(2)]
    np.testing.assert_allclose(ranges[0][1], X.max(), rtol=1e-6)
    np.testing.assert_array_equal(y, _by_hand(params, X, ranges))
    stats = nnx.state(model, nnx.BatchStat)
    assert len(jax.tree.leaves(stats)) == 6 and int(model.layers[1].in_count[...]) == 1
    model.eval()
    model(2 * X)
    assert int(model.layers[1].in_count[...]) == 1  # frozen
    y_eval = nnx.jit(lambda m, x: m(x))(model, X)
    np.testing.assert_array_equal(y_eval, y)
    with pytest.raises(TypeError, match=r"nnx\.Module"):
        quant.wrap_nnx(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


def test_fake_quant_inputs_outputs_and_ema():
    layer = quant.FakeQuantInputs(nnx.Linear(64, 16, rngs=nnx.Rngs(1)), outputs=True, decay=0.5)
    layer(X)
    y = layer(3 * X)
    assert int(layer.in_count[...]) == int(layer.out_count[...]) == 2
    np.testing.assert_allclose(layer.in_max[...], 0.5 * X.max() + 0.5 * 3 * X.max(), rtol=1e-6)
    in_range = (layer.in_min[...], layer.in_max[...])
    h = layer.layer(quant.fake_quant(3 * X, 8, symmetric=False, range=in_range))
    out_range = (layer.out_min[...], layer.out_max[...])
    np.testing.assert_array_equal(y, quant.fake_quant(h, 8, symmetric=False, range=out_range))


def test_wrap_nnx_bad_input_leaves_the_model_unchanged():
    model = lc.models.NnxMLP((64, 16, 10), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="bits"):
        quant.wrap_nnx(model, 1)
    with pytest.raises(TypeError, match="outputs"):
        quant.wrap_nnx(model, 8, outputs="yes")
    assert isinstance(model.layers[0], nnx.Linear)
    with pytest.raises(ValueError, match="nothing to wrap"):
        quant.wrap_nnx(model, 8, layers=nnx.Conv)


def test_wrapped_nnx_model_trains_in_make_step_on_integer_dots():
    """EMA ranges of a wrapped model ride in nnx_apply's model state, updated every step."""

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a, self.b = nnx.Linear(12, 16, rngs=rngs), nnx.Linear(16, 4, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.relu(self.a(x)))

    x = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (8, 12)).astype(np.float32))
    y = jnp.asarray(np.arange(8) % 4, jnp.int32)
    losses = {}
    for compute, wb in (("int8", 8), ("float", None)):
        model = lc.quant.wrap_nnx(Net(nnx.Rngs(0)), 8, symmetric=True, weight_bits=wb,
                                  compute=compute)  # fmt: skip
        apply, params = lc.train.nnx_apply(model, train=True)
        t, opt = lc.fake_quantization(8), optax.sgd(0.1)
        state = lc.train.init_state(
            params, opt, t, jax.random.key(0), model_state=apply.model_state
        )
        step = jax.jit(lc.train.make_step(apply, None, opt, t, alpha=0.0))
        run = []
        for _ in range(3):
            state, m = step(state, None, {"inputs": x, "labels": y})
            run.append(float(m["loss"]))
        counts = [
            int(v)
            for v in jax.tree.leaves(state.model_state)
            if jnp.ndim(v) == 0 and v.dtype == jnp.int32
        ]
        assert counts == [3, 3], counts
        losses[compute] = run
    np.testing.assert_allclose(losses["int8"], losses["float"], rtol=1e-5)
