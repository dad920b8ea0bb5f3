"""Tests for lightcomp/export/_groups.py: group ids computed for the values asked for only."""

import numpy as np
import pytest

from lightcomp.export._groups import GivenGroups, Groups, group_ids

SHAPE = (4, 6, 8)
GRANS = [
    {"kind": "tensor"},
    {"kind": "axis", "axis": 2},
    {"kind": "axes", "axes": [0, 2]},
    {"kind": "group", "gaxis": 1, "size": 3, "axis": 2},
]


@pytest.mark.parametrize("gran", GRANS, ids=lambda g: g["kind"])
@pytest.mark.parametrize("sparse", [False, True])
def test_at_and_span_equal_the_ids_of_the_whole_leaf(gran, sparse):
    size = int(np.prod(SHAPE))
    idx = np.sort(np.random.default_rng(0).choice(size, 50, replace=False)) if sparse else None
    flat = np.arange(size) if idx is None else idx
    want, ngroups = group_ids(flat, SHAPE, gran)
    groups = Groups(idx, SHAPE, gran)
    assert groups.ngroups == ngroups
    np.testing.assert_array_equal(groups.span(0, flat.size), want)
    np.testing.assert_array_equal(groups.span(7, 20), want[7:20])
    pos = np.array([0, 3, 11, flat.size - 1])
    np.testing.assert_array_equal(groups.at(pos), want[pos])


def test_given_groups_read_the_array():
    gid = np.array([2, 0, 1, 1], np.int32)
    g = GivenGroups(gid, 3)
    assert g.ngroups == 3
    np.testing.assert_array_equal(g.span(1, 3), gid[1:3])
    np.testing.assert_array_equal(g.at(np.array([3, 0])), gid[[3, 0]])
