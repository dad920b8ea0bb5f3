"""Tests of lightcomp.serve.linen: unmodified linen modules on integer matmuls."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc
from tests.serve.helpers import (
    LINEN_SERVED,
    Mixed,
    X,
    assert_close_to,
    fake_quant_kernels,
    linen_reference,
)

MODEL = Mixed()
PARAMS = MODEL.init(jax.random.key(0), X)["params"]
FQ = fake_quant_kernels(PARAMS)
QPARAMS = lc.serve.from_packed(lc.export.pack(FQ))


@pytest.fixture(scope="module")
def served():
    return jax.jit(lc.serve.linen(MODEL))


def test_every_layer_kind_runs_integer_and_equals_the_fake_quant_forward(served):
    kernels = {p: k for p, k in lc.tree.leaves_with_paths(QPARAMS) if p.endswith("kernel/values")}
    assert len(kernels) == 5 and all(k.dtype == jnp.int8 for k in kernels.values())
    ref = linen_reference(MODEL, {"params": FQ}, X)
    assert_close_to(served(QPARAMS, X), ref)
    assert_close_to(lc.serve.linen(MODEL)(QPARAMS, X), ref)  # not jitted
    hlo = served.lower(QPARAMS, X).as_text()
    assert hlo.count("preferred_element_type = i32") + hlo.count("-> tensor<") > 0
    assert "xi32>" in hlo and "xi8>" in hlo


def test_unsigned_inputs_with_a_zero_point_and_bfloat16_operands():
    y = jax.jit(lc.serve.linen(MODEL, symmetric=False))(QPARAMS, X)
    assert_close_to(y, linen_reference(MODEL, {"params": FQ}, X, symmetric=False))
    # the same exact integer sums carried on bfloat16 dot units
    bf16 = jax.jit(lc.serve.linen(MODEL, symmetric=False, operands="bfloat16"))(QPARAMS, X)
    np.testing.assert_array_equal(bf16, y)


def test_served_int8_kernels_occupy_int8_memory(served):
    compiled = served.lower(QPARAMS, X).compile()
    leaves = jax.tree.leaves((QPARAMS, X))
    assert compiled.memory_analysis().argument_size_in_bytes == sum(a.nbytes for a in leaves)
    n_weights = sum(np.size(w) for p, w in lc.tree.leaves_with_paths(FQ) if p.endswith("kernel"))
    int8 = [a for a in leaves if a.dtype == jnp.int8]
    assert sum(a.nbytes for a in int8) == n_weights  # one byte per weight, not four


def test_4_bit_kernels_two_per_byte():
    q4 = lc.serve.from_packed(lc.export.pack(fake_quant_kernels(PARAMS, 4)))
    k = q4["Dense_0"]["kernel"]
    assert isinstance(k.values, lc.quant.PackedInt4) and k.bits <= 4
    assert k.values.nbytes == k.shape[0] * ((k.shape[1] + 1) // 2)
    y = jax.jit(lc.serve.linen(MODEL))(q4, X)
    assert_close_to(y, linen_reference(MODEL, {"params": fake_quant_kernels(PARAMS, 4)}, X))


def test_calibrated_ranges_from_activation_quant_travel_in_the_packed_file():
    aq = lc.quant.activation_quant(8, layers=LINEN_SERVED)
    fn = lambda p, x: MODEL.apply({"params": p}, x)
    state = aq.init(fn, FQ, X)
    _, state = aq.update(fn, state, FQ, X)
    x2 = 0.8 * X
    frozen = aq.apply(fn, state, FQ, x2)  # the fake-quant forward with those ranges
    served = jax.jit(lc.serve.linen(MODEL, symmetric=False))
    assert_close_to(served({"params": QPARAMS, "act_ranges": state}, x2), frozen)
    # one file: parameters and ranges packed together
    both = lc.serve.from_packed(lc.export.pack({"params": FQ, "act_ranges": state}))
    assert_close_to(served(both, x2), frozen)


def test_float_layers_and_collections():
    q = {**QPARAMS, "Dense_0": FQ["Dense_0"]}  # the last layer in float
    y = lc.serve.linen(MODEL, float_layers=["^Dense_0$"])({"params": q}, X)
    assert_close_to(y, linen_reference(MODEL, {"params": FQ}, X, in_float=("Dense_0",)))
    with pytest.raises(TypeError, match=r"'Dense_0'.*float_layers"):
        lc.serve.linen(MODEL, float_layers="Dense_0")(QPARAMS, X)


def test_compiles_once():
    apply = lc.serve.linen(MODEL)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(q, x):
        return apply(q, x)

    for s in (1.0, 0.5, 2.0):
        f(QPARAMS, s * X)


class _WithEmbed(nn.Module):
    @nn.compact
    def __call__(self, ids):
        return nn.Dense(2)(nn.Embed(10, 4)(ids))


def _bad(**replace):
    q = {k: dict(v) for k, v in QPARAMS.items()}
    for path, value in replace.items():
        layer, name = path.split("/")
        q[layer][name] = value
    return q


def test_bad_input_names_the_layer():
    apply = lc.serve.linen(MODEL)
    with pytest.raises(TypeError, match=r"'Dense_0': kernel is a float32"):
        apply(_bad(**{"Dense_0/kernel": FQ["Dense_0"]["kernel"]}), X)
    with pytest.raises(ValueError, match=r"'Dense_0'.*axis 0, which is contracted"):
        apply(_bad(**{"Dense_0/kernel": lc.quant.quantize(FQ["Dense_0"]["kernel"], axis=0)}), X)
    with pytest.raises(ValueError, match=r"'Dense_0'.*12-bit"):
        apply(_bad(**{"Dense_0/kernel": lc.quant.quantize(FQ["Dense_0"]["kernel"], 12)}), X)
    with pytest.raises(ValueError, match=r"'Dense_0'.*does not fit"):
        apply(_bad(**{"Dense_0/kernel": QPARAMS["DenseGeneral_1"]["kernel"]}), X)
    with pytest.raises(ValueError, match=r"not served"):
        apply({"params": QPARAMS, "act_ranges": {"Dense_9": {"inputs": (0.0, 1.0)}}}, X)
    with pytest.raises(TypeError, match=r"'Conv_0'.*cannot be quantized"):
        apply(QPARAMS, X.astype(jnp.int32))
    embed = _WithEmbed()
    ids = jnp.array([[1, 2]])
    ep = fake_quant_kernels(embed.init(jax.random.key(0), ids)["params"])
    ep["Embed_0"]["embedding"] = lc.quant.quantize(ep["Embed_0"]["embedding"])
    with pytest.raises(TypeError, match=r"'Embed_0'.*not a served layer"):
        lc.serve.linen(embed)(
            lc.serve.from_packed(lc.export.pack(ep)) | {"Embed_0": ep["Embed_0"]}, ids
        )
    custom = nn.Dense(3, dot_general=lambda *a, **k: jax.lax.dot_general(*a, **k))
    cp = lc.serve.from_packed(
        lc.export.pack(
            fake_quant_kernels(custom.init(jax.random.key(0), jnp.ones((1, 4)))["params"])
        )
    )
    with pytest.raises(ValueError, match=r"custom dot_general"):
        lc.serve.linen(custom)(cp, jnp.ones((1, 4)))
    with pytest.raises(TypeError, match=r"module"):
        lc.serve.linen(lambda x: x)
    with pytest.raises(ValueError, match=r"bits"):
        lc.serve.linen(MODEL, bits=9)
    with pytest.raises(TypeError, match=r"symmetric"):
        lc.serve.linen(MODEL, symmetric="yes")
    with pytest.raises(ValueError, match=r"operands"):
        lc.serve.linen(MODEL, operands="float32")


class _WithNorm(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(6)(x))
        return nn.Dense(2)(nn.relu(x))


def test_batch_norm_statistics_travel_in_the_same_file():
    model = _WithNorm()
    x = jnp.asarray(np.random.default_rng(2).normal(size=(8, 5)).astype(np.float32))
    variables = model.init(jax.random.key(0), x)
    _, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
    fq = {"params": fake_quant_kernels(variables["params"]), **upd}
    served = lc.serve.from_packed(lc.export.pack(fq))  # parameters and statistics, one file
    assert isinstance(served["params"]["Dense_0"]["kernel"], lc.quant.QTensor)
    y = jax.jit(lc.serve.linen(model), static_argnames="train")(served, x, train=False)
    assert_close_to(y, linen_reference(model, fq, x))
