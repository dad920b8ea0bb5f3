"""Save, restore and resume a whole `DistillState` with orbax-checkpoint.

A checkpoint is one orbax step directory ``<directory>/<step>/`` written by
``ocp.CheckpointManager`` with ``args=ocp.args.Composite(...)`` holding three items:

- ``state``: every array of the state through ``StandardSave`` (params, optimizer
  state, the compression state with its boolean masks, uint8 assignments, centroids,
  ranges and LSQ scales, and the rng; ``None`` leaves of state trees are kept);
- ``config``: the caller's static configuration (bit widths, granularity, schedule
  parameters) as JSON, so a checkpoint says how its model was compressed;
- ``meta``: the path, shape and dtype of every leaf and which leaves are typed PRNG
  keys, as JSON, so a restore into a mismatching tree fails with a message that
  names the leaf, and keys come back as keys.

orbax writes a step into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous steps intact; `restore` and
`latest_step` only see complete steps. Nothing here ever deletes a checkpoint,
except a `Manager` with ``max_to_keep`` dropping old steps after a successful save.

Typed PRNG keys (``jax.random.key``) are stored as their ``uint32`` key data
(``jax.random.key_data``) and rebuilt with ``jax.random.wrap_key_data`` and the
recorded implementation, because array serialization has no key dtype.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lightcomp import tree as _tree

__all__ = [
    "CheckpointError",
    "Manager",
    "latest_step",
    "restore",
    "restore_config",
    "save",
    "steps",
]

PyTree = Any

_FORMAT = "lightcomp-checkpoint"
_FORMAT_VERSION = 1
_ITEMS = ("state", "config", "meta")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, damaged or does not match the target.

    Attributes:
      directory: the checkpoint directory.
      step: the step concerned, or None when no step could be chosen.
    """

    def __init__(self, message: str, directory: str | os.PathLike, step: int | None):
        super().__init__(message)
        self.directory = os.fspath(directory)
        self.step = step


# --------------------------------------------------------------------------- leaves


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_impl_name(key: jax.Array) -> str:
    # jax.random.key_impl returns a PRNGSpec whose str() is the name `jax.random.key` accepts.
    return str(jax.random.key_impl(key))


def _flat(state: PyTree, argname: str) -> list[tuple[str, Any]]:
    return _tree.leaves_with_paths(state, argname=argname)


def _describe(state: PyTree) -> dict[str, Any]:
    """The JSON ``meta`` item: path, shape and dtype of each leaf, and the key leaves."""
    leaves, keys = [], {}
    for path, x in _flat(state, "state"):
        if _is_key(x):
            keys[path] = _key_impl_name(x)
            x = jax.random.key_data(x)
        x = np.asarray(x) if not hasattr(x, "dtype") else x
        leaves.append({"path": path, "shape": list(x.shape), "dtype": str(jnp.dtype(x.dtype))})
    return {"format": _FORMAT, "version": _FORMAT_VERSION, "leaves": leaves, "keys": keys}


def _encode(state: PyTree) -> PyTree:
    """Typed keys -> their uint32 data; Python numbers -> 0-d arrays."""

    def enc(x):
        if _is_key(x):
            return jax.random.key_data(x)
        if isinstance(x, (bool, int, float, np.generic)):
            return np.asarray(x)
        return x

    return jax.tree.map(enc, state)


def _abstract(encoded_target: PyTree) -> PyTree:
    """ShapeDtypeStructs carrying the target's shardings (the current devices)."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def spec(x):
        sharding = x.sharding if isinstance(x, jax.Array) else default
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(spec, encoded_target)


def _decode(restored: PyTree, target: PyTree) -> PyTree:
    """Wraps key data back into typed keys where the target holds keys."""

    def dec(r, t):
        if _is_key(t):
            key = jax.random.wrap_key_data(r, impl=_key_impl_name(t))
            return jax.device_put(key, t.sharding)
        return r

    return jax.tree.map(dec, restored, target)


def _check_matches(meta: Mapping[str, Any], target: PyTree, directory: str, step: int) -> None:
    saved = {d["path"]: d for d in meta["leaves"]}
    wanted = _describe(target)
    where = f"checkpoint {directory!r} step {step}"
    for d in wanted["leaves"]:
        p = d["path"]
        if p not in saved:
            raise CheckpointError(
                f"{where} does not match the target: target leaf {p!r} is not in the checkpoint",
                directory,
                step,
            )
        s = saved[p]
        if s["shape"] != d["shape"] or s["dtype"] != d["dtype"]:
            raise CheckpointError(
                f"{where} does not match the target at leaf {p!r}: checkpoint has "
                f"{s['dtype']}{s['shape']}, target has {d['dtype']}{d['shape']}",
                directory,
                step,
            )
    extra = sorted(set(saved) - {d["path"] for d in wanted["leaves"]})
    if extra:
        raise CheckpointError(
            f"{where} does not match the target: checkpoint leaf {extra[0]!r} is not in the target",
            directory,
            step,
        )
    if set(meta.get("keys", {})) != set(wanted["keys"]):
        raise CheckpointError(
            f"{where} does not match the target: PRNG key leaves differ "
            f"(checkpoint {sorted(meta.get('keys', {}))}, target {sorted(wanted['keys'])})",
            directory,
            step,
        )


# --------------------------------------------------------------------------- manager


def _options(**kw) -> ocp.CheckpointManagerOptions:
    # cleanup_tmp_directories stays False: a half-written step is evidence, never deleted here.
    return ocp.CheckpointManagerOptions(cleanup_tmp_directories=False, **kw)


def _complete(directory: str, step: int) -> bool:
    """A step is complete when orbax finalized it and every item of ours is present."""
    base = os.path.join(directory, str(step))
    return os.path.isfile(os.path.join(base, "_CHECKPOINT_METADATA")) and all(
        os.path.isdir(os.path.join(base, item)) for item in _ITEMS
    )


class Manager:
    """Keeps the last ``max_to_keep`` checkpoints of a run, saving every ``save_every`` steps.

    A thin layer over ``orbax.checkpoint.CheckpointManager`` (``args=Composite(state=
    StandardSave, config=JsonSave, meta=JsonSave)``). Use as a context manager, or call
    `close` (which waits for an asynchronous save to finish).

    Args:
      directory: where step directories ``<directory>/<step>`` live; created on first save.
      max_to_keep: how many recent checkpoints to keep (None keeps all).
      save_every: `save` writes only when ``step % save_every == 0`` (unless ``force``).
      async_save: write in a background thread; `save` returns once device arrays are
        copied to host memory, and `wait` blocks until the step is on disk.
      config: default static configuration (JSON-serializable) stored with every step.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_every: int = 1,
        async_save: bool = False,
        config: Mapping[str, Any] | None = None,
    ):
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"max_to_keep must be None or an int >= 1, got {max_to_keep!r}")
        if not isinstance(save_every, int) or isinstance(save_every, bool) or save_every < 1:
            raise ValueError(f"save_every must be an int >= 1, got {save_every!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.save_every = save_every
        self.config = _check_config(config)
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=_options(
                max_to_keep=max_to_keep,
                save_interval_steps=1,
                enable_async_checkpointing=async_save,
            ),
        )

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        config: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` as ``step`` if ``step % save_every == 0`` or ``force``.

        Returns:
          True when a save was started.

        Raises:
          CheckpointError: ``step`` already exists in the directory.
          TypeError: ``config`` is not JSON-serializable, or a leaf is not an array.
        """
        step = _check_step(step)
        if not force and step % self.save_every:
            return False
        if step in self._mgr.all_steps():
            raise CheckpointError(
                f"checkpoint {self.directory!r} already holds step {step}; "
                "refusing to overwrite it",
                self.directory,
                step,
            )
        cfg = self.config if config is None else _check_config(config)
        meta = _describe(state)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_encode(state)),
            config=ocp.args.JsonSave(cfg),
            meta=ocp.args.JsonSave(meta),
        )
        return bool(self._mgr.save(step, args=args, force=True))

    def steps(self) -> list[int]:
        """The complete steps, ascending."""
        self._mgr.reload()
        return [s for s in self._mgr.all_steps() if _complete(self.directory, s)]

    def latest_step(self) -> int | None:
        """The newest complete step, or None."""
        s = self.steps()
        return s[-1] if s else None

    def _pick(self, step: int | None) -> int:
        available = self.steps()
        if step is None:
            if not available:
                raise CheckpointError(
                    f"no complete checkpoint in {self.directory!r} (step: latest)",
                    self.directory,
                    None,
                )
            return available[-1]
        step = _check_step(step)
        if step not in available:
            raise CheckpointError(
                f"checkpoint {self.directory!r} has no complete step {step}; "
                f"complete steps: {available}",
                self.directory,
                step,
            )
        return step

    def _read_json(self, step: int, item: str) -> Any:
        try:
            r = self._mgr.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))
            return r[item]
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {self.directory!r} step {step}: cannot read {item!r}: {e}",
                self.directory,
                step,
            ) from e

    def restore_config(self, step: int | None = None) -> dict[str, Any]:
        """The static configuration saved with ``step`` (latest when None)."""
        step = self._pick(step)
        return self._read_json(step, "config")

    def restore(self, target: PyTree | None = None, step: int | None = None) -> PyTree:
        """Restores ``step`` (latest complete one when None).

        Args:
          target: a state of the same structure (e.g. a fresh ``init_state(...)``): the
            result has its structure, dtypes and shardings, so a replicated or
            mesh-sharded state comes back onto the current devices. With None the raw
            tree is returned as stored (nested dicts and lists; keys as uint32 data).
          step: which step.

        Raises:
          CheckpointError: no complete step, the tree does not match ``target`` (names
            the leaf), or a damaged file; the message names directory and step.
        """
        step = self._pick(step)
        meta = self._read_json(step, "meta")
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise CheckpointError(
                f"checkpoint {self.directory!r} step {step} was not written by lightcomp",
                self.directory,
                step,
            )
        if target is None:
            item = ocp.args.StandardRestore()
        else:
            _check_matches(meta, target, self.directory, step)
            item = ocp.args.StandardRestore(_abstract(_encode(target)))
        try:
            restored = self._mgr.restore(step, args=ocp.args.Composite(state=item))["state"]
            restored = jax.block_until_ready(restored)
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {self.directory!r} step {step} could not be read "
                f"(damaged or truncated file?): {type(e).__name__}: {e}",
                self.directory,
                step,
            ) from e
        return restored if target is None else _decode(restored, target)

    def wait(self) -> None:
        """Blocks until an asynchronous save is on disk."""
        self._mgr.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources."""
        self._mgr.wait_until_finished()
        self._mgr.close()

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_step(step: Any) -> int:
    if isinstance(step, (jax.Array, np.ndarray, np.generic)):
        if np.ndim(step) != 0 or not jnp.issubdtype(step.dtype, jnp.integer):
            raise TypeError(f"step must be an integer scalar, got {step!r}")
        step = int(step)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise TypeError(f"step must be an int >= 0, got {step!r}")
    return step


def _check_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    try:
        return json.loads(json.dumps(dict(config)))
    except (TypeError, ValueError) as e:
        raise TypeError(f"config must be JSON-serializable: {e}") from e


# --------------------------------------------------------------------------- functions


def save(
    directory: str | os.PathLike,
    state: PyTree,
    step: int,
    *,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Writes ``state`` as ``<directory>/<step>`` and waits until it is complete on disk.

    Args:
      directory: the checkpoint directory (created if needed).
      state: a `DistillState` or any pytree of arrays (typed PRNG keys allowed).
      step: the step number (an int >= 0 not yet saved in ``directory``).
      config: static configuration stored beside the arrays as JSON.
    """
    with Manager(directory, max_to_keep=None, config=config) as m:
        m.save(step, state, force=True)


def restore(
    directory: str | os.PathLike, target: PyTree | None = None, step: int | None = None
) -> PyTree:
    """Restores a state saved by `save` or a `Manager` (see `Manager.restore`)."""
    _require_dir(directory, step)
    with Manager(directory, max_to_keep=None) as m:
        return m.restore(target, step)


def restore_config(directory: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """The JSON configuration saved with ``step`` (latest complete one when None)."""
    _require_dir(directory, step)
    with Manager(directory, max_to_keep=None) as m:
        return m.restore_config(step)


def steps(directory: str | os.PathLike) -> list[int]:
    """The complete steps in ``directory``, ascending (empty if it does not exist)."""
    if not os.path.isdir(directory):
        return []
    with Manager(directory, max_to_keep=None) as m:
        return m.steps()


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest complete step in ``directory``, or None."""
    s = steps(directory)
    return s[-1] if s else None


def _require_dir(directory: str | os.PathLike, step: int | None) -> None:
    if not os.path.isdir(directory):
        raise CheckpointError(
            f"checkpoint directory {os.fspath(directory)!r} does not exist "
            f"(step: {'latest' if step is None else step})",
            directory,
            step,
        )
