"""lightcomp/prune/_masks.py: `masks` at every scope and granularity, `apply_masks`."""

from __future__ import annotations

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from lightcomp import prune as P

_masks_jit = jax.jit(P.masks, static_argnames=("scope", "granularity", "n", "m", "block"))


@pytest.mark.parametrize("s", [0.0, 0.1, 0.37, 0.5, 0.9, 0.99])
def test_layer_masks_exact_counts_and_reference(s, make_params, leaves, np_layer_mask):
    scores = P.magnitude(make_params(6))
    got = P.masks(scores, s)
    traced = _masks_jit(scores, jnp.float32(s))  # sparsity traced (a schedule under jit)
    chex.assert_trees_all_equal(got, traced)
    for path, score in leaves(scores).items():
        mk = np.asarray(leaves(got)[path])
        assert mk.dtype == bool and mk.shape == score.shape
        assert (~mk).sum() == round(s * score.size)
        np.testing.assert_array_equal(mk, np_layer_mask(score, s))


def test_traced_sparsity_never_recompiles(make_params):
    scores = P.magnitude(make_params(6))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def layer_masks(sc, s):
        return P.masks(sc, s, granularity=P.Channel())

    chex.clear_trace_counter()
    counts = [
        sum(int((~v).sum()) for v in jax.tree.leaves(layer_masks(scores, jnp.float32(s))))
        for s in (0.2, 0.5, 0.8)
    ]
    assert counts[0] < counts[1] < counts[2]


def test_layer_masks_ties_broken_by_index():
    scores = {"w": jnp.ones((4, 5)), "b": None}
    mk = np.asarray(P.masks(scores, 0.3)["w"]).reshape(-1)
    assert mk[:6].sum() == 0 and mk[6:].all()
    assert P.masks(scores, 0.3)["b"] is None


@pytest.mark.parametrize("s", [0.2, 0.6, 0.95])
def test_global_masks_one_threshold(s, make_params, leaves):
    scores = P.magnitude(make_params(7))
    got = P.masks(scores, s, scope="global")
    chex.assert_trees_all_equal(got, _masks_jit(scores, s, scope="global"))
    allv = np.concatenate([np.asarray(v).reshape(-1) for v in leaves(scores).values()])
    allm = np.concatenate([np.asarray(v).reshape(-1) for v in leaves(got).values()])
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
@pytest.mark.parametrize("granularity", ["channel", P.Channel()])
def test_channel_masks_structure(scope, granularity, make_params, leaves):
    scores = P.magnitude(make_params(8))
    got = P.masks(scores, 0.5, scope=scope, granularity=granularity)
    chex.assert_trees_all_equal(got, _masks_jit(scores, 0.5, scope=scope, granularity=granularity))
    total_zeros, total = 0, 0
    for path, mk in leaves(got).items():
        w = np.asarray(leaves(scores)[path])
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


@pytest.mark.parametrize(
    "spelling", [{"granularity": "block", "block": (2, 3)}, {"granularity": P.Block(2, 3)}]
)
def test_block_masks_structure_and_reference(spelling):
    r = np.random.default_rng(9)
    score = r.random((8, 12)).astype(np.float32)
    mk = np.asarray(P.masks({"k": jnp.asarray(score)}, 0.5, **spelling)["k"])
    tiles = mk.reshape(4, 2, 4, 3)
    assert np.all(tiles.all(axis=(1, 3)) == tiles.any(axis=(1, 3)))
    bn = np.sqrt((score.reshape(4, 2, 4, 3) ** 2).sum(axis=(1, 3))).reshape(-1)
    ref = np.ones(16, bool)
    ref[np.argsort(bn, kind="stable")[:8]] = False
    np.testing.assert_array_equal(tiles.all(axis=(1, 3)).reshape(-1), ref)
    mk_jit = _masks_jit({"k": jnp.asarray(score)}, 0.5, **spelling)["k"]
    np.testing.assert_array_equal(mk, np.asarray(mk_jit))


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 2), (3, 24)])
def test_nm_masks_reference(n, m, make_params, leaves):
    if m <= 16:  # small groups (pairwise ranks)
        scores = P.magnitude(make_params(10))
    else:  # large groups (threshold search); rounded values make ties
        r = np.random.default_rng(10)
        scores = {"w": jnp.asarray(np.round(r.random((48, 6)), 1), jnp.float32)}
    got = P.masks(scores, None, granularity="n:m", n=n, m=m)
    chex.assert_trees_all_equal(got, _masks_jit(scores, None, granularity="n:m", n=n, m=m))
    chex.assert_trees_all_equal(got, P.masks(scores, None, granularity=P.NM(n, m)))
    chex.assert_trees_all_equal(got, P.masks(scores, (m - n) / m, granularity=f"{n}:{m}"))
    for path, mk in leaves(got).items():
        w = np.moveaxis(np.asarray(leaves(scores)[path]), -2, -1)
        groups = w.reshape(*w.shape[:-1], -1, m)
        mk = np.moveaxis(np.asarray(mk), -2, -1).reshape(groups.shape)
        np.testing.assert_array_equal(mk.sum(-1), n)
        ref = np.zeros_like(mk)
        np.put_along_axis(ref, np.argsort(groups, axis=-1, kind="stable")[..., m - n :], True, -1)
        np.testing.assert_array_equal(mk, ref)
    off = P.masks(scores, 0.0, granularity="n:m", n=2, m=4)
    assert all(bool(v.all()) for v in jax.tree.leaves(off))
    on_off = jax.jit(lambda s: P.masks(scores, s, granularity=P.NM(2, 4)))
    assert all(bool(v.all()) for v in jax.tree.leaves(on_off(jnp.float32(0.0))))
    assert not any(bool(v.all()) for v in jax.tree.leaves(on_off(jnp.float32(0.5))))


def test_output_scope_prunes_each_output_column(np_lowest):
    r = np.random.default_rng(17)
    score = r.random((3, 7, 5)).astype(np.float32)
    got = np.asarray(P.masks({"k": jnp.asarray(score)}, 0.4, scope="output")["k"])
    np.testing.assert_array_equal(
        got, np.asarray(_masks_jit({"k": score}, 0.4, scope="output")["k"])
    )
    cols, mk = score.reshape(-1, 5), got.reshape(-1, 5)
    for c in range(5):
        np.testing.assert_array_equal(mk[:, c], ~np_lowest(cols[:, c], round(0.4 * 21)))


def test_per_leaf_sparsity_tree_and_dict(make_params, leaves):
    scores = P.magnitude(make_params(11))
    tree = {
        "Dense_0": {"kernel": 0.25, "bias": None},
        "Conv_0": {"kernel": 0.5},
        "Dense_1": {"kernel": 0.75},
    }
    flat = {"Dense_0/kernel": 0.25, "Conv_0/kernel": 0.5, "Dense_1/kernel": 0.75}
    a, b = P.masks(scores, tree), P.masks(scores, flat)
    chex.assert_trees_all_equal(a, b)
    for path, s in flat.items():
        assert int((~leaves(a)[path]).sum()) == round(s * leaves(scores)[path].size)


def test_apply_masks_zeroes_keeps_dtype_and_unselected(make_params):
    params = make_params(12, jnp.bfloat16)
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
    with pytest.raises(ValueError, match="masks does not mirror"):
        P.apply_masks(params, {"Dense_0": None})
    m3 = dict(m, Dense_1={"kernel": m["Dense_1"]["kernel"][:, :2]})
    with pytest.raises(ValueError, match="masks leaf 'Dense_1/kernel' has shape \\(12, 2\\)"):
        P.apply_masks(params, m3)


def test_bad_input_errors(make_params, selected):
    scores = P.magnitude(make_params(13))
    cases = [
        (lambda: P.masks(scores, 1.0), "sparsity must be finite and in \\[0.0, 1.0\\).*keep_one"),
        (lambda: P.masks(scores, -0.1), "sparsity"),
        (lambda: P.masks(scores, None), "sparsity=None is for an n:m granularity"),
        (lambda: P.masks(scores, None, scope="global"), "sparsity=None is for an n:m"),
        (lambda: P.masks(scores, 0.5, scope="all"), "scope"),
        (lambda: P.masks(scores, 0.5, granularity="row"), "granularity"),
        (lambda: P.masks(scores, None, granularity="n:m", n=4, m=2), "n .* must be <= m"),
        (
            lambda: P.masks(scores, None, granularity="n:m", n=2, m=5),
            "m=5 does not divide .*Conv_0/kernel",
        ),
        (lambda: P.masks(scores, 0.3, granularity="n:m", n=2, m=4), "fixes sparsity at 0.5"),
        (lambda: P.masks(scores, 0.3, granularity=P.NM(2, 4)), "fixes sparsity at 0.5"),
        (
            lambda: P.masks(scores, 0.5, granularity="block", block=5),
            "block=\\(5, 5\\) .*Conv_0/kernel",
        ),
        (lambda: P.masks(scores, 0.5, granularity=P.Block(5, 1)), "block=\\(5, 1\\) .*Conv_0"),
        (lambda: P.masks(scores, 0.5, granularity="block"), "block"),
        (lambda: P.masks(scores, 0.5, n=2), "n and m"),
        (lambda: P.masks(scores, 0.5, granularity=P.NM(2, 4), n=2), "carries its own sizes"),
        (lambda: P.masks(scores, 0.5, keep_one=True), "keep_one is for scope='global'"),
        (
            lambda: P.masks(scores, 0.5, scope="output", granularity=P.Channel()),
            "scope='output' works with granularity='element' only",
        ),
        (
            lambda: P.masks(scores, {"Dense_0/kernel": 0.5}),
            "no entry for selected leaf 'Conv_0/kernel'",
        ),
        (
            lambda: P.masks(scores, {**{p: 0.1 for p in selected}, "Dense_9/kernel": 0.1}),
            "Dense_9/kernel",
        ),
        (lambda: P.masks(scores, {p: 1.5 for p in selected}), "at leaf 'Conv_0/kernel'"),
        (lambda: P.masks(scores, {p: 0.1 for p in selected}, scope="global"), "one scalar"),
        (lambda: P.masks({"a": jnp.asarray([[1.0, jnp.nan]])}, 0.5), "'a' contains NaN"),
        (lambda: P.masks({"a": jnp.ones((2, 2), jnp.int32)}, 0.5), "'a' is not floating"),
        (lambda: P.masks({"a": jnp.ones(4)}, 0.5, granularity="channel"), "ndim >= 2"),
        (lambda: P.masks({"a": jnp.ones(4)}, 0.5, scope="output"), "ndim >= 2"),
        (lambda: P.masks({"a": None}, 0.5), "nothing to prune"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()
    for bad in (True, "0.5"):  # booleans are not numbers, strings are not numbers
        with pytest.raises(TypeError, match="sparsity must be"):
            P.masks(scores, bad)
    with pytest.raises(TypeError, match="keep_one must be True or False"):
        P.masks(scores, 0.5, scope="global", keep_one="yes")


# ------------------------------------------------------------------------- properties


def _np_units(score, gran):
    """Reference unit scores (flat) and weights per unit, for a 2-D score."""
    if isinstance(gran, P.Element):
        return score.reshape(-1), 1
    if isinstance(gran, P.Channel):
        return np.sqrt((score**2).sum(axis=0)), score.shape[0]
    r, c = gran.rows, gran.cols
    tiles = score.reshape(score.shape[0] // r, r, score.shape[1] // c, c)
    return np.sqrt((tiles**2).sum(axis=(1, 3))).reshape(-1), r * c


def _np_expand(unit_keep, score, gran):
    if isinstance(gran, P.Element):
        return unit_keep.reshape(score.shape)
    if isinstance(gran, P.Channel):
        return np.broadcast_to(unit_keep, score.shape)
    r, c = gran.rows, gran.cols
    u = unit_keep.reshape(score.shape[0] // r, 1, score.shape[1] // c, 1)
    return np.broadcast_to(u, (score.shape[0] // r, r, score.shape[1] // c, c)).reshape(score.shape)


def _np_masks(scores, s, scope, gran, np_lowest):
    """Reference masks for 2-D float32 scores: exact counts, ties by index."""
    if isinstance(gran, P.NM):
        out = {}
        for name, score in scores.items():
            groups = score.T.reshape(score.shape[1], -1, gran.m)
            keep = ~np.apply_along_axis(lambda g: np_lowest(g, gran.m - gran.n), -1, groups)
            out[name] = keep.reshape(score.shape[1], -1).T
        return out
    parts = {name: _np_units(score, gran) for name, score in scores.items()}
    if scope == "layer":
        return {
            name: _np_expand(~np_lowest(u, round(s * scores[name].size) // z), scores[name], gran)
            for name, (u, z) in parts.items()
        }
    units = np.concatenate([u for u, _ in parts.values()])
    sizes = np.concatenate([np.full(u.size, z) for u, z in parts.values()])
    order = np.argsort(units, kind="stable")
    pruned = np.zeros(units.size, bool)
    pruned[order] = np.cumsum(sizes[order]) <= round(s * sum(sc.size for sc in scores.values()))
    out, start = {}, 0
    for name, (u, _) in parts.items():
        out[name] = _np_expand(~pruned[start : start + u.size], scores[name], gran)
        start += u.size
    return out


_GRAN = st.sampled_from([P.Element(), P.Channel(), P.Block(2, 2), P.Block(1, 4), P.NM(1, 2)])


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    cols=st.sampled_from([4, 8]),
    s=st.floats(0.0, 0.99),
    scope=st.sampled_from(["layer", "global"]),
    gran=_GRAN,
    ties=st.booleans(),
)
def test_property_exact_counts_per_leaf_and_skip_unselected(
    seed, cols, s, scope, gran, ties, np_lowest
):
    rows = 4
    r = np.random.default_rng(seed)
    draw = lambda shape: np.round(r.normal(size=shape), 0 if ties else 6)
    params = {
        "k1": jnp.asarray(draw((rows, cols)), jnp.float32),
        "k2": jnp.asarray(draw((cols, rows)), jnp.float32),
        "bias": jnp.asarray(draw((cols,)), jnp.float32),
    }
    scores = P.magnitude(params)
    sparsity = gran.sparsity if isinstance(gran, P.NM) else s
    mk = P.masks(scores, sparsity, scope=scope, granularity=gran)
    assert mk["bias"] is None
    ref = _np_masks({k: np.asarray(scores[k]) for k in ("k1", "k2")}, s, scope, gran, np_lowest)
    for name in ("k1", "k2"):
        np.testing.assert_array_equal(np.asarray(mk[name]), ref[name])
    zeros = [int((~v).sum()) for v in (mk["k1"], mk["k2"])]
    if isinstance(gran, P.Element) and scope == "layer":
        assert zeros == [round(s * rows * cols)] * 2  # exactly, per leaf
    elif isinstance(gran, P.Element):
        assert sum(zeros) == round(s * 2 * rows * cols)
    elif isinstance(gran, P.NM):
        assert zeros == [rows * cols // 2] * 2
    elif scope == "layer":  # whole units: as many as fit in each leaf's count
        assert all(z <= round(sparsity * rows * cols) for z in zeros)
    else:
        assert sum(zeros) <= round(sparsity * 2 * rows * cols)
    once = P.apply_masks(params, mk)
    twice = P.apply_masks(once, mk)
    chex.assert_trees_all_equal(once, twice)
    chex.assert_trees_all_equal(once["bias"], params["bias"])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), s=st.floats(0.0, 0.99), n=st.sampled_from([7, 30]))
def test_property_layer_exact_and_lowest_go_first(seed, s, n, np_layer_mask):
    r = np.random.default_rng(seed)
    score = jnp.asarray(np.round(r.random(n), 1), jnp.float32)  # many ties
    mk = np.asarray(P.masks({"w": score}, s)["w"])
    assert (~mk).sum() == round(s * n)
    sc = np.asarray(score)
    if 0 < (~mk).sum() < n:
        assert sc[~mk].max() <= sc[mk].min()
    np.testing.assert_array_equal(mk, np_layer_mask(sc, s))


# ------------------------------------------- global masks without gathering (distributed search)


def _tied_leaves(seed):
    """Leaves with many equal scores (ties across and within leaves) and a signed zero."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, (8, 12)).astype(np.float32)
    b = rng.integers(0, 6, (3, 4, 5)).astype(np.float32)
    b[0, 0, 0] = -0.0
    c = rng.standard_normal(7).astype(np.float32)
    return [jnp.asarray(a), jnp.asarray(b), jnp.asarray(c)]


@pytest.mark.parametrize("k", [0, 50, 200])
def test_lowest_k_many_is_lowest_k_of_the_concatenation(k):
    from lightcomp.prune._ranking import lowest_k, lowest_k_many

    xs = _tied_leaves(k)
    perms = ((1, 0), (2, 0, 1), (0,))  # each leaf read in its own axis order
    flat = jnp.concatenate(
        [jnp.transpose(x, p).reshape(-1) for x, p in zip(xs, perms, strict=True)]
    )
    want = np.asarray(lowest_k(flat, k))
    for run in (lowest_k_many, jax.jit(lowest_k_many, static_argnums=2)):
        got = run(xs, k, perms)
        got_flat = np.concatenate(
            [np.asarray(jnp.transpose(g, p)).reshape(-1) for g, p in zip(got, perms, strict=True)]
        )
        np.testing.assert_array_equal(got_flat, want)
        assert got_flat.sum() == min(k, flat.size)


def test_global_masks_on_sharded_leaves_gather_nothing_and_equal_one_device():
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as PS

    from lightcomp import parallel

    mesh = parallel.make_mesh(4, 2)
    rng = np.random.default_rng(3)
    scores = {
        "Dense_0": {"kernel": rng.integers(0, 50, (64, 32)).astype(np.float32)},
        "Dense_1": {"kernel": rng.standard_normal((32, 16)).astype(np.float32)},
    }
    specs = {"Dense_0": {"kernel": PS("data", "model")}, "Dense_1": {"kernel": PS("data", None)}}
    sharded = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), scores, specs)
    f = jax.jit(lambda sc: P.masks(sc, 0.7, scope="global"))
    got, want = f(sharded), f(scores)
    chex.assert_trees_all_equal(got, want)
    hlo = f.lower(sharded).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo  # only partial counts travel
