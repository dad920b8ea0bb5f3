"""Tests for lightcomp/posttrain/_targets.py: sparsity targets, scopes and grids, checked once."""

import pytest

from lightcomp import prune
from lightcomp.posttrain._obs import Grid
from lightcomp.posttrain._targets import check_grid, check_scope, check_target


def test_targets_are_fractions_or_n_m():
    assert check_target(0.5) == 0.5
    assert check_target("2:4") == prune.NM(2, 4)
    assert check_target(prune.NM(1, 4)) == prune.NM(1, 4)


@pytest.mark.parametrize(
    ("bad", "exc"),
    [
        (1.0, ValueError),
        (True, TypeError),
        (float("nan"), ValueError),
        (prune.Channel(), ValueError),
    ],
)
def test_bad_targets_are_refused(bad, exc):
    with pytest.raises(exc, match="sparsity"):
        check_target(bad)


def test_scope_of_n_m_is_its_own():
    assert check_scope("output", 0.5) == "output"
    assert check_scope("output", prune.NM(2, 4)) == "layer"
    with pytest.raises(ValueError, match="scope"):
        check_scope("global", 0.5)


def test_grid_is_static_per_row_and_dynamic_per_group():
    assert check_grid(4, None, True, static=False) == Grid(4, True, None, True)
    assert check_grid(3, 32, False, static=False) == Grid(3, False, 32, False)
    with pytest.raises(ValueError, match="bits"):
        check_grid(9, None, True, static=False)
    with pytest.raises(TypeError, match="symmetric"):
        check_grid(4, None, "yes", static=False)
