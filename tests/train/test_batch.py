"""Tests for lightcomp/train/_batch.py: the parts of a batch and the logits' shapes."""

import numpy as np
import pytest

from lightcomp.train._batch import batch_parts, check_logits


def test_parts_of_a_batch():
    x, y, w = np.zeros((4, 3)), np.zeros(4, np.int32), np.ones(4, np.float32)
    p = batch_parts({"inputs": x, "labels": y, "weights": w}, needs_labels=True, has_teacher=True)
    assert p.inputs is x and p.labels is y and p.weights is w and p.cached is None
    cached = np.zeros((4, 10))
    p = batch_parts({"inputs": x, "teacher_logits": cached}, needs_labels=False, has_teacher=False)
    assert p.cached is cached and p.labels is None


@pytest.mark.parametrize(
    ("batch", "kw", "exc", "match"),
    [
        ([1, 2], {}, TypeError, "mapping"),
        ({"labels": np.zeros(2)}, {}, ValueError, '"inputs"'),
        ({"inputs": np.zeros((2, 3))}, {"needs_labels": True}, ValueError, '"labels"'),
        ({"inputs": np.zeros((2, 3)), "labels": np.zeros(3)}, {}, ValueError, r'batch\["labels"\]'),
        ({"inputs": np.zeros((2, 3))}, {"has_teacher": False}, ValueError, "teacher_logits"),
    ],
)
def test_bad_batches_are_named(batch, kw, exc, match):
    kw = {"needs_labels": False, "has_teacher": True, **kw}
    with pytest.raises(exc, match=match):
        batch_parts(batch, **kw)


def test_logits_shapes_are_checked():
    s = np.zeros((2, 5, 7), np.float32)
    assert check_logits(s, s, np.zeros((2, 5), np.int32)) is None
    with pytest.raises(ValueError, match="differ in shape"):
        check_logits(s, s[..., :6], None)
    with pytest.raises(ValueError, match="without the class axis"):
        check_logits(s, s, np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="logits must be"):
        check_logits(np.zeros(3), np.zeros(3), None)
