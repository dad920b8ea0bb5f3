"""Reading one step back, verified: metadata, configuration, tree, then every leaf's digest.

The order of the checks: the ``meta`` item is read and its seal compared (a damaged
description of the tree); the target's compression configuration is compared with
the saved one (`lightcomp.checkpoint._digest.fingerprints`) and its tree with the saved
tree (`lightcomp.checkpoint._codec.mismatch`), before any array is read; then orbax
reads the arrays and every leaf's digest is compared. A failure is one
`CheckpointError` naming the directory, the step and, where there is one, the leaf;
``damaged`` tells a damaged step (a restore may fall back to an older one) from a
target that does not match.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from lightcomp.checkpoint._codec import (
    FORMAT,
    FORMAT_VERSION,
    READABLE_VERSIONS,
    abstract,
    decode,
    encode,
    mismatch,
)
from lightcomp.checkpoint._digest import fingerprint_mismatch, fingerprints, first_damaged, seal
from lightcomp.checkpoint._errors import (
    CheckpointError,
    absorb_stray_callbacks,
    log,
    quiet_orbax,
)

PyTree = Any


def _where(directory: str, step: int) -> str:
    return f"checkpoint {directory!r} step {step}"


def _first_line(e: Exception, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(e).__name__}: {line[:limit]}{'...' if len(line) > limit else ''}"


def read_json(mgr: ocp.CheckpointManager, directory: str, step: int, item: str) -> Any:
    """The JSON item ``item`` of ``step``; unreadable is a damaged-step `CheckpointError`."""
    try:
        with quiet_orbax():
            return mgr.restore(step, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[
                item
            ]
    except Exception as e:
        log.debug("reading %r of %s failed", item, _where(directory, step), exc_info=True)
        raise CheckpointError(
            f"{_where(directory, step)}: cannot read {item!r}: {_first_line(e)}",
            directory,
            step,
            damaged=True,
        ) from e


def read_meta(mgr: ocp.CheckpointManager, directory: str, step: int) -> dict:
    """The ``meta`` item, checked: written by lightcomp, a version this reads, its seal intact."""
    meta, where = read_json(mgr, directory, step, "meta"), _where(directory, step)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{where} was not written by lightcomp (or its metadata is damaged)",
            directory,
            step,
            damaged=True,
        )
    version = meta.get("version")
    if version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointError(
            f"{where} has checkpoint format {version!r}; this lightcomp reads "
            f"{list(READABLE_VERSIONS)}" + ("; upgrade lightcomp" if newer else ""),
            directory,
            step,
            damaged=not newer,
        )
    if version >= 2 and meta.get("seal") != seal(meta):
        raise CheckpointError(
            f"{where}: its metadata is damaged (the 'meta' item does not match its digest)",
            directory,
            step,
            damaged=True,
        )
    return meta


def read_config(mgr: ocp.CheckpointManager, directory: str, step: int) -> dict:
    """The ``config`` item, compared with the digest the metadata holds of it."""
    meta = read_meta(mgr, directory, step)
    config = read_json(mgr, directory, step, "config")
    if "config_seal" in meta and (
        not isinstance(config, dict) or seal(config) != meta["config_seal"]
    ):
        raise CheckpointError(
            f"{_where(directory, step)}: its 'config' item is damaged (it does not match "
            "its digest)",
            directory,
            step,
            damaged=True,
        )
    return config


def _check_target(meta: dict, target: PyTree, directory: str, step: int) -> None:
    """The configuration, then the tree: a mismatch is a `CheckpointError` (not damaged)."""
    where = _where(directory, step)
    saved, wanted = meta.get("fingerprints"), fingerprints(target)
    for common_only in (True, False):  # a configuration that differs is named first
        differs = (
            None if saved is None else fingerprint_mismatch(saved, wanted, common_only=common_only)
        )
        if differs is not None:
            raise CheckpointError(
                f"{where} was saved under another compression configuration than the "
                f"target's{differs}; build the target with the transform that was saved",
                directory,
                step,
            )
        differs = mismatch(meta, target) if common_only else None
        if differs is not None:
            raise CheckpointError(f"{where} does not match the target{differs}", directory, step)


def _named_leaf(message: str, paths: list[str]) -> str | None:
    """The leaf an orbax / tensorstore error names (orbax names ``a/b`` as ``a.b``)."""
    found = [p for p in paths if f'"{p.replace("/", ".")}/' in message]
    return max(found, key=len) if found else None


def _read_arrays(mgr, directory: str, step: int, item, paths: list[str]) -> PyTree:
    try:
        with quiet_orbax():
            restored = mgr.restore(step, args=ocp.args.Composite(state=item))["state"]
            return jax.block_until_ready(restored)
    except Exception as e:
        absorb_stray_callbacks()
        log.debug("orbax could not read %s", _where(directory, step), exc_info=True)
        leaf = _named_leaf(str(e), paths)
        at = f" at leaf {leaf!r}" if leaf else ""
        raise CheckpointError(
            f"{_where(directory, step)} could not be read{at} (damaged or truncated file?): "
            f"{_first_line(e)}",
            directory,
            step,
            leaf=leaf,
            damaged=True,
        ) from e


def restore_step(
    mgr: ocp.CheckpointManager, directory: str | os.PathLike, step: int, target: PyTree | None
) -> PyTree:
    """Restores ``step`` into ``target`` (or as stored when None), verified.

    Raises:
      CheckpointError: the step is damaged (``damaged=True``: unreadable metadata or
        arrays, a leaf whose digest differs, naming it) or does not match ``target``.
    """
    directory = os.fspath(directory)
    meta = read_meta(mgr, directory, step)
    if target is None:
        item = ocp.args.StandardRestore()
    else:
        _check_target(meta, target, directory, step)
        item = ocp.args.StandardRestore(abstract(encode(target)))
    paths = [d["path"] for d in meta.get("leaves", []) if isinstance(d, dict)]
    restored = _read_arrays(mgr, directory, step, item, paths)
    where = _where(directory, step)
    if "digests" not in meta:
        log.warning(
            "%s has no content digests (written by lightcomp 0.1.0): restored unverified", where
        )
    else:
        bad = first_damaged(restored, meta["digests"])
        if bad is not None:
            raise CheckpointError(
                f"{where}: leaf {bad!r} does not match the digest saved with it (its array "
                "data are damaged)",
                directory,
                step,
                leaf=bad,
                damaged=True,
            )
    return restored if target is None else decode(restored, target)
