"""Tests of lightcomp.export._leaf: one leaf's encoding, chosen smallest and verified."""

from __future__ import annotations

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lightcomp as lc
from lightcomp.export._leaf import decode_leaf, encode_leaf, relocate

RNG = np.random.default_rng(1234)
W = RNG.normal(size=(24, 32)).astype(np.float32)
MASK = RNG.random(W.shape) < 0.8


def _bits(x):
    x = np.asarray(x)
    return x.view(f"u{x.dtype.itemsize}")


def _assert_bit_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(_bits(a), _bits(b))


def _roundtrip(x):
    packed = lc.export.pack({"w": x})
    _assert_bit_equal(lc.export.unpack(packed)["w"], x)
    return lc.export.report(packed)["leaves"][0]


def _fq(x, bits, **kw):
    return np.asarray(lc.quant.fake_quant(jnp.asarray(x), bits, **kw))


CASES = {
    "dense_f32": (lambda: W, "float32"),
    "dense_bf16": (lambda: np.asarray(jnp.asarray(W, jnp.bfloat16)), "bfloat16"),
    "dense_f16": (lambda: W.astype(np.float16), "float16"),
    "f32_holding_f16": (lambda: W.astype(np.float16).astype(np.float32), "float16"),
    "grid_tensor_4b": (lambda: _fq(W, 4), "grid tensor"),
    "grid_channel_3b": (lambda: _fq(W, 3, axis=-1), "grid axis1"),
    "grid_affine_6b": (lambda: _fq(W, 6, axis=-1, symmetric=False), "grid axis1"),
    "grid_group": (lambda: _fq(W, 4, axis=-1, group_size=8), "grid group8"),
    "grid_bf16": (lambda: _fq(jnp.asarray(W, jnp.bfloat16), 4, axis=-1), "grid axis1"),
    "codebook": (
        lambda: RNG.normal(size=5).astype(np.float32)[RNG.integers(0, 5, W.shape)],
        "book5",
    ),
    "sparse_mask": (lambda: np.where(RNG.random(W.shape) < 0.4, 0, W).astype(np.float32), "mask"),
    "sparse_rel": (lambda: np.where(RNG.random(W.shape) < 0.97, 0, W).astype(np.float32), "rel"),
    "sparse_quant": (lambda: np.where(MASK, 0, _fq(W, 4, axis=-1)), "grid axis1"),
    "negative_zeros": (lambda: np.where(MASK, np.float32(-0.0), W), "-0"),
    "nan_inf": (lambda: np.array([np.nan, np.inf, -np.inf, 1.5, -0.0], np.float32), ""),
    "int32": (lambda: RNG.integers(-5, 5, (7, 3)).astype(np.int32), "int32"),
    "bool": (lambda: RNG.random(9) < 0.5, "bool"),
    "scalar": (lambda: np.float32(0.3), ""),
    "empty": (lambda: np.zeros((0, 4), np.float32), ""),
    "all_zero": (lambda: np.zeros((6, 4), np.float32), ""),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pack_unpack_bit_exact_for_every_encoding(name):
    make, expect = CASES[name]
    row = _roundtrip(make())
    assert expect in row["encoding"], row["encoding"]


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.int8, np.uint16])
@pytest.mark.parametrize("entropy", [True, False])
def test_encode_leaf_parts_decode_to_the_leaf(dtype, entropy):
    rng = np.random.default_rng(5)
    x = np.where(rng.random((6, 10)) < 0.5, 0, rng.normal(size=(6, 10)) * 50).astype(dtype)
    spec, parts = encode_leaf(x, entropy)
    assert set(spec) == {"pos", "val", "negz"}
    _assert_bit_equal(decode_leaf(spec, x.shape, x.dtype, parts), x)


def test_sparse_encoding_beats_dense_and_counts_every_byte():
    x = np.where(RNG.random((64, 64)) < 0.95, 0, _fq(RNG.normal(size=(64, 64)), 4)).astype(
        np.float32
    )
    row = _roundtrip(x)
    nnz = np.count_nonzero(x)
    assert row["bytes"] * 8 < nnz * (4 + 12)  # values + relative indices, far under dense
    assert row["bits_per_weight"] == pytest.approx(8 * row["bytes"] / x.size)


@settings(max_examples=8, deadline=None)
@given(
    bits=st.integers(2, 12),
    rows=st.integers(1, 9),
    cols=st.integers(1, 9),
    axis=st.sampled_from([None, -1, 0]),
    symmetric=st.booleans(),
    sparsity=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**16),
)
def test_property_quantized_and_pruned_leaves_round_trip(
    bits, rows, cols, axis, symmetric, sparsity, seed
):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, cols)).astype(np.float32) * rng.uniform(1e-3, 1e3)
    x = _fq(x, bits, axis=axis, symmetric=symmetric)
    x = np.where(rng.random(x.shape) < sparsity, np.float32(0), x)
    _roundtrip(x)


def test_relocate_moves_every_part_index():
    spec = {"pos": None, "val": {"val": "grid", "sp": 0, "s": {"c": "fixed", "p": 1, "w": 3}}}
    assert relocate(spec, 2) == {
        "pos": None,
        "val": {"val": "grid", "sp": 2, "s": {"c": "fixed", "p": 3, "w": 3}},
    }
