"""Tests for lightcomp.data: the built-in digits task."""

import chex
import numpy as np
import pytest

from lightcomp import data


@pytest.fixture(scope="module")
def digits():
    return data.load_digits(seed=0)


def test_split_shapes_dtypes_and_range(digits):
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert len(digits.x_test) == 360  # 20%, stratified
    chex.assert_shape(digits.x_train, (1437, 64))
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int32
    assert 0.0 <= digits.x_train.min() and digits.x_train.max() <= 1.0
    assert set(np.unique(digits.y_test)) == set(range(10))


def test_split_is_fixed_by_seed_and_images_match_vectors(digits):
    again = data.load_digits(seed=0)
    np.testing.assert_array_equal(again.x_test, digits.x_test)
    other = data.load_digits(seed=1)
    assert not np.array_equal(other.y_test, digits.y_test)
    images = data.load_digits(seed=0, image=True)
    chex.assert_shape(images.x_train, (1437, 8, 8, 1))
    np.testing.assert_array_equal(images.x_train.reshape(-1, 64), digits.x_train)


def test_batches_cover_each_epoch_once_and_reshuffle(digits):
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10, dtype=np.int32)
    it = data.batches(x, y, 3, seed=0)
    first = [next(it) for _ in range(3)]  # 3 full batches; the 10th row is dropped
    seen = np.concatenate([b["labels"] for b in first])
    assert len(set(seen.tolist())) == 9
    for b in first:
        chex.assert_shape(b["inputs"], (3, 1))
        np.testing.assert_array_equal(b["inputs"][:, 0], b["labels"])
    second = np.concatenate([next(it)["labels"] for _ in range(3)])
    assert not np.array_equal(seen, second)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"batch_size": 0}, "batch_size"), ({"batch_size": 11}, "larger")],
)
def test_batches_bad_input(kwargs, match):
    x, y = np.zeros((10, 2), np.float32), np.zeros(10, np.int32)
    with pytest.raises(ValueError, match=match):
        next(data.batches(x, y, **kwargs))
    with pytest.raises(ValueError, match="differ in length"):
        next(data.batches(x, y[:5], 2))


def test_bad_test_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits(test_fraction=1.0)
