"""Tests for lightcomp/cluster/_share.py: shared weights, their gradient, inertia."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import cluster


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("preserve_zeros", [False, True])
def test_share_gradient_is_segment_sum(reduce, preserve_zeros):
    rng = np.random.default_rng(8)
    k = 6
    c = jnp.asarray(rng.standard_normal(k), jnp.float32)
    a = jnp.asarray(rng.integers(0, k, size=(20, 5)), jnp.uint8)
    g = rng.standard_normal((20, 5)).astype(np.float32)

    def loss(c):
        return jnp.sum(g * cluster.share(c, a, reduce=reduce, preserve_zeros=preserve_zeros))

    codes = np.asarray(a).reshape(-1)
    want = np.bincount(codes, weights=g.reshape(-1), minlength=k)
    if reduce == "mean":
        want = want / np.maximum(np.bincount(codes, minlength=k), 1)
    if preserve_zeros:
        want[0] = 0.0
    for fn in (jax.grad(loss), jax.jit(jax.grad(loss))):
        np.testing.assert_allclose(fn(c), want, rtol=1e-5, atol=1e-6)
    value = np.asarray(c)[codes].reshape(a.shape)
    if preserve_zeros:
        value = np.where(np.asarray(a) == 0, 0.0, value)
    np.testing.assert_array_equal(
        cluster.share(c, a, reduce=reduce, preserve_zeros=preserve_zeros), value
    )


def test_share_per_channel_gradient():
    rng = np.random.default_rng(9)
    c = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32)
    a = jnp.asarray(rng.integers(0, 4, size=(7, 3)), jnp.uint8)
    g = rng.standard_normal((7, 3)).astype(np.float32)
    grad = jax.grad(lambda c: jnp.sum(g * cluster.share(c, a, axis=1)))(c)
    want = np.stack([np.bincount(np.asarray(a)[:, i], g[:, i], minlength=4) for i in range(3)])
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis, preserve_zeros", [(None, False), (0, True), ((1, 0), True)])
def test_share_and_inertia_match_numpy_jitted_and_not(axis, preserve_zeros):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    shape = {None: 5, 0: (4, 5), (1, 0): (4, 6, 5)}[axis]  # (1, 0): a codebook per element
    c = rng.standard_normal(shape).astype(np.float32)
    a = rng.integers(0, 5, size=(4, 6)).astype(np.uint8)
    if axis is None:
        recon = c[a]
    elif axis == 0:
        recon = c[np.arange(4)[:, None], a]
    else:
        recon = c[np.arange(4)[:, None], np.arange(6)[None], a]
    if preserve_zeros:
        recon = np.where(a == 0, 0.0, recon)
    kw = dict(axis=axis, preserve_zeros=preserve_zeros)
    want = np.sum((x.astype(np.float64) - recon) ** 2)
    shared = cluster.share(c, a, dtype=jnp.bfloat16, **kw)  # jitted in the gradient tests
    np.testing.assert_array_equal(shared, jnp.asarray(recon, jnp.bfloat16))
    assert shared.dtype == jnp.bfloat16
    np.testing.assert_allclose(cluster.inertia(x, c, a, **kw), want, rtol=1e-5)
    jitted = jax.jit(lambda x, c, a: cluster.inertia(x, c, a, **kw))
    np.testing.assert_allclose(jitted(x, c, a), want, rtol=1e-5)


def test_bad_share_arguments():
    c = jnp.zeros(4)
    with pytest.raises(TypeError, match="assignments must be an integer array"):
        cluster.share(c, jnp.zeros(3))
    with pytest.raises(TypeError, match="centroids must be a floating"):
        cluster.share(jnp.zeros(4, jnp.int32), jnp.zeros(3, jnp.uint8))
    with pytest.raises(ValueError, match="only k=4"):
        cluster.share(c, jnp.array([0, 4], jnp.uint8))
    with pytest.raises(ValueError, match=r"shape \[3, k\]"):
        cluster.share(c, jnp.zeros((2, 3), jnp.uint8), axis=1)
    with pytest.raises(ValueError, match=r"shape \[2, 3, k\]"):
        cluster.share(jnp.zeros((3, 2, 4)), jnp.zeros((2, 3), jnp.uint8), axis=(0, 1))
    with pytest.raises(ValueError, match="reduce must be"):
        cluster.share(c, jnp.zeros(3, jnp.uint8), reduce="max")
    with pytest.raises(TypeError, match="preserve_zeros"):
        cluster.share(c, jnp.zeros(3, jnp.uint8), preserve_zeros=1)
