"""Tests for lightcomp.weight_sharing: shared values, centroid gradients, re-clustering."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import cluster
from lightcomp import transform as T

KEY = jax.random.key(0)


def test_state_layout(params):
    s = T.weight_sharing(4).init(params, KEY)
    assert isinstance(s.centroids, T.Learned)
    assert s.assignments["Dense_1"]["bias"] is None
    chex.assert_type(s.assignments["Dense_0"]["kernel"], jnp.uint8)
    chex.assert_shape(s.centroids.value["Dense_1"]["kernel"], (4,))
    chex.assert_type(s.centroids.value["Dense_1"]["kernel"], jnp.float32)


def test_weight_sharing_values_gradients_and_recluster(params, new_params, kernels):
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
        kernels(params),
        kernels(s.centroids.value),
        kernels(s.assignments),
        kernels(out),
        strict=True,
    ):
        w, c, a, o = (np.asarray(v) for v in (w, c, a, o))
        for j in range(w.shape[1]):
            np.testing.assert_array_equal(o[:, j], c[j][a[:, j]])
            for code in range(k):  # each centroid is the mean of its members (fixed point)
                members = w[:, j][a[:, j] == code]
                if members.size:
                    np.testing.assert_allclose(c[j, code], members.mean(), rtol=1e-5)
    cot = new_params(11)

    def f(p, lrn):
        eff = t.apply(p, T.combine(lrn, fixed))
        return sum(
            jnp.sum(e * r) for e, r in zip(jax.tree.leaves(eff), jax.tree.leaves(cot), strict=True)
        )

    gp, gl = jax.jit(jax.grad(f, argnums=(0, 1)))(params, learned)
    # raw params: straight-through; centroids: segment sums of the weights' gradients
    chex.assert_trees_all_close(gp, cot, rtol=1e-6)
    for r, a, g in zip(
        kernels(cot), kernels(s.assignments), kernels(gl.centroids.value), strict=True
    ):
        r, a = np.asarray(r), np.asarray(a)
        want = np.stack([np.bincount(a[:, j], r[:, j], minlength=k) for j in range(a.shape[1])])
        np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-6)
    # re-clustering: only on multiples of recluster_every, one compilation for every step
    update = jax.jit(chex.assert_max_traces(t.update, n=1))
    moved = jax.tree.map(lambda w: -w, params)  # every weight changes cluster
    s1 = update(moved, s, None, jnp.int32(1))
    chex.assert_trees_all_equal(s1.assignments, s.assignments)
    s2 = update(moved, s1, None, jnp.int32(2))
    for m, e in zip(kernels(moved), kernels(apply(moved, s2)), strict=True):
        # after re-clustering, the shared weights approximate the new (negated) weights
        assert float(jnp.mean((m - e) ** 2)) < 0.5 * float(jnp.var(m))
    assert float(jnp.mean((kernels(moved)[0] - kernels(apply(moved, s1))[0]) ** 2)) > 1.0


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: T.weight_sharing(1), ValueError, "k must be"),
        (lambda: T.weight_sharing(True), TypeError, "k must be"),
        (lambda: T.weight_sharing(4, init="uniform"), ValueError, "init"),
        (lambda: T.weight_sharing(4, recluster_every=0), ValueError, "recluster_every"),
        (lambda: T.weight_sharing(4, preserve_zeros=1), TypeError, "preserve_zeros"),
        (lambda: T.weight_sharing(4, preserve_zeros="yes"), TypeError, "preserve_zeros"),
        (lambda: T.weight_sharing(4, axis=1.0), TypeError, "axis"),
    ],
)
def test_static_config_is_validated_eagerly(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_leaf_errors_name_the_path(params):
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        T.weight_sharing(40).init(params, KEY)  # more clusters than values
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        T.weight_sharing(4, axis=5).init(params, KEY)


def test_one_codebook_per_slice_of_a_stacked_leaf(vmapped_state):
    # blocks made by nnx.vmap: kernels [3, ...]; each layer its own k values
    t = T.weight_sharing(4, select=r"blocks/mlp", recluster_every=1)
    s = t.init(vmapped_state, KEY)
    w = np.asarray(vmapped_state["blocks"]["mlp"]["kernel"][...])
    c = s.centroids.value["blocks"]["mlp"]["kernel"]
    chex.assert_shape(c, (3, 4))
    eff = np.asarray(jax.jit(t.apply)(vmapped_state, s)["blocks"]["mlp"]["kernel"][...])
    # k-means over the layer axis: each slice alone (tests/cluster), in one compilation
    np.testing.assert_array_equal(c, cluster.kmeans(w, 4, axis=(0,), preserve_zeros=True)[0])
    for layer in range(3):
        assert set(np.unique(eff[layer])) <= set(np.asarray(c[layer]).tolist())
    s2 = jax.jit(t.update)(vmapped_state, s, None, jnp.int32(1))  # re-clustered per slice
    chex.assert_shape(s2.centroids.value["blocks"]["mlp"]["kernel"], (3, 4))
    with pytest.raises(ValueError, match="this state was built by"):
        T.weight_sharing(4, select=r"blocks/mlp", stacked=0).apply(vmapped_state, s)
