"""Fuzzing `load` + `unpack`: damaged and crafted files are a ValueError, in bounded memory.

Random flips, truncations and appends are caught by the header and the checksum;
crafted files (the checksum recomputed: what an attacker would do) are caught by the
header, manifest and decoder checks. Every case is run under ``tracemalloc`` and must
stay within `BUDGET` bytes of peak allocation (the model itself decodes in well under
1 MiB; lzma's decoder takes its 8 MiB dictionary).
"""

from __future__ import annotations

import json
import tracemalloc
import zlib

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightcomp import export
from tests.export.helpers import (
    bomb,
    craft,
    document,
    every_encoding_params,
    leaf,
    replace_part,
)

BUDGET = 16 << 20


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """``(packed, file bytes, directory)`` of the model that uses every encoding."""
    packed = export.pack(every_encoding_params())
    directory = tmp_path_factory.mktemp("fuzz")
    export.save(directory / "good.lcpk", packed)
    return packed, (directory / "good.lcpk").read_bytes(), directory


def _load_all(path):
    return export.unpack(export.load(path))


def _outcome(path) -> tuple[str, int]:
    """``("ok" or the error's type name, peak bytes allocated)`` of loading ``path``."""
    tracemalloc.start()
    try:
        _load_all(path)
        result = "ok"
    except ValueError as e:
        assert str(e), "a ValueError says what is wrong"
        result = "ValueError"
    except Exception as e:  # any other type is a failure of the loader
        result = f"{type(e).__name__}: {e}"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


def _refused(path, match: str | None = None) -> None:
    result, peak = _outcome(path)
    assert result == "ValueError", result
    assert peak < BUDGET, f"peak allocation {peak / 2**20:.1f} MiB"
    if match is not None:
        with pytest.raises(ValueError, match=match):
            _load_all(path)


def test_the_model_uses_every_encoding(good):
    packed, _, _ = good
    encodings = " ".join(r["encoding"] for r in export.report(packed)["leaves"])
    for part in ("mask/", "rel", "/huff", "/zlib", "/lzma", "book", "grid tensor", "grid axis",
                 "grid group", "+zp", "-0", "float16", "bfloat16", "bool"):  # fmt: skip
        assert part in encodings, part
    result, peak = _outcome(good[2] / "good.lcpk")
    assert result == "ok" and peak < BUDGET


def test_random_flips_truncations_and_appends_are_refused(good, tmp_path):
    _, data, _ = good
    rng = np.random.default_rng(0)
    cases = []
    for pos in rng.integers(0, len(data), 60):
        b = bytearray(data)
        b[pos] ^= 1 << int(rng.integers(8))
        cases.append(bytes(b))
    cases += [data[: int(n)] for n in rng.integers(0, len(data), 30)]
    cases += [data + rng.bytes(int(n)) for n in rng.integers(1, 100, 10)]
    for i, case in enumerate(cases):
        path = tmp_path / f"{i}.lcpk"
        path.write_bytes(case)
        result, peak = _outcome(path)
        assert result == "ValueError" and peak < BUDGET, (i, result, peak)


_VALUES = [-1, 0, 1, 7, 2**31, 10**12, 1e8, 0.5, True, None, "x", "object", [], {}, [[0, 0]],
           [-1], {"leaf": 0}]  # fmt: skip


def _nodes(doc, prefix=()):
    """Every (key path) of a JSON document, containers and scalars alike."""
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _nodes(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _nodes(v, (*prefix, i))


def _set(doc, path, value):
    """``doc`` at ``path`` set to ``value``; nothing when an earlier set replaced a container
    on that path (the path is gone)."""
    node = doc
    for k in path:
        if not (k in node if isinstance(node, dict) else isinstance(node, list) and k < len(node)):
            return
        parent, node = node, node[k]
    parent[path[-1]] = value


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_crafted_manifests_decode_or_are_a_value_error(good, tmp_path, data):
    """Any field set to any value (checksum recomputed): a ValueError, or a valid decode."""
    packed, _, _ = good
    doc = document(packed)
    nodes = [p for p in _nodes(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        _set(doc, data.draw(st.sampled_from(nodes)), data.draw(st.sampled_from(_VALUES)))
    path = craft(tmp_path / "crafted.lcpk", doc, packed.payload)
    result, peak = _outcome(path)
    assert result in ("ok", "ValueError") and peak < BUDGET, (result, peak)
    if result == "ok":  # what decodes has the shapes and dtypes its manifest declares
        loaded = export.load(path)
        for m, x in zip(
            loaded.manifest["leaves"], jax.tree.leaves(export.unpack(loaded)), strict=True
        ):
            assert list(np.shape(x)) == m["shape"] and np.asarray(x).dtype.name == m["dtype"]


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.data())
def test_crafted_payload_bytes_decode_or_are_a_value_error(good, tmp_path, data):
    packed, _, _ = good
    payload = bytearray(packed.payload)
    for _ in range(data.draw(st.integers(1, 8))):
        payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    path = craft(tmp_path / "crafted.lcpk", document(packed), bytes(payload))
    result, peak = _outcome(path)
    assert result in ("ok", "ValueError") and peak < BUDGET, (result, peak)


# --------------------------------------------------------------------------- crafted cases
# Each edit: (manifest document, payload) -> (document or raw manifest bytes, payload,
# keyword arguments of `craft`).


def _set_leaf(path, key, value):
    def edit(doc, payload):
        leaf(doc, path)[key] = value
        return doc, payload, {}

    return edit


def _set_spec(path, keys, value):
    def edit(doc, payload):
        _set(leaf(doc, path)["enc"], keys, value)
        return doc, payload, {}

    return edit


def _stream_bomb(path, index, codec):
    def edit(doc, payload):
        return doc, replace_part(doc, payload, path, index, bomb(codec, 16 << 20)), {}

    return edit


def _manifest_bomb(doc, payload):
    text = json.dumps(doc).encode()
    c = zlib.compressobj(9)
    blob = c.compress(text[:-1]) + b"".join(c.compress(b" " * (1 << 20)) for _ in range(32))
    return blob + c.compress(b"}") + c.flush(), payload, {"flags": 1}


def _structure(edit_structure):
    def edit(doc, payload):
        doc["structure"] = edit_structure(doc["structure"])
        return doc, payload, {}

    return edit


def _first_leaf_ref(skel):
    while "leaf" not in skel:
        skel = next(c for _, c in skel["dict"]) if "dict" in skel else skel["list"][0]
    return skel


def _leaf_minus_one(skel):
    _first_leaf_ref(skel)["leaf"] = -1
    return skel


def _leaf_twice(skel):
    ref = _first_leaf_ref(skel)
    ref["leaf"] = (ref["leaf"] + 1) % 17
    return skel


def _nested(depth):
    def edit(skel):
        for _ in range(depth):
            skel = {"list": [skel]}
        return skel

    return edit


def _deep_json(doc, payload):
    text = json.dumps(doc).encode()
    deep = b"[" * 100_000 + b"]" * 100_000
    return text.replace(b'"structure":', b'"structure":' + deep + b',"x":', 1), payload, {}


CRAFTED = {
    # the cases
    "lzma bomb in raw values": (_stream_bomb("lz", 0, "lzma"), "decodes to more than"),
    "zlib bomb in an integer stream": (_stream_bomb("rep", 1, "zlib"), "decodes to more than"),
    "zlib bomb in the manifest": (_manifest_bomb, "inflates past"),
    "huge Huffman symbol count": (_set_spec("shared", ("val", "s", "n"), 10**12), "'n'"),
    "huge Huffman table": (_set_spec("shared", ("val", "s", "k"), 10**12), "'k'"),
    "shape [1e8], raw": (_set_leaf("dense", "shape", [10**8]), "bytes of float32"),
    "shape [1e8], all zeros": (_set_leaf("zeros", "shape", [10**8]), "bitmask"),
    "shape [1e8] as a float": (_set_leaf("dense", "shape", [1e8]), "shape"),
    "leaf index -1": (_structure(_leaf_minus_one), "leaf -1"),
    "a leaf used twice": (_structure(_leaf_twice), "twice"),
    "dtype object": (_set_leaf("dense", "dtype", "object"), "unknown dtype 'object'"),
    "dtype str": (_set_leaf("ints", "dtype", "<U3"), "unknown dtype"),
    # what would raise another exception inside a decoder
    "group size 0 (ZeroDivisionError)": (
        _set_spec("group", ("val", "g", "size"), 0),
        "granularity",
    ),
    "relative width 10**9 (a huge power)": (_set_spec("sparse", ("pos", "b"), 10**9), "'b'"),
    "bit width 10**6": (_set_spec("rep", ("val", "s", "w"), 10**6), "'w'"),
    "grid offset 10**30 (OverflowError)": (_set_spec("rep", ("val", "off"), 10**30), "'off'"),
    "NaN in the manifest": (_set_spec("rep", ("val", "off"), float("nan")), "NaN"),
    "deep JSON (RecursionError)": (_deep_json, "manifest"),
    "structure nested 100 deep": (_structure(_nested(100)), "deeper than"),
    "a part read twice": (_set_leaf("half", "parts", [[0, 12]]), "out of order"),
    "an unknown value encoding": (_set_spec("dense", ("val", "val"), "pickle"), "unknown value"),
    "int leaf from a float codebook": (_set_leaf("rep", "dtype", "int32"), "grid"),
    "a manifest of one number": (lambda d, p: (b"7", p, {}), "four keys"),
    "header flag bit 1": (lambda d, p: (d, p, {"flags": 2}), "flags"),
    "reserved bytes": (lambda d, p: (d, p, {"reserved": 1}), "reserved"),
    "format version 2": (lambda d, p: (d, p, {"version": 2}), "newer"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_file_is_refused_in_bounded_memory(good, tmp_path, case):
    packed, _, _ = good
    edit, match = CRAFTED[case]
    doc, payload, kwargs = edit(document(packed), packed.payload)
    _refused(craft(tmp_path / "crafted.lcpk", doc, payload, **kwargs), match)


def test_crafted_packed_in_memory_is_refused_by_unpack(good):
    """`unpack` checks a `Packed` built in memory as `load` checks a file."""
    packed, _, _ = good
    for case in ("dtype object", "leaf index -1", "shape [1e8], raw", "bit width 10**6"):
        doc, payload, _ = CRAFTED[case][0](document(packed), packed.payload)
        bad = export.Packed({"structure": doc["structure"], "leaves": doc["leaves"]}, payload)
        with pytest.raises(ValueError, match=CRAFTED[case][1]):
            export.unpack(bad)
