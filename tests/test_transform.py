"""Tests for lightcomp.transform: composition, the three constructors, STE gradients, states."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp import prune
from lightcomp import transform as T

KEY = jax.random.key(0)


def _params(seed=0, dtype=jnp.float32):
    # Both kernels share one shape so that k-means compiles once per configuration.
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), dtype)
    return {
        "Dense_0": {"kernel": normal(6, 6), "bias": normal(6)},
        "Dense_1": {"kernel": normal(6, 6), "bias": normal(6)},
    }


@pytest.fixture(scope="module")
def params():
    return _params()


def _kernels(tree_):
    return [tree_["Dense_0"]["kernel"], tree_["Dense_1"]["kernel"]]


def _np_fake_quant(x, bits):
    # the contract: symmetric, per output channel (axis -1), round half to even
    x = np.asarray(x, np.float32)
    qmax = 2 ** (bits - 1) - 1
    scale = np.abs(x).max(axis=0, keepdims=True) / np.float32(qmax)
    q = np.clip(np.round(x / scale), -qmax, qmax)
    return (q * scale).astype(np.float32)


def _add(c):
    """A toy transform ``w -> w + c`` on kernels, with a state recording ``c``."""
    return T.Transform(
        lambda p, k: jnp.float32(c),
        lambda p, s: jax.tree.map(lambda w: w + s if w.ndim == 2 else w, p),
        lambda p, s, g, step: s,
    )


def _mul(c):
    return T.Transform(
        lambda p, k: (jnp.float32(c),),
        lambda p, s: jax.tree.map(lambda w: w * s[0] if w.ndim == 2 else w, p),
        lambda p, s, g, step: s,
    )


# --------------------------------------------------------------------------- composition


def test_identity_is_exact(params):
    t = T.identity()
    s = t.init(params, KEY)
    assert s == ()
    out = t.apply(params, s)
    chex.assert_trees_all_equal(out, params)
    assert t.update(params, s, params, jnp.int32(3)) == ()
    empty = T.chain()
    chex.assert_trees_all_equal(empty.apply(params, empty.init(params, KEY)), params)
    both = T.chain(T.identity(), T.identity())
    chex.assert_trees_all_equal(jax.jit(both.apply)(params, both.init(params, KEY)), params)


def test_chain_applies_in_order_and_keeps_states_as_tuple(params):
    t = T.chain(_add(1.0), _mul(3.0))
    s = t.init(params, KEY)
    assert isinstance(s, tuple) and len(s) == 2
    assert float(s[0]) == 1.0 and isinstance(s[1], tuple)
    out = t.apply(params, s)
    k = params["Dense_0"]["kernel"]
    np.testing.assert_allclose(out["Dense_0"]["kernel"], (k + 1.0) * 3.0, rtol=1e-6)
    chex.assert_trees_all_equal(out["Dense_0"]["bias"], params["Dense_0"]["bias"])
    rev = T.chain(_mul(3.0), _add(1.0))
    np.testing.assert_allclose(
        rev.apply(params, rev.init(params, KEY))["Dense_0"]["kernel"], k * 3.0 + 1.0, rtol=1e-6
    )
    nested = T.chain(T.chain(_add(1.0)), _mul(3.0))
    ns = nested.init(params, KEY)
    assert isinstance(ns[0], tuple) and len(ns[0]) == 1
    chex.assert_trees_all_close(nested.apply(params, ns), out)


@pytest.fixture(scope="module")
def deep(params):
    """Deep Compression order with LSQ scales: (transform, state), built once."""
    t = T.chain(T.pruning(0.5), T.weight_sharing(4), T.fake_quantization(4, learned_scale=True))
    return t, t.init(params, KEY)


def test_deep_compression_state_structure(params, deep):
    t, s = deep
    ps, ws, qs = s
    assert isinstance(ps, T.PruningState)
    assert isinstance(ws, T.WeightSharingState) and isinstance(ws.centroids, T.Learned)
    assert isinstance(qs, T.FakeQuantState) and isinstance(qs.scales, T.Learned)
    assert (qs.bits, qs.axis, qs.symmetric) == (4, -1, True)
    assert ws.k == 4 and ws.preserve_zeros
    # None at unselected leaves (biases); masks bool, assignments uint8, centroids float32
    assert ps.masks["Dense_0"]["bias"] is None and ws.assignments["Dense_1"]["bias"] is None
    chex.assert_type(ps.masks["Dense_0"]["kernel"], jnp.bool_)
    chex.assert_type(ws.assignments["Dense_0"]["kernel"], jnp.uint8)
    chex.assert_shape(ws.centroids.value["Dense_1"]["kernel"], (4,))
    chex.assert_type(ws.centroids.value["Dense_1"]["kernel"], jnp.float32)
    # the static configuration is part of the tree structure, the arrays are leaves
    assert jax.tree.structure(s) == jax.tree.structure(jax.jit(lambda x: x)(s))
    assert len(jax.tree.leaves(s)) == 2 + 1 + 2 + 2 + 2
    chex.assert_trees_all_equal_structs(t.update(params, s, None, jnp.int32(1)), s)


def test_chain_rejects_non_transforms_and_bad_states(params):
    with pytest.raises(TypeError, match="chain argument 1"):
        T.chain(T.identity(), lambda p: p)
    t = T.chain(T.pruning(0.5), T.fake_quantization(8))
    with pytest.raises(ValueError, match="tuple of 2 states"):
        t.apply(params, t.init(params, KEY)[:1])
    s = t.init(params, KEY)
    with pytest.raises(TypeError, match="PruningState"):
        t.apply(params, (s[1], s[0]))


# --------------------------------------------------------------------------- pruning


def test_pruning_masks_lowest_magnitudes_per_layer(params):
    t = T.pruning(0.5)
    s = t.init(params, KEY)
    out = jax.jit(t.apply)(params, s)
    chex.assert_trees_all_equal(t.apply(params, s), out)
    for w, m, o in zip(_kernels(params), _kernels(s.masks), _kernels(out), strict=True):
        flat = np.abs(np.asarray(w)).ravel()
        want = np.ones(flat.size, bool)
        want[np.argsort(flat, kind="stable")[: round(0.5 * flat.size)]] = False
        np.testing.assert_array_equal(np.asarray(m).ravel(), want)
        np.testing.assert_array_equal(np.asarray(o), np.where(m, w, 0.0))
    chex.assert_trees_all_equal(out["Dense_0"]["bias"], params["Dense_0"]["bias"])
    np.testing.assert_allclose(s.sparsity, 0.5)


def test_pruning_schedule_updates_in_jit_without_recompiling(params):
    sched = prune.polynomial_schedule(0.0, 0.75, 2, 8, frequency=2)
    t = T.pruning(sched, scope="global")
    s = t.init(params, KEY)
    assert all(bool(jnp.all(m)) for m in _kernels(s.masks))
    update = jax.jit(t.update)
    total = sum(w.size for w in _kernels(params))
    seen = []
    for step in range(12):
        s = update(params, s, None, jnp.int32(step))
        zeros = sum(int(jnp.sum(~m)) for m in _kernels(s.masks))
        assert zeros == round(float(sched(step)) * total)
        seen.append(float(s.sparsity))
    assert update._cache_size() == 1
    assert seen == sorted(seen) and seen[-1] == pytest.approx(0.75)


def test_pruning_begin_end_and_update_every(params):
    t = T.pruning(0.5, begin_step=3, end_step=3)
    s = t.init(params, KEY)
    assert float(s.sparsity) == 0.0 and all(bool(jnp.all(m)) for m in _kernels(s.masks))
    update = jax.jit(t.update)
    s2 = update(params, s, None, jnp.int32(2))
    assert float(s2.sparsity) == 0.0
    s3 = update(params, s2, None, jnp.int32(3))
    assert float(s3.sparsity) == 0.5
    # after end_step the masks are frozen, even if the scores change
    other = _params(seed=7)
    s4 = update(other, s3, None, jnp.int32(4))
    chex.assert_trees_all_equal(s4.masks, s3.masks)
    # update_every with a gradient score: recomputed every 2 steps from begin_step
    g = _params(seed=3)
    tg = T.pruning(0.25, score="taylor", update_every=2)
    sg = tg.init(params, KEY)
    assert float(sg.sparsity) == 0.0  # no gradients yet at init
    ug = jax.jit(tg.update)
    sg1 = ug(params, sg, g, jnp.int32(1))
    assert float(sg1.sparsity) == 0.0
    sg2 = ug(params, sg1, g, jnp.int32(2))
    want = prune.masks(prune.taylor(params, g), 0.25)
    chex.assert_trees_all_equal(sg2.masks, want)
    with pytest.raises(ValueError, match="needs grads"):
        tg.update(params, sg, None, jnp.int32(2))


@pytest.mark.parametrize(
    "kw, zeros_per_kernel",
    [
        (dict(granularity="channel"), (3 * 6, 3 * 6)),
        (dict(granularity="n:m", n=1, m=2), (18, 18)),
        (dict(granularity="block", block=2), (16, 16)),
    ],
)
def test_pruning_structured(params, kw, zeros_per_kernel):
    sparsity = None if kw["granularity"] == "n:m" else 0.5
    t = T.pruning(sparsity, **kw)
    s = t.init(params, KEY)
    assert s.granularity == kw["granularity"]
    out = t.apply(params, s)
    got = tuple(int(jnp.sum(w == 0)) for w in _kernels(out))
    assert got == zeros_per_kernel


# --------------------------------------------------------------------------- weight sharing


def test_weight_sharing_values_gradients_and_recluster(params):
    # per output channel (axis=-1): each column has its own 3 centroids
    k = 3
    t = T.weight_sharing(k, axis=-1, preserve_zeros=False, recluster_every=2)
    s = t.init(params, KEY)
    chex.assert_shape(s.centroids.value["Dense_0"]["kernel"], (6, k))
    learned, fixed = T.partition(s)
    apply = jax.jit(t.apply)
    out = apply(params, s)
    chex.assert_trees_all_equal(t.apply(params, s), out)
    for w, c, a, o in zip(
        _kernels(params),
        _kernels(s.centroids.value),
        _kernels(s.assignments),
        _kernels(out),
        strict=True,
    ):
        w, c, a, o = (np.asarray(v) for v in (w, c, a, o))
        for j in range(w.shape[1]):
            np.testing.assert_array_equal(o[:, j], c[j][a[:, j]])
            for code in range(k):  # each centroid is the mean of its members (fixed point)
                members = w[:, j][a[:, j] == code]
                if members.size:
                    np.testing.assert_allclose(c[j, code], members.mean(), rtol=1e-5)
    cot = _params(seed=11)

    def f(p, lrn):
        eff = t.apply(p, T.combine(lrn, fixed))
        return sum(
            jnp.sum(e * r) for e, r in zip(jax.tree.leaves(eff), jax.tree.leaves(cot), strict=True)
        )

    gp, gl = jax.jit(jax.grad(f, argnums=(0, 1)))(params, learned)
    # raw params: straight-through; centroids: segment sums of the weights' gradients
    chex.assert_trees_all_close(gp, cot, rtol=1e-6)
    for r, a, g in zip(
        _kernels(cot), _kernels(s.assignments), _kernels(gl.centroids.value), strict=True
    ):
        r, a = np.asarray(r), np.asarray(a)
        want = np.stack([np.bincount(a[:, j], r[:, j], minlength=k) for j in range(a.shape[1])])
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-6)
    # re-clustering: only on multiples of recluster_every, one compilation for every step
    update = jax.jit(t.update)
    moved = jax.tree.map(lambda w: -w, params)  # every weight changes cluster
    s1 = update(moved, s, None, jnp.int32(1))
    chex.assert_trees_all_equal(s1.assignments, s.assignments)
    s2 = update(moved, s1, None, jnp.int32(2))
    assert update._cache_size() == 1
    for m, e in zip(_kernels(moved), _kernels(apply(moved, s2)), strict=True):
        # after re-clustering, the shared weights approximate the new (negated) weights
        assert float(jnp.mean((m - e) ** 2)) < 0.5 * float(jnp.var(m))
    assert float(jnp.mean((_kernels(moved)[0] - _kernels(apply(moved, s1))[0]) ** 2)) > 1.0


# --------------------------------------------------------------------------- fake quantization


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quantization_matches_contract(params, bits):
    t = T.fake_quantization(bits)
    s = t.init(params, KEY)
    out = jax.jit(t.apply)(params, s)
    chex.assert_trees_all_equal(t.apply(params, s), out)
    for w, o in zip(_kernels(params), _kernels(out), strict=True):
        np.testing.assert_allclose(np.asarray(o), _np_fake_quant(w, bits), rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal(out["Dense_1"]["bias"], params["Dense_1"]["bias"])


@pytest.mark.parametrize("group_size", [None, 2])
def test_lsq_scales_are_learned_with_lsq_gradient(params, group_size):
    bits = 3
    t = T.fake_quantization(bits, learned_scale=True, group_size=group_size)
    s = t.init(params, KEY)
    learned, fixed = T.partition(s)
    w = params["Dense_0"]["kernel"]
    sc = s.scales.value["Dense_0"]["kernel"]
    view = (6, 6) if group_size is None else (3, 2, 6)
    chex.assert_shape(sc, (1, 6) if group_size is None else (3, 1, 6))
    qp = 2 ** (bits - 1) - 1
    x = np.asarray(w, np.float32).reshape(view)
    red = (0,) if group_size is None else (1,)
    np.testing.assert_allclose(
        np.asarray(sc), 2 * np.abs(x).mean(axis=red, keepdims=True) / np.sqrt(qp), rtol=1e-5
    )
    cot = _params(seed=12)

    def f(p, lrn):
        eff = t.apply(p, T.combine(lrn, fixed))
        return sum(
            jnp.sum(e * r) for e, r in zip(jax.tree.leaves(eff), jax.tree.leaves(cot), strict=True)
        )

    gp, gl = jax.jit(jax.grad(f, argnums=(0, 1)))(params, learned)
    s_np = np.asarray(sc, np.float32)
    v = x / s_np
    r = np.asarray(cot["Dense_0"]["kernel"], np.float32).reshape(view)
    inside = (v > -qp) & (v < qp)
    # Esser et al. 2019: d/ds = round(v) - v inside, -Q_N / Q_P outside; times 1/sqrt(N Q_P)
    ds = np.where(v <= -qp, -qp, np.where(v >= qp, qp, np.round(v) - v))
    n = x.size / s_np.size
    want = (r * ds).sum(axis=red, keepdims=True) / np.sqrt(n * qp)
    np.testing.assert_allclose(gl.scales.value["Dense_0"]["kernel"], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(gp["Dense_0"]["kernel"]).reshape(view), np.where(inside, r, 0.0), rtol=1e-6
    )
    out = t.apply(params, s)
    np.testing.assert_allclose(
        np.asarray(out["Dense_0"]["kernel"]).reshape(view),
        np.clip(np.round(v), -qp, qp) * s_np,
        rtol=1e-6,
        atol=1e-7,
    )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_dtypes_are_kept_through_the_chain(dtype):
    p = _params(seed=5, dtype=dtype)
    t = T.chain(T.pruning(0.5), T.weight_sharing(4), T.fake_quantization(8, learned_scale=True))
    s = t.init(p, KEY)
    out = jax.jit(t.apply)(p, s)
    chex.assert_trees_all_equal_dtypes(out, p)
    chex.assert_type(s[1].centroids.value["Dense_0"]["kernel"], jnp.float32)
    chex.assert_type(s[2].scales.value["Dense_0"]["kernel"], jnp.float32)


# --------------------------------------------------------------------------- zeros stay zero


_STAGES = {
    "prune": lambda: T.pruning(prune.polynomial_schedule(0.3, 0.7, 0, 4), update_every=1),
    "share": lambda: T.weight_sharing(4),
    "quant": lambda: T.fake_quantization(4),
    "asym": lambda: T.fake_quantization(3, symmetric=False),
    "lsq": lambda: T.fake_quantization(4, learned_scale=True),
}


@pytest.mark.parametrize(
    "order",
    [
        *itertools.permutations(("prune", "share", "quant")),
        ("prune", "lsq", "share", "asym"),
    ],
)
def test_pruned_weights_stay_exactly_zero_in_any_order(params, order):
    t = T.chain(*(_STAGES[name]() for name in order))
    s = t.init(params, KEY)
    update = jax.jit(t.update)
    apply = jax.jit(t.apply)
    p = params
    for step in range(1, 5):  # the masks grow after sharing clustered: stale codes stay 0
        s = update(p, s, None, jnp.int32(step))
        masks = T.masks_of(s)
        p = prune.apply_masks(p, masks)  # as the train step keeps raw pruned weights at 0
        out = apply(p, s)
        for o, m in zip(_kernels(out), _kernels(masks), strict=True):
            assert np.all(np.asarray(o)[~np.asarray(m)] == 0.0)
            np.testing.assert_array_equal(np.signbit(np.asarray(o)[~np.asarray(m)]), False)
    assert float(s[order.index("prune")].sparsity) == pytest.approx(0.7)


# --------------------------------------------------------------------------- masks_of


def test_masks_of_ands_nested_pruning_states(params):
    assert T.masks_of(()) is None
    assert T.masks_of(T.fake_quantization(8).init(params, KEY)) is None
    first = T.pruning(0.5, select="Dense_0")
    both = T.pruning(0.25)
    t = T.chain(T.chain(first, T.fake_quantization(8)), both)
    s = t.init(params, KEY)
    m = T.masks_of(s)
    assert m["Dense_0"]["bias"] is None and m["Dense_1"]["bias"] is None
    a = s[0][0].masks["Dense_0"]["kernel"]
    b = s[1].masks["Dense_0"]["kernel"]
    np.testing.assert_array_equal(m["Dense_0"]["kernel"], np.logical_and(a, b))
    np.testing.assert_array_equal(m["Dense_1"]["kernel"], s[1].masks["Dense_1"]["kernel"])
    assert s[0][0].masks["Dense_1"]["kernel"] is None
    chex.assert_trees_all_equal(jax.jit(T.masks_of)(s), m)


# --------------------------------------------------------------------------- STE through a chain


def test_gradients_flow_to_params_centroids_and_scales(params, deep):
    t, s = deep
    learned, fixed = T.partition(s)
    chex.assert_trees_all_equal(T.combine(learned, fixed), s)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 6)), jnp.float32)

    def loss(p, lrn):
        e = t.apply(p, T.combine(lrn, fixed))
        h = jnp.tanh(x @ e["Dense_0"]["kernel"] + e["Dense_0"]["bias"])
        return jnp.sum((h @ e["Dense_1"]["kernel"] + e["Dense_1"]["bias"]) ** 2)

    grad = jax.grad(loss, argnums=(0, 1))
    gp, gl = grad(params, learned)
    gp_j, gl_j = jax.jit(grad)(params, learned)
    chex.assert_trees_all_close((gp, gl), (gp_j, gl_j), rtol=1e-5, atol=1e-6)
    masks = T.masks_of(s)
    for g, m in zip(_kernels(gp), _kernels(masks), strict=True):
        assert np.all(np.asarray(g)[~np.asarray(m)] == 0.0)  # pruned: no gradient
        assert np.count_nonzero(np.asarray(g)[np.asarray(m)]) > 0
    for g in _kernels(gl[1].centroids.value) + _kernels(gl[2].scales.value):
        assert np.all(np.isfinite(g)) and np.count_nonzero(g) > 0
    assert gl[0].masks["Dense_0"]["kernel"] is None  # nothing learned in the pruning state


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), bits=st.sampled_from([2, 5, 8]))
def test_fake_quantization_idempotent_and_few_levels(seed, bits):
    p = _params(seed)
    once = _JIT_QUANT[bits](p)
    twice = _JIT_QUANT[bits](once)
    chex.assert_trees_all_close(once, twice, rtol=1e-6, atol=1e-7)
    for o in _kernels(once):
        for j in range(o.shape[1]):
            assert len(np.unique(np.asarray(o)[:, j])) <= 2**bits - 1


def _quant_apply(bits):
    t = T.fake_quantization(bits)
    return jax.jit(lambda p: t.apply(p, T.FakeQuantState(None, bits, -1, True, None)))


_JIT_QUANT = {b: _quant_apply(b) for b in (2, 5, 8)}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: T.pruning(1.2), ValueError, "sparsity_or_schedule must be in"),
        (lambda: T.pruning("half"), TypeError, "sparsity_or_schedule"),
        (lambda: T.pruning(0.5, scope="net"), ValueError, "scope"),
        (lambda: T.pruning(0.5, granularity="n:m"), ValueError, "needs n and m"),
        (lambda: T.pruning(0.3, granularity="n:m", n=2, m=4), ValueError, "fixes the sparsity"),
        (lambda: T.pruning(0.5, granularity="block"), ValueError, "block"),
        (lambda: T.pruning(0.5, n=2), ValueError, "n and m"),
        (lambda: T.pruning(0.5, update_every=0), ValueError, "update_every"),
        (lambda: T.pruning(0.5, begin_step=5, end_step=2), ValueError, "end_step"),
        (lambda: T.pruning(0.5, score="norm"), ValueError, "score"),
        (lambda: T.pruning(lambda step: jnp.ones(3)), ValueError, "scalar"),
        (lambda: T.weight_sharing(1), ValueError, "k must be"),
        (lambda: T.weight_sharing(4, init="uniform"), ValueError, "init"),
        (lambda: T.weight_sharing(4, recluster_every=0), ValueError, "recluster_every"),
        (lambda: T.weight_sharing(4, preserve_zeros=1), TypeError, "preserve_zeros"),
        (lambda: T.fake_quantization(1), ValueError, "bits"),
        (lambda: T.fake_quantization(8.0), TypeError, "bits"),
        (lambda: T.fake_quantization(8, group_size=0), ValueError, "group_size"),
        (
            lambda: T.fake_quantization(8, symmetric=False, learned_scale=True),
            ValueError,
            "symmetric",
        ),
    ],
)
def test_static_config_is_validated_eagerly(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_leaf_errors_name_the_path(params):
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        T.fake_quantization(8, group_size=4).init(params, KEY)  # 6 is not a multiple of 4
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        T.weight_sharing(40).init(params, KEY)  # more clusters than values
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        T.pruning(0.5, granularity="block", block=(4, 4)).init(params, KEY)
    with pytest.raises(ValueError, match="matches no leaf"):
        T.pruning(0.5, select="Conv_0").init(params, KEY)


@pytest.mark.parametrize(
    "make",
    [
        lambda: T.pruning(0.5),
        lambda: T.weight_sharing(4),
        lambda: T.fake_quantization(4, learned_scale=True),
    ],
)
def test_state_that_does_not_match_params_names_the_first_path(params, make):
    t = make()
    s = t.init(params, KEY)
    renamed = {"Dense_0": params["Dense_0"], "Dense_9": params["Dense_1"]}
    with pytest.raises(ValueError, match=r"Dense_[19]/"):
        t.apply(renamed, s)
    with pytest.raises(ValueError, match=r"Dense_[19]/"):
        jax.jit(t.update)(renamed, s, None, jnp.int32(0))
    wider = {**params, "Dense_1": {"kernel": jnp.ones((6, 5)), "bias": jnp.ones(5)}}
    with pytest.raises(ValueError, match="Dense_1/kernel"):
        t.apply(wider, s)
