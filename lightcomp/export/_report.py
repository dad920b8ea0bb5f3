"""`report` and `report_table`: the sizes of a packed model, per leaf and in total."""

from __future__ import annotations

import math

from lightcomp.export._pack import Packed


def describe(enc: dict) -> str:
    """A short description of a leaf encoding, e.g. ``rel4/huff | grid axis1/3b | -0``.

    Parts: the positions (``mask/...`` or ``rel<b>/...``), the values (a dtype for raw,
    ``book<k>/...`` or ``grid <granularity>[+zp]/...``), ``-0`` for negative zeros;
    each integer stream as ``<w>b`` (fixed width) or its coder (``huff``, ``zlib``, ``lzma``).
    """

    def ints(s):
        return f"{s['w']}b" if s["c"] == "fixed" else s["c"]

    out = []
    pos = enc["pos"]
    if pos is not None:
        out.append(
            f"mask/{ints(pos['s'])}" if pos["pos"] == "mask" else f"rel{pos['b']}/{ints(pos['s'])}"
        )
    v = enc["val"]
    if v["val"] == "raw":
        out.append(v["dt"] + (f"/{v['z']}" if "z" in v else ""))
    elif v["val"] == "book":
        out.append(f"book{v['k']}/{ints(v['s'])}")
    else:
        g = v["g"]
        gd = {
            "tensor": "tensor",
            "axis": f"axis{g.get('axis')}",
            "axes": "axes" + ",".join(map(str, g.get("axes", ()))),
            "group": f"group{g.get('size')}",
        }
        out.append(f"grid {gd[g['kind']]}{'+zp' if 'z' in v else ''}/{ints(v['s'])}")
    if enc.get("negz") is not None:
        out.append("-0")
    return " | ".join(out)


def report(packed: Packed) -> dict:
    """Sizes of a packed model, per leaf and in total.

    Args:
      packed: from `pack` or `load`.

    Returns:
      ``{"leaves": [{"path", "shape", "dtype", "encoding", "size", "bytes",
      "bits_per_weight", "ratio_vs_float32"}], "size", "payload_bytes", "header_bytes",
      "file_bytes", "float32_bytes", "bits_per_weight", "ratio_vs_float32"}``.
      ``file_bytes == payload_bytes + header_bytes`` is the size `save` writes; the total
      ratio and bits per weight count the whole file.

    Raises:
      TypeError: ``packed`` is not a `Packed`.

    Example:
      >>> rep = lc.export.report(lc.export.pack({"w": jnp.zeros((4, 4))}))
      >>> rep["size"], rep["leaves"][0]["encoding"]
      (16, 'mask/0b | float16')
    """
    if not isinstance(packed, Packed):
        raise TypeError(
            f"report: packed must be a lightcomp.export.Packed, got {type(packed).__name__}"
        )
    rows = []
    for m in packed.manifest["leaves"]:
        size = math.prod(m["shape"])
        rows.append(
            {
                "path": m["path"],
                "shape": tuple(m["shape"]),
                "dtype": m["dtype"],
                "encoding": describe(m["enc"]),
                "size": size,
                "bytes": m["nbytes"],
                "bits_per_weight": 8 * m["nbytes"] / max(size, 1),
                "ratio_vs_float32": 4 * size / max(m["nbytes"], 1),
            }
        )
    size = sum(r["size"] for r in rows)
    header = packed.header_bytes
    total = header + packed.nbytes
    return {
        "leaves": rows,
        "size": size,
        "payload_bytes": packed.nbytes,
        "header_bytes": header,
        "file_bytes": total,
        "float32_bytes": 4 * size,
        "bits_per_weight": 8 * total / max(size, 1),
        "ratio_vs_float32": 4 * size / total,
    }


def report_table(packed_or_report: Packed | dict, title: str = "packed model"):
    """The `report` as a ``rich.table.Table`` (print it with ``rich.print``).

    Args:
      packed_or_report: a `Packed`, or a `report` of one.
      title: the table's title.

    Returns:
      A ``rich.table.Table``: one row per leaf, then the header and the file's total.
    """
    from rich.table import Table

    rep = report(packed_or_report) if isinstance(packed_or_report, Packed) else packed_or_report
    t = Table(title=title)
    for col in ("leaf", "shape", "dtype", "encoding", "bytes", "bits/weight", "x vs float32"):
        t.add_column(col, justify="left" if col in ("leaf", "encoding", "dtype") else "right")
    for r in rep["leaves"]:
        t.add_row(
            r["path"],
            str(r["shape"]),
            r["dtype"],
            r["encoding"],
            f"{r['bytes']:,}",
            f"{r['bits_per_weight']:.3f}",
            f"{r['ratio_vs_float32']:.1f}",
        )
    t.add_row("(header)", "", "", "magic, version, manifest", f"{rep['header_bytes']:,}", "", "")
    t.add_row(
        "total (file)",
        str(rep["size"]),
        "",
        "",
        f"{rep['file_bytes']:,}",
        f"{rep['bits_per_weight']:.3f}",
        f"{rep['ratio_vs_float32']:.1f}",
    )
    return t
