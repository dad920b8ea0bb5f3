"""Tests of lightcomp.export._manifest: the schema check of a manifest against its payload."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from lightcomp import export
from lightcomp.export._manifest import check_ints, check_manifest
from tests.export.helpers import every_encoding_params


@pytest.fixture(scope="module")
def packed():
    return export.pack(every_encoding_params())


def test_every_manifest_the_packer_writes_passes(packed):
    check_manifest(packed.manifest, len(packed.payload))
    rng = np.random.default_rng(3)
    for seed in range(3):  # random sparsities and dtypes: the packer's choices all pass
        x = rng.normal(size=(16, 8)).astype(np.float32)
        x[rng.random(x.shape) < 0.3 * seed] = 0
        p = export.pack({"x": x, "y": x.astype(np.float16), "i": (x * 10).astype(np.int8)})
        check_manifest(p.manifest, len(p.payload))


def _edited(packed, edit):
    manifest = copy.deepcopy(packed.manifest)
    edit(manifest)
    return manifest


def _leaf(manifest, path):
    return next(m for m in manifest["leaves"] if m["path"] == path)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.update(extra=1), "corrupted manifest: the manifest has keys"),
        (lambda m: m.update(leaves={}), "leaves must be a list"),
        (lambda m: _leaf(m, "dense").update(nbytes=3), r"leaf 'dense': .*nbytes 3"),
        (lambda m: _leaf(m, "dense").update(kind="torch"), r"leaf 'dense': .*kind"),
        (lambda m: _leaf(m, "dense").update(shape=[8, -8]), r"leaf 'dense': .*shape"),
        (lambda m: _leaf(m, "dense").update(shape=[1] * 40), r"leaf 'dense': .*at most 32"),
        (
            lambda m: _leaf(m, "dense").update(path=3),
            "leaf 1: corrupted manifest: path",
        ),  # by index
        (lambda m: _leaf(m, "dense").pop("enc"), r"leaf 'dense': .*keys"),
        (lambda m: _leaf(m, "q4")["enc"]["val"].update(G=3), r"leaf 'q4': .*'G'"),
        (lambda m: _leaf(m, "half")["enc"]["val"].update(dt="float64"), "cannot make a float32"),
        (lambda m: _leaf(m, "ints")["enc"]["val"].update(z="gzip"), "unknown compression"),
        (lambda m: _leaf(m, "zeros")["enc"].update(pos={"pos": "run"}), r"'zeros'.*keys"),
    ],
)
def test_refusals_name_the_leaf_and_the_field(packed, edit, match):
    with pytest.raises(ValueError, match=match):
        check_manifest(_edited(packed, edit), len(packed.payload))


def test_the_parts_must_tile_the_payload(packed):
    with pytest.raises(ValueError, match=r"cover .* of .* payload bytes"):
        check_manifest(packed.manifest, len(packed.payload) + 1)
    with pytest.raises(ValueError, match="part outside the payload"):
        check_manifest(packed.manifest, len(packed.payload) - 1)


@pytest.mark.parametrize(
    "spec, lens, match",
    [
        ({"c": "fixed", "n": 4, "w": 3, "p": 0}, [1], "1 bytes for 4 values of 3 bits"),
        ({"c": "fixed", "n": 4, "w": 3, "p": 1}, [2], "'p'"),
        ({"c": "fixed", "n": True, "w": 3, "p": 0}, [2], "'n'"),  # a bool is not a count
        ({"c": "zlib", "n": 0, "w": 3, "p": 0}, [5], "empty zlib stream"),
        ({"c": "huff", "n": 9, "k": 4, "nb": 8, "p": 0}, [3, 1], "'nb'"),  # < 1 bit a symbol
        ({"c": "huff", "n": 4, "k": 4, "nb": 8, "p": 0}, [2, 1], "Huffman parts"),
        ({"c": "rle", "n": 4, "p": 0}, [2], "unknown integer coding"),
    ],
)
def test_integer_stream_specs(spec, lens, match):
    with pytest.raises(ValueError, match=match):
        check_ints(spec, lens, 0, 10, "s")
    ok = {"c": "fixed", "n": 4, "w": 3, "p": 0}
    assert check_ints(ok, [2], 0, 10, "s") == 4
