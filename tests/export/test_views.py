"""Tests for lightcomp/export/_views.py: -0 read as +0 and raw bytes made on demand."""

import ml_dtypes
import numpy as np
import pytest

from lightcomp.export._views import LazyBytes, PlusZero, materialized


@pytest.mark.parametrize("dt", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_plus_zero_reads_negative_zeros_as_positive(dt):
    x = np.array([1.5, -0.0, 0.0, -2.0, -0.0], dt)
    v = PlusZero(x)
    assert (v.dtype, v.size, v.shape) == (x.dtype, x.size, x.shape)
    got = v[:]
    assert not np.signbit(got[[1, 2, 4]]).any() and np.array_equal(got, x)
    assert np.signbit(x[1])  # the leaf itself is untouched
    np.testing.assert_array_equal(v[np.array([3, 1])], np.array([-2.0, 0.0], dt))


def test_lazy_bytes_equal_the_cast_bytes_in_any_slice():
    x = np.random.default_rng(0).standard_normal(70_000).astype(np.float32)
    x[::7] = -0.0
    want = np.where(x == 0, np.float32(0), x).astype(np.float16).tobytes()
    lazy = LazyBytes(PlusZero(x), np.float16)
    assert len(lazy) == len(want)
    for lo, hi in [(0, 10), (3, 17), (1000, 1001), (len(want) - 5, len(want))]:
        assert lazy[lo:hi] == want[lo:hi]
    assert bytes(lazy.materialize()) == want
    assert [bytes(p) for p in materialized([b"ab", lazy])] == [b"ab", want]
