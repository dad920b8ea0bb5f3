"""The packed file's fixed parts: magic, version, header, manifest bytes, dtype names.

File format, version 1 (all integers little-endian)::

    offset  size  field
    0       8     magic b"\\x89LCPACK\\n"
    8       2     format version (uint16) = 1
    10      2     flags (uint16): bit 0 set = the manifest is zlib-compressed JSON
    12      4     reserved, 0
    16      8     manifest length M (uint64)
    24      8     payload length P (uint64)
    32      32    SHA-256 of bytes [64, 64 + M + P)
    64      M     manifest: UTF-8 JSON {"format", "structure", "leaves", "payload_bytes"}
    64 + M  P     payload: the leaves' parts, back to back, no padding

Each manifest leaf holds ``path`` (a `lightcomp.tree.path_str` path), ``shape``,
``dtype``, ``kind`` (``"jax"`` or ``"numpy"``), ``enc`` (the nested encoding
description), ``parts`` (``[offset, length]`` pairs into the payload) and ``nbytes``.

A file is untrusted input: `lightcomp.export.load` checks the header before reading
the body, and every declared size against the hard limits below and against the bytes
that back it before anything is allocated (`lightcomp.export._manifest`).
"""

from __future__ import annotations

import json
import struct
import zlib

import ml_dtypes
import numpy as np

MAGIC = b"\x89LCPACK\n"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHIQQ32s")  # 64 bytes
FLAG_ZLIB_MANIFEST = 1
KNOWN_FLAGS = FLAG_ZLIB_MANIFEST

# Hard limits on what a file may declare (far above any real model).
MAX_MANIFEST_BYTES = 256 << 20  # the manifest as stored, and as decompressed JSON
MANIFEST_RATIO = 32  # a zlib'd manifest inflates at most this much (plus 1 MiB); JSON: 3-10x
MAX_LEAVES = 1 << 20
MAX_NDIM = 32
MAX_ELEMENTS = 1 << 36  # per leaf
MAX_DEPTH = 64  # nesting of the tree structure
MAX_WIDTH = 32  # bits of one fixed-width integer

_NUMPY_DTYPES = "bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64"
_ML_DTYPES = (
    "bfloat16 float8_e3m4 float8_e4m3 float8_e4m3b11fnuz float8_e4m3fn float8_e4m3fnuz "
    "float8_e5m2 float8_e5m2fnuz float8_e8m0fnu float6_e2m3fn float6_e3m2fn float4_e2m1fn "
    "int1 int2 int4 uint1 uint2 uint4"
)
# The dtypes a leaf may have (numeric only: never "object", strings or structured dtypes).
DTYPES = {
    **{n: np.dtype(n) for n in (*_NUMPY_DTYPES.split(), "complex64", "complex128")},
    **{n: np.dtype(getattr(ml_dtypes, n)) for n in _ML_DTYPES.split() if hasattr(ml_dtypes, n)},
}

FLOATS = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def dtype_named(name: str) -> np.dtype:
    """The NumPy dtype a manifest names, from the whitelist `DTYPES`.

    Booleans, integers, floats (``"bfloat16"`` and the other ml_dtypes included) and
    complex numbers; never ``"object"``, strings or structured dtypes.

    Raises:
      ValueError: the name is not a whitelisted dtype.
    """
    if not isinstance(name, str) or name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r} in the manifest (not a numeric dtype)")
    return DTYPES[name]


def is_float(dt: np.dtype) -> bool:
    """True for the float dtypes the value coders handle (float64/32/16, bfloat16)."""
    return dt.name in ("float64", "float32", "float16", "bfloat16")


def bits_of(x: np.ndarray) -> np.ndarray:
    """The same memory as unsigned integers of the item size (a view, no copy)."""
    return x.view(f"u{x.dtype.itemsize}")


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bits (NaN payloads and the sign of zero included)."""
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(bits_of(a), bits_of(b))


def manifest_bytes(manifest: dict, payload_bytes: int) -> tuple[bytes, int]:
    """The stored manifest and the header flags: compact sorted JSON, zlib'd when smaller."""
    doc = {"format": FORMAT_VERSION, **manifest, "payload_bytes": payload_bytes}
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    small = zlib.compress(text, 9)
    return (small, FLAG_ZLIB_MANIFEST) if len(small) < len(text) else (text, 0)
