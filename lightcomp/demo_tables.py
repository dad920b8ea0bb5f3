"""The demos' result tables: rich (the command's output) and Markdown (READMEs, logs)."""

from __future__ import annotations

from typing import Any

__all__ = ["markdown_table", "print_table", "result_table"]


def result_table(result: dict, title: str = "lightcomp demo: digits MLP"):
    """The per-stage table of a `run` result, as a ``rich.table.Table``."""
    from rich.table import Table

    t = Table(title=title)
    cols = ("stage", "test acc", "sparsity", "bits/weight", "packed bytes", "x vs float teacher",
            "x vs float student")  # fmt: skip
    for c in cols:
        t.add_column(c, justify="left" if c == "stage" else "right")
    for r in result["rows"]:
        t.add_row(
            r["stage"],
            f"{100 * r['accuracy']:.2f}%",
            f"{100 * r['sparsity']:.1f}%",
            f"{r['bits_per_weight']:.3f}",
            f"{r['bytes']:,}",
            f"{r['ratio_vs_teacher']:.1f}",
            f"{r['ratio_vs_student']:.1f}",
        )
    return t


def print_table(
    result: dict, console: Any = None, title: str = "lightcomp demo: digits MLP"
) -> bool:
    """Prints `result_table` and the file's line; True when the file reloads bit for bit
    with the in-memory accuracy (the command's exit status 0)."""
    if console is None:
        from rich.console import Console

        console = Console()
    console.print(result_table(result, title))
    t_acc, f_acc, l_acc = (
        result[k] for k in ("teacher_accuracy", "final_accuracy", "loaded_accuracy")
    )
    console.print(
        f"wrote {result['file']} ({result['file_bytes']:,} bytes); loaded back: test accuracy "
        f"{100 * l_acc:.2f}% (in memory {100 * f_acc:.2f}%, float teacher {100 * t_acc:.2f}%), "
        f"parameters {'bit-exact' if result['bit_exact'] else 'DIFFERENT'}"
    )
    return bool(result["bit_exact"] and l_acc == f_acc)


def markdown_table(result: dict) -> str:
    """The same table in Markdown (for READMEs and benchmark logs)."""
    lines = [
        "| stage | test acc | sparsity | bits/weight | packed bytes | x vs float teacher | x vs float student |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['stage']} | {100 * r['accuracy']:.2f}% | {100 * r['sparsity']:.1f}% | "
            f"{r['bits_per_weight']:.3f} | {r['bytes']:,} | {r['ratio_vs_teacher']:.1f} | "
            f"{r['ratio_vs_student']:.1f} |"
        )
    return "\n".join(lines)
