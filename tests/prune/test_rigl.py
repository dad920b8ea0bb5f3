"""lightcomp/prune/_rigl.py: RigL's drop-and-regrow inside a training loop."""

from __future__ import annotations

import chex
import jax
import numpy as np
import optax
import pytest

from lightcomp import prune as P


def test_prune_and_regrow_rigl(digits, mlp, like, leaves):
    apply, params = mlp((32, 10), 64, 6)
    m = P.masks(P.magnitude(like(params, 7)), 0.8)  # a random mask
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
    active = {p: int(v.sum()) for p, v in leaves(m).items()}
    for i in range(12):
        params, state = train(params, state, m)
        if i % 4 == 3:
            g = grad_fn(params)
            new_p, new_m, new_s = regrow(params, m, g, frac(i), opt_state=state)
            if i == 3:  # jitted and eager agree
                eager = P.prune_and_regrow(params, m, g, float(frac(i)), opt_state=state)
                chex.assert_trees_all_equal((new_p, new_m, new_s), eager)
            changed = {
                p: np.asarray(leaves(new_m)[p]) != np.asarray(v) for p, v in leaves(m).items()
            }
            assert any(c.any() for c in changed.values())
            adam = new_s[1][0]
            for path in active:
                nm = np.asarray(leaves(new_m)[path])
                assert nm.sum() == active[path]  # as many active as before
                assert np.all(np.asarray(leaves(new_p)[path])[~nm] == 0.0)
                grown = nm & ~np.asarray(leaves(m)[path])
                assert np.all(np.asarray(leaves(new_p)[path])[grown] == 0.0)  # grown start at 0
                for mom in (adam.mu, adam.nu):
                    assert np.all(np.asarray(leaves(mom)[path])[changed[path]] == 0.0)
                    kept = ~changed[path]
                    np.testing.assert_array_equal(
                        np.asarray(leaves(mom)[path])[kept],
                        np.asarray(
                            leaves(getattr(state[1][0], "mu" if mom is adam.mu else "nu"))[path]
                        )[kept],
                    )
            # the bias moments (unselected) and the step count are untouched
            chex.assert_trees_all_equal(
                adam.mu["Dense_0"]["bias"], state[1][0].mu["Dense_0"]["bias"]
            )
            chex.assert_trees_all_equal(adam.count, state[1][0].count)
            params, m, state = new_p, new_m, new_s
    for path, mk in leaves(m).items():
        assert np.all(np.asarray(leaves(params)[path])[~np.asarray(mk)] == 0.0)


def test_prune_and_regrow_against_numpy(np_lowest):
    r = np.random.default_rng(41)
    w = np.round(r.normal(size=(4, 6)), 1).astype(np.float32)
    keep = r.random((4, 6)) < 0.5
    w = np.where(keep, w, 0.0).astype(np.float32)
    g = np.round(r.normal(size=(4, 6)), 1).astype(np.float32)
    new_p, new_m, _ = P.prune_and_regrow({"w": w}, {"w": keep}, {"w": g}, 0.4)
    k = round(0.4 * keep.sum())
    flat_m = keep.reshape(-1)
    mag = np.where(flat_m, np.abs(w.reshape(-1)), np.inf)
    kept = flat_m & ~np_lowest(mag, k)
    grow = np.where(kept, -np.inf, np.abs(g.reshape(-1)))
    ref = kept | (~kept & np_lowest(-grow, k))
    np.testing.assert_array_equal(np.asarray(new_m["w"]).reshape(-1), ref)
    np.testing.assert_array_equal(np.asarray(new_p["w"]), np.where(ref.reshape(4, 6), w, 0.0))
    with pytest.raises(ValueError, match="fraction"):
        P.prune_and_regrow({"w": w}, {"w": keep}, {"w": g}, 1.5)
    with pytest.raises(ValueError, match="grads does not mirror"):
        P.prune_and_regrow({"w": w}, {"w": keep}, {"v": g}, 0.5)
