"""Tests of lightcomp.serve._inputs: a served layer's input, dynamic or calibrated."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc
from lightcomp.serve._inputs import InputQuant, as_range, input_quant, quantize_inputs

X = jnp.asarray(np.random.default_rng(5).normal(size=(4, 6)).astype(np.float32))


def test_dynamic_and_calibrated_codes_are_lightcomps_grid():
    np.testing.assert_array_equal(
        quantize_inputs(X, InputQuant(), None, "d").values, lc.quant.quantize(X).values
    )
    rng = as_range(lc.quant.EmaRange(jnp.float32(-1.0), jnp.float32(2.0), jnp.int32(3)), "d")
    q = quantize_inputs(X, InputQuant(8, False), rng, "d")
    want = lc.quant.quantize(X, 8, symmetric=False, range=(-1.0, 2.0))
    np.testing.assert_array_equal(q.values, want.values)
    # never updated (count 0): the input's own range, as activation_quant's apply
    empty = as_range({"min": 0.0, "max": 0.0, "count": 0}, "d")
    np.testing.assert_array_equal(
        quantize_inputs(X, InputQuant(), empty, "d").values, lc.quant.quantize(X).values
    )
    lo, hi, count = as_range((0.5, 1.5), "d")
    assert (float(lo), float(hi), count) == (0.5, 1.5, None)


def test_bad_ranges_and_inputs():
    with pytest.raises(ValueError, match=r"'d'.*one input range per tensor"):
        as_range((jnp.zeros(6), jnp.ones(6)), "d")
    with pytest.raises(TypeError, match=r"'d'.*EmaRange"):
        as_range("0..1", "d")
    with pytest.raises(TypeError, match=r"'d'.*cannot be quantized"):
        quantize_inputs(jnp.arange(4), InputQuant(), None, "d")
    with pytest.raises(ValueError, match=r"bits"):
        input_quant(16, True)
    with pytest.raises(TypeError, match=r"symmetric"):
        input_quant(8, 1)
