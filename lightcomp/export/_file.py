"""`save` and `load`: a `Packed` as one file, written atomically and checked when read.

The layout is in `lightcomp.export._format`; the file's size is exactly ``64 + M + P``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path

from lightcomp.export._format import (
    FLAG_ZLIB_MANIFEST,
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    manifest_bytes,
)
from lightcomp.export._pack import Packed


def _check_path(path: object) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def save(path: str | os.PathLike, packed: Packed) -> int:
    """Writes ``packed`` to one file, atomically (temporary file + ``os.replace``).

    Args:
      path: the file to write (replaced if it exists).
      packed: from `pack`.

    Returns:
      The file's size in bytes: ``packed.header_bytes + packed.nbytes``.

    Raises:
      TypeError: ``path`` is not a path or ``packed`` not a `Packed`.
      OSError: the directory does not exist or is not writable.
    """
    path = _check_path(path)
    if not isinstance(packed, Packed):
        raise TypeError(
            f"save: packed must be a lightcomp.export.Packed, got {type(packed).__name__}"
        )
    manifest, flags = manifest_bytes(packed.manifest, len(packed.payload))
    body = manifest + packed.payload
    digest = hashlib.sha256(body).digest()
    header = HEADER.pack(
        MAGIC, FORMAT_VERSION, flags, 0, len(manifest), len(packed.payload), digest
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(header) + len(body)


def load(path: str | os.PathLike) -> Packed:
    """Reads a file written by `save`, checking magic, version, lengths and the SHA-256.

    Args:
      path: the file.

    Returns:
      The `Packed` that was saved (equal to it).

    Raises:
      TypeError: ``path`` is not a path.
      ValueError: the file is not a lightcomp packed model file, is from a newer format
        version, is truncated, or is corrupted.
    """
    data = _check_path(path).read_bytes()
    version, flags, mlen, plen = _check_header(data, path)
    body = data[HEADER.size :]
    try:
        text = zlib.decompress(body[:mlen]) if flags & FLAG_ZLIB_MANIFEST else body[:mlen]
        doc = json.loads(text)
        manifest = {"structure": doc["structure"], "leaves": doc["leaves"]}
        ok = doc["payload_bytes"] == plen and doc["format"] == version
    except (zlib.error, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: corrupted lightcomp manifest ({e})") from e
    if not ok:
        raise ValueError(f"{path}: corrupted lightcomp manifest (inconsistent lengths)")
    return Packed(manifest, body[mlen:])


def _check_header(data: bytes, path) -> tuple[int, int, int, int]:
    """Checks magic, version, lengths and the checksum; ``(version, flags, M, P)``."""
    if len(data) < len(MAGIC) or data[: len(MAGIC)] != MAGIC:
        raise ValueError(f"{path}: not a lightcomp packed model file (bad magic bytes)")
    if len(data) < HEADER.size:
        raise ValueError(
            f"{path}: truncated lightcomp file ({len(data)} bytes, header is {HEADER.size})"
        )
    _, version, flags, _, mlen, plen, digest = HEADER.unpack_from(data)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {version} is newer than this lightcomp reads "
            f"({FORMAT_VERSION}); upgrade lightcomp"
        )
    if version < 1:
        raise ValueError(f"{path}: corrupted lightcomp file (format version {version})")
    expected = HEADER.size + mlen + plen
    if len(data) < expected:
        raise ValueError(f"{path}: truncated lightcomp file ({len(data)} of {expected} bytes)")
    if len(data) > expected:
        raise ValueError(
            f"{path}: corrupted lightcomp file ({len(data) - expected} trailing bytes)"
        )
    if hashlib.sha256(data[HEADER.size :]).digest() != digest:
        raise ValueError(f"{path}: corrupted lightcomp file (SHA-256 checksum mismatch)")
    return version, flags, mlen, plen
