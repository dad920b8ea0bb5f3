"""Tests for lightcomp.train.keep_layers and slice_channels."""

import chex
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp import train
from tests.train.helpers import CLASSES, IN, np_forward, np_mlp


def test_keep_layers(teacher, batch):
    _, t_params, _ = teacher
    deep = np_mlp((IN, 16, 16, 16, CLASSES), 0)
    kept = train.keep_layers(deep, [0, 2, 3])
    assert list(kept) == ["Dense_0", "Dense_1", "Dense_2"]
    assert kept["Dense_1"] is deep["Dense_2"]
    x = batch["inputs"]
    h = np.maximum(x @ deep["Dense_0"]["kernel"] + deep["Dense_0"]["bias"], 0)
    h = np.maximum(h @ deep["Dense_2"]["kernel"] + deep["Dense_2"]["bias"], 0)
    expected = h @ deep["Dense_3"]["kernel"] + deep["Dense_3"]["bias"]
    np.testing.assert_allclose(np_forward(kept, x), expected, rtol=1e-6)
    many = np_mlp((4,) * 12, 1)  # natural order: Dense_10 comes after Dense_9
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
    params = np_mlp((8, 12, 12, 5), seed)
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
        np_forward(train.slice_channels(dead, [w0, None, None]), x),
        np_forward(dead, x),
        rtol=1e-5,
        atol=1e-5,
    )


def test_slice_channels_errors():
    params = np_mlp((6, 8, 4), 0)
    with pytest.raises(ValueError, match="2 layers"):
        train.slice_channels(params, [4])
    with pytest.raises(ValueError, match="last layer"):
        train.slice_channels(params, [4, 3])
    with pytest.raises(ValueError, match=r"1\.\.8"):
        train.slice_channels(params, [9, None])
