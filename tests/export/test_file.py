"""Tests of lightcomp.export._file: the file format, atomic saves, checked loads, 0.1.0 files."""

from __future__ import annotations

import os
import shutil
import struct
import threading
import tracemalloc
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest

import lightcomp as lc
from lightcomp import export

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _bits(x):
    x = np.asarray(x)
    return x.view(f"u{x.dtype.itemsize}")


def _assert_bit_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.fixture(scope="module")
def packed():
    rng = np.random.default_rng(1234)
    w = rng.normal(size=(24, 32)).astype(np.float32)
    x = np.asarray(lc.quant.fake_quant(jax.numpy.asarray(w), 4, axis=-1))
    x = np.where(rng.random(w.shape) < 0.8, 0, x)
    return export.pack({"layer": {"kernel": x, "bias": w[0]}, "step": np.int32(7)})


def test_file_round_trip_and_sizes(packed, tmp_path):
    path = tmp_path / "m.lcpk"
    size = export.save(path, packed)
    rep = export.report(packed)
    assert os.path.getsize(path) == size == rep["file_bytes"]
    assert rep["file_bytes"] == rep["payload_bytes"] + rep["header_bytes"]
    assert rep["payload_bytes"] == sum(r["bytes"] for r in rep["leaves"])
    assert rep["float32_bytes"] == 4 * (24 * 32 + 32 + 1)
    assert rep["ratio_vs_float32"] == pytest.approx(rep["float32_bytes"] / size)
    loaded = export.load(path)
    assert loaded == packed
    jax.tree.map(_assert_bit_equal, export.unpack(loaded), export.unpack(packed))
    assert sorted(os.listdir(tmp_path)) == ["m.lcpk"]  # no temporary file left behind
    with open(path, "rb") as f:
        assert f.read(8) == export.MAGIC
    export.save(str(path), packed)  # a str path, replacing the file
    assert export.load(str(path)) == packed


def test_header_fields(packed, tmp_path):
    path = tmp_path / "m.lcpk"
    export.save(path, packed)
    data = path.read_bytes()
    magic, version, flags, reserved, mlen, plen = struct.unpack_from("<8sHHIQQ", data)
    assert (magic, version, reserved) == (export.MAGIC, export.FORMAT_VERSION, 0)
    assert flags in (0, 1) and plen == packed.nbytes == len(data) - 64 - mlen
    assert 64 + mlen == packed.header_bytes
    assert data[-plen:] == packed.payload


def _bad_files(good: bytes):
    mlen, _ = struct.unpack_from("<QQ", good, 16)
    flipped_payload = bytearray(good)
    flipped_payload[-1] ^= 0x01
    flipped_manifest = bytearray(good)
    flipped_manifest[64 + mlen // 2] ^= 0x40
    newer = bytearray(good)
    newer[8:10] = struct.pack("<H", export.FORMAT_VERSION + 1)
    older = bytearray(good)
    older[8:10] = struct.pack("<H", 0)
    return {
        "empty": (b"", "not a lightcomp"),
        "foreign": (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a lightcomp"),
        "random": (np.random.default_rng(0).bytes(300), "not a lightcomp"),
        "header_cut": (good[:40], "truncated"),
        "payload_cut": (good[:-3], "truncated"),
        "manifest_cut": (good[: 64 + mlen // 2], "truncated"),
        "trailing": (good + b"\x00", "corrupted"),
        "payload_flip": (bytes(flipped_payload), "checksum"),
        "manifest_flip": (bytes(flipped_manifest), "checksum"),
        "newer_version": (bytes(newer), "newer"),
        "version_zero": (bytes(older), "format version 0"),
    }


@pytest.mark.parametrize(
    "case",
    ["empty", "foreign", "random", "header_cut", "payload_cut", "manifest_cut", "trailing",
     "payload_flip", "manifest_flip", "newer_version", "version_zero"],
)  # fmt: skip
def test_load_rejects_bad_files(packed, tmp_path, case):
    good_path = tmp_path / "good.lcpk"
    export.save(good_path, packed)
    data, message = _bad_files(good_path.read_bytes())[case]
    bad = tmp_path / "bad.lcpk"
    bad.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        export.load(bad)


def _load_error(path):
    try:
        export.load(path)
    except Exception as e:
        return e
    return None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_load_refuses_what_is_not_a_regular_file_without_blocking(tmp_path):
    fifo = tmp_path / "model.lcpk"
    os.mkfifo(fifo)  # no writer: reading it would block forever
    cases = [(fifo, "is a FIFO"), (tmp_path, "is a directory")]
    if os.path.exists("/dev/zero"):
        cases.append((Path("/dev/zero"), "is a device"))  # endless: read whole, it exhausts memory
    for path, message in cases:
        result = {}
        t = threading.Thread(target=lambda p=path: result.update(e=_load_error(p)), daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), f"load({path}) blocked"
        assert isinstance(result["e"], ValueError) and message in str(result["e"]), result
    with pytest.raises(FileNotFoundError):
        export.load(tmp_path / "missing.lcpk")


def test_a_large_foreign_file_is_refused_after_its_magic(tmp_path):
    big = tmp_path / "weights.zip"
    with open(big, "wb") as f:
        f.write(b"PK\x03\x04")
        f.truncate(1 << 30)  # 1 GiB (sparse on disk)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="bad magic bytes"):
            export.load(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_save_to_missing_directory_raises(packed, tmp_path):
    with pytest.raises(OSError):
        export.save(tmp_path / "no" / "such" / "m.lcpk", packed)


def test_save_and_load_check_their_arguments(packed, tmp_path):
    with pytest.raises(TypeError, match=r"packed must be a lightcomp\.export\.Packed"):
        export.save(tmp_path / "m.lcpk", {"w": np.ones(3)})
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        export.save(3, packed)
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        export.load(None)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- 0.1.0 files


def _fixture_params(name):
    """The npz's leaves (bfloat16 leaves are stored there as their uint8 bytes view)."""
    with np.load(FIXTURES / f"{name}_v010_params.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", ["demo", "mixed"])
def test_v010_file_loads_bit_identical(name, tmp_path):
    path = tmp_path / f"{name}.lcpk"
    shutil.copyfile(FIXTURES / f"{name}_v010.lcpk", path)
    back = export.unpack(export.load(path))
    want = _fixture_params(name)
    got = lc.tree.leaves_with_paths(back)
    assert [p for p, _ in got] == sorted(want)
    for p, x in got:
        x = np.asarray(x)
        if x.dtype == ml_dtypes.bfloat16:
            x = x.view(np.uint8)
        _assert_bit_equal(x, want[p])


@pytest.mark.parametrize("name", ["demo", "mixed"])
def test_v010_file_repacks_to_its_exact_bytes(name, tmp_path):
    original = (FIXTURES / f"{name}_v010.lcpk").read_bytes()
    out = tmp_path / "again.lcpk"
    export.save(out, export.pack(export.unpack(export.load(FIXTURES / f"{name}_v010.lcpk"))))
    assert out.read_bytes() == original
