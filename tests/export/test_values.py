"""Tests of lightcomp.export._values: raw floats, codebooks and the narrowest float dtype."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from lightcomp.export._values import decode_values, narrowest_float, value_candidates


def _bits(x):
    return x.view(f"u{x.dtype.itemsize}")


@pytest.mark.parametrize(
    "make,want",
    [
        (lambda v: v.astype(np.float16).astype(np.float32), np.float16),
        (lambda v: (v * 1e6).astype(ml_dtypes.bfloat16).astype(np.float32), ml_dtypes.bfloat16),
        (lambda v: v, np.float32),
        (lambda v: v.astype(np.float16).astype(np.float64), np.float16),
        (lambda v: v.astype(np.float64) / 3, np.float64),
        (lambda v: v.astype(np.float16), np.float16),
    ],
)
def test_narrowest_float_holds_every_value_exactly(make, want):
    v = make(np.random.default_rng(0).normal(size=50).astype(np.float32))
    dt = narrowest_float(v)
    assert dt == np.dtype(want)
    np.testing.assert_array_equal(_bits(v.astype(dt).astype(v.dtype)), _bits(v))


def test_narrowest_float_keeps_nan_payload_and_signed_zero_exact():
    v = np.array([np.nan, -0.0, np.inf, 1.0], np.float32)
    assert narrowest_float(v) == np.float16
    assert narrowest_float(np.array([2.0**-100], np.float32)) == ml_dtypes.bfloat16  # below f16


@pytest.mark.parametrize(
    "name", ["normal", "codebook", "f16_in_f32", "int8", "bool", "f64", "bf16_codebook"]
)
@pytest.mark.parametrize("entropy", [True, False])
def test_every_candidate_decodes_bit_exactly(name, entropy):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(12, 16)).astype(np.float32)
    v = {
        "normal": w,
        "codebook": rng.normal(size=6).astype(np.float32)[rng.integers(0, 6, w.shape)],
        "f16_in_f32": w.astype(np.float16).astype(np.float32),
        "int8": rng.integers(-100, 100, w.shape).astype(np.int8),
        "bool": rng.random(w.shape) < 0.3,
        "f64": w.astype(np.float64) / 3,
        "bf16_codebook": np.array([0.5, -2.0, 3.25], ml_dtypes.bfloat16)[rng.integers(0, 3, 99)],
    }[name].reshape(-1)
    idx = np.arange(v.size)
    cands = value_candidates(v, idx, (v.size,), entropy)
    kinds = {s["val"] for s, _ in cands}
    if name in ("codebook", "bf16_codebook"):
        assert "book" in kinds
    if name in ("int8", "bool"):
        assert kinds == {"raw"} and cands[0][0]["dt"] == v.dtype.name
    assert any("z" in s for s, _ in cands) == (entropy and v.nbytes > 64)
    for spec, blobs in cands:
        out = decode_values(spec, idx, (v.size,), v.dtype, blobs)
        assert out.dtype == v.dtype
        np.testing.assert_array_equal(_bits(out), _bits(v))


def test_codebook_stores_distinct_values_in_narrowest_dtype():
    v = np.array([0.5, -1.0, 0.5, 2.0, -1.0, 0.5], np.float32)
    spec, blobs = next(
        c for c in value_candidates(v, np.arange(6), (6,), False) if c[0]["val"] == "book"
    )
    assert spec["k"] == 3 and spec["dt"] == "float16"
    # distinct bit patterns in increasing order: the positive values first
    np.testing.assert_array_equal(np.frombuffer(blobs[0], np.float16), [0.5, 2.0, -1.0])


def test_corrupted_values_are_rejected():
    v = np.arange(40, dtype=np.float32) / 7
    spec, blobs = value_candidates(v, np.arange(40), (40,), False)[0]
    with pytest.raises(ValueError, match="corrupted raw values"):
        decode_values(spec, np.arange(41), (41,), v.dtype, blobs)
    with pytest.raises(ValueError, match="unknown value encoding"):
        decode_values({"val": "delta"}, np.arange(40), (40,), v.dtype, blobs)
