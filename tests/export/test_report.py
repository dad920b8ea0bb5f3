"""Tests of lightcomp.export._report: sizes per leaf and in total, the table, descriptions."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from lightcomp import export
from lightcomp.export._report import describe


@pytest.fixture(scope="module")
def packed():
    rng = np.random.default_rng(0)
    kernel = np.where(rng.random((16, 8)) < 0.9, 0, rng.normal(size=(16, 8))).astype(np.float32)
    return export.pack({"layer": {"kernel": kernel, "bias": np.zeros(8, np.float32)}})


def test_report_counts_every_byte(packed):
    rep = export.report(packed)
    assert [r["path"] for r in rep["leaves"]] == ["layer/bias", "layer/kernel"]
    assert rep["size"] == 8 + 128 and rep["float32_bytes"] == 4 * rep["size"]
    for r, m in zip(rep["leaves"], packed.manifest["leaves"], strict=True):
        assert r["bytes"] == m["nbytes"] == sum(n for _, n in m["parts"])
        assert r["bits_per_weight"] == pytest.approx(8 * r["bytes"] / r["size"])
        assert r["ratio_vs_float32"] == pytest.approx(4 * r["size"] / max(r["bytes"], 1))
    assert rep["payload_bytes"] == packed.nbytes == sum(r["bytes"] for r in rep["leaves"])
    assert rep["file_bytes"] == rep["payload_bytes"] + rep["header_bytes"]
    assert rep["bits_per_weight"] == pytest.approx(8 * rep["file_bytes"] / rep["size"])


def test_report_table_lists_every_leaf(packed):
    console = Console(width=200, record=True)
    console.print(export.report_table(packed))
    text = console.export_text()
    for r in export.report(packed)["leaves"]:
        assert r["path"] in text and r["encoding"] in text
    assert f"{export.report(packed)['file_bytes']:,}" in text
    assert text == _table_text(export.report(packed))  # a report gives the same table


def _table_text(rep):
    console = Console(width=200, record=True)
    console.print(export.report_table(rep))
    return console.export_text()


@pytest.mark.parametrize(
    "enc,text",
    [
        ({"pos": None, "val": {"val": "raw", "dt": "float16"}}, "float16"),
        (
            {
                "pos": {"pos": "rel", "b": 4, "s": {"c": "huff"}},
                "val": {"val": "book", "k": 5, "s": {"c": "fixed", "w": 3}},
                "negz": {"pos": "mask", "s": {"c": "fixed", "w": 1}},
            },
            "rel4/huff | book5/3b | -0",
        ),
        (
            {
                "pos": {"pos": "mask", "s": {"c": "zlib"}},
                "val": {
                    "val": "grid",
                    "g": {"kind": "axis", "axis": 1},
                    "z": {},
                    "s": {"c": "lzma"},
                },
            },
            "mask/zlib | grid axis1+zp/lzma",
        ),
        (
            {"pos": None, "val": {"val": "raw", "dt": "float32", "z": "lzma"}, "negz": None},
            "float32/lzma",
        ),
    ],
)
def test_describe(enc, text):
    assert describe(enc) == text


def test_report_wants_a_packed():
    with pytest.raises(TypeError, match=r"packed must be a lightcomp\.export\.Packed"):
        export.report({"leaves": []})
