"""The manifest's schema: every field a packed file declares, checked before decoding.

A file is untrusted input: whoever crafted it can recompute its checksum. `check_manifest`
checks the types of the manifest's fields and every declared size, count, shape, part
index and dtype against the hard limits of `lightcomp.export._format` and against the
payload bytes that back them, before a leaf is decoded. What it cannot know without
decoding (how many ones a bitmask holds) the decoders check before they allocate.

The specs are those `lightcomp.export._leaf` writes (``{"pos", "val", "negz"}``, see
`lightcomp.export._positions`, `lightcomp.export._values`, `lightcomp.export._grid`,
`lightcomp.export._streams`); a field of the wrong type, a key too many or too few, an
integer out of range or a part of the wrong length is a ValueError naming the leaf.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightcomp.export._format import (
    FLOATS,
    MAX_ELEMENTS,
    MAX_LEAVES,
    MAX_NDIM,
    MAX_WIDTH,
    dtype_named,
    is_float,
)
from lightcomp.export._grid import grid_groups
from lightcomp.export._streams import CODECS
from lightcomp.export._structure import check_structure

_LEAF_KEYS = {"path", "shape", "dtype", "kind", "enc", "parts", "nbytes"}
_MAX_OFFSET = 1 << 40  # grid offsets and zero points (the integers are at most 32 bits)


def _keys(d: Any, what: str, required: set[str], optional: frozenset[str] = frozenset()) -> dict:
    """``d`` must be a dict with the ``required`` keys and maybe some ``optional`` ones."""
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(d).__name__}")
    missing, extra = required - set(d), set(d) - required - optional
    if missing or extra:
        raise ValueError(f"{what} has keys {sorted(d)}; expected {sorted(required)}")
    return d


def _int(d: dict, key: str, lo: int, hi: int, what: str) -> int:
    """``d[key]``, an integer (not a bool) in ``[lo, hi]``."""
    v = d[key]
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{what}: {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _part(d: dict, key: str, lens: list[int], what: str, offset: int = 0) -> int:
    """The length of the part ``d[key] + offset`` names."""
    return lens[_int(d, key, 0, len(lens) - 1 - offset, what) + offset]


def check_ints(s: Any, lens: list[int], lo: int, hi: int, what: str, *, width: int = MAX_WIDTH):
    """An integer stream's spec: its count in ``[lo, hi]`` and its parts' lengths.

    Returns:
      The declared count.
    """
    c = s.get("c") if isinstance(s, dict) else None
    if c == "huff":
        _keys(s, what, {"c", "n", "k", "nb", "p"})
        n = _int(s, "n", max(lo, 1), hi, what)
        k = _int(s, "k", 1, 1 << width, what)
        nb = _int(s, "nb", n, 8 * _part(s, "p", lens, what, 1), what)
        if _part(s, "p", lens, what) != math.ceil(5 * k / 8) or lens[s["p"] + 1] != -(-nb // 8):
            raise ValueError(f"{what}: the Huffman parts have the wrong lengths")
        return n
    if c not in ("fixed", *CODECS):
        raise ValueError(f"{what}: unknown integer coding {c!r}")
    _keys(s, what, {"c", "n", "w", "p"})
    n, w = _int(s, "n", lo, hi, what), _int(s, "w", 0, width, what)
    length = _part(s, "p", lens, what)
    if c == "fixed" and length != math.ceil(n * w / 8):
        raise ValueError(f"{what}: {length} bytes for {n} values of {w} bits")
    if c != "fixed" and (length == 0 or n * w == 0):
        raise ValueError(f"{what}: an empty {c} stream")
    return n


def check_positions(spec: Any, size: int, lens: list[int], what: str) -> int | None:
    """A positions spec of a leaf of ``size`` elements; its count of positions (None: a mask)."""
    if isinstance(spec, dict) and spec.get("pos") == "mask":
        _keys(spec, what, {"pos", "s"})
        check_ints(spec["s"], lens, size, size, f"{what} bitmask", width=1)
        return None
    _keys(spec, what, {"pos", "b", "m", "s"})
    if spec["pos"] != "rel":
        raise ValueError(f"{what}: unknown position coding {spec['pos']!r}")
    b, m = _int(spec, "b", 1, 16, what), _int(spec, "m", 0, size, what)
    check_ints(spec["s"], lens, m, m + (size - m) // (2**b - 1), f"{what} symbols", width=b)
    return m


def _value_dtype(spec: dict, dt: np.dtype, what: str) -> np.dtype:
    """The stored dtype of raw values or a codebook: the leaf's, or a narrower float."""
    sdt = dtype_named(spec["dt"])
    if sdt != dt and not (is_float(dt) and sdt.name in FLOATS and sdt.itemsize < dt.itemsize):
        raise ValueError(f"{what}: {sdt.name} values cannot make a {dt.name} leaf")
    return sdt


def check_values(spec: Any, m: int | None, shape: tuple, dt: np.dtype, lens, what: str) -> None:
    """A values spec of ``m`` values (None: up to the leaf's size) of a leaf ``dt[shape]``."""
    kind = spec.get("val") if isinstance(spec, dict) else None
    size = math.prod(shape)
    lo, hi = (0, size) if m is None else (m, m)
    if kind == "raw":
        _keys(spec, what, {"val", "dt", "p"}, frozenset({"z"}))
        sdt, length = _value_dtype(spec, dt, what), _part(spec, "p", lens, what)
        if "z" in spec and spec["z"] not in CODECS:
            raise ValueError(f"{what}: unknown compression {spec['z']!r}")
        if "z" not in spec and (length % sdt.itemsize or not lo <= length // sdt.itemsize <= hi):
            raise ValueError(f"{what}: {length} bytes of {sdt.name} for {m} values")
    elif kind == "book" and is_float(dt):
        _keys(spec, what, {"val", "dt", "k", "bp", "s"})
        sdt, k = _value_dtype(spec, dt, what), _int(spec, "k", 1, 2**16, what)
        if _part(spec, "bp", lens, what) != k * sdt.itemsize:
            raise ValueError(f"{what}: a codebook of {k} {sdt.name} values has the wrong length")
        check_ints(spec["s"], lens, lo, hi, f"{what} indices", width=16)
    elif kind == "grid" and dt.name in FLOATS:
        zp = "z" in spec if isinstance(spec, dict) else False
        extra = {"zoff", "z"} if zp else {"off"}
        _keys(spec, what, {"val", "g", "G", "sp", "s", *extra})
        groups = _grid_groups(spec["g"], shape, what)
        if _int(spec, "G", groups, groups, what) * 4 != _part(spec, "sp", lens, what):
            raise ValueError(f"{what}: {groups} grid scales have the wrong length")
        check_ints(spec["s"], lens, lo, hi, f"{what} integers")
        _int(spec, "zoff" if zp else "off", -_MAX_OFFSET, _MAX_OFFSET, what)
        if zp:
            check_ints(spec["z"], lens, groups, groups, f"{what} zero points")
    else:
        raise ValueError(f"{what}: unknown value encoding {kind!r} for a {dt.name} leaf")


def _grid_groups(gran: Any, shape: tuple, what: str) -> int:
    kinds = {
        "tensor": {"kind"},
        "axis": {"kind", "axis"},
        "axes": {"kind", "axes"},
        "group": {"kind", "gaxis", "size"},
    }
    kind = gran.get("kind") if isinstance(gran, dict) else None
    optional = frozenset()
    if kind == "group":  # per index of one axis, or per combination of several, or neither
        optional = frozenset({"axes"} if "axes" in gran else {"axis"})
    _keys(gran, f"{what} granularity", kinds.get(kind, {"kind"}), optional)
    if kind not in kinds:
        raise ValueError(f"{what}: unknown grid granularity {kind!r}")
    return grid_groups(shape, gran)


def _check_shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise ValueError(f"shape must be a list of at most {MAX_NDIM} sizes, got {shape!r}")
    if any(type(d) is not int or d < 0 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise ValueError(f"shape {shape!r} is not a shape of at most {MAX_ELEMENTS} elements")
    return tuple(shape)


def _check_parts(parts: Any, offset: int, payload_bytes: int) -> list[int]:
    """The parts' lengths; they must follow each other from ``offset`` inside the payload."""
    if not isinstance(parts, list) or len(parts) > 64:
        raise ValueError(f"parts must be a list of [offset, length] pairs, got {parts!r}")
    lens = []
    for span in parts:
        if not (isinstance(span, list) and len(span) == 2 and all(type(v) is int for v in span)):
            raise ValueError(f"a part must be [offset, length], got {span!r}")
        if span[0] != offset or span[1] < 0 or offset + span[1] > payload_bytes:
            raise ValueError(
                f"part outside the payload or out of order: {span} (expected offset "
                f"{offset}, payload of {payload_bytes} bytes)"
            )
        offset += span[1]
        lens.append(span[1])
    return lens


def _check_leaf(meta: Any, index: int, offset: int, payload_bytes: int) -> int:
    """One manifest leaf; returns the payload offset after its parts."""
    name = (
        repr(meta["path"])
        if isinstance(meta, dict) and isinstance(meta.get("path"), str)
        else index
    )
    try:
        _keys(meta, "the manifest entry", _LEAF_KEYS)
        if not isinstance(meta["path"], str):
            raise ValueError(f"path must be a string, got {meta['path']!r}")
        shape, dt = _check_shape(meta["shape"]), dtype_named(meta["dtype"])
        if meta["kind"] not in ("jax", "numpy"):
            raise ValueError(f"kind must be 'jax' or 'numpy', got {meta['kind']!r}")
        lens = _check_parts(meta["parts"], offset, payload_bytes)
        if meta["nbytes"] != sum(lens) or type(meta["nbytes"]) is not int:
            raise ValueError(f"nbytes {meta['nbytes']!r} is not the parts' {sum(lens)} bytes")
        enc = _keys(meta["enc"], "the encoding", {"pos", "val"}, frozenset({"negz"}))
        size = math.prod(shape)
        m = size if enc["pos"] is None else check_positions(enc["pos"], size, lens, "positions")
        check_values(enc["val"], m, shape, dt, lens, "values")
        if enc.get("negz") is not None:
            check_positions(enc["negz"], size, lens, "negative zeros")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"leaf {name}: corrupted manifest: {e}") from e
    return offset + sum(lens)


def check_manifest(manifest: Any, payload_bytes: int) -> None:
    """Checks a manifest against the payload it describes, before anything is decoded.

    Args:
      manifest: ``{"structure", "leaves"}`` from a `Packed`.
      payload_bytes: the payload's length; the leaves' parts must tile it exactly.

    Raises:
      ValueError: ``corrupted manifest: ...``, naming the leaf (its path, or its index
        when the path is unreadable) where there is one.
    """
    try:
        _keys(manifest, "the manifest", {"structure", "leaves"})
        leaves = manifest["leaves"]
        if not isinstance(leaves, list) or len(leaves) > MAX_LEAVES:
            raise ValueError(f"leaves must be a list of at most {MAX_LEAVES} entries")
        check_structure(manifest["structure"], len(leaves))
    except ValueError as e:
        raise ValueError(f"corrupted manifest: {e}") from e
    offset = 0
    for i, meta in enumerate(leaves):
        offset = _check_leaf(meta, i, offset, payload_bytes)
    if offset != payload_bytes:
        raise ValueError(
            f"corrupted manifest: the leaves' parts cover {offset} of {payload_bytes} payload bytes"
        )
