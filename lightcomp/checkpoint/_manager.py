"""`Manager` and the one-call functions: save, restore and list the steps of a directory.

A checkpoint is one orbax step directory ``<directory>/<step>/`` written by
``ocp.CheckpointManager`` with ``args=ocp.args.Composite(state=StandardSave,
config=JsonSave, meta=JsonSave)``. orbax writes a step into a temporary directory and
renames it when complete, so a process killed mid-save leaves the previous steps
intact; a step counts only once orbax finalized it and all three items are present.
Nothing here deletes a checkpoint, except a `Manager` with ``max_to_keep`` dropping old
steps after a successful save.

A restore verifies what it reads (`lightcomp.checkpoint._digest`): the metadata's seal,
the compression configuration against the target's, the tree against the target, and
every leaf's content digest; ``fallback=True`` goes back to the newest step that
verifies and logs which one it restored.
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

from lightcomp._checks import check_bool, check_int, check_path
from lightcomp.checkpoint._codec import describe, encode
from lightcomp.checkpoint._digest import DIGEST, digests, fingerprints, seal
from lightcomp.checkpoint._errors import CheckpointError, log, quiet_orbax
from lightcomp.checkpoint._restore import read_config, restore_step

PyTree = Any

_ITEMS = ("state", "config", "meta")


def _check_step(step: Any) -> int:
    """An int >= 0 (an integer 0-d array too); anything else is a TypeError."""
    if isinstance(step, (jax.Array, np.ndarray, np.generic)):
        if np.ndim(step) != 0 or not jnp.issubdtype(step.dtype, jnp.integer):
            raise TypeError(f"step must be an integer scalar, got {step!r}")
        step = int(step)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise TypeError(f"step must be an int >= 0, got {step!r}")
    return step


def _check_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config`` as the JSON it will be stored as ({} for None)."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    try:
        return json.loads(json.dumps(dict(config)))
    except (TypeError, ValueError) as e:
        raise TypeError(f"config must be JSON-serializable: {e}") from e


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

    Raises:
      ValueError: ``max_to_keep`` or ``save_every`` is below 1.
      TypeError: one of them is not an int, ``async_save`` not a bool, or ``config`` not a
        JSON-serializable mapping.
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
        max_to_keep = None if max_to_keep is None else check_int(max_to_keep, "max_to_keep", lo=1)
        self.save_every = check_int(save_every, "save_every", lo=1)
        async_save = check_bool(async_save, "async_save")
        self.config = _check_config(config)
        self.directory = os.path.abspath(check_path(directory, "directory"))
        # cleanup_tmp_directories stays False: a half-written step is evidence, never deleted.
        options = ocp.CheckpointManagerOptions(
            cleanup_tmp_directories=False,
            max_to_keep=max_to_keep,
            save_interval_steps=1,
            enable_async_checkpointing=async_save,
        )
        with quiet_orbax():
            self._mgr = ocp.CheckpointManager(self.directory, options=options)

    def _error(self, message: str, step: int | None) -> CheckpointError:
        return CheckpointError(message, self.directory, step)

    def save(
        self,
        step: int,
        state: PyTree,
        *,
        config: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` as ``step`` if ``step % save_every == 0`` or ``force``.

        Args:
          step: the step number (an int >= 0).
          state: a `DistillState` or any pytree of arrays (typed PRNG keys allowed).
          config: this step's configuration instead of the manager's.
          force: save whatever ``step`` is.

        Every leaf's digest is computed on the host here, before `save` returns (also
        with ``async_save``: it costs one pass over the state's bytes).

        Returns:
          True when a save was started.

        Raises:
          CheckpointError: ``step`` already exists in the directory.
          TypeError: ``step`` is not an int >= 0, ``config`` is not JSON-serializable, or a
            leaf is not an array.
        """
        step = _check_step(step)
        if not force and step % self.save_every:
            return False
        cfg = self.config if config is None else _check_config(config)
        return self._write(step, state, cfg, describe(state))

    def _write(self, step: int, state: PyTree, config: dict, meta: dict) -> bool:
        """Saves checked arguments (``meta = describe(state)``) as a new step.

        The metadata gains what a restore verifies: each leaf's digest (computed here,
        on the host, before orbax writes anything), the compression states'
        fingerprints, the config's digest, and its own seal.
        """
        with quiet_orbax():
            exists = step in self._mgr.all_steps()
        if exists:
            raise self._error(
                f"checkpoint {self.directory!r} already holds step {step}; refusing to overwrite it",
                step,
            )
        encoded = encode(state)
        meta = {
            **meta,
            "digest": DIGEST,
            "digests": digests(encoded),
            "fingerprints": fingerprints(state),
            "config_seal": seal(config),
        }
        meta["seal"] = seal(meta)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(encoded),
            config=ocp.args.JsonSave(config),
            meta=ocp.args.JsonSave(meta),
        )
        with quiet_orbax():
            return bool(self._mgr.save(step, args=args, force=True))

    def steps(self) -> list[int]:
        """The complete steps, ascending."""
        with quiet_orbax():
            self._mgr.reload()
            found = self._mgr.all_steps()
        return [s for s in found if _complete(self.directory, s)]

    def latest_step(self) -> int | None:
        """The newest complete step, or None."""
        s = self.steps()
        return s[-1] if s else None

    def _pick(self, step: int | None) -> int:
        available = self.steps()
        if step is None:
            if not available:
                raise self._error(
                    f"no complete checkpoint in {self.directory!r} (step: latest)", None
                )
            return available[-1]
        step = _check_step(step)
        if step not in available:
            raise self._error(
                f"checkpoint {self.directory!r} has no complete step {step}; "
                f"complete steps: {available}",
                step,
            )
        return step

    def restore_config(self, step: int | None = None) -> dict[str, Any]:
        """The static configuration saved with ``step`` (latest when None), verified.

        Raises:
          CheckpointError: no such complete step, or its ``config`` item is damaged.
        """
        return read_config(self._mgr, self.directory, self._pick(step))

    def restore(
        self,
        target: PyTree | None = None,
        step: int | None = None,
        *,
        fallback: bool = False,
        return_step: bool = False,
    ) -> PyTree:
        """Restores ``step`` (latest complete one when None), verifying what it reads.

        Before any array is read, the step's metadata is checked against its seal, and
        the target against the saved compression configuration (the fingerprints of
        the transforms' states) and the saved tree; after, every leaf against the
        content digest saved with it. A checkpoint written by lightcomp 0.1.0 has no
        digests: it is restored unverified, with a warning logged.

        Args:
          target: a state of the same structure (e.g. a fresh ``init_state(...)``): the
            result has its structure, dtypes and shardings, so a replicated or
            mesh-sharded state comes back onto the current devices. With None the raw
            tree is returned as stored (nested dicts and lists; keys as uint32 data).
          step: which step.
          fallback: when the step is damaged (unreadable, or a leaf's digest differs),
            try the next older complete step, and so on; the step restored is logged
            (a WARNING on the ``lightcomp.checkpoint`` logger naming the steps skipped
            and why) and returned with ``return_step``. A target that does not match is
            never a reason to fall back.
          return_step: return ``(state, step restored)`` instead of the state.

        Raises:
          CheckpointError: no complete step, the tree or the compression configuration
            does not match ``target`` (naming the leaf, or both configurations), or the
            step is damaged (naming the leaf whose digest differs); with ``fallback``,
            when no step verifies. The message names directory and step.
          TypeError: ``fallback`` or ``return_step`` is not a bool.
        """
        fallback = check_bool(fallback, "fallback")
        return_step = check_bool(return_step, "return_step")
        first = self._pick(step)
        candidates = [s for s in reversed(self.steps()) if s <= first] if fallback else [first]
        skipped: list[CheckpointError] = []
        for s in candidates:
            try:
                state = restore_step(self._mgr, self.directory, s, target)
            except CheckpointError as e:
                if not (fallback and e.damaged):
                    raise
                skipped.append(e)
                continue
            if skipped:
                log.warning(
                    "checkpoint %r: restored step %d; skipped %s",
                    self.directory,
                    s,
                    "; ".join(str(e) for e in skipped),
                )
            return (state, s) if return_step else state
        raise CheckpointError(
            f"no step of checkpoint {self.directory!r} up to step {first} verifies: "
            + "; ".join(str(e) for e in skipped),
            self.directory,
            first,
            damaged=True,
        )

    def wait(self) -> None:
        """Blocks until an asynchronous save is on disk."""
        with quiet_orbax():
            self._mgr.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases orbax's resources."""
        with quiet_orbax():
            self._mgr.wait_until_finished()
            self._mgr.close()

    def __enter__(self) -> Manager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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

    Raises:
      CheckpointError: ``step`` already exists in ``directory``.
      TypeError: a bad ``step`` or ``config``, or a leaf that is not an array.
    """
    step, config, meta = _check_step(step), _check_config(config), describe(state)
    with Manager(directory, max_to_keep=None) as m:  # creates the directory: checks first
        m._write(step, state, config, meta)


def restore(
    directory: str | os.PathLike,
    target: PyTree | None = None,
    step: int | None = None,
    *,
    fallback: bool = False,
    return_step: bool = False,
) -> PyTree:
    """Restores a state saved by `save` or a `Manager`, verified (see `Manager.restore`).

    Example:
      ``state, step = restore("ckpt", target, fallback=True, return_step=True)`` restores
      the newest step whose every leaf matches its saved digest.

    Raises:
      CheckpointError: ``directory`` does not exist, or as `Manager.restore`.
    """
    _require_dir(directory, step)
    with Manager(directory, max_to_keep=None) as m:
        return m.restore(target, step, fallback=fallback, return_step=return_step)


def restore_config(directory: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """The JSON configuration saved with ``step`` (latest complete one when None).

    Raises:
      CheckpointError: ``directory`` does not exist or has no such complete step.
    """
    _require_dir(directory, step)
    with Manager(directory, max_to_keep=None) as m:
        return m.restore_config(step)


def steps(directory: str | os.PathLike) -> list[int]:
    """The complete steps in ``directory``, ascending (empty if it does not exist)."""
    if not os.path.isdir(check_path(directory, "directory")):
        return []
    with Manager(directory, max_to_keep=None) as m:
        return m.steps()


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest complete step in ``directory``, or None."""
    s = steps(directory)
    return s[-1] if s else None


def _require_dir(directory: str | os.PathLike, step: int | None) -> None:
    directory = check_path(directory, "directory")
    if not os.path.isdir(directory):
        raise CheckpointError(
            f"checkpoint directory {os.fspath(directory)!r} does not exist "
            f"(step: {'latest' if step is None else step})",
            directory,
            step,
        )
