"""Tests of lightcomp.export: bit packing, Huffman coding, per-leaf encodings, the file format."""

from __future__ import annotations

import math
import os
import struct
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lightcomp as lc
from lightcomp import export

RNG = np.random.default_rng(1234)


def _bits(x):
    x = np.asarray(x)
    return x.view(f"u{x.dtype.itemsize}")


def _assert_bit_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(_bits(a), _bits(b))


def _roundtrip(x):
    packed = export.pack({"w": x})
    back = export.unpack(packed)["w"]
    _assert_bit_equal(back, x)
    return export.report(packed)["leaves"][0]


# --------------------------------------------------------------------------- bit packing


@pytest.mark.parametrize("width", [*range(1, 9), 11, 16])
def test_bit_packing_round_trips_and_matches_big_integer(width):
    n = 13
    v = RNG.integers(0, 2**width, n)
    data = export._pack_bits(v, width)
    assert len(data) == math.ceil(n * width / 8)  # e.g. 4-bit values two per byte
    # direct reference: the values concatenated as one big-endian bit string, zero-padded
    big = 0
    for x in v:
        big = (big << width) | int(x)
    pad = 8 * len(data) - n * width
    assert data == (big << pad).to_bytes(len(data), "big")
    np.testing.assert_array_equal(export._unpack_bits(data, width, n), v)


def test_unpack_bits_rejects_wrong_length():
    with pytest.raises(ValueError, match="corrupted"):
        export._unpack_bits(b"\x00", 3, 5)


# --------------------------------------------------------------------------- Huffman


def test_huffman_code_is_optimal_prefix_free_and_round_trips():
    p = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05])
    sym = RNG.choice(len(p), 5000, p=p)
    freq = np.bincount(sym, minlength=len(p))
    lengths = export._huffman_lengths(freq)
    assert sum(2.0 ** -lengths[lengths > 0]) == pytest.approx(1.0)  # Kraft equality
    codes = export._canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths, strict=True)]
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    q = freq / freq.sum()
    entropy = -(q * np.log2(q)).sum()
    mean_len = (q * lengths).sum()
    assert entropy <= mean_len < entropy + 1
    data, nbits = export._huffman_encode(sym, lengths)
    assert nbits == int((freq * lengths).sum())
    np.testing.assert_array_equal(export._huffman_decode(data, lengths, sym.size, nbits), sym)


def test_huffman_lengths_are_limited():
    freq = np.array([int(1.6**i) + 1 for i in range(40)])  # Fibonacci-like: deep tree
    lengths = export._huffman_lengths(freq)
    assert lengths.max() <= export._MAX_HUFF_LEN
    assert sum(2.0**-lengths) <= 1.0


# --------------------------------------------------------------------------- encodings


W = RNG.normal(size=(24, 32)).astype(np.float32)
MASK = RNG.random(W.shape) < 0.8


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


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_grid_costs_about_its_bit_width(bits):
    x = _fq(RNG.normal(size=(64, 64)).astype(np.float32), bits)
    row = _roundtrip(x)
    assert row["bits_per_weight"] <= bits + 0.1, row
    assert row["ratio_vs_float32"] >= 32 / (bits + 0.1)


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


class Pair(NamedTuple):
    a: jax.Array
    b: jax.Array


@pytest.fixture(scope="module")
def mlp():
    apply, params = lc.models.init_mlp((16, 10), 8, jax.random.key(0))
    return apply, params


def test_pack_with_transform_equals_jitted_effective_params(mlp):
    _, params = mlp
    t = lc.chain(
        lc.transform.pruning(0.7),
        lc.transform.fake_quantization(3, axis=None),
    )
    cstate = t.init(params, jax.random.key(1))
    packed = export.pack(params, cstate, t)
    back = export.unpack(packed)
    eff = jax.jit(t.apply)(params, cstate)
    chex.assert_trees_all_equal_structs(back, eff)
    chex.assert_trees_all_equal_dtypes(back, eff)
    jax.tree.map(_assert_bit_equal, back, eff)
    kernel = next(r for r in export.report(packed)["leaves"] if r["path"] == "Dense_0/kernel")
    assert kernel["bits_per_weight"] < 4


def test_mixed_tree_structure_and_like(mlp):
    _, params = mlp
    tree = {
        "params": params,
        "seq": [jnp.arange(3, dtype=jnp.int32), (np.ones(2, np.float16), None)],
        "bf16": jnp.asarray(W[:2], jnp.bfloat16),
    }
    back = export.unpack(export.pack(tree))
    chex.assert_trees_all_equal_structs(back, tree)
    jax.tree.map(_assert_bit_equal, back, tree)
    assert isinstance(back["seq"][1], tuple) and back["seq"][1][1] is None
    assert isinstance(back["bf16"], jax.Array) and back["bf16"].dtype == jnp.bfloat16
    assert isinstance(back["seq"][1][0], np.ndarray)
    nt = Pair(jnp.ones(3), jnp.zeros((2, 2)))
    packed = export.pack(nt)
    as_dict = export.unpack(packed)
    assert sorted(as_dict) == ["a", "b"]
    _assert_bit_equal(as_dict["b"], nt.b)
    back_nt = export.unpack(packed, like=nt)
    assert isinstance(back_nt, Pair)
    jax.tree.map(_assert_bit_equal, back_nt, nt)
    with pytest.raises(ValueError, match="leaf paths"):
        export.unpack(packed, like={"x": jnp.ones(3)})


def test_pack_validates_arguments(mlp):
    _, params = mlp
    with pytest.raises(ValueError, match="cstate and transform"):
        export.pack(params, cstate=())
    with pytest.raises(TypeError, match="'Dense_0/kernel'"):
        export.pack({"Dense_0": {"kernel": "not an array"}})


# --------------------------------------------------------------------------- file format


@pytest.fixture(scope="module")
def packed():
    x = np.where(MASK, 0, _fq(W, 4, axis=-1))
    return export.pack({"layer": {"kernel": x, "bias": W[0]}, "step": np.int32(7)})


def test_file_round_trip_and_sizes(packed, tmp_path):
    path = tmp_path / "m.lcpk"
    size = export.save(path, packed)
    rep = export.report(packed)
    assert os.path.getsize(path) == size == rep["file_bytes"]
    assert rep["file_bytes"] == rep["payload_bytes"] + rep["header_bytes"]
    assert rep["payload_bytes"] == sum(r["bytes"] for r in rep["leaves"])
    assert rep["float32_bytes"] == 4 * (W.size + W.shape[1] + 1)
    assert rep["ratio_vs_float32"] == pytest.approx(rep["float32_bytes"] / size)
    loaded = export.load(path)
    assert loaded == packed
    jax.tree.map(_assert_bit_equal, export.unpack(loaded), export.unpack(packed))
    assert sorted(os.listdir(tmp_path)) == ["m.lcpk"]  # no temporary file left behind
    with open(path, "rb") as f:
        assert f.read(8) == export.MAGIC


def test_report_table_lists_every_leaf(packed):
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(export.report_table(packed))
    text = console.export_text()
    for r in export.report(packed)["leaves"]:
        assert r["path"] in text
    assert f"{export.report(packed)['file_bytes']:,}" in text


def _bad_files(good: bytes):
    mlen, _ = struct.unpack_from("<QQ", good, 16)
    flipped_payload = bytearray(good)
    flipped_payload[-1] ^= 0x01
    flipped_manifest = bytearray(good)
    flipped_manifest[64 + mlen // 2] ^= 0x40
    newer = bytearray(good)
    newer[8:10] = struct.pack("<H", export.FORMAT_VERSION + 1)
    return {
        "empty": (b"", "not a lightcomp"),
        "foreign": (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a lightcomp"),
        "random": (RNG.bytes(300), "not a lightcomp"),
        "header_cut": (good[:40], "truncated"),
        "payload_cut": (good[:-3], "truncated"),
        "manifest_cut": (good[: 64 + mlen // 2], "truncated"),
        "trailing": (good + b"\x00", "corrupted"),
        "payload_flip": (bytes(flipped_payload), "checksum"),
        "manifest_flip": (bytes(flipped_manifest), "checksum"),
        "newer_version": (bytes(newer), "newer"),
    }


@pytest.mark.parametrize(
    "case",
    ["empty", "foreign", "random", "header_cut", "payload_cut", "manifest_cut", "trailing",
     "payload_flip", "manifest_flip", "newer_version"],
)  # fmt: skip
def test_load_rejects_bad_files(packed, tmp_path, case):
    good_path = tmp_path / "good.lcpk"
    export.save(good_path, packed)
    data, message = _bad_files(good_path.read_bytes())[case]
    bad = tmp_path / "bad.lcpk"
    bad.write_bytes(data)
    with pytest.raises(ValueError, match=message):
        export.load(bad)


def test_unpack_rejects_inconsistent_manifest(packed):
    leaves = [dict(m) for m in packed.manifest["leaves"]]
    leaves[0]["parts"] = [[0, len(packed.payload) + 10]]
    bad = export.Packed({**packed.manifest, "leaves": leaves}, packed.payload)
    with pytest.raises(ValueError, match="outside the payload"):
        export.unpack(bad)
    leaves[0] = {**packed.manifest["leaves"][0], "shape": [999]}
    bad = export.Packed({**packed.manifest, "leaves": leaves}, packed.payload)
    with pytest.raises(ValueError):
        export.unpack(bad)


def test_save_to_missing_directory_raises(packed, tmp_path):
    with pytest.raises(OSError):
        export.save(tmp_path / "no" / "such" / "m.lcpk", packed)


def test_ml_dtypes_bfloat16_grid_matches_quant_dequantize():
    x = jnp.asarray(RNG.normal(size=(8, 16)), jnp.bfloat16)
    qt = lc.quant.quantize(x, 5, axis=-1)
    deq = np.asarray(lc.quant.dequantize(qt))
    assert deq.dtype == ml_dtypes.bfloat16
    assert "grid" in _roundtrip(deq)["encoding"]
