"""How checkpoint failures reach the user: one `CheckpointError`, orbax's logs kept aside.

orbax and tensorstore report a damaged file in their own way too: ERROR records on the
``absl`` logger (printed to stderr with whole file contents and tracebacks), and, when a
read fails half-way, stray callbacks that fire after orbax closed its event loop
(``RuntimeError: Event loop is closed``, printed by ``sys.unraisablehook``). Around every
orbax call, `quiet_orbax` moves the first to the ``lightcomp.checkpoint`` logger at DEBUG
level; after a failed read, `absorb_stray_callbacks` logs the second there too. The user
sees the one message of the `CheckpointError`; ``logging.getLogger("lightcomp.checkpoint")
.setLevel(logging.DEBUG)`` shows the details.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

log = logging.getLogger("lightcomp.checkpoint")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, damaged or does not match the target.

    Attributes:
      directory: the checkpoint directory.
      step: the step concerned, or None when no step could be chosen.
      leaf: the leaf path concerned (e.g. ``"params/Dense_0/kernel"``), or None.
      damaged: True when the step's files are damaged or unreadable (a restore with
        ``fallback=True`` then tries the next older step); False when the step is fine
        but does not match the target or the request.
    """

    def __init__(
        self,
        message: str,
        directory: str | os.PathLike,
        step: int | None,
        *,
        leaf: str | None = None,
        damaged: bool = False,
    ):
        super().__init__(message)
        self.directory = os.fspath(directory)
        self.step = step
        self.leaf = leaf
        self.damaged = damaged


class _ToDebug(logging.Filter):
    """Drops a record from its logger after logging it to ``lightcomp.checkpoint`` at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        log.debug("orbax: %s", record.getMessage(), exc_info=record.exc_info)
        return False


_TO_DEBUG = _ToDebug()


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
    """Within the block, orbax's and tensorstore's log records go to DEBUG on our logger."""
    absl = logging.getLogger("absl")
    absl.addFilter(_TO_DEBUG)
    try:
        yield
    finally:
        absl.removeFilter(_TO_DEBUG)


def _is_stray_callback(unraisable) -> bool:
    exc = unraisable.exc_value
    if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed":
        return False
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name in (
        "_check_closed",
        "call_soon_threadsafe",
    )


class _Absorb:
    """An unraisable hook that logs orbax's stray callbacks and passes on everything else."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable) -> None:
        if _is_stray_callback(unraisable):
            log.debug("orbax: a read callback fired after its event loop closed: %s",
                      unraisable.exc_value)  # fmt: skip
        else:
            self.previous(unraisable)


def absorb_stray_callbacks() -> None:
    """Installs `_Absorb` (once) in front of the current ``sys.unraisablehook``."""
    if not isinstance(sys.unraisablehook, _Absorb):
        sys.unraisablehook = _Absorb(sys.unraisablehook)
