"""Tests for lightcomp/posttrain/_text.py: standard-library text, byte tokens and windows."""

import numpy as np
import pytest

from lightcomp import posttrain as P


def test_text_is_ascii_deterministic_and_slices_one_stream():
    head = P.stdlib_text(3000)
    assert len(head) == 3000 and head.isascii() and head == P.stdlib_text(3000)
    assert P.stdlib_text(1000, skip_chars=2000) == head[2000:]


def test_encode_gives_byte_tokens():
    tokens = P.encode("ab\n~")
    assert tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, [97, 98, 10, 126])


def test_windows_are_seeded_slices_of_the_tokens():
    tokens = np.arange(500, dtype=np.int32)
    w = P.windows(tokens, 16, 8, seed=3)
    assert w.shape == (8, 17) and w.dtype == np.int32
    np.testing.assert_array_equal(np.diff(w, axis=1), 1)  # consecutive tokens
    assert (w[:, -1] < 500).all()
    np.testing.assert_array_equal(w, P.windows(tokens, 16, 8, seed=3))
    assert not np.array_equal(w, P.windows(tokens, 16, 8, seed=4))


@pytest.mark.parametrize("n", [0, -1])
def test_bad_length_is_named(n):
    with pytest.raises((ValueError, TypeError), match="n_chars"):
        P.stdlib_text(n)
