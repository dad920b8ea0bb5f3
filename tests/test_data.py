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
    ("x", "y", "kwargs", "exc", "match"),
    [
        (np.zeros((10, 2)), np.zeros(10), {"batch_size": 0}, ValueError, "batch_size must be >= 1"),
        (np.zeros((10, 2)), np.zeros(10), {"batch_size": 11}, ValueError, "larger than the 10"),
        (np.zeros((10, 2)), np.zeros(10), {"batch_size": 2.0}, TypeError, "batch_size must be an int"),
        (np.zeros((10, 2)), np.zeros(10), {"batch_size": True}, TypeError, "batch_size must be an int"),
        (np.zeros((10, 2)), np.zeros(10), {"batch_size": 2, "seed": -1}, ValueError, "seed"),
        (np.zeros((10, 2)), np.zeros(10), {"batch_size": 2, "drop_last": "no"}, TypeError, "drop_last"),
        (np.zeros((10, 2)), np.zeros(5), {"batch_size": 2}, ValueError, "differ in length"),
        (np.zeros((0, 2)), np.zeros(0), {"batch_size": 2}, ValueError, "empty"),
        (np.zeros((0, 2)), np.zeros(0), {"batch_size": 2, "drop_last": False}, ValueError, "empty"),
        (np.zeros((3, 2)), np.zeros(3), {"batch_size": 4}, ValueError, "drop_last=False"),
        (np.float32(1), np.zeros(3), {"batch_size": 1}, TypeError, "x must be an array"),
    ],
)  # fmt: skip
def test_batches_bad_input_refused_when_called(x, y, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        data.batches(x, y, **kwargs)  # at the call: not at the first next()


def test_batches_larger_than_the_data_without_drop_last():
    x, y = np.arange(3.0)[:, None], np.arange(3)
    it = data.batches(x, y, 5, drop_last=False)
    assert [len(next(it)["labels"]) for _ in range(3)] == [3, 3, 3]  # one short batch an epoch


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"test_fraction": 1.0}, ValueError, "test_fraction"),
        ({"test_fraction": "0.2"}, TypeError, "test_fraction"),
        ({"seed": -1}, ValueError, "seed must be in 0..4294967295"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"image": 1}, TypeError, "image must be True or False"),
    ],
)
def test_load_digits_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        data.load_digits(**kwargs)
