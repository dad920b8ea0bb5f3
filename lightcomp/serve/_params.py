"""`from_packed`: a packed file's parameters, kernels on an integer grid as `QTensor`s."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from lightcomp import export, quant, tree
from lightcomp._checks import check_bool


def leaf_key(path: str) -> str:
    """A leaf path without the ``/value`` an nnx Variable adds in a tree rebuilt without ``like``."""
    return path[: -len("/value")] if path.endswith("/value") else path


def _qtensor(ints: export.Integers, int4: bool) -> quant.QTensor:
    bits = ints.bits
    values = (
        quant.pack_int4(ints.values) if int4 and bits <= 4 else jnp.asarray(ints.values, jnp.int8)
    )
    return quant.QTensor(
        values=values,
        scale=jnp.asarray(ints.scale, jnp.float32),
        zero_point=None,
        bits=bits,
        symmetric=True,
        axis=ints.axis,
        group_size=ints.group_size,
        group_axis=ints.group_axis,
        dtype=ints.dtype,
    )


def from_packed(
    packed: export.Packed,
    like: Any = None,
    *,
    names: Sequence[str] = ("kernel",),
    int4: bool = True,
) -> Any:
    """The parameters of a packed model, ready for integer serving.

    Every leaf named as one of ``names`` (the last component of its path; Flax's kernels)
    whose values lie on a symmetric integer grid of at most 8 bits (``|n| <= 127``) becomes
    a `lightcomp.quant.QTensor` with int8 codes and float32 scales (per tensor, per index of
    an axis, or per group, as stored); every other leaf is decoded to its float values. A
    kernel stored as a codebook of shared values is served the same way when those values
    lie on such a grid: the gather happens here, once, and the forward runs integer dots.

    Args:
      packed: from `lightcomp.export.pack` or `lightcomp.export.load`.
      like: as `lightcomp.export.unpack`: a template whose tree type the result takes
        (e.g. ``nnx.state(model)``).
      names: the leaf names that may become `QTensor`s.
      int4: hold codes of at most 4 bits two per byte (`lightcomp.quant.PackedInt4`),
        unpacked inside the compiled forward; otherwise one int8 per code.

    Returns:
      The parameter tree, `lightcomp.quant.QTensor` at the integer kernels;
      ``lightcomp.quant.dequantize`` of one equals the packed leaf bit for bit (up to the
      sign of zero).

    Raises:
      TypeError: ``packed`` is not a `lightcomp.export.Packed`, ``names`` not strings,
        ``int4`` not a bool.
      ValueError: as `lightcomp.export.unpack` (a corrupted file, ``like`` of other paths).

    Example:
      >>> w = lc.quant.fake_quant(jnp.array([[0.3, -1.2], [0.9, 0.5]]), 8, axis=-1)
      >>> q = lc.serve.from_packed(lc.export.pack({"Dense_0": {"kernel": w}}))
      >>> q["Dense_0"]["kernel"].values.dtype, q["Dense_0"]["kernel"].scale.shape
      (dtype('int8'), (1, 2))
    """
    if not isinstance(packed, export.Packed):
        raise TypeError(f"packed must be a lightcomp.export.Packed, got {type(packed).__name__}")
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"names must be a sequence of leaf names, got {names!r}")
    int4 = check_bool(int4, "int4")
    out = export.unpack(packed, like)
    served: dict[str, quant.QTensor] = {}
    for meta in packed.manifest["leaves"]:
        key = leaf_key(meta["path"])
        if key.rsplit("/", 1)[-1] not in names:
            continue
        ints = export.integers(packed, meta["path"])
        if ints is not None and ints.bits <= 8:
            served[key] = _qtensor(ints, int4)
    return jax.tree_util.tree_map_with_path(
        lambda kp, leaf: served.get(leaf_key(tree.path_str(kp)), leaf), out
    )
