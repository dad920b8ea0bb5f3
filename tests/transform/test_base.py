"""Tests for lightcomp.transform's Transform, identity, chain and state fingerprints."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc
from lightcomp import transform as T

KEY = jax.random.key(0)


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


def test_transform_is_a_three_field_namedtuple():
    assert T.Transform._fields == ("init", "apply", "update")
    assert lc.Transform is T.Transform and lc.chain is T.chain


def test_identity_is_exact(params):
    t = T.identity()
    s = t.init(params, KEY)
    assert s == ()
    chex.assert_trees_all_equal(t.apply(params, s), params)
    assert t.update(params, s, params, jnp.int32(3)) == ()
    empty = T.chain()
    chex.assert_trees_all_equal(empty.apply(params, empty.init(params, KEY)), params)
    both = T.chain(T.identity(), T.identity())
    chex.assert_trees_all_equal(jax.jit(both.apply)(params, both.init(params, KEY)), params)


def test_chain_equals_applying_the_transforms_by_hand(params):
    t = T.chain(_add(1.0), _mul(3.0))
    s = t.init(params, KEY)
    assert isinstance(s, tuple) and len(s) == 2
    assert float(s[0]) == 1.0 and isinstance(s[1], tuple)
    out = t.apply(params, s)
    by_hand = _mul(3.0).apply(_add(1.0).apply(params, s[0]), s[1])
    chex.assert_trees_all_equal(out, by_hand)
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


def test_chain_inits_each_transform_on_what_the_previous_left(params):
    # weight sharing clusters the pruned weights: its zeros are the pruning's zeros
    t = T.chain(T.pruning(0.5), T.weight_sharing(4))
    s = t.init(params, KEY)
    pruned = s[0].masks["Dense_0"]["kernel"]
    out = t.apply(params, s)["Dense_0"]["kernel"]
    np.testing.assert_array_equal(np.asarray(out)[~np.asarray(pruned)], 0.0)


def test_states_hold_arrays_only_and_survive_jit(params):
    t = T.chain(T.pruning(0.5), T.weight_sharing(4), T.fake_quantization(4, learned_scale=True))
    s = t.init(params, KEY)
    for leaf in jax.tree.leaves(s):
        assert isinstance(leaf, jax.Array)
    assert len(jax.tree.leaves(s)) == 2 + 1 + 2 + 2 + 2
    assert jax.tree.structure(s) == jax.tree.structure(jax.jit(lambda x: x)(s))
    chex.assert_trees_all_equal_structs(t.update(params, s, None, jnp.int32(1)), s)


@pytest.mark.parametrize(
    "built, applied, kind",
    [
        (lambda: T.pruning(0.5, scope="global"), lambda: T.pruning(0.5), "pruning"),
        (lambda: T.pruning(0.5, granularity="channel"), lambda: T.pruning(0.5), "pruning"),
        (lambda: T.weight_sharing(4, axis=-1), lambda: T.weight_sharing(4), "weight_sharing"),
        (lambda: T.fake_quantization(8), lambda: T.fake_quantization(3), "fake_quantization"),
        (
            lambda: T.fake_quantization(8),
            lambda: T.fake_quantization(8, axis=None),
            "fake_quantization",
        ),
    ],
)
def test_a_state_of_another_configuration_is_refused(params, built, applied, kind):
    s = built().init(params, KEY)
    t = applied()
    with pytest.raises(ValueError, match=f"{kind}: this state was built by") as e:
        t.apply(params, s)
    assert s.fingerprint in str(e.value)  # both configurations are described
    with pytest.raises(ValueError, match="this state was built by"):
        jax.jit(t.update)(params, s, None, jnp.int32(0))


def test_same_configuration_gives_the_same_fingerprint(params):
    # axis=-1 and the default (one scale per output unit) read a Dense kernel the same way:
    # the fingerprint names what is resolved at each leaf, so the states are interchangeable
    a = T.fake_quantization(4, axis=-1).init(params, KEY)
    b = T.fake_quantization(4).init(params, KEY)
    head = T.fingerprint(
        "fake_quantization", bits=4, symmetric=True, group_size=None, learned_scale=False
    )
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint.startswith(head[:-1] + ", leaf_axes='")
    assert T.fake_quantization(4, axis=None).init(params, KEY).fingerprint != a.fingerprint


def test_chain_rejects_non_transforms_and_bad_states(params):
    with pytest.raises(TypeError, match="chain argument 1"):
        T.chain(T.identity(), lambda p: p)
    t = T.chain(T.pruning(0.5), T.fake_quantization(8))
    with pytest.raises(ValueError, match="tuple of 2 states"):
        t.apply(params, t.init(params, KEY)[:1])
    s = t.init(params, KEY)
    with pytest.raises(TypeError, match="PruningState"):
        t.apply(params, (s[1], s[0]))
