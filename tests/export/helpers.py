"""Shared helpers of the export tests: a model that uses every encoding, and crafted files."""

from __future__ import annotations

import copy
import hashlib
import json
import lzma
import zlib
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import lightcomp as lc
from lightcomp import export
from lightcomp.export._format import HEADER


def every_encoding_params() -> dict:
    """Small leaves whose packed forms cover every encoding the packer chooses.

    Raw float32 / float16 / bfloat16, bool and int leaves, zlib and lzma raw values, a
    codebook with Huffman indices, grids per tensor / channel / group with a tensor-wide
    offset and with zero points, bitmask and relative positions (fixed and Huffman), and
    negative zeros, in a nested dict / list / tuple structure.
    """
    rng = np.random.default_rng(7)
    w = rng.normal(size=(32, 16)).astype(np.float32)
    q4 = np.asarray(lc.quant.fake_quant(jnp.asarray(w), 4, axis=-1))
    book = rng.normal(size=5).astype(np.float32)
    shifted = rng.normal(size=(64, 8)).astype(np.float32) * 0.1 + np.arange(8, dtype=np.float32) * 3
    return {
        "dense": rng.normal(size=(8, 8)).astype(np.float32),
        "half": rng.normal(size=(6,)).astype(np.float16).astype(np.float32),
        "bf": jnp.asarray(rng.normal(size=(4, 4)), jnp.bfloat16),
        "q4": q4,
        "sparse": np.where(rng.random(w.shape) < 0.85, 0, q4),
        "shared": np.where(rng.random((64, 8)) < 0.5, 0, rng.choice(book, (64, 8))),
        "neg": np.where(rng.random(40) < 0.3, -0.0, rng.normal(size=40)).astype(np.float32),
        "group": np.asarray(lc.quant.fake_quant(jnp.asarray(w), 4, axis=-1, group_size=16)),
        "zp": np.asarray(lc.quant.fake_quant(jnp.asarray(shifted), 8, symmetric=False, axis=-1)),
        "rel_huff": np.where(rng.random((256, 16)) < np.linspace(0.5, 0.999, 16), 0, 1.0).astype(
            np.float32
        ),
        "zeros": np.zeros((3, 5), np.float32),
        "ints": np.arange(300, dtype=np.int32) % 7,
        "lz": np.tile(rng.integers(0, 1000, 1000).astype(np.int32), 4),  # <= 4096: lzma tried
        "rep": np.tile(np.arange(100, dtype=np.float32), 10) * np.float32(0.37),
        "flags": rng.random(20) < 0.5,
        "seq": [np.ones(3, np.float32), (np.float32(2.0),)],
    }


def document(packed: export.Packed) -> dict:
    """The JSON document `save` stores for ``packed`` (a deep copy, free to edit)."""
    return {
        "format": export.FORMAT_VERSION,
        **copy.deepcopy(packed.manifest),
        "payload_bytes": len(packed.payload),
    }


def leaf(doc: dict, path: str) -> dict:
    """The manifest entry of the leaf ``path``."""
    return next(m for m in doc["leaves"] if m["path"] == path)


def craft(
    path: Path,
    doc: dict | bytes,
    payload: bytes,
    *,
    zlib_manifest: bool = False,
    flags: int | None = None,
    reserved: int = 0,
    version: int = 1,
) -> Path:
    """Writes a file with a valid header and a recomputed SHA-256 around any manifest.

    Args:
      doc: the manifest document (serialized as `save` does) or its raw bytes.
      zlib_manifest: zlib-compress the manifest (sets flag bit 0 unless ``flags`` is given).
    """
    text = doc if isinstance(doc, bytes) else json.dumps(doc, separators=(",", ":")).encode()
    if zlib_manifest:
        text = zlib.compress(text, 9)
    flags = int(zlib_manifest) if flags is None else flags
    digest = hashlib.sha256(text + payload).digest()
    header = HEADER.pack(export.MAGIC, version, flags, reserved, len(text), len(payload), digest)
    path.write_bytes(header + text + payload)
    return path


def replace_part(doc: dict, payload: bytes, path: str, index: int, blob: bytes) -> bytes:
    """Replaces part ``index`` of leaf ``path`` by ``blob``, moving every later span."""
    spans = [s for m in doc["leaves"] for s in m["parts"]]
    target = leaf(doc, path)["parts"][index]
    pieces, offset = [], 0
    for s in spans:
        data = blob if s is target else payload[s[0] : s[0] + s[1]]
        s[0], s[1] = offset, len(data)
        offset += len(data)
        pieces.append(data)
    for m in doc["leaves"]:
        m["nbytes"] = sum(s[1] for s in m["parts"])
    doc["payload_bytes"] = offset
    return b"".join(pieces)


def bomb(codec: str, size: int) -> bytes:
    """``size`` zero bytes compressed by ``codec`` ("zlib" or "lzma"), built in 1 MiB chunks."""
    c = zlib.compressobj(9) if codec == "zlib" else lzma.LZMACompressor(lzma.FORMAT_XZ)
    chunk = bytes(1 << 20)
    out = [c.compress(chunk) for _ in range(size >> 20)]
    return b"".join([*out, c.flush()])
