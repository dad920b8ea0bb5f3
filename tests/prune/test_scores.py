"""lightcomp/prune/_scores.py: score functions, the Fisher accumulator, `as_score`."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import prune as P

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
def test_scores_match_numpy_jit_and_not(dtype, make_params, like, leaves, selected):
    params, grads = make_params(1, dtype), like(make_params(1, dtype), 2)
    eager, jitted = _all_scores(params, grads), _all_scores_jit(params, grads)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6)
    for name, (_, ref) in SCORES.items():
        out = eager[name]
        got = leaves(out)
        assert sorted(got) == sorted(selected), name
        assert out["Dense_0"]["bias"] is None and out["Conv_0"]["bias"] is None
        for path in selected:
            w = np.asarray(leaves(params)[path], np.float32)
            g = np.asarray(leaves(grads)[path], np.float32)
            assert got[path].dtype == jnp.float32
            np.testing.assert_allclose(np.asarray(got[path]), ref(w, g), rtol=1e-6, atol=1e-7)


def test_random_scores_shapes_keys_and_range(leaves):
    assert P.random is P.random_scores  # the 0.1.0 name
    params = {"k": jnp.ones((6, 4)), "b": jnp.ones(4), "e": jnp.ones((4, 3))}
    a = P.random_scores(jax.random.key(0), params)
    b = jax.jit(P.random_scores)(jax.random.key(0), params)
    chex.assert_trees_all_close(a, b)
    c = P.random_scores(jax.random.key(1), params)
    assert not np.allclose(a["k"], c["k"]) and a["b"] is None
    for path, v in leaves(a).items():
        v = np.asarray(v)
        assert v.shape == leaves(params)[path].shape and v.min() >= 0 and v.max() < 1
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        P.random_scores(0, params)


def test_wanda_matches_numpy_jit_and_not():
    r = np.random.default_rng(4)
    params = {"k": jnp.asarray(r.normal(size=(5, 3)), jnp.float32), "b": jnp.ones(3)}
    norms = {"k": jnp.asarray(r.random(5) + 0.1, jnp.float32), "b": None}
    got = P.wanda(params, norms)
    chex.assert_trees_all_close(jax.jit(P.wanda)(params, norms), got, rtol=1e-6)
    ref = np.abs(np.asarray(params["k"])) * np.asarray(norms["k"])[:, None]
    np.testing.assert_allclose(np.asarray(got["k"]), ref, rtol=1e-6)
    assert got["b"] is None
    with pytest.raises(ValueError, match="input_norms leaf 'k' has shape \\(3,\\), expected"):
        P.wanda(params, {"k": jnp.ones(3), "b": None})
    with pytest.raises(ValueError, match="input_norms has no value at selected leaf 'k'"):
        P.wanda(params, {"k": None, "b": None})


def test_score_input_errors_name_the_leaf(make_params):
    params = make_params(13)
    with pytest.raises(ValueError, match="grads does not mirror"):
        P.gradient(params, {"Dense_0": {"kernel": 1.0}})
    with pytest.raises(ValueError, match=r"grads leaf .*shape"):
        P.taylor(params, jax.tree.map(lambda w: w[..., :1], params))
    with pytest.raises(TypeError, match="not floating"):
        P.magnitude({"a": jnp.ones((2, 2), jnp.int32)}, select=lambda p, w: True)


# ------------------------------------------------------------------------- as_score


@pytest.mark.parametrize(
    ("score", "needs_grads", "ref"),
    [
        (P.magnitude, False, lambda w, g: np.abs(w)),
        ("magnitude", False, lambda w, g: np.abs(w)),
        (P.gradient, True, lambda w, g: np.abs(g)),
        ("gradient", True, lambda w, g: np.abs(g)),
        (P.taylor, True, lambda w, g: np.abs(w * g)),
        ("taylor", True, lambda w, g: np.abs(w * g)),
        (lambda p, g: jax.tree.map(lambda w, d: w * d, p, g), True, lambda w, g: w * g),
    ],
)
def test_as_score_library_names_and_functions(score, needs_grads, ref, make_params, like):
    params = make_params(20)
    grads = like(params, 21)
    fn, needs = P.as_score(score)
    assert needs is needs_grads
    score_fn = P.as_score(score)
    assert P.as_score(score_fn) is score_fn
    if isinstance(score, str):  # a name is an alias of the library function
        assert score_fn is P.as_score(getattr(P, score))
    rule = r"Dense_\d/kernel"
    got = fn(params, grads, rule)
    chex.assert_trees_all_equal(jax.jit(fn, static_argnums=2)(params, grads, rule), got)
    assert got["Conv_0"]["kernel"] is None and got["Dense_0"]["bias"] is None
    for name in ("Dense_0", "Dense_1"):
        w = np.asarray(params[name]["kernel"], np.float32)
        g = np.asarray(grads[name]["kernel"], np.float32)
        assert got[name]["kernel"].dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got[name]["kernel"]), ref(w, g), rtol=1e-6)


def test_as_score_checks_user_output_once_per_call(make_params, like):
    params = make_params(22)
    grads = like(params, 23)
    bad_cases = [
        (lambda p, g: {"Dense_0": p["Dense_0"]}, ValueError, "does not mirror params"),
        (
            lambda p, g: jax.tree.map(lambda w: w.astype(jnp.int32), p),
            TypeError,
            "score function output at leaf 'Conv_0/kernel' must be a floating-point array",
        ),
        (
            lambda p, g: jax.tree.map(lambda w: w[..., :1], p),
            ValueError,
            "score function output leaf 'Conv_0/kernel' has shape",
        ),
        (
            lambda p, g: dict(p, Dense_1={"kernel": None}),
            ValueError,
            "no value at selected leaf 'Dense_1/kernel'",
        ),
    ]
    for user_fn, err, match in bad_cases:
        fn, _ = P.as_score(user_fn)
        with pytest.raises(err, match=match):
            fn(params, grads, None)
    with pytest.raises(ValueError, match="needs grads"):
        P.as_score(P.taylor).fn(params, None, None)
    with pytest.raises(ValueError, match="needs grads"):
        P.as_score(lambda p, g: p).fn(params, None, None)
    with pytest.raises(ValueError, match="score must be one of \\['magnitude', 'gradient'"):
        P.as_score("hessian")
    with pytest.raises(TypeError, match="score must be callable"):
        P.as_score(3)
