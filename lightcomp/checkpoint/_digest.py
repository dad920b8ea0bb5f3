"""What a restore verifies: a content digest per leaf, the metadata's own, the configuration.

- **Leaf digests**: BLAKE2b (128 bits) of each leaf as it is handed to orbax (typed PRNG
  keys as their ``uint32`` data): its dtype name, its shape and its C-order bytes,
  computed on the host at save time and again from the restored array. A damaged
  array file that decodes to other values (orbax's own checks do not catch that) is
  caught and named by its leaf path. A leaf spread over several processes (not fully
  addressable from this one) gets no digest: its shards are not all here to hash.
- **The metadata's seal**: the same digest of the ``meta`` JSON itself (and of the
  ``config`` item), so a damaged description of the tree is told apart from a target
  that does not match it.
- **Fingerprints**: every compression state in the tree (a node with a static string
  ``fingerprint`` field, as the states of `lightcomp.transform` are) records the
  configuration that built it, e.g. ``fake_quantization(bits=8, axis=-1, ...)``; a
  restore into a target whose states were built under another configuration is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from lightcomp import tree

PyTree = Any

DIGEST = "blake2b-128 of dtype, shape and C-order bytes"


def leaf_digest(x: Any) -> str | None:
    """The hex digest of one leaf (None for an array not fully addressable here)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return None
    a = np.ascontiguousarray(np.asarray(x))
    h = hashlib.blake2b(f"{a.dtype.name}{list(a.shape)}".encode(), digest_size=16)
    h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def digests(encoded: PyTree) -> dict[str, str | None]:
    """``{path: digest}`` of every leaf of an encoded state (`lightcomp.checkpoint._codec.encode`)."""
    return {p: leaf_digest(x) for p, x in tree.leaves_with_paths(encoded, argname="state")}


def first_damaged(restored: PyTree, saved: Mapping[str, str | None]) -> str | None:
    """The path of the first restored leaf whose digest differs from the saved one, or None.

    Leaves saved without a digest (multi-process arrays) and leaves the saved digests do
    not name are skipped.
    """
    for path, x in tree.leaves_with_paths(restored, argname="state"):
        want = saved.get(path)
        if want is not None and leaf_digest(x) != want:
            return path
    return None


def seal(doc: Mapping[str, Any]) -> str:
    """The digest of a JSON document (keys sorted; its own ``"seal"`` left out)."""
    text = json.dumps({k: v for k, v in doc.items() if k != "seal"}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _has_fingerprint(x: Any) -> bool:
    return isinstance(getattr(x, "fingerprint", None), str) and not isinstance(
        x, (jax.Array, np.ndarray)
    )


def fingerprints(state: PyTree) -> dict[str, str]:
    """``{path: fingerprint}`` of every compression state in ``state`` (nested ones too).

    A compression state is a pytree node with a static ``fingerprint`` string (the
    states of `lightcomp.transform`); its path is `lightcomp.tree.path_str` of the node.
    """
    out: dict[str, str] = {}
    todo = [("", state)]
    while todo:
        prefix, node = todo.pop()
        if _has_fingerprint(node):
            out[prefix] = node.fingerprint
        flat = jax.tree_util.tree_flatten_with_path(
            node, is_leaf=lambda c, n=node: c is not n and _has_fingerprint(c)
        )[0]
        for key_path, child in flat:
            if child is not node and _has_fingerprint(child):
                path = tree.path_str(key_path)
                todo.append((f"{prefix}/{path}" if prefix else path, child))
    return out


def fingerprint_mismatch(
    saved: Mapping[str, str], target: Mapping[str, str], *, common_only: bool = False
) -> str | None:
    """How the saved and the target's compression configurations differ, or None.

    Args:
      saved: the fingerprints saved with the checkpoint.
      target: the target's.
      common_only: compare only the paths both have (a path on one side only is
        usually a tree that differs, which `lightcomp.checkpoint._codec.mismatch` names).

    Returns:
      The rest of "... was saved under another compression configuration": the first
      path (sorted) where they differ, with both descriptions.
    """
    paths = set(saved) & set(target) if common_only else set(saved) | set(target)
    for path in sorted(paths):
        a, b = saved.get(path), target.get(path)
        if a != b:
            return (
                f": at {path!r} the checkpoint has {a or 'no compression state'}, "
                f"the target has {b or 'no compression state'}"
            )
    return None
