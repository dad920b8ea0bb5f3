"""lightcomp/prune/_distributions.py: ERK per-layer sparsities."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import prune as P


def test_erk_mean_and_proportions(make_params, leaves, selected):
    params = make_params(11)
    dist = P.erk(params, 0.8)
    sizes = {p: leaves(params)[p].size for p in selected}
    per = leaves(dist)
    assert sorted(per) == sorted(selected) and dist["Dense_0"]["bias"] is None
    mean = sum(per[p] * sizes[p] for p in selected) / sum(sizes.values())
    assert mean == pytest.approx(0.8, abs=1e-9)
    raw = {p: sum(leaves(params)[p].shape) / sizes[p] for p in selected}
    dens = {p: 1 - per[p] for p in selected}
    ratios = [dens[p] / raw[p] for p in selected]
    assert max(ratios) == pytest.approx(min(ratios))  # density proportional to the ERK ratio
    m = P.masks(P.magnitude(params), dist)
    assert sorted(leaves(m)) == sorted(selected)
    for p in selected:
        assert int((~leaves(m)[p]).sum()) == round(per[p] * sizes[p])


def test_erk_math_in_isolation():
    params = {"a": jnp.zeros((100, 100)), "b": jnp.zeros((2, 3))}
    d = P.erk(params, 0.5)
    assert d["b"] == pytest.approx(0.0, abs=1e-9)  # the tiny layer stays dense
    assert (d["a"] * 10000 + d["b"] * 6) / 10006 == pytest.approx(0.5)
    assert math.isclose(P.erk(params, 0.0)["a"], 0.0, abs_tol=1e-12)
    # power reshapes the ratios: density ~ (sum / prod) ** power, before capping at 1
    sq = P.erk({"a": jnp.zeros((10, 10)), "b": jnp.zeros((20, 20))}, 0.9, power=2.0)
    dens = np.array([1 - sq["a"], 1 - sq["b"]])
    assert dens[0] / dens[1] == pytest.approx(((20 / 100) / (40 / 400)) ** 2)


def test_erk_errors(make_params):
    params = make_params(11)
    with pytest.raises(ValueError, match=r"sparsity must be finite and in \[0.0, 1.0\)"):
        P.erk(params, 1.0)
    with pytest.raises(TypeError, match="sparsity must be a number"):
        P.erk(params, True)
    with pytest.raises(ValueError, match="select chose no leaf"):
        P.erk({"b": jnp.ones(3)}, 0.5)
