"""Tests of lightcomp.checkpoint._errors: the error's fields, orbax's records and callbacks."""

from __future__ import annotations

import logging
import sys
import types

from lightcomp.checkpoint._errors import (
    CheckpointError,
    _Absorb,
    absorb_stray_callbacks,
    quiet_orbax,
)


def test_checkpoint_error_fields():
    e = CheckpointError("m", "/tmp/x", 3, leaf="a/b", damaged=True)
    assert isinstance(e, ValueError) and str(e) == "m"
    assert (e.directory, e.step, e.leaf, e.damaged) == ("/tmp/x", 3, "a/b", True)
    assert CheckpointError("m", "d", None).damaged is False


def test_quiet_orbax_moves_absl_records_to_debug(caplog):
    with caplog.at_level(logging.DEBUG):
        with quiet_orbax():
            logging.getLogger("absl").error("Failed to read %s", "x")
        logging.getLogger("absl").error("after the block")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("lightcomp.checkpoint", logging.DEBUG, "orbax: Failed to read x"),
        ("absl", logging.ERROR, "after the block"),
    ]


def _unraisable(exc, fn_name):
    def raiser():
        raise exc

    raiser.__code__ = raiser.__code__.replace(co_name=fn_name)
    try:
        raiser()
    except BaseException as e:
        return types.SimpleNamespace(exc_value=e, exc_traceback=e.__traceback__)


def test_only_the_stray_callbacks_are_absorbed(caplog):
    seen = []
    hook = _Absorb(seen.append)
    stray = _unraisable(RuntimeError("Event loop is closed"), "_check_closed")
    other = _unraisable(RuntimeError("Event loop is closed"), "user_code")
    with caplog.at_level(logging.DEBUG, logger="lightcomp.checkpoint"):
        hook(stray)
        hook(other)
    assert seen == [other]
    assert "event loop closed" in caplog.records[0].getMessage()
    previous = sys.unraisablehook
    sys.unraisablehook = seen.append  # whatever hook was there before
    try:
        absorb_stray_callbacks()
        absorb_stray_callbacks()  # once
        assert isinstance(sys.unraisablehook, _Absorb)
        assert sys.unraisablehook.previous == seen.append
    finally:
        sys.unraisablehook = previous
