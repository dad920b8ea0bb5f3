"""`save` and `load`: a `Packed` as one file, written atomically and checked when read.

The layout is in `lightcomp.export._format`; the file's size is exactly ``64 + M + P``.
`load` treats the file as untrusted: header first, body only once the header holds,
the manifest inflated within a bound and checked field by field. Nothing is unpickled
or evaluated: the manifest is JSON and the payload raw bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO

from lightcomp._checks import check_path
from lightcomp.export._format import (
    FLAG_ZLIB_MANIFEST,
    FORMAT_VERSION,
    HEADER,
    KNOWN_FLAGS,
    MAGIC,
    MANIFEST_RATIO,
    MAX_MANIFEST_BYTES,
    manifest_bytes,
)
from lightcomp.export._manifest import check_manifest
from lightcomp.export._pack import Packed

_BLOCK = 1 << 24  # bytes hashed and written at a time


def _check_path(path: object) -> Path:
    return Path(check_path(path, "path"))


def save(path: str | os.PathLike, packed: Packed) -> int:
    """Writes ``packed`` to one file, atomically (temporary file + ``os.replace``).

    The payload is hashed and written in blocks of 16 MiB straight from ``packed``: no
    second copy of it is made.

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
    h = hashlib.sha256(manifest)
    payload = memoryview(packed.payload)
    for lo in range(0, len(payload), _BLOCK):
        h.update(payload[lo : lo + _BLOCK])
    header = HEADER.pack(
        MAGIC, FORMAT_VERSION, flags, 0, len(manifest), len(packed.payload), h.digest()
    )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(manifest)
            for lo in range(0, len(payload), _BLOCK):  # streamed: no copy of the payload
                f.write(payload[lo : lo + _BLOCK])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(header) + len(manifest) + len(payload)


def load(path: str | os.PathLike) -> Packed:
    """Reads a file written by `save`, checking it before trusting any of it.

    The file must be a regular file (a FIFO, a device or a directory is refused at
    once, without blocking). The 8 magic bytes are read first, then the 64-byte header
    (version, flags, reserved bytes, manifest and payload lengths against the hard
    limits and the file's own size); only then is the body read and its SHA-256
    compared. The manifest is decompressed only up to its limit (a zlib bomb is
    refused), parsed, and its schema checked against the payload
    (`lightcomp.export._manifest`), so `unpack`, `report` and the serving code read a
    manifest that holds what it declares.

    Args:
      path: the file.

    Returns:
      The `Packed` that was saved (equal to it).

    Raises:
      TypeError: ``path`` is not a path.
      OSError: the file does not exist or cannot be read.
      ValueError: the file is not a regular file, not a lightcomp packed model file, is
        from a newer format version, is truncated, or is corrupted (the message says how).
    """
    path = _check_path(path)
    with _open_regular(path) as f:
        version, flags, mlen, plen, digest = _read_header(f, path)
        stored, payload = _read_exact(f, mlen, path), _read_exact(f, plen, path)
        if f.read(1):  # the file grew while it was read
            raise ValueError(f"{path}: corrupted lightcomp file (trailing bytes)")
    h = hashlib.sha256(stored)
    h.update(payload)
    if h.digest() != digest:
        raise ValueError(f"{path}: corrupted lightcomp file (SHA-256 checksum mismatch)")
    manifest = _parse_manifest(stored, flags, version, plen, path)
    try:
        check_manifest(manifest, plen)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return Packed(manifest, payload)


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, refused unless it is a regular file (never blocks)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:  # Windows; on POSIX a directory opens and fstat says so
        raise ValueError(f"{path}: is a directory, not a lightcomp packed model file") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                     (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))  # fmt: skip
            kind = next((k for test, k in kinds if test(mode)), "not a regular file")
            raise ValueError(f"{path}: is {kind}, not a lightcomp packed model file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_exact(f: BinaryIO, n: int, path: Path) -> bytes:
    data = f.read(n)
    if len(data) != n:  # the file shrank while it was read
        raise ValueError(f"{path}: truncated lightcomp file")
    return data


def _read_header(f: BinaryIO, path: Path) -> tuple[int, int, int, int, bytes]:
    """Magic first, then the header's fields; ``(version, flags, M, P, SHA-256)``."""
    size = os.fstat(f.fileno()).st_size
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise ValueError(f"{path}: not a lightcomp packed model file (bad magic bytes)")
    rest = f.read(HEADER.size - len(MAGIC))
    if len(magic) + len(rest) < HEADER.size:
        raise ValueError(
            f"{path}: truncated lightcomp file ({size} bytes, header is {HEADER.size})"
        )
    _, version, flags, reserved, mlen, plen, digest = HEADER.unpack(magic + rest)
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {version} is newer than this lightcomp reads "
            f"({FORMAT_VERSION}); upgrade lightcomp"
        )
    if version < 1:
        raise ValueError(f"{path}: corrupted lightcomp file (format version {version})")
    if flags & ~KNOWN_FLAGS or reserved:
        raise ValueError(
            f"{path}: corrupted lightcomp file (unknown header flags 0x{flags:04x} or "
            f"non-zero reserved bytes 0x{reserved:08x})"
        )
    if mlen > MAX_MANIFEST_BYTES:
        raise ValueError(
            f"{path}: corrupted lightcomp file (a {mlen}-byte manifest; the limit is "
            f"{MAX_MANIFEST_BYTES})"
        )
    expected = HEADER.size + mlen + plen
    if size < expected:
        raise ValueError(f"{path}: truncated lightcomp file ({size} of {expected} bytes)")
    if size > expected:
        raise ValueError(f"{path}: corrupted lightcomp file ({size - expected} trailing bytes)")
    return version, flags, mlen, plen, digest


def _parse_manifest(stored: bytes, flags: int, version: int, plen: int, path: Path) -> dict:
    """The manifest's JSON, inflated at most to its limit; ``{"structure", "leaves"}``."""
    try:
        text = _inflate(stored) if flags & FLAG_ZLIB_MANIFEST else stored
        doc = json.loads(text, parse_constant=_no_constant)
        if not isinstance(doc, dict) or set(doc) != {
            "format",
            "structure",
            "leaves",
            "payload_bytes",
        }:
            raise ValueError("not the manifest's four keys")
    except (zlib.error, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: corrupted lightcomp manifest ({e})") from e
    if doc["payload_bytes"] != plen or doc["format"] != version or type(doc["format"]) is not int:
        raise ValueError(f"{path}: corrupted lightcomp manifest (inconsistent lengths)")
    return {"structure": doc["structure"], "leaves": doc["leaves"]}


def _inflate(stored: bytes) -> bytes:
    """A zlib'd manifest, refused if it inflates past its limit (a decompression bomb)."""
    limit = min(MAX_MANIFEST_BYTES, MANIFEST_RATIO * len(stored) + (1 << 20))
    d = zlib.decompressobj()
    text = d.decompress(stored, limit + 1)
    if len(text) > limit:
        raise ValueError(f"it inflates past {limit} bytes ({len(stored)} stored)")
    if not d.eof or d.unused_data:
        raise ValueError("a damaged zlib stream")
    return text


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed in a manifest")
