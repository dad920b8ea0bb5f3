"""Tests of lightcomp.serve.nnx: nnx models on integer matmuls, the user's model untouched."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lightcomp as lc
from tests.serve.helpers import NNX_SERVED, NnxMixed, X, assert_close_to, fake_quant_kernels

MODEL = NnxMixed(nnx.Rngs(0))
PARAMS = nnx.state(MODEL, nnx.Param)
FQ = fake_quant_kernels(PARAMS)
QPARAMS = lc.serve.from_packed(lc.export.pack(FQ), like=PARAMS)


def _reference(fq_params, *, symmetric=True, train_on=None):
    """A copy of the model with fake-quantized kernels, every served layer's input fake-quantized.

    `lightcomp.quant.wrap_nnx` with frozen, never-updated ranges quantizes each input with its
    own min / max: the dynamic per-tensor quantization of serving. With ``train_on``, the ranges
    first take one EMA step on it (calibrated ranges).
    """
    graphdef, state = nnx.split(MODEL)
    copy = nnx.merge(graphdef, jax.tree.map(jnp.array, state))  # new Variables: MODEL untouched
    nnx.update(copy, fq_params)
    lc.quant.wrap_nnx(copy, 8, layers=NNX_SERVED, symmetric=symmetric)
    if train_on is not None:
        copy(train_on)  # training mode: one EMA step
    copy.eval()
    return copy


def test_every_layer_kind_equals_the_fake_quant_forward_and_the_model_is_untouched():
    before = jax.tree.map(np.asarray, nnx.state(MODEL))
    apply = lc.serve.nnx(MODEL)
    y = jax.jit(apply)(QPARAMS, X)
    assert_close_to(y, _reference(FQ)(X))
    assert_close_to(apply(QPARAMS, X), y)  # not jitted
    # the model keeps its float kernels, its layer types and its values
    assert isinstance(MODEL.out, nnx.Linear) and isinstance(MODEL.conv, nnx.Conv)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(MODEL), before)
    # the nested dict from_packed gives without like= serves the same
    plain = lc.serve.from_packed(lc.export.pack(FQ))
    np.testing.assert_array_equal(jax.jit(apply)(plain, X), y)


def test_unsigned_inputs_and_int8_memory():
    apply = jax.jit(lc.serve.nnx(MODEL, symmetric=False))
    assert_close_to(apply(QPARAMS, X), _reference(FQ, symmetric=False)(X))
    leaves = jax.tree.leaves((QPARAMS, X))
    compiled = apply.lower(QPARAMS, X).compile()
    assert compiled.memory_analysis().argument_size_in_bytes == sum(a.nbytes for a in leaves)
    kernels = [v for p, v in lc.tree.leaves_with_paths(QPARAMS) if "kernel" in p]
    assert all(k.dtype in (jnp.int8, jnp.float32) for k in kernels)
    assert sum(k.nbytes for k in kernels if k.dtype == jnp.int8) == sum(
        np.size(w) for p, w in lc.tree.leaves_with_paths(FQ) if p.endswith("kernel")
    )


def test_a_wrapped_model_serves_with_its_calibrated_ranges_from_one_file():
    wrapped = _reference(FQ, train_on=X)  # FakeQuantInputs with EMA ranges, unsigned
    x2 = 0.7 * X
    want = wrapped(x2)
    state = nnx.state(wrapped)  # parameters and ranges (BatchStat): all serving needs
    q = lc.serve.from_packed(lc.export.pack(state), like=state)
    assert_close_to(jax.jit(lc.serve.nnx(wrapped))(q, x2), want)


def test_bad_input_names_the_layer():
    apply = lc.serve.nnx(MODEL)
    with pytest.raises(TypeError, match=r"'conv': kernel is a float32"):
        apply(FQ, X)
    with pytest.raises(ValueError, match=r"does not"):
        apply({"nope": {"kernel": jnp.ones((2, 2))}}, X)
    with pytest.raises(TypeError, match=r"'conv'.*cannot be quantized"):
        apply(QPARAMS, X.astype(jnp.int32))
    with pytest.raises(TypeError, match=r"nnx Module"):
        lc.serve.nnx(lambda x: x)
