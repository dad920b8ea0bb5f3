"""`Packed`, `pack` and `unpack`: parameters to verified per-leaf encodings and back."""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree
from lightcomp._checks import check_bool, check_callable
from lightcomp.export._format import DTYPES, HEADER, dtype_named, manifest_bytes
from lightcomp.export._leaf import decode_leaf, encode_leaf
from lightcomp.export._manifest import check_manifest
from lightcomp.export._structure import rebuild, skeleton

_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic, int, float, bool)


@dataclasses.dataclass(frozen=True)
class Packed:
    """A packed model: a JSON-able manifest and the payload bytes.

    Attributes:
      manifest: ``{"structure": ..., "leaves": [...]}``; see `lightcomp.export`.
      payload: the concatenated parts of every leaf.
    """

    manifest: dict
    payload: bytes

    @property
    def nbytes(self) -> int:
        """Payload bytes (the reported total; the file adds `header_bytes`)."""
        return len(self.payload)

    @property
    def header_bytes(self) -> int:
        """Bytes of the file header: the fixed 64 bytes plus the stored manifest."""
        return HEADER.size + len(manifest_bytes(self.manifest, len(self.payload))[0])


def _array_leaves(params: Any) -> list[tuple[str, Any]]:
    """``[(path, leaf)]`` of ``params``; a leaf that is not an array is a TypeError."""
    out = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        path = tree.path_str(key_path)
        if not isinstance(leaf, _ARRAY_TYPES):
            raise TypeError(f"pack: params leaf {path!r} is a {type(leaf).__name__}, not an array")
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            raise TypeError(
                f"pack: params leaf {path!r} is a PRNG key, not a parameter: leave it out, "
                "or store jax.random.key_data(key) (uint32) instead"
            )
        if np.dtype(dtype).name not in DTYPES:
            raise TypeError(
                f"pack: params leaf {path!r} has dtype {dtype}, which the packed file "
                f"does not store; the dtypes it stores: {sorted(DTYPES)}"
            )
        out.append((path, leaf))
    return out


def _has_effective(x: Any) -> bool:
    return callable(getattr(x, "effective", None)) and not isinstance(x, jax.Array)


def _effective_of(opt_state: Any):
    """The ``effective(params)`` of the one optimizer-held compression state, or None."""
    if opt_state is None:
        return None
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_has_effective) if _has_effective(x)]
    return found[0].effective if len(found) == 1 else None


class _Effective:
    """A transform-like ``apply(params, opt_state)`` for an optimizer-held state."""

    def __init__(self, effective):
        self._effective = effective

    def apply(self, params, opt_state):
        del opt_state  # the bound state is used
        return self._effective(params)


def pack(
    params: Any,
    comp_state: Any = None,
    transform: Any = None,
    *,
    entropy: bool = True,
    cstate: Any = None,
) -> Packed:
    """Packs parameters into the smallest verified per-leaf encodings.

    Args:
      params: a pytree of arrays: the effective parameters the student evaluates with, or
        its raw parameters when ``comp_state`` and ``transform`` are given.
      comp_state: the transform's state; with ``transform``, the packed parameters are
        ``jax.jit(transform.apply)(params, comp_state)``. Or, without ``transform``, the
        state of a `lightcomp.wrap_optax` optimizer (any optax nesting of it): the packed
        parameters are then ``lightcomp.effective(params, opt_state)``.
      transform: a `lightcomp.Transform` (needed with a transform's ``comp_state``).
      entropy: also try Huffman / zlib / lzma coding of the integer streams and values.
      cstate: the former name of ``comp_state``, still accepted.

    Returns:
      `Packed`; ``unpack(pack(p))`` equals ``p`` bit for bit (dtypes, shapes, structure).
      The manifest names each leaf by its `lightcomp.tree.path_str` path.

    Raises:
      ValueError: only one of ``comp_state`` and ``transform`` is given.
      TypeError: a leaf is not an array (the message names its path), ``entropy`` is not
        a bool, ``transform`` has no callable ``apply``, or both ``comp_state`` and
        ``cstate`` are given.

    Example:
      >>> packed = lc.export.pack({"w": jnp.array([[0.0, 0.5], [1.0, -0.5]])})
      >>> [leaf["path"] for leaf in packed.manifest["leaves"]]
      ['w']
      >>> lc.export.unpack(packed)["w"]
      Array([[ 0. ,  0.5],
             [ 1. , -0.5]], dtype=float32)
    """
    if cstate is not None:
        if comp_state is not None:
            raise TypeError("pack: give comp_state or its old name cstate, not both")
        comp_state = cstate
    effective = _effective_of(comp_state) if transform is None else None
    if effective is not None:
        comp_state, transform = comp_state, _Effective(effective)
    if (comp_state is None) != (transform is None):
        raise ValueError(
            "pack: give both comp_state and transform (to pack transform.apply(params, "
            "comp_state)), or neither (params are then the effective parameters)"
        )
    check_bool(entropy, "entropy")
    if transform is not None:
        check_callable(getattr(transform, "apply", None), "transform.apply")
    path_leaves = _array_leaves(params)
    if transform is not None:
        params = jax.jit(transform.apply)(params, comp_state)
        path_leaves = _array_leaves(params)
    counter = [0]
    structure = skeleton(params, counter)
    if counter[0] != len(path_leaves):
        raise TypeError("pack: params contain a leaf type whose structure cannot be recorded")
    leaves_meta, payload = [], []
    offset = 0
    for (path, leaf), (x, enc, parts) in zip(
        path_leaves, _encoded(path_leaves, entropy), strict=True
    ):
        spans = []
        for blob in parts:
            spans.append([offset, len(blob)])
            offset += len(blob)
        payload += parts
        leaves_meta.append(
            {
                "path": path,
                "shape": list(x.shape),
                "dtype": x.dtype.name,
                "kind": "jax" if isinstance(leaf, jax.Array) else "numpy",
                "enc": enc,
                "parts": spans,
                "nbytes": sum(s[1] for s in spans),
            }
        )
    return Packed({"structure": structure, "leaves": leaves_meta}, b"".join(payload))


def _encode_one(leaf: Any, entropy: bool) -> tuple[np.ndarray, dict, list[bytes]]:
    x = np.asarray(jax.device_get(leaf))
    enc, parts = encode_leaf(x, entropy)
    return x, enc, parts


def _encoded(path_leaves: list, entropy: bool):
    """``(array, spec, parts)`` per leaf, in order, two leaves at a time on threads.

    NumPy and zlib release the GIL in most of the work, so two cores pack about twice as
    fast; at most ``2 * workers`` leaves are in flight, which bounds the extra memory.
    """
    workers = min(2, os.cpu_count() or 1)
    if workers == 1 or len(path_leaves) < 2:
        yield from (_encode_one(leaf, entropy) for _, leaf in path_leaves)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        for _, leaf in path_leaves:
            pending.append(pool.submit(_encode_one, leaf, entropy))
            if len(pending) > workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def unpack(packed: Packed, like: Any = None) -> Any:
    """Decodes a `Packed` back into parameters, bit for bit.

    The manifest is checked first (`lightcomp.export._manifest`: every declared size,
    count, shape, dtype and index against hard limits and the payload), so a crafted
    one is refused before anything is allocated; any failure while decoding a leaf is
    a ValueError naming it.

    Args:
      packed: from `pack` or `load`.
      like: optional template pytree; the result then takes its exact tree type (for
        ``nnx.State``, ``FrozenDict`` or custom nodes). Its leaf paths
        (`lightcomp.tree.path_str`) must be the packed ones. Plain dicts, lists and
        tuples come back as they were without it; other containers come back as nested
        dicts.

    Returns:
      The parameter pytree: jax arrays (numpy arrays for leaves packed from numpy).

    Raises:
      TypeError: ``packed`` is not a `Packed`.
      ValueError: the packed data are inconsistent (naming the leaf), or ``like`` has
        other leaf paths.
    """
    if not isinstance(packed, Packed):
        raise TypeError(
            f"unpack: packed must be a lightcomp.export.Packed, got {type(packed).__name__}"
        )
    if not isinstance(packed.payload, bytes):
        raise TypeError(
            f"unpack: packed.payload must be bytes, got {type(packed.payload).__name__}"
        )
    check_manifest(packed.manifest, len(packed.payload))
    metas = packed.manifest["leaves"]
    if like is not None:
        key_paths, treedef = jax.tree_util.tree_flatten_with_path(like)
        _check_like_paths([m["path"] for m in metas], [p for p, _ in key_paths])
    payload = memoryview(packed.payload)
    leaves = [_decode(meta, payload) for meta in metas]
    if like is not None:
        return jax.tree_util.tree_unflatten(treedef, leaves)
    return rebuild(packed.manifest["structure"], leaves)


def _decode(meta: dict, payload: memoryview) -> Any:
    """One checked manifest leaf, decoded from the payload (a jax array when it was one).

    Raises:
      ValueError: ``leaf '<path>': ...`` whatever went wrong: a decoder's own error, or
        any other exception a crafted file could provoke (overflow, a zero division).
    """
    parts = [payload[o : o + n] for o, n in meta["parts"]]
    try:
        x = decode_leaf(meta["enc"], tuple(meta["shape"]), dtype_named(meta["dtype"]), parts)
    except ValueError as e:
        raise ValueError(f"leaf {meta['path']!r}: {e}") from e
    except Exception as e:  # a crafted file gets a ValueError, never another exception
        raise ValueError(
            f"leaf {meta['path']!r}: corrupted packed data ({type(e).__name__}: {e})"
        ) from e
    if meta["kind"] == "jax" and jnp.asarray(x).dtype == x.dtype:
        x = jnp.asarray(x)
    return x


def _check_like_paths(want: list[str], key_paths: list[tuple]) -> None:
    """``like``'s leaf paths must be the packed ones (a 0.1.0 file's nnx paths included)."""
    got = [tree.path_str(p) for p in key_paths]
    if want == got:
        return
    # 0.1.0 named leaves by keystr, which keeps the ".value" of an nnx Variable.
    if want == [jax.tree_util.keystr(p, simple=True, separator="/") for p in key_paths]:
        return
    bad = next(
        (i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
        min(len(want), len(got)),
    )
    raise ValueError(
        f"unpack: like's leaf paths differ from the packed ones at leaf {bad}: "
        f"{got[bad] if bad < len(got) else None!r} vs {want[bad] if bad < len(want) else None!r}"
    )
