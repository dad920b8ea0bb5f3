"""Tests for lightcomp.pruning: masks on a schedule, structured granularities, masks_of."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import prune, tree
from lightcomp import transform as T

KEY = jax.random.key(0)


def test_pruning_masks_lowest_magnitudes_per_layer(params, kernels):
    t = T.pruning(0.5)
    s = t.init(params, KEY)
    out = jax.jit(t.apply)(params, s)
    chex.assert_trees_all_equal(t.apply(params, s), out)
    for w, m, o in zip(kernels(params), kernels(s.masks), kernels(out), strict=True):
        flat = np.abs(np.asarray(w)).ravel()
        want = np.ones(flat.size, bool)
        want[np.argsort(flat, kind="stable")[: round(0.5 * flat.size)]] = False
        np.testing.assert_array_equal(np.asarray(m).ravel(), want)
        np.testing.assert_array_equal(np.asarray(o), np.where(m, w, 0.0))
    chex.assert_trees_all_equal(out["Dense_0"]["bias"], params["Dense_0"]["bias"])
    np.testing.assert_allclose(s.sparsity, 0.5)
    assert s.masks["Dense_0"]["bias"] is None
    chex.assert_type(s.masks["Dense_0"]["kernel"], jnp.bool_)


def test_pruning_schedule_updates_in_jit_without_recompiling(params, kernels):
    sched = prune.polynomial_schedule(0.0, 0.75, 2, 8, frequency=2)
    t = T.pruning(sched, scope="global")
    s = t.init(params, KEY)
    assert all(bool(jnp.all(m)) for m in kernels(s.masks))
    update = jax.jit(chex.assert_max_traces(t.update, n=1))
    total = sum(w.size for w in kernels(params))
    seen = []
    for step in range(12):
        s = update(params, s, None, jnp.int32(step))
        zeros = sum(int(jnp.sum(~m)) for m in kernels(s.masks))
        assert zeros == round(float(sched(step)) * total)
        seen.append(float(s.sparsity))
    assert seen == sorted(seen) and seen[-1] == pytest.approx(0.75)


def test_pruning_begin_end_and_update_every(params, new_params, kernels):
    t = T.pruning(0.5, begin_step=3, end_step=3)
    s = t.init(params, KEY)
    assert float(s.sparsity) == 0.0 and all(bool(jnp.all(m)) for m in kernels(s.masks))
    update = jax.jit(t.update)
    s2 = update(params, s, None, jnp.int32(2))
    assert float(s2.sparsity) == 0.0
    s3 = update(params, s2, None, jnp.int32(3))
    assert float(s3.sparsity) == 0.5
    # after end_step the masks are frozen, even if the scores change
    s4 = update(new_params(7), s3, None, jnp.int32(4))
    chex.assert_trees_all_equal(s4.masks, s3.masks)


@pytest.mark.parametrize("score", ["taylor", prune.taylor])
def test_gradient_scores_update_every_k_steps(params, new_params, score):
    g = new_params(3)
    tg = T.pruning(0.25, score=score, update_every=2)
    sg = tg.init(params, KEY)
    assert float(sg.sparsity) == 0.0  # no gradients yet at init
    ug = jax.jit(tg.update)
    sg1 = ug(params, sg, g, jnp.int32(1))
    assert float(sg1.sparsity) == 0.0
    sg2 = ug(params, sg1, g, jnp.int32(2))
    chex.assert_trees_all_equal(sg2.masks, prune.masks(prune.taylor(params, g), 0.25))
    with pytest.raises(ValueError, match="needs grads"):
        tg.update(params, sg, None, jnp.int32(2))


def test_a_custom_score_function(params):
    # (params, grads) -> scores: here the negated magnitude, so the largest weights go
    neg = lambda p, g: jax.tree.map(lambda w: -jnp.abs(w), p)
    t = T.pruning(0.5, score=neg, update_every=1)
    s = jax.jit(t.update)(params, t.init(params, KEY), params, jnp.int32(0))
    w = np.abs(np.asarray(params["Dense_0"]["kernel"]))
    kept = np.asarray(s.masks["Dense_0"]["kernel"])
    assert w[kept].max() <= w[~kept].min()


@pytest.mark.parametrize(
    "kw, zeros_per_kernel",
    [
        (dict(granularity="channel"), (3 * 6, 3 * 6)),
        (dict(granularity=prune.Channel()), (3 * 6, 3 * 6)),
        (dict(granularity="n:m", n=1, m=2), (18, 18)),
        (dict(granularity=prune.NM(1, 2)), (18, 18)),
        (dict(granularity="block", block=2), (16, 16)),
        (dict(granularity=prune.Block(2, 2)), (16, 16)),
    ],
)
def test_pruning_structured(params, kernels, kw, zeros_per_kernel):
    nm = isinstance(kw["granularity"], prune.NM) or kw["granularity"] == "n:m"
    t = T.pruning(None, **kw) if nm else T.pruning(0.5, **kw)
    out = t.apply(params, t.init(params, KEY))
    got = tuple(int(jnp.sum(w == 0)) for w in kernels(out))
    assert got == zeros_per_kernel


def test_nm_needs_no_placeholder_sparsity(params, kernels):
    t = T.pruning(granularity=prune.NM(1, 2))
    s = t.init(params, KEY)
    assert float(s.sparsity) == 0.5
    with pytest.raises(ValueError, match="needs a sparsity"):
        T.pruning(granularity="channel")


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


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: T.pruning(1.2), ValueError, "sparsity_or_schedule"),
        (lambda: T.pruning(True), TypeError, "sparsity_or_schedule"),
        (lambda: T.pruning("half"), TypeError, "sparsity_or_schedule"),
        (lambda: T.pruning(0.5, scope="net"), ValueError, "scope"),
        (lambda: T.pruning(0.5, granularity="n:m"), ValueError, "n"),
        (lambda: T.pruning(0.3, granularity="n:m", n=2, m=4), ValueError, "fixes the sparsity"),
        (lambda: T.pruning(0.3, granularity=prune.NM(2, 4)), ValueError, "fixes the sparsity"),
        (lambda: T.pruning(0.5, granularity="block"), ValueError, "block"),
        (lambda: T.pruning(0.5, n=2), ValueError, "n"),
        (lambda: T.pruning(0.5, update_every=0), ValueError, "update_every"),
        (lambda: T.pruning(0.5, update_every=2.0), TypeError, "update_every"),
        (lambda: T.pruning(0.5, begin_step=5, end_step=2), ValueError, "end_step"),
        (lambda: T.pruning(0.5, score="norm"), ValueError, "score"),
        (lambda: T.pruning(0.5, score=3), TypeError, "score"),
        (lambda: T.pruning(lambda step: jnp.ones(3)), ValueError, "scalar"),
        (lambda: T.pruning(0.5, scope="output", granularity="channel"), ValueError, "output"),
    ],
)
def test_static_config_is_validated_eagerly(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_leaf_errors_name_the_path(params):
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        T.pruning(0.5, granularity="block", block=(4, 4)).init(params, KEY)
    with pytest.raises(ValueError, match="matches no leaf"):
        T.pruning(0.5, select="Conv_0").init(params, KEY)


# --- stacked layers and attention kernels -----------------------------------------------


@pytest.mark.parametrize(
    "which, stacked, n_stacked", [("linen", "layers/", 6), ("nnx", "blocks/", 5)]
)
def test_every_layer_of_a_scanned_stack_gets_the_sparsity_exactly(
    scanned_lm, vmapped_state, which, stacked, n_stacked
):
    # the issue: pruning(0.5) on an nn.scan stack gave [0.52, 0.46, 0.48, ...] per layer
    params = scanned_lm if which == "linen" else vmapped_state
    t = T.pruning(0.5)
    s = t.init(params, KEY)
    layered = 0
    for path, mk in tree.leaves_with_paths(s.masks):
        mk = np.asarray(mk)
        if path.startswith(stacked):
            per_layer = (~mk).reshape(mk.shape[0], -1).sum(axis=1)
            assert per_layer.tolist() == [round(0.5 * mk[0].size)] * mk.shape[0], path
            layered += 1
        else:
            assert int((~mk).sum()) == round(0.5 * mk.size), path
    assert layered == n_stacked
    chex.assert_trees_all_equal(jax.jit(t.apply)(params, s), t.apply(params, s))


def test_two_four_of_attention_and_a_schedule_under_jit(scanned_lm):
    t = T.pruning(
        prune.polynomial_schedule(0.0, 0.5, 0, 4), granularity=prune.NM(2, 4), update_every=2
    )
    s = t.init(scanned_lm, KEY)
    update = jax.jit(t.update)
    for step in range(5):
        s = update(scanned_lm, s, None, jnp.int32(step))
    q = np.asarray(s.masks["layers"]["MultiHeadDotProductAttention_0"]["query"]["kernel"])
    groups = q.reshape(q.shape[0], -1, 4, *q.shape[2:])  # [layers, embed/4, 4, heads, head_dim]
    np.testing.assert_array_equal(groups.sum(axis=2), 2)  # groups run along embed


def test_axes_given_where_they_cannot_be_derived():
    params = {"Einsum_0": {"kernel": jnp.asarray(np.random.default_rng(1).random((4, 2, 3)))}}
    with pytest.raises(
        ValueError, match=r"Channel\(\) needs the input and output axes of leaf 'Einsum_0/kernel'"
    ):
        T.pruning(0.5, granularity="channel").init(params, KEY)
    with pytest.raises(ValueError, match="'Einsum_0/kernel'"):  # masks come later: checked now
        T.pruning(0.5, granularity="channel", begin_step=3).init(params, KEY)
    given = T.pruning(0.5, granularity="channel", axes={"Einsum": tree.Axes((), (0,), (1, 2))})
    s = given.init(params, KEY)
    cols = np.asarray(s.masks["Einsum_0"]["kernel"]).reshape(4, 6)
    assert (~cols.all(axis=0)).sum() == 3  # half of the six output units, whole
    other = T.pruning(0.5, granularity="channel", axes={"Einsum": tree.Axes((), (0, 1), (2,))})
    with pytest.raises(ValueError, match="this state was built by"):
        other.apply(params, s)
    with pytest.raises(ValueError, match="axes pattern 'Dense' matches no selected leaf"):
        T.pruning(0.5, axes={"Dense": tree.Axes((), (0,), (1, 2))}).init(params, KEY)
    with pytest.raises(TypeError, match="axes must be a dict"):
        T.pruning(0.5, axes=[tree.Axes()])
