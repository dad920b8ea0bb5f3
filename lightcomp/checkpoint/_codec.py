"""How a state's leaves are stored: their description, PRNG keys as data, restore targets.

Array serialization has no key dtype, so typed PRNG keys (``jax.random.key``) are
stored as their ``uint32`` key data (``jax.random.key_data``) and rebuilt with
``jax.random.wrap_key_data`` and the recorded implementation. The ``meta`` item
describes every leaf (its `lightcomp.tree.path_str` path, shape and dtype) and names
the key leaves, so a restore into a mismatching tree can say which leaf differs; the
manager adds what a restore verifies (`lightcomp.checkpoint._digest`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree

PyTree = Any

FORMAT = "lightcomp-checkpoint"
FORMAT_VERSION = 2  # 2: leaf digests, fingerprints and a seal (`lightcomp.checkpoint._digest`)
READABLE_VERSIONS = (1, 2)  # 1: lightcomp 0.1.0, no digests (restored unverified)


def is_key(x: Any) -> bool:
    """True for a typed PRNG key array (``jax.random.key``); raw uint32 keys are plain arrays."""
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_impl_name(key: jax.Array) -> str:
    # jax.random.key_impl returns a PRNGSpec whose str() is the name `jax.random.key` accepts.
    return str(jax.random.key_impl(key))


def describe(state: PyTree) -> dict[str, Any]:
    """The JSON ``meta`` item of ``state``.

    Returns:
      ``{"format", "version", "leaves": [{"path", "shape", "dtype"}], "keys": {path: impl}}``;
      a key leaf is described by its key data (``uint32``).

    Raises:
      TypeError: a leaf is not an array or a number (names the leaf's path).
    """
    leaves, keys = [], {}
    for path, x in tree.leaves_with_paths(state, argname="state"):
        if is_key(x):
            keys[path] = _key_impl_name(x)
            x = jax.random.key_data(x)
        x = np.asarray(x) if not hasattr(x, "dtype") else x
        leaves.append({"path": path, "shape": list(x.shape), "dtype": str(jnp.dtype(x.dtype))})
    return {"format": FORMAT, "version": FORMAT_VERSION, "leaves": leaves, "keys": keys}


def encode(state: PyTree) -> PyTree:
    """``state`` as orbax stores it: typed keys -> their uint32 data; Python numbers -> 0-d arrays."""

    def enc(x):
        if is_key(x):
            return jax.random.key_data(x)
        if isinstance(x, (bool, int, float, np.generic)):
            return np.asarray(x)
        return x

    return jax.tree.map(enc, state)


def abstract(encoded_target: PyTree) -> PyTree:
    """``jax.ShapeDtypeStruct`` leaves carrying the target's shardings (the current devices).

    A leaf that is not a ``jax.Array`` (a NumPy array) is placed on the first device.
    """
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def spec(x):
        sharding = x.sharding if isinstance(x, jax.Array) else default
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(spec, encoded_target)


def decode(restored: PyTree, target: PyTree) -> PyTree:
    """Wraps key data back into typed keys (on the target's sharding) where ``target`` holds keys."""

    def dec(r, t):
        if is_key(t):
            key = jax.random.wrap_key_data(r, impl=_key_impl_name(t))
            return jax.device_put(key, t.sharding)
        return r

    return jax.tree.map(dec, restored, target)


def mismatch(meta: Mapping[str, Any], target: PyTree) -> str | None:
    """How a saved ``meta`` and a restore target differ, or None when they match.

    Returns:
      The rest of the sentence "the checkpoint does not match the target...": the first
      target leaf missing from the checkpoint, the first leaf of another shape or dtype,
      the first checkpoint leaf missing from the target, or differing PRNG key leaves.
    """
    saved = {d["path"]: d for d in meta["leaves"]}
    wanted = describe(target)
    for d in wanted["leaves"]:
        p = d["path"]
        if p not in saved:
            return f": target leaf {p!r} is not in the checkpoint"
        s = saved[p]
        if s["shape"] != d["shape"] or s["dtype"] != d["dtype"]:
            return (
                f" at leaf {p!r}: checkpoint has {s['dtype']}{s['shape']}, "
                f"target has {d['dtype']}{d['shape']}"
            )
    extra = sorted(set(saved) - {d["path"] for d in wanted["leaves"]})
    if extra:
        return f": checkpoint leaf {extra[0]!r} is not in the target"
    if set(meta.get("keys", {})) != set(wanted["keys"]):
        return (
            f": PRNG key leaves differ (checkpoint {sorted(meta.get('keys', {}))}, "
            f"target {sorted(wanted['keys'])})"
        )
    return None
