"""Text every machine has: the Python standard library's own source files, as byte tokens."""

from __future__ import annotations

import pathlib
import sysconfig

import numpy as np

from lightcomp._checks import check_int

VOCAB = 128  # ASCII


def stdlib_text(n_chars: int, *, skip_chars: int = 0) -> str:
    """ASCII text from the standard library's ``.py`` files, in sorted path order.

    Test suites and non-ASCII characters are left out, so the same interpreter gives the same
    text on every machine. ``skip_chars`` skips that much text first: training and held-out
    text are two slices of one stream that do not overlap.

    Args:
      n_chars: characters to return (>= 1).
      skip_chars: characters skipped before them (>= 0).

    Returns:
      A string of ``n_chars`` characters (fewer if the library runs out).

    Example:
      >>> len(lc.posttrain.stdlib_text(1000)), lc.posttrain.stdlib_text(5) == lc.posttrain.stdlib_text(5)
      (1000, True)
    """
    n_chars = check_int(n_chars, "n_chars", lo=1)
    skip_chars = check_int(skip_chars, "skip_chars", lo=0)
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    parts, have = [], -skip_chars
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in ("test", "tests", "idlelib", "site-packages") for p in rel):
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        text = text.encode("ascii", errors="ignore").decode("ascii")
        if have + len(text) <= 0:
            have += len(text)
            continue
        if have < 0:
            text, have = text[-have:], 0
        parts.append(text)
        have += len(text)
        if have >= n_chars:
            break
    return "".join(parts)[:n_chars]


def encode(text: str) -> np.ndarray:
    """int32 byte tokens ``[len(text)]`` in ``0..127`` (ASCII)."""
    return np.frombuffer(text.encode("ascii", errors="replace"), np.uint8).astype(np.int32) % VOCAB


def windows(tokens: np.ndarray, seq_len: int, count: int, *, seed: int = 0) -> np.ndarray:
    """int32 ``[count, seq_len + 1]`` windows of ``tokens`` at random (seeded) offsets."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - seq_len - 1, size=count)
    return np.stack([tokens[s : s + seq_len + 1] for s in starts])
