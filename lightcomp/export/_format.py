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

FLOATS = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def dtype_named(name: str) -> np.dtype:
    """The NumPy dtype a manifest names (``"bfloat16"`` and other ml_dtypes included).

    Raises:
      ValueError: the name is not a dtype.
    """
    if name in FLOATS:
        return np.dtype(FLOATS[name])
    try:
        return np.dtype(getattr(ml_dtypes, name, name))
    except TypeError as e:
        raise ValueError(f"unknown dtype {name!r} in the manifest") from e


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
