"""Shared helpers of the checkpoint tests: numbered states, data files, a saver to kill."""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

from lightcomp import checkpoint as ckpt


def numbered_state(step: int) -> dict:
    """A state that depends on ``step`` only (so a restored one can be checked bit for bit).

    About 1 MiB: float32, bfloat16, bool and int leaves and a typed PRNG key.
    """
    rng = np.random.default_rng(step)
    return {
        "w": rng.normal(size=(512, 512)).astype(np.float32),
        "b": rng.normal(size=(512,)).astype(ml_dtypes.bfloat16),
        "mask": rng.random(4096) < 0.5,
        "step": np.int32(step),
        "key": jax.random.key(step),
    }


def leaves(state) -> list[tuple[str, np.ndarray]]:
    """``(path, host array)`` of every leaf, typed keys as their key data."""
    out = []
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        if jax.dtypes.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out.append((jax.tree_util.keystr(path), np.asarray(x)))
    return out


def assert_bit_exact(a, b) -> None:
    la, lb = leaves(a), leaves(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, p
        np.testing.assert_array_equal(
            x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8), err_msg=p
        )


def data_files(step_dir: Path) -> list[Path]:
    """orbax's array data files of one step (files in the ``d/`` folders under ``state/``)."""
    return sorted(
        Path(r) / f for r, _, fs in os.walk(step_dir / "state") for f in fs if Path(r).name == "d"
    )


def flip_bit(path: Path, rng: np.random.Generator) -> int:
    """Flips one random bit of ``path`` in place; returns the byte offset."""
    data = bytearray(path.read_bytes())
    pos = int(rng.integers(len(data)))
    data[pos] ^= 1 << int(rng.integers(8))
    path.write_bytes(bytes(data))
    return pos


def save_forever(directory: str) -> None:
    """Saves ``numbered_state(s)`` as step ``s`` = 1, 2, ... until killed; says when 1 is on disk."""
    ckpt.save(directory, numbered_state(1), 1)
    print("saved 1", flush=True)
    for s in itertools.count(2):
        ckpt.save(directory, numbered_state(s), s)


if __name__ == "__main__":
    save_forever(sys.argv[1])
