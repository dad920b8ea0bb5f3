"""lightcomp/prune/_report.py: zero counts and their table."""

from __future__ import annotations

import pytest
from rich.console import Console

from lightcomp import prune as P


def test_sparsity_report_counts_and_table(make_params, leaves, selected):
    params = make_params(14)
    m = P.masks(P.magnitude(params), 0.25)
    pruned = P.apply_masks(params, m)
    rep_p, rep_m = P.sparsity_report(pruned), P.sparsity_report(m)
    assert rep_p == rep_m
    assert sorted(rep_p["leaves"]) == sorted(selected)
    for path in selected:
        row = rep_p["leaves"][path]
        w = leaves(pruned)[path]
        assert row["zeros"] == int((w == 0).sum()) == round(0.25 * w.size)
        assert row["size"] == w.size and row["shape"] == w.shape
    total = sum(leaves(params)[p].size for p in selected)
    assert rep_p["total"]["size"] == total
    assert rep_p["total"]["sparsity"] == pytest.approx(rep_p["total"]["zeros"] / total)
    only = P.sparsity_report(pruned, select=r"Dense_1/kernel")
    assert list(only["leaves"]) == ["Dense_1/kernel"]
    console = Console(width=120, record=True)
    console.print(P.sparsity_table(rep_p))
    text = console.export_text()
    assert "Dense_0/kernel" in text and "total" in text and "25.00%" in text
