"""lightcomp/prune/_granularity.py: typed granularities and their string spellings."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from lightcomp import prune as P


def test_values_are_frozen_hashable_and_readable():
    values = [P.Element(), P.Channel(), P.Block(2, 3), P.NM(2, 4)]
    assert [repr(v) for v in values] == [
        "Element()",
        "Channel()",
        "Block(rows=2, cols=3)",
        "NM(n=2, m=4)",
    ]
    assert len({*values, P.Element(), P.Block(2, 3), P.NM(2, 4)}) == 4
    assert P.NM(np.int64(2), 4) == P.NM(2, 4) and type(P.NM(np.int64(2), 4).n) is int
    with pytest.raises(dataclasses.FrozenInstanceError):
        P.NM(2, 4).n = 1
    assert P.NM(2, 4).sparsity == 0.5 and P.NM(3, 4).sparsity == 0.25 and P.NM(4, 4).sparsity == 0
    # static under jit: the same value hits the same compiled function
    fn = jax.jit(lambda x, g: x * g.sparsity, static_argnums=1)
    assert float(fn(2.0, P.NM(1, 4))) == 1.5


@pytest.mark.parametrize(
    ("make", "err", "match"),
    [
        (
            lambda: P.NM(4, 2),
            ValueError,
            "n \\(weights kept, 4\\) must be <= m \\(group size, 2\\)",
        ),
        (lambda: P.NM(0, 2), ValueError, "n must be >= 1"),
        (lambda: P.NM(True, 2), TypeError, "n must be an int, got True"),
        (lambda: P.NM(2, 4.0), TypeError, "m must be an int"),
        (lambda: P.Block(0, 2), ValueError, "rows must be >= 1"),
        (lambda: P.Block(2, False), TypeError, "cols must be an int"),
    ],
)
def test_constructors_validate_once(make, err, match):
    with pytest.raises(err, match=match):
        make()


@pytest.mark.parametrize(
    ("args", "kwargs", "want"),
    [
        (("element",), {}, P.Element()),
        (("channel",), {}, P.Channel()),
        (("block",), {"block": 2}, P.Block(2, 2)),
        (("block",), {"block": (2, 3)}, P.Block(2, 3)),
        (("block",), {"block": [4, 1]}, P.Block(4, 1)),
        (("n:m",), {"n": 2, "m": 4}, P.NM(2, 4)),
        (("2:4",), {}, P.NM(2, 4)),
        (("1:16",), {}, P.NM(1, 16)),
        ((P.Block(1, 2),), {}, P.Block(1, 2)),
        ((P.NM(3, 8),), {}, P.NM(3, 8)),
    ],
)
def test_as_granularity(args, kwargs, want):
    got = P.as_granularity(*args, **kwargs)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(
    ("args", "kwargs", "err", "match"),
    [
        (("row",), {}, ValueError, "granularity must be one of"),
        ((3,), {}, TypeError, "granularity must be Element\\(\\)"),
        (("n:m",), {}, ValueError, "granularity='n:m' needs ints n >= 1 and m >= 1"),
        (("n:m",), {"n": 2}, ValueError, "needs ints n >= 1 and m >= 1, got n=2, m=None"),
        (("n:m",), {"n": 4, "m": 2}, ValueError, "n .* must be <= m"),
        (("element",), {"n": 2}, ValueError, "n and m are for granularity='n:m', not 'element'"),
        (("block",), {"m": 2, "block": 2}, ValueError, "n and m are for granularity='n:m'"),
        (("channel",), {"block": 2}, ValueError, "block is for granularity='block', not 'channel'"),
        (("block",), {}, ValueError, "granularity='block' needs block = int >= 1 or"),
        (("block",), {"block": "2"}, ValueError, "needs block = int >= 1 or \\(rows, cols\\)"),
        (("block",), {"block": 0}, ValueError, "rows must be >= 1"),
        (("2:4",), {"n": 2}, ValueError, "carries n and m"),
        (("2:4",), {"block": 2}, ValueError, "block is for granularity='block'"),
        ((P.NM(2, 4),), {"n": 2}, ValueError, "carries its own sizes"),
        ((P.Element(),), {"block": 2}, ValueError, "carries its own sizes"),
    ],
)
def test_as_granularity_refuses_bad_combinations(args, kwargs, err, match):
    with pytest.raises(err, match=match):
        P.as_granularity(*args, **kwargs)
