"""The built-in task: scikit-learn's 8x8 handwritten digits (1,797 images, shipped, no download)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

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
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
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
    every batch has exactly ``batch_size`` rows, so a jitted step compiles once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} != {len(y)}")
    if drop_last and batch_size > len(x):
        raise ValueError(f"batch_size {batch_size} is larger than the {len(x)} examples")
    rng = np.random.default_rng(seed)
    n = len(x)
    while True:
        order = rng.permutation(n)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i : i + batch_size]
            yield {"inputs": x[idx], "labels": y[idx]}
