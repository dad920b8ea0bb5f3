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


def _error(directory: str, step: int, text: str, **kwargs) -> CheckpointError:
    """``CheckpointError("checkpoint '<directory>' step <step><text>")``."""
    return CheckpointError(f"{_where(directory, step)}{text}", directory, step, **kwargs)


def _first_line(e: Exception, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(e).__name__}: {line[:limit]}{'...' if len(line) > limit else ''}"


def read_json(mgr: ocp.CheckpointManager, directory: str, step: int, item: str) -> Any:
    """The JSON item ``item`` of ``step``; unreadable is a damaged-step `CheckpointError`."""
    args = ocp.args.Composite(**{item: ocp.args.JsonRestore()})
    try:
        with quiet_orbax():
            return mgr.restore(step, args=args)[item]
    except Exception as e:
        log.debug("reading %r of %s failed", item, _where(directory, step), exc_info=True)
        text = f": cannot read {item!r}: {_first_line(e)}"
        raise _error(directory, step, text, damaged=True) from e


def read_meta(mgr: ocp.CheckpointManager, directory: str, step: int) -> dict:
    """The ``meta`` item, checked: written by lightcomp, a version this reads, its seal intact."""
    meta = read_json(mgr, directory, step, "meta")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        text = " was not written by lightcomp (or its metadata is damaged)"
        raise _error(directory, step, text, damaged=True)
    version = meta.get("version")
    if version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        text = f" has checkpoint format {version!r}; this lightcomp reads {list(READABLE_VERSIONS)}"
        text += "; upgrade lightcomp" if newer else ""
        raise _error(directory, step, text, damaged=not newer)
    if (version >= 2 and meta.get("seal") != seal(meta)) or not _well_formed(meta):
        text = ": its metadata is damaged (the 'meta' item fails its digest or its form)"
        raise _error(directory, step, text, damaged=True)
    return meta


def _well_formed(meta: dict) -> bool:
    """The fields a restore reads have their types (0.1.0's metadata has no seal)."""
    leaves = meta.get("leaves")
    return (
        isinstance(leaves, list)
        and all(isinstance(d, dict) and {"path", "shape", "dtype"} <= set(d) for d in leaves)
        and all(isinstance(meta.get(k, {}), dict) for k in ("keys", "digests", "fingerprints"))
    )


def read_config(mgr: ocp.CheckpointManager, directory: str, step: int) -> dict:
    """The ``config`` item, compared with the digest the metadata holds of it."""
    meta = read_meta(mgr, directory, step)
    config = read_json(mgr, directory, step, "config")
    want = meta.get("config_seal")
    if want is not None and (not isinstance(config, dict) or seal(config) != want):
        text = ": its 'config' item is damaged (it does not match its digest)"
        raise _error(directory, step, text, damaged=True)
    return config


def _check_target(meta: dict, target: PyTree, directory: str, step: int) -> None:
    """The configuration, then the tree: a mismatch is a `CheckpointError` (not damaged)."""
    saved, wanted = meta.get("fingerprints"), fingerprints(target)
    for common_only in (True, False):  # a configuration that differs is named first
        differs = (
            None if saved is None else fingerprint_mismatch(saved, wanted, common_only=common_only)
        )
        if differs is not None:
            raise _error(
                directory,
                step,
                " was saved under another compression configuration than the target's"
                f"{differs}; build the target with the transform that was saved",
            )
        differs = mismatch(meta, target) if common_only else None
        if differs is not None:
            raise _error(directory, step, f" does not match the target{differs}")


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
        text = f" could not be read{at} (damaged or truncated file?): {_first_line(e)}"
        raise _error(directory, step, text, leaf=leaf, damaged=True) from e


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
    paths = [d["path"] for d in meta["leaves"]]
    restored = _read_arrays(mgr, directory, step, item, paths)
    where = _where(directory, step)
    if "digests" not in meta:
        log.warning(
            "%s has no content digests (written by lightcomp 0.1.0): restored unverified", where
        )
    else:
        bad = first_damaged(restored, meta["digests"])
        if bad is not None:
            text = f": leaf {bad!r} does not match the digest saved with it (its data are damaged)"
            raise _error(directory, step, text, leaf=bad, damaged=True)
    return restored if target is None else decode(restored, target)
