"""Tests for lightcomp.prune: scores, masks, schedules, penalties, optimizers, shrink."""

from __future__ import annotations

import math

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings

import lightcomp as lc
from lightcomp import prune as P

# ----------------------------------------------------------------------------- fixtures


def _params(seed=0, dtype=jnp.float32):
    r = np.random.default_rng(seed)
    return {
        "Dense_0": {
            "kernel": jnp.asarray(r.normal(size=(8, 12)), dtype),
            "bias": jnp.asarray(r.normal(size=(12,)), dtype),
        },
        "Conv_0": {
            "kernel": jnp.asarray(r.normal(size=(3, 3, 4, 8)), dtype),
            "bias": jnp.asarray(r.normal(size=(8,)), dtype),
        },
        "Dense_1": {"kernel": jnp.asarray(r.normal(size=(12, 4)), dtype)},
    }


def _like(params, seed):
    r = np.random.default_rng(seed)
    return jax.tree.map(lambda w: jnp.asarray(r.normal(size=w.shape), w.dtype), params)


SELECTED = ["Dense_0/kernel", "Conv_0/kernel", "Dense_1/kernel"]


def _mlp(features, in_features, seed):
    """``(apply, params)`` of `lc.models.MLP` with NumPy-drawn weights (no init to compile)."""
    r = np.random.default_rng(seed)
    params, fan_in = {}, in_features
    for i, f in enumerate(features):
        params[f"Dense_{i}"] = {
            "kernel": jnp.asarray(r.normal(size=(fan_in, f)) / np.sqrt(fan_in), jnp.float32),
            "bias": jnp.asarray(0.1 * r.normal(size=(f,)), jnp.float32),
        }
        fan_in = f
    model = lc.models.MLP(tuple(features))
    return jax.jit(lambda p, x: model.apply({"params": p}, x)), params


def _leaves(tree):
    return dict(lc.tree.leaves_with_paths(tree))


def _np_mask_layer(score, s):
    """Reference: zero the round(s*size) lowest scores, ties by index (stable sort)."""
    flat = np.asarray(score, np.float32).reshape(-1)
    k = round(s * flat.size)
    keep = np.ones(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[:k]] = False
    return keep.reshape(score.shape)


# ----------------------------------------------------------------------------- scores

SCORES = {
    "magnitude": (lambda p, g: P.magnitude(p), lambda w, g: np.abs(w)),
    "gradient": (lambda p, g: P.gradient(p, g), lambda w, g: np.abs(g)),
    "taylor": (lambda p, g: P.taylor(p, g), lambda w, g: np.abs(w * g)),
    "fisher": (lambda p, g: P.fisher(p, g), lambda w, g: 0.5 * w**2 * g),
    "movement": (lambda p, g: P.movement(p, g), lambda w, g: -w * g),
}


def _all_scores(params, grads):
    return {name: fn(params, grads) for name, (fn, _) in SCORES.items()}


_all_scores_jit = jax.jit(_all_scores)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_scores_match_numpy_jit_and_not(dtype):
    params, grads = _params(1, dtype), _like(_params(1, dtype), 2)
    eager, jitted = _all_scores(params, grads), _all_scores_jit(params, grads)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6)
    for name, (_, ref) in SCORES.items():
        out = eager[name]
        got = _leaves(out)
        assert sorted(got) == sorted(SELECTED), name
        assert out["Dense_0"]["bias"] is None and out["Conv_0"]["bias"] is None
        for path in SELECTED:
            w = np.asarray(_leaves(params)[path], np.float32)
            g = np.asarray(_leaves(grads)[path], np.float32)
            assert got[path].dtype == jnp.float32
            np.testing.assert_allclose(np.asarray(got[path]), ref(w, g), rtol=1e-6, atol=1e-7)


def test_sq_grads_running_mean_and_fisher():
    params = _params(3)
    gs = [_like(params, 10 + i) for i in range(4)]
    acc = P.sq_grads_init(params)
    upd = jax.jit(P.sq_grads_update)
    eager = acc
    for g in gs:
        acc = upd(acc, g)
        eager = P.sq_grads_update(eager, g)
    chex.assert_trees_all_close(acc, eager, rtol=1e-6)
    assert int(acc.count) == 4 and acc.mean["Dense_0"]["bias"] is None
    for path in SELECTED:
        ref = np.mean([np.asarray(_leaves(g)[path]) ** 2 for g in gs], axis=0)
        np.testing.assert_allclose(np.asarray(_leaves(acc.mean)[path]), ref, rtol=1e-5)
    f = _leaves(P.fisher(params, acc.mean))["Dense_1/kernel"]
    w = np.asarray(params["Dense_1"]["kernel"])
    np.testing.assert_allclose(np.asarray(f), 0.5 * w**2 * acc.mean["Dense_1"]["kernel"], rtol=1e-6)


def test_random_scores_shapes_keys_and_range():
    params = {"k": jnp.ones((6, 4)), "b": jnp.ones(4), "e": jnp.ones((4, 3))}
    a = P.random(jax.random.key(0), params)
    b = jax.jit(P.random)(jax.random.key(0), params)
    chex.assert_trees_all_close(a, b)
    c = P.random(jax.random.key(1), params)
    assert not np.allclose(a["k"], c["k"]) and a["b"] is None
    for path, v in _leaves(a).items():
        v = np.asarray(v)
        assert v.shape == _leaves(params)[path].shape and v.min() >= 0 and v.max() < 1


def test_wanda_and_input_norms_match_numpy():
    model = lc.models.MLP((6, 5, 3))
    _, params = _mlp((6, 5, 3), 7, 0)
    r = np.random.default_rng(0)
    batches = [r.normal(size=(9, 7)).astype(np.float32) for _ in range(2)]
    norms = P.input_norms(model, params, [{"inputs": batches[0]}, batches[1]])
    x = np.concatenate(batches)
    p = jax.tree.map(np.asarray, params)
    h0 = x
    h1 = np.maximum(h0 @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    h2 = np.maximum(h1 @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], 0)
    for i, h in enumerate((h0, h1, h2)):
        np.testing.assert_allclose(
            np.asarray(norms[f"Dense_{i}"]["kernel"]), np.linalg.norm(h, axis=0), rtol=1e-5
        )
        assert norms[f"Dense_{i}"]["bias"] is None
    scores = jax.jit(P.wanda)(params, norms)
    chex.assert_trees_all_close(scores, P.wanda(params, norms), rtol=1e-6)
    ref = np.abs(p["Dense_1"]["kernel"]) * np.linalg.norm(h1, axis=0)[:, None]
    np.testing.assert_allclose(np.asarray(scores["Dense_1"]["kernel"]), ref, rtol=1e-5)
    pruned, _ = P.one_shot_prune(params, 0.4, score="wanda", input_norms=norms)
    for i, fan_in in enumerate((7, 6, 5)):
        kernel = np.asarray(pruned[f"Dense_{i}"]["kernel"])
        # Wanda's per-output comparison: every output column loses round(0.4 * fan_in)
        np.testing.assert_array_equal((kernel == 0).sum(axis=0), round(0.4 * fan_in))
        np.testing.assert_array_equal(pruned[f"Dense_{i}"]["bias"], params[f"Dense_{i}"]["bias"])
    with pytest.raises(ValueError, match="input_norms"):
        P.one_shot_prune(params, 0.4, score="wanda")
    with pytest.raises(ValueError, match="batches is empty"):
        P.input_norms(model, params, [])


def test_one_shot_prune_magnitude_exact():
    params = _params(5)
    pruned, m = P.one_shot_prune(params, 0.75)
    for path in SELECTED:
        w = _leaves(pruned)[path]
        assert int(jnp.sum(w == 0)) == round(0.75 * w.size)
        np.testing.assert_array_equal(
            np.asarray(_leaves(m)[path]), _np_mask_layer(np.abs(_leaves(params)[path]), 0.75)
        )


# ----------------------------------------------------------------------------- masks

_masks_jit = jax.jit(P.masks, static_argnames=("scope", "granularity", "n", "m", "block"))


@pytest.mark.parametrize("s", [0.0, 0.1, 0.37, 0.5, 0.9, 0.99])
def test_layer_masks_exact_counts_and_reference(s):
    scores = P.magnitude(_params(6))
    got = P.masks(scores, s)
    traced = _masks_jit(scores, jnp.float32(s))  # sparsity traced (a schedule under jit)
    chex.assert_trees_all_equal(got, traced)
    for path, score in _leaves(scores).items():
        mk = np.asarray(_leaves(got)[path])
        assert mk.dtype == bool and mk.shape == score.shape
        assert (~mk).sum() == round(s * score.size)
        np.testing.assert_array_equal(mk, _np_mask_layer(score, s))


def test_layer_masks_ties_broken_by_index():
    scores = {"w": jnp.ones((4, 5)), "b": None}
    mk = np.asarray(P.masks(scores, 0.3)["w"]).reshape(-1)
    assert mk[:6].sum() == 0 and mk[6:].all()
    assert P.masks(scores, 0.3)["b"] is None


@pytest.mark.parametrize("s", [0.2, 0.6, 0.95])
def test_global_masks_one_threshold(s):
    scores = P.magnitude(_params(7))
    got = P.masks(scores, s, scope="global")
    chex.assert_trees_all_equal(got, _masks_jit(scores, s, scope="global"))
    allv = np.concatenate([np.asarray(v).reshape(-1) for v in _leaves(scores).values()])
    allm = np.concatenate([np.asarray(v).reshape(-1) for v in _leaves(got).values()])
    assert (~allm).sum() == round(s * allv.size)
    assert allv[~allm].max() <= allv[allm].min()
    ref = np.ones(allv.size, bool)
    ref[np.argsort(allv, kind="stable")[: round(s * allv.size)]] = False
    np.testing.assert_array_equal(allm, ref)


def test_global_keep_one_keeps_each_leaf_alive():
    scores = {
        "small": jnp.full((2, 2), 0.01),
        "big": jnp.asarray(np.arange(1.0, 41.0).reshape(5, 8)),
    }
    plain = P.masks(scores, 0.5, scope="global")
    assert not bool(plain["small"].any())
    kept = P.masks(scores, 0.5, scope="global", keep_one=True)
    assert int(kept["small"].sum()) == 1
    full = P.masks(scores, 1.0, scope="global", keep_one=True)
    assert int(full["small"].sum()) == 1 and int(full["big"].sum()) == 1
    assert bool(full["big"][-1, -1])


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_channel_masks_structure(scope):
    scores = P.magnitude(_params(8))
    got = P.masks(scores, 0.5, scope=scope, granularity="channel")
    chex.assert_trees_all_equal(got, _masks_jit(scores, 0.5, scope=scope, granularity="channel"))
    total_zeros, total = 0, 0
    for path, mk in _leaves(got).items():
        w = np.asarray(_leaves(scores)[path])
        mk = np.asarray(mk).reshape(-1, w.shape[-1])
        cols = mk.all(axis=0)
        np.testing.assert_array_equal(mk, np.broadcast_to(cols, mk.shape))  # all or nothing
        norms = np.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0)
        if scope == "layer":
            # as many whole channels as fit in round(s * size) weights
            assert (~cols).sum() == round(0.5 * w.size) // mk.shape[0]
            assert norms[~cols].max() <= norms[cols].min()
        total_zeros += (~mk).sum()
        total += mk.size
    assert total_zeros <= round(0.5 * total)


def test_block_masks_structure_and_reference():
    r = np.random.default_rng(9)
    score = r.random((8, 12)).astype(np.float32)
    mk = np.asarray(P.masks({"k": jnp.asarray(score)}, 0.5, granularity="block", block=(2, 3))["k"])
    tiles = mk.reshape(4, 2, 4, 3)
    assert np.all(tiles.all(axis=(1, 3)) == tiles.any(axis=(1, 3)))
    bn = np.sqrt((score.reshape(4, 2, 4, 3) ** 2).sum(axis=(1, 3))).reshape(-1)
    ref = np.ones(16, bool)
    ref[np.argsort(bn, kind="stable")[:8]] = False
    np.testing.assert_array_equal(tiles.all(axis=(1, 3)).reshape(-1), ref)
    mk_jit = _masks_jit({"k": jnp.asarray(score)}, 0.5, granularity="block", block=(2, 3))["k"]
    np.testing.assert_array_equal(mk, np.asarray(mk_jit))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 2), (3, 24)])
def test_nm_masks_reference(n, m):
    if m <= 16:  # small groups (pairwise ranks)
        scores = P.magnitude(_params(10))
    else:  # large groups (threshold search); rounded values make ties
        r = np.random.default_rng(10)
        scores = {"w": jnp.asarray(np.round(r.random((48, 6)), 1), jnp.float32)}
    got = P.masks(scores, None, granularity="n:m", n=n, m=m)
    chex.assert_trees_all_equal(got, _masks_jit(scores, None, granularity="n:m", n=n, m=m))
    for path, mk in _leaves(got).items():
        w = np.moveaxis(np.asarray(_leaves(scores)[path]), -2, -1)
        groups = w.reshape(*w.shape[:-1], -1, m)
        mk = np.moveaxis(np.asarray(mk), -2, -1).reshape(groups.shape)
        np.testing.assert_array_equal(mk.sum(-1), n)
        ref = np.zeros_like(mk)
        np.put_along_axis(ref, np.argsort(groups, axis=-1, kind="stable")[..., m - n :], True, -1)
        np.testing.assert_array_equal(mk, ref)
    off = P.masks(scores, 0.0, granularity="n:m", n=2, m=4)
    assert all(bool(v.all()) for v in jax.tree.leaves(off))


def test_per_leaf_sparsity_tree_dict_and_erk():
    params = _params(11)
    scores = P.magnitude(params)
    tree = {
        "Dense_0": {"kernel": 0.25, "bias": None},
        "Conv_0": {"kernel": 0.5},
        "Dense_1": {"kernel": 0.75},
    }
    flat = {"Dense_0/kernel": 0.25, "Conv_0/kernel": 0.5, "Dense_1/kernel": 0.75}
    a, b = P.masks(scores, tree), P.masks(scores, flat)
    chex.assert_trees_all_equal(a, b)
    for path, s in flat.items():
        assert int((~_leaves(a)[path]).sum()) == round(s * _leaves(scores)[path].size)
    dist = P.erk(params, 0.8)
    sizes = {p: _leaves(params)[p].size for p in SELECTED}
    per = _leaves(dist)
    assert sorted(per) == sorted(SELECTED) and dist["Dense_0"]["bias"] is None
    mean = sum(per[p] * sizes[p] for p in SELECTED) / sum(sizes.values())
    assert mean == pytest.approx(0.8, abs=1e-9)
    raw = {p: sum(_leaves(params)[p].shape) / sizes[p] for p in SELECTED}
    dens = {p: 1 - per[p] for p in SELECTED}
    ratios = [dens[p] / raw[p] for p in SELECTED]
    assert max(ratios) == pytest.approx(min(ratios))  # density proportional to the ERK ratio
    m = P.masks(scores, dist)
    assert sorted(_leaves(m)) == sorted(SELECTED)


def test_apply_masks_zeroes_keeps_dtype_and_unselected():
    params = _params(12, jnp.bfloat16)
    m = P.masks(P.magnitude(params), 0.5)
    out = P.apply_masks(params, m)
    out_jit = jax.jit(P.apply_masks)(params, m)
    chex.assert_trees_all_equal(out, out_jit)
    chex.assert_trees_all_equal_dtypes(out, params)
    chex.assert_trees_all_equal(out["Dense_0"]["bias"], params["Dense_0"]["bias"])
    k, mk = np.asarray(out["Dense_1"]["kernel"], np.float32), np.asarray(m["Dense_1"]["kernel"])
    assert np.all(k[~mk] == 0)
    np.testing.assert_array_equal(k[mk], np.asarray(params["Dense_1"]["kernel"], np.float32)[mk])
    # an all-True array at an unselected leaf passes it through too
    m2 = dict(m, Dense_0={"kernel": m["Dense_0"]["kernel"], "bias": jnp.ones(12, bool)})
    chex.assert_trees_all_equal(P.apply_masks(params, m2), out)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_errors():
    params = _params(13)
    scores = P.magnitude(params)
    cases = [
        (lambda: P.masks(scores, 1.0), "sparsity must be in \\[0, 1\\)"),
        (lambda: P.masks(scores, -0.1), "sparsity"),
        (lambda: P.masks(scores, 0.5, scope="all"), "scope"),
        (lambda: P.masks(scores, 0.5, granularity="row"), "granularity"),
        (lambda: P.masks(scores, None, granularity="n:m", n=4, m=2), "n .* must be <= m"),
        (
            lambda: P.masks(scores, None, granularity="n:m", n=2, m=5),
            "m=5 does not divide .*Conv_0/kernel",
        ),
        (lambda: P.masks(scores, 0.3, granularity="n:m", n=2, m=4), "fixes sparsity at 0.5"),
        (
            lambda: P.masks(scores, 0.5, granularity="block", block=5),
            "block=\\(5, 5\\) .*Conv_0/kernel",
        ),
        (lambda: P.masks(scores, 0.5, granularity="block"), "block"),
        (lambda: P.masks(scores, 0.5, n=2), "n and m"),
        (lambda: P.masks(scores, 0.5, keep_one=True), "keep_one is for scope='global'"),
        (
            lambda: P.masks(scores, {"Dense_0/kernel": 0.5}),
            "no entry for selected leaf 'Conv_0/kernel'",
        ),
        (
            lambda: P.masks(scores, {**{p: 0.1 for p in SELECTED}, "Dense_9/kernel": 0.1}),
            "Dense_9/kernel",
        ),
        (lambda: P.masks(scores, {p: 1.5 for p in SELECTED}), "at leaf 'Conv_0/kernel'"),
        (lambda: P.masks(scores, {p: 0.1 for p in SELECTED}, scope="global"), "one scalar"),
        (lambda: P.masks({"a": jnp.asarray([[1.0, jnp.nan]])}, 0.5), "'a' contains NaN"),
        (lambda: P.masks({"a": jnp.ones((2, 2), jnp.int32)}, 0.5), "'a' is not floating"),
        (lambda: P.masks({"a": jnp.ones(4)}, 0.5, granularity="channel"), "ndim >= 2"),
        (lambda: P.masks({"a": None}, 0.5), "nothing to prune"),
        (lambda: P.gradient(params, {"Dense_0": {"kernel": 1.0}}), "grads does not mirror"),
        (
            lambda: P.taylor(params, jax.tree.map(lambda w: w[..., :1], params)),
            "grads leaf .*shape",
        ),
        (lambda: P.apply_masks(params, {"Dense_0": None}), "masks does not mirror"),
        (lambda: P.polynomial_schedule(0.0, 1.0, 0, 10), "final must be in"),
        (lambda: P.polynomial_schedule(0.0, 0.5, 10, 10), "end_step"),
        (lambda: P.polynomial_schedule(0.0, 0.5, 0, 10, frequency=0), "frequency"),
        (lambda: P.iterative([0.5, 0.2], 10), "non-decreasing"),
        (lambda: P.constant(1.0), "sparsity"),
        (lambda: P.one_shot(0.5, -1), "at_step"),
        (lambda: P.erk(params, 1.0), "sparsity"),
        (lambda: P.group_lasso_penalty(params, axis=5), "axis=5 .*Conv_0/kernel"),
        (lambda: P.one_shot_prune(params, 0.5, score="hessian"), "score"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()
    with pytest.raises(TypeError, match="not floating"):
        P.magnitude({"a": jnp.ones((2, 2), jnp.int32)}, select=lambda p, w: True)


# ----------------------------------------------------------------------------- shrink


def test_shrink_mlp_same_outputs_and_smaller():
    apply, params = _mlp((32, 24, 10), 16, 1)
    m = P.masks(P.magnitude(params), 0.5, granularity="channel")
    masked = P.apply_masks(params, m)
    small = P.shrink(params, m, ["Dense_0", "Dense_1", "Dense_2"], activation=jax.nn.relu)
    x = jax.random.normal(jax.random.key(2), (5, 16))
    small_model = lc.models.MLP((16, 12, 10))  # the widths left after shrinking
    out = jax.jit(small_model.apply)({"params": small}, x)
    np.testing.assert_allclose(out, apply(masked, x), rtol=1e-5, atol=1e-5)
    assert small["Dense_0"]["kernel"].shape == (16, 16)
    assert small["Dense_1"]["kernel"].shape[0] == 16
    assert small["Dense_2"]["kernel"].shape[1] == 10
    size = lambda t: sum(v.size for v in jax.tree.leaves(t))
    assert size(small) < 0.6 * size(params)
    with pytest.raises(ValueError, match="not channel-structured"):
        broken = jax.tree.map(lambda v: v, m)
        broken["Dense_0"]["kernel"] = ~np.eye(16, 32, dtype=bool)
        P.shrink(params, broken, ["Dense_0", "Dense_1", "Dense_2"])
    with pytest.raises(ValueError, match="no layer 'Dense_7'"):
        P.shrink(params, m, ["Dense_0", "Dense_7"])


def test_shrink_cnn_equals_masked_with_biases_dropped():
    model = lc.models.CNN((8, 12), 10)
    x = jax.random.uniform(jax.random.key(3), (4, 8, 8, 1))
    r = np.random.default_rng(4)
    shapes = {"Conv_0": (3, 3, 1, 8), "Conv_1": (3, 3, 8, 12), "Dense_0": (12, 10)}
    params = {
        name: {
            "kernel": jnp.asarray(r.normal(size=shape) / np.sqrt(np.prod(shape[:-1])), jnp.float32),
            "bias": jnp.asarray(0.1 * r.normal(size=shape[-1]), jnp.float32),
        }
        for name, shape in shapes.items()
    }
    m = P.masks(P.magnitude(params), 0.5, granularity="channel", scope="layer")
    order = ["Conv_0", "Conv_1", "Dense_0"]
    small = P.shrink(params, m, order)
    ref = P.apply_masks(params, m)
    for layer in order[:-1]:  # without folding, a pruned channel's bias goes with it
        alive = np.asarray(m[layer]["kernel"]).reshape(-1, ref[layer]["bias"].shape[0]).any(0)
        ref[layer] = dict(ref[layer], bias=ref[layer]["bias"] * alive)
    out_small = jax.jit(lc.models.CNN((4, 6), 10).apply)({"params": small}, x)
    out_ref = jax.jit(model.apply)({"params": ref}, x)
    np.testing.assert_allclose(out_small, out_ref, rtol=1e-5, atol=1e-5)
    assert small["Conv_0"]["kernel"].shape == (3, 3, 1, 4)
    assert small["Conv_1"]["kernel"].shape == (3, 3, 4, 6)
    assert small["Dense_0"]["kernel"].shape == (6, 10)


# ----------------------------------------------------------------------------- report


def test_sparsity_report_counts_and_table():
    params = _params(14)
    m = P.masks(P.magnitude(params), 0.25)
    pruned = P.apply_masks(params, m)
    rep_p, rep_m = P.sparsity_report(pruned), P.sparsity_report(m)
    assert rep_p == rep_m
    assert sorted(rep_p["leaves"]) == sorted(SELECTED)
    for path in SELECTED:
        row = rep_p["leaves"][path]
        w = np.asarray(_leaves(pruned)[path])
        assert row["zeros"] == int((w == 0).sum()) == round(0.25 * w.size)
        assert row["size"] == w.size and row["shape"] == w.shape
    total = sum(_leaves(params)[p].size for p in SELECTED)
    assert rep_p["total"]["size"] == total
    assert rep_p["total"]["sparsity"] == pytest.approx(rep_p["total"]["zeros"] / total)
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(P.sparsity_table(rep_p))
    text = console.export_text()
    assert "Dense_0/kernel" in text and "total" in text and "25.00%" in text


# ----------------------------------------------------------------------------- schedules


def test_polynomial_schedule_matches_formula():
    si, sf, t0, t1, freq = 0.1, 0.9, 10, 110, 7
    sched = P.polynomial_schedule(si, sf, t0, t1, power=3, frequency=freq)
    steps = np.arange(0, 130)
    got = np.asarray(jax.jit(jax.vmap(sched))(jnp.asarray(steps)))
    eager = np.asarray([sched(int(t)) for t in steps[::13]])
    np.testing.assert_allclose(got[::13], eager, rtol=1e-6)
    t = np.clip(steps, t0, t1) - t0
    t = (t // freq) * freq
    ref = np.where(steps >= t1, sf, sf + (si - sf) * (1 - t / (t1 - t0)) ** 3)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert (
        got.dtype == np.float32
        and got[0] == pytest.approx(si, rel=1e-5)
        and got[-1] == np.float32(sf)
    )
    assert np.all(np.diff(got) >= -1e-7)


def test_other_schedules():
    steps = jnp.arange(0, 50)
    np.testing.assert_allclose(jax.jit(P.constant(0.3))(steps), np.full(50, 0.3, np.float32))
    np.testing.assert_allclose(
        jax.jit(P.one_shot(0.8, 20))(steps), np.where(np.arange(50) >= 20, 0.8, 0.0), rtol=1e-6
    )
    it = P.iterative([0.5, 0.75, 0.875], every=10, begin_step=5)
    ref = np.array([0.0 if t < 5 else [0.5, 0.75, 0.875][min((t - 5) // 10, 2)] for t in range(50)])
    np.testing.assert_allclose(jax.jit(it)(steps), ref, rtol=1e-6)
    np.testing.assert_allclose(it(23), ref[23], rtol=1e-6)
    cf = P.cosine_fraction(0.3, 40)
    ref = np.where(np.arange(50) < 40, 0.15 * (1 + np.cos(np.pi * np.arange(50) / 40)), 0.0)
    np.testing.assert_allclose(jax.jit(cf)(steps), ref, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- penalties


def test_penalties_match_numpy_and_have_finite_grads():
    params = _params(15)
    params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[:, 0].set(0.0)  # a dead group
    l1, l1j = P.l1_penalty(params), jax.jit(P.l1_penalty)(params)
    ref = sum(np.abs(np.asarray(_leaves(params)[p])).sum() for p in SELECTED)
    np.testing.assert_allclose([l1, l1j], [ref, ref], rtol=1e-5)
    gl = P.group_lasso_penalty(params)
    glj = jax.jit(P.group_lasso_penalty)(params)
    ref = 0.0
    for p in SELECTED:
        w = np.asarray(_leaves(params)[p])
        ref += np.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0).sum()
    np.testing.assert_allclose([gl, glj], [ref, ref], rtol=1e-5)
    in_groups = P.group_lasso_penalty(params, axis=-2, scale=True)
    w = np.asarray(params["Dense_0"]["kernel"])
    part = np.sqrt(12) * np.linalg.norm(w, axis=1).sum()
    only = P.group_lasso_penalty(params, axis=-2, scale=True, select=r"Dense_0/kernel")
    np.testing.assert_allclose(only, part, rtol=1e-5)
    assert float(in_groups) > float(only)
    grads = jax.jit(jax.grad(P.group_lasso_penalty))(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert bool(jnp.all(grads["Dense_1"]["kernel"][:, 0] == 0))


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def digits():
    d = lc.data.load_digits(seed=0)
    return d.x_train[:256], d.y_train[:256]


@pytest.mark.parametrize(
    "opt",
    [optax.sgd(0.1, momentum=0.9), optax.adam(1e-2), optax.adamw(1e-2, weight_decay=0.1)],
    ids=["sgd_momentum", "adam", "adamw"],
)
def test_keep_pruned_keeps_zeros_every_step(digits, opt):
    apply, params = _mlp((32, 10), 64, 5)
    m = P.masks(P.magnitude(params), 0.7)
    params = P.apply_masks(params, m)
    tx = P.keep_pruned(opt, lambda p: m)
    state = tx.init(params)

    def loss(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    @jax.jit
    def step(p, s, x, y):
        g = jax.grad(loss)(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    x, y = digits
    loss_jit = jax.jit(loss)
    first = float(loss_jit(params, x, y))
    for i in range(30):
        sl = slice((i % 8) * 32, (i % 8) * 32 + 32)
        params, state = step(params, state, x[sl], y[sl])
        for path, mk in _leaves(m).items():
            w = np.asarray(_leaves(params)[path])
            assert np.all(w[~np.asarray(mk)] == 0.0), (i, path)
    assert float(loss_jit(params, x, y)) < first  # it trains
    assert P.sparsity_report(params)["total"]["sparsity"] == pytest.approx(0.7, abs=1e-3)


def test_keep_pruned_masks_keyword_and_unpruned_start():
    params = _params(16)
    m = P.masks(P.magnitude(params), 0.5)
    tx = P.keep_pruned(optax.sgd(0.1, momentum=0.9))
    state = tx.init(params)
    u, state = tx.update(_like(params, 3), state, params, masks=m)
    new = optax.apply_updates(params, u)  # not masked before: lands on exact zeros anyway
    for path, mk in _leaves(m).items():
        assert np.all(np.asarray(_leaves(new)[path])[~np.asarray(mk)] == 0.0)
    chex.assert_trees_all_close(
        new["Dense_0"]["bias"],
        params["Dense_0"]["bias"] - 0.1 * _like(params, 3)["Dense_0"]["bias"],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="needs masks"):
        tx.update(_like(params, 3), state, params)
    with pytest.raises(ValueError, match="masks does not mirror"):
        tx.update(_like(params, 3), state, params, masks={"Dense_0": None})


def test_prune_and_regrow_rigl(digits):
    apply, params = _mlp((32, 10), 64, 6)
    m = P.masks(P.magnitude(_like(params, 7)), 0.8)  # a random mask
    params = P.apply_masks(params, m)
    tx = P.keep_pruned(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2)))
    state = tx.init(params)
    x, y = digits

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x[:64]), y[:64]).mean()

    @jax.jit
    def train(p, s, mk):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p, masks=mk)
        return optax.apply_updates(p, u), s

    regrow = jax.jit(P.prune_and_regrow)
    frac = jax.jit(P.cosine_fraction(0.3, 40))
    grad_fn = jax.jit(jax.grad(loss))
    active = {p: int(v.sum()) for p, v in _leaves(m).items()}
    for i in range(12):
        params, state = train(params, state, m)
        if i % 4 == 3:
            g = grad_fn(params)
            new_p, new_m, new_s = regrow(params, m, g, frac(i), opt_state=state)
            if i == 3:  # jitted and eager agree
                eager = P.prune_and_regrow(params, m, g, float(frac(i)), opt_state=state)
                chex.assert_trees_all_equal((new_p, new_m, new_s), eager)
            changed = {
                p: np.asarray(_leaves(new_m)[p]) != np.asarray(v) for p, v in _leaves(m).items()
            }
            assert any(c.any() for c in changed.values())
            adam = new_s[1][0]
            for path in active:
                nm = np.asarray(_leaves(new_m)[path])
                assert nm.sum() == active[path]  # as many active as before
                assert np.all(np.asarray(_leaves(new_p)[path])[~nm] == 0.0)
                grown = nm & ~np.asarray(_leaves(m)[path])
                assert np.all(np.asarray(_leaves(new_p)[path])[grown] == 0.0)  # grown start at 0
                for mom in (adam.mu, adam.nu):
                    assert np.all(np.asarray(_leaves(mom)[path])[changed[path]] == 0.0)
                    kept = ~changed[path]
                    np.testing.assert_array_equal(
                        np.asarray(_leaves(mom)[path])[kept],
                        np.asarray(
                            _leaves(getattr(state[1][0], "mu" if mom is adam.mu else "nu"))[path]
                        )[kept],
                    )
            # the bias moments (unselected) and the step count are untouched
            chex.assert_trees_all_equal(
                adam.mu["Dense_0"]["bias"], state[1][0].mu["Dense_0"]["bias"]
            )
            chex.assert_trees_all_equal(adam.count, state[1][0].count)
            params, m, state = new_p, new_m, new_s
    for path, mk in _leaves(m).items():
        assert np.all(np.asarray(_leaves(params)[path])[~np.asarray(mk)] == 0.0)


def test_reset_moments_matches_structure_not_types():
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}
    reset = {"a": jnp.asarray([[True, False, False], [False, False, True]]), "b": None}
    custom = {
        "trace": jax.tree.map(lambda w: 2.0 * w, params),
        "step": jnp.int32(4),
        "other": (jnp.ones(5),),
    }
    out = P.reset_moments(custom, params, reset)
    np.testing.assert_array_equal(out["trace"]["a"], np.where(np.asarray(reset["a"]), 0.0, 2.0))
    np.testing.assert_array_equal(out["trace"]["b"], np.full(3, 2.0))
    assert int(out["step"]) == 4 and np.all(np.asarray(out["other"][0]) == 1)


# ----------------------------------------------------------------------------- properties

_GRAN = st.sampled_from(
    [("element", {}), ("channel", {}), ("block", {"block": 2}), ("n:m", {"n": 1, "m": 2})]
)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    cols=st.sampled_from([4, 8]),
    s=st.floats(0.0, 0.99),
    scope=st.sampled_from(["layer", "global"]),
    gran=_GRAN,
)
def test_property_masks_never_over_prune_and_skip_unselected(seed, cols, s, scope, gran):
    granularity, kw = gran
    rows = 4
    r = np.random.default_rng(seed)
    params = {
        "k1": jnp.asarray(r.normal(size=(rows, cols)), jnp.float32),
        "k2": jnp.asarray(r.normal(size=(cols, rows)), jnp.float32),
        "bias": jnp.asarray(r.normal(size=(cols,)), jnp.float32),
    }
    scores = P.magnitude(params)
    sparsity = 0.5 if granularity == "n:m" else s
    mk = P.masks(scores, sparsity, scope=scope, granularity=granularity, **kw)
    assert mk["bias"] is None
    zeros = [int((~v).sum()) for v in (mk["k1"], mk["k2"])]
    if scope == "layer":
        assert all(z <= round(sparsity * rows * cols) for z in zeros)
    else:
        assert sum(zeros) <= round(sparsity * 2 * rows * cols)
    once = P.apply_masks(params, mk)
    twice = P.apply_masks(once, mk)
    chex.assert_trees_all_equal(once, twice)
    chex.assert_trees_all_equal(once["bias"], params["bias"])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), s=st.floats(0.0, 0.99), n=st.sampled_from([7, 30]))
def test_property_layer_exact_and_lowest_go_first(seed, s, n):
    r = np.random.default_rng(seed)
    score = jnp.asarray(np.round(r.random(n), 1), jnp.float32)  # many ties
    mk = np.asarray(P.masks({"w": score}, s)["w"])
    assert (~mk).sum() == round(s * n)
    sc = np.asarray(score)
    if 0 < (~mk).sum() < n:
        assert sc[~mk].max() <= sc[mk].min()
    np.testing.assert_array_equal(mk, _np_mask_layer(sc, s))


def test_erk_math_in_isolation():
    params = {"a": jnp.zeros((100, 100)), "b": jnp.zeros((2, 3))}
    d = P.erk(params, 0.5)
    assert d["b"] == pytest.approx(0.0, abs=1e-9)  # the tiny layer stays dense
    assert (d["a"] * 10000 + d["b"] * 6) / 10006 == pytest.approx(0.5)
    assert math.isclose(P.erk(params, 0.0)["a"], 0.0, abs_tol=1e-12)
