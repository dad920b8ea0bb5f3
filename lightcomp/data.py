"""The built-in task: scikit-learn's 8x8 handwritten digits (1,797 images, shipped, no download)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from lightcomp._checks import check_bool, check_int, check_number

__all__ = ["Digits", "batches", "load_digits"]


class Digits(NamedTuple):
    """A fixed train/test split of the digits.

    Attributes:
      x_train: float32 ``[n_train, 64]`` pixel intensities scaled to [0, 1].
      y_train: int32 ``[n_train]`` labels 0..9.
      x_test: float32 ``[n_test, 64]``.
      y_test: int32 ``[n_test]``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(*, test_fraction: float = 0.2, seed: int = 0, image: bool = False) -> Digits:
    """Loads the digits with a stratified train/test split fixed by ``seed``.

    Args:
      test_fraction: fraction of the 1,797 images held out, in (0, 1).
      seed: the split's seed.
      image: return ``[n, 8, 8, 1]`` images (for convolutional models) instead of ``[n, 64]``.

    Returns:
      `Digits` with float32 inputs in [0, 1] and int32 labels.

    Raises:
      ValueError: ``test_fraction`` is not in (0, 1) or ``seed`` not in [0, 2**32 - 1].
      TypeError: ``test_fraction`` is not a number, ``seed`` not an int, ``image`` not
        a bool.
    """
    check_number(test_fraction, "test_fraction", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    check_int(seed, "seed", lo=0, hi=2**32 - 1)  # scikit-learn's range for a seed
    check_bool(image, "image")
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    ds = _sk_load_digits()
    x = (ds.data / 16.0).astype(np.float32)
    y = ds.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    if image:
        x_tr = x_tr.reshape(-1, 8, 8, 1)
        x_te = x_te.reshape(-1, 8, 8, 1)
    return Digits(x_tr, y_tr, x_te, y_te)


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int = 0, drop_last: bool = True
) -> Iterator[dict[str, np.ndarray]]:
    """Yields shuffled batches ``{"inputs": [b, ...], "labels": [b]}`` forever, epoch after epoch.

    Each epoch reshuffles with a generator seeded by ``seed``; with ``drop_last``
    every batch has exactly ``batch_size`` rows, so a jitted step compiles once. The
    arguments are checked here, when `batches` is called, not at the first batch.

    Args:
      x: inputs ``[n, ...]``.
      y: labels ``[n]``.
      batch_size: rows per batch (>= 1; at most ``n`` with ``drop_last``).
      seed: the shuffling's seed (>= 0).
      drop_last: drop each epoch's last, incomplete batch.

    Returns:
      An endless iterator of batches.

    Raises:
      ValueError: ``x`` and ``y`` differ in length or are empty (there would be no
        batch, ever), ``batch_size`` is below 1, or larger than ``n`` with ``drop_last``.
      TypeError: ``batch_size`` or ``seed`` is not an int, ``drop_last`` not a bool,
        ``x`` or ``y`` not an array.
    """
    batch_size = check_int(batch_size, "batch_size", lo=1)
    seed = check_int(seed, "seed", lo=0)
    drop_last = check_bool(drop_last, "drop_last")
    for name, a in (("x", x), ("y", y)):
        if np.ndim(a) == 0:
            raise TypeError(f"{name} must be an array with one row per example, got {a!r}")
    n = len(x)
    if n != len(y):
        raise ValueError(f"x and y differ in length: {n} != {len(y)}")
    if n == 0:
        raise ValueError("x and y are empty: there is no example to make a batch of")
    if drop_last and batch_size > n:
        raise ValueError(
            f"batch_size {batch_size} is larger than the {n} examples (with drop_last=True "
            "no batch is ever full; use drop_last=False or a smaller batch_size)"
        )
    return _epochs(x, y, batch_size, seed, drop_last)


def _epochs(x, y, batch_size: int, seed: int, drop_last: bool) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    n = len(x)
    while True:
        order = rng.permutation(n)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i : i + batch_size]
            yield {"inputs": x[idx], "labels": y[idx]}
