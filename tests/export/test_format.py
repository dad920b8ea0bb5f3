"""Tests of lightcomp.export._format: header layout, dtype names, bit views, manifest bytes."""

from __future__ import annotations

import json
import zlib

import ml_dtypes
import numpy as np
import pytest

from lightcomp import export
from lightcomp.export._format import (
    HEADER,
    bits_of,
    dtype_named,
    is_float,
    manifest_bytes,
    same_bits,
)


def test_header_is_64_bytes_and_magic_is_fixed():
    assert HEADER.size == 64
    assert export.MAGIC == b"\x89LCPACK\n" and export.FORMAT_VERSION == 1


@pytest.mark.parametrize(
    "name,dtype",
    [("float32", np.float32), ("bfloat16", ml_dtypes.bfloat16), ("float16", np.float16),
     ("int8", np.int8), ("bool", np.bool_), ("float8_e4m3fn", ml_dtypes.float8_e4m3fn)],
)  # fmt: skip
def test_dtype_named(name, dtype):
    assert dtype_named(name) == np.dtype(dtype)
    assert dtype_named(np.dtype(dtype).name) == np.dtype(dtype)


def test_unknown_dtype_is_a_value_error():
    with pytest.raises(ValueError, match="unknown dtype 'float99'"):
        dtype_named("float99")


def test_is_float_and_bit_views():
    assert [is_float(np.dtype(d)) for d in ("float64", "bfloat16", "int32", "bool")] == [
        True,
        True,
        False,
        False,
    ]
    x = np.array([0.0, -0.0, 1.0], np.float32)
    np.testing.assert_array_equal(bits_of(x), [0, 0x80000000, 0x3F800000])
    assert same_bits(x, x.copy()) and not same_bits(x, np.abs(x))
    assert not same_bits(x, x.astype(np.float64))


def test_manifest_bytes_are_compact_sorted_json():
    manifest = {"structure": None, "leaves": [{"path": "w"}] * 20}
    data, flags = manifest_bytes(manifest, 12)
    assert flags == 1  # repetitive: zlib is smaller
    doc = json.loads(zlib.decompress(data))
    assert doc == {
        "format": 1,
        "leaves": manifest["leaves"],
        "payload_bytes": 12,
        "structure": None,
    }
    small, flags = manifest_bytes({"structure": None, "leaves": []}, 0)
    assert flags == 0
    assert small == b'{"format":1,"leaves":[],"payload_bytes":0,"structure":null}'
