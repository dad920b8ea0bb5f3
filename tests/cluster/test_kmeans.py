"""Tests for lightcomp/cluster/_kmeans.py: `kmeans` and `kmeans_tree`."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

from lightcomp import cluster

N = 500  # one array length for most tests, so the jitted k-means compiles few times


def _data(seed, n=N, dist="normal"):
    rng = np.random.default_rng(seed)
    if dist == "normal":
        return rng.standard_normal(n).astype(np.float32)
    if dist == "laplace":
        return rng.laplace(size=n).astype(np.float32)
    return rng.uniform(-2, 3, size=n).astype(np.float32)


def _assert_nearest(x, c, a):
    d = np.abs(np.asarray(x, np.float64)[..., None] - np.asarray(c, np.float64))
    mine = np.take_along_axis(d, np.asarray(a, np.int64)[..., None], -1)[..., 0]
    np.testing.assert_array_less(mine, d.min(-1) + 1e-6 * (1 + np.abs(x)))


def _assert_means(x, c, a, first=0):
    x, c, a = np.asarray(x, np.float64), np.asarray(c, np.float64), np.asarray(a)
    for j in range(first, len(c)):
        members = x[a == j]
        if members.size:
            np.testing.assert_allclose(c[j], members.mean(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def fitted():
    """k-means fits shared by several tests: {(dist, k): (x, centroids, codes, info)}."""
    out = {}
    for seed, dist in enumerate(("normal", "laplace", "uniform")):
        x = _data(seed, dist=dist)
        for k in (5, 16):
            out[dist, k] = (x, *cluster.kmeans(x, k, with_info=True))
    return out


@pytest.mark.parametrize("dist", ["normal", "laplace", "uniform"])
@pytest.mark.parametrize("k", [5, 16])
def test_kmeans_fixed_point(fitted, dist, k):
    x, c, a, info = fitted[dist, k]
    chex.assert_shape(c, (k,))
    chex.assert_shape(a, x.shape)
    assert c.dtype == jnp.float32 and a.dtype == jnp.uint8
    assert bool(info.converged) and 0 < int(info.iterations) < 1000
    assert np.all(np.diff(np.asarray(c)) >= 0), "centroids sorted"
    _assert_nearest(x, c, a)
    _assert_means(x, c, a)
    assert len(np.unique(np.asarray(a))) == k, "no empty cluster on continuous data"
    recon = np.asarray(c, np.float64)[np.asarray(a)]
    np.testing.assert_allclose(float(info.inertia), np.sum((x - recon) ** 2), rtol=1e-5)


@pytest.mark.parametrize("dist", ["normal", "laplace", "uniform"])
@pytest.mark.parametrize("k", [5, 16])
def test_inertia_no_worse_than_sklearn(fitted, dist, k):
    x, _, _, info = fitted[dist, k]
    sk = KMeans(n_clusters=k, n_init=1, random_state=0).fit(x[:, None])
    assert float(info.inertia) <= 1.01 * sk.inertia_


def _numpy_lloyd(x, c, iters=1000):
    """Lloyd's algorithm written directly: nearest centroid, then member means, to a fixed point."""
    x, c = np.asarray(x, np.float64), np.sort(np.asarray(c, np.float64))
    for _ in range(iters):
        a = np.argmin(np.abs(x[:, None] - c[None, :]), axis=1)
        new = np.array([x[a == j].mean() if np.any(a == j) else c[j] for j in range(len(c))])
        if np.array_equal(new, c):
            break
        c = new
    return c


def test_kmeans_equals_numpy_lloyd_jitted_and_not():
    x = _data(7)
    start = np.linspace(-1.5, 1.5, 16).astype(np.float32)
    want = _numpy_lloyd(x, start)
    eager = cluster.kmeans(x, 16, init=jnp.asarray(start))
    jitted = jax.jit(lambda v, s: cluster.kmeans(v, 16, init=s))(x, jnp.asarray(start))
    np.testing.assert_allclose(eager[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jitted[0], eager[0], rtol=1e-6)
    np.testing.assert_array_equal(jitted[1], eager[1])


@functools.cache
def _sklearn_inertia(seed, k):
    x = _data(seed)
    return KMeans(n_clusters=k, n_init=1, random_state=0).fit(x[:, None]).inertia_


@pytest.mark.parametrize("init", ["linear", "kmeans++", "random"])
def test_kmeans_with_each_init(init):
    x = _data(3)
    key = jax.random.key(11)
    c, a, info = cluster.kmeans(x, 16, init=init, key=key, with_info=True)
    assert bool(info.converged)
    _assert_nearest(x, c, a)
    _assert_means(x, c, a)
    again = cluster.kmeans(x, 16, init=init, key=key)
    np.testing.assert_array_equal(c, again[0])  # deterministic for a given key
    # linear (Deep Compression's) and random inits are known to stop in worse local optima
    assert float(info.inertia) <= (1.1 if init == "kmeans++" else 1.5) * _sklearn_inertia(3, 16)


def test_init_from_centroids_is_a_fixed_point(fitted):
    x, c, a, _ = fitted["normal", 16]
    c2, a2, info = cluster.kmeans(x, 16, init=c, with_info=True)
    np.testing.assert_array_equal(c2, c)
    np.testing.assert_array_equal(a2, a)
    assert int(info.iterations) == 1


def test_iteration_cap_and_tolerance():
    x = _data(5)
    _, _, capped = cluster.kmeans(x, 16, init="linear", iters=2, with_info=True)
    assert int(capped.iterations) == 2 and not bool(capped.converged)
    _, _, loose = cluster.kmeans(x, 16, init="linear", tol=1e-2, with_info=True)
    _, _, exact = cluster.kmeans(x, 16, init="linear", with_info=True)
    assert int(loose.iterations) < int(exact.iterations)


def test_per_channel_matches_each_channel_alone():
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((N, 3)) * np.array([0.1, 1.0, 5.0])).astype(np.float32)
    c, a = cluster.kmeans(w, 5, axis=-1)
    chex.assert_shape(c, (3, 5))
    chex.assert_shape(a, w.shape)
    for ch in range(3):
        c1, a1 = cluster.kmeans(np.ascontiguousarray(w[:, ch]), 5)
        np.testing.assert_allclose(c[ch], c1, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(a[:, ch], a1)
    out = cluster.share(c, a, axis=-1)
    np.testing.assert_array_equal(out, np.asarray(c)[np.arange(3), np.asarray(a)])


def _slice(x, axis, idx):
    """The slice of ``x`` at index ``idx`` of its (sorted) ``axis`` tuple."""
    where = [slice(None)] * x.ndim
    for a, i in zip(sorted(axis), idx, strict=True):
        where[a] = i
    return np.asarray(x)[tuple(where)]


def test_slices_of_a_stacked_leaf_each_get_their_codebook():
    # [layers, in, out], layers of very different scale, one codebook per layer and output
    # channel (axis (0, 2)): every slice equals its own k-means, all in one compilation
    @jax.jit
    @chex.assert_max_traces(n=1)
    def fit(w):
        return cluster.kmeans(w, 5, axis=(2, 0))

    chex.clear_trace_counter()
    rng = np.random.default_rng(3)
    for _ in range(2):
        w = rng.standard_normal((2, N, 2)).astype(np.float32)
        w *= np.array([0.01, 100.0], np.float32)[:, None, None]
        c, a = fit(w)
        chex.assert_shape(c, (2, 2, 5))
        out = cluster.share(c, a, axis=(0, 2))
        for idx in np.ndindex(2, 2):
            c1, a1 = cluster.kmeans(np.ascontiguousarray(_slice(w, (0, 2), idx)), 5)
            np.testing.assert_allclose(c[idx], c1, rtol=1e-6, atol=1e-9)
            np.testing.assert_array_equal(_slice(a, (0, 2), idx), a1)
            np.testing.assert_array_equal(_slice(out, (0, 2), idx), np.asarray(c1)[np.asarray(a1)])
    with pytest.raises(ValueError, match=r"init centroids must have shape \(2, 2, 5\)"):
        cluster.kmeans(w, 5, axis=(0, 2), init=jnp.zeros((4, 5)))


def test_preserve_zeros():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((N // 4, 4)).astype(np.float32)
    w[rng.random(w.shape) < 0.5] = 0.0
    w[:, 2] = 0.0  # a pruned channel
    c, a = cluster.kmeans(w.reshape(-1), 8, preserve_zeros=True)
    assert float(c[0]) == 0.0 and np.all(np.diff(np.asarray(c)[1:]) >= 0)
    a = np.asarray(a).reshape(w.shape)
    np.testing.assert_array_equal(a == 0, w == 0)  # zeros, and only zeros, take code 0
    nz = w != 0
    _assert_nearest(w[nz], np.asarray(c)[1:], a[nz] - 1)
    _assert_means(w.reshape(-1), c, a.reshape(-1), first=1)
    out = cluster.share(c, jnp.asarray(a), preserve_zeros=True)
    np.testing.assert_array_equal(np.asarray(out)[~nz], 0.0)
    # per channel: the pruned channel gives finite zero centroids and codes 0
    cc, ac, info = cluster.kmeans(w, 8, preserve_zeros=True, axis=-1, with_info=True)
    assert bool(info.converged) and int(info.iterations) < 1000
    assert np.all(np.isfinite(cc)) and np.all(np.asarray(cc)[2] == 0)
    np.testing.assert_array_equal(np.asarray(ac) == 0, w == 0)
    shared = cluster.share(cc, ac, axis=-1, preserve_zeros=True)
    np.testing.assert_array_equal(np.asarray(shared)[~nz], 0.0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_weights(dtype):
    x = jnp.asarray(_data(6), dtype)
    c, a = cluster.kmeans(x, 5)
    assert c.dtype == jnp.float32
    _assert_nearest(np.asarray(x, np.float32), c, a)
    out = cluster.share(c, a, dtype=x.dtype)
    assert out.dtype == dtype and out.shape == x.shape


def test_index_dtype():
    assert cluster.index_dtype(1) == np.uint8
    assert cluster.index_dtype(256) == np.uint8
    assert cluster.index_dtype(257) == np.uint16
    assert cluster.index_dtype(65537) == np.uint32


def test_surplus_clusters_under_jit_are_deterministic():
    x = np.repeat(np.array([-1.0, 0.5, 2.0], np.float32), N // 3 + 1)[:N]
    fit = jax.jit(lambda v: cluster.kmeans(v, 5, with_info=True))
    c, a, info = fit(x)
    c2, a2, _ = fit(x)
    np.testing.assert_array_equal(c, c2)
    np.testing.assert_array_equal(a, a2)
    assert np.all(np.isfinite(c)) and float(info.inertia) == 0.0
    assert set(np.asarray(c).tolist()) >= {-1.0, 0.5, 2.0}


def test_empty_clusters_are_refilled():
    # linear init on heavy tails leaves empty clusters; they move into the widest cluster
    x = np.concatenate([_data(1, n=N - 2), np.array([40.0, -40.0], np.float32)])
    c, a = cluster.kmeans(x, 16, init="linear")
    assert len(np.unique(np.asarray(a))) == 16
    _assert_nearest(x, c, a)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(-100, 100, width=32), min_size=64, max_size=64, unique=True))
def test_property_fixed_point(values):
    x = np.asarray(values, np.float32)
    c, a, info = cluster.kmeans(x, 4, with_info=True)
    assert bool(info.converged)
    _assert_nearest(x, c, a)
    assert np.all(np.diff(np.asarray(c)) >= 0)
    _assert_means(x, c, a)


# --------------------------------------------------------------------------- trees


def test_kmeans_tree_fits_each_selected_leaf():
    rng = np.random.default_rng(13)
    params = {
        "Dense_0": {"kernel": rng.standard_normal((50, 10)).astype(np.float32), "bias": np.zeros(10, np.float32)},
        "Dense_1": {"kernel": rng.standard_normal((25, 20)).astype(np.float32), "bias": np.zeros(20, np.float32)},
    }  # fmt: skip
    cents, codes = cluster.kmeans_tree(params, 16)
    assert cents["Dense_0"]["bias"] is None and codes["Dense_1"]["bias"] is None
    chex.assert_shape(cents["Dense_0"]["kernel"], (16,))
    for layer in ("Dense_0", "Dense_1"):
        c, a = cluster.kmeans(params[layer]["kernel"], 16)
        np.testing.assert_array_equal(cents[layer]["kernel"], c)
        np.testing.assert_array_equal(codes[layer]["kernel"], a)
    bad = {
        **params,
        "Dense_1": {**params["Dense_1"], "kernel": np.full((25, 20), np.inf, np.float32)},
    }
    with pytest.raises(ValueError, match="Dense_1/kernel"):
        cluster.kmeans_tree(bad, 16)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"k": 0}, ValueError, "k must be >= 1"),
        ({"k": 2.0}, TypeError, "k must be an int"),
        ({"k": True}, TypeError, "k must be an int"),
        ({"k": N + 1}, ValueError, "more than the"),
        ({"k": 4, "init": "kmeans"}, ValueError, "init must be one of"),
        ({"k": 4, "init": "random"}, ValueError, "needs a PRNG key"),
        ({"k": 4, "init": "kmeans++"}, ValueError, "needs a PRNG key"),
        ({"k": 4, "init": "random", "key": 3}, TypeError, "key must be a PRNG key"),
        ({"k": 4, "init": jnp.zeros(3)}, ValueError, "init centroids must have shape"),
        ({"k": 4, "init": jnp.zeros(4, jnp.int32)}, TypeError, "init must be a floating"),
        ({"k": 4, "iters": 0}, ValueError, "iters must be >= 1"),
        ({"k": 4, "tol": -1.0}, ValueError, "tol must be"),
        ({"k": 4, "tol": float("nan")}, ValueError, "tol must be"),
        ({"k": 4, "tol": True}, TypeError, "tol must be a number"),
        ({"k": 4, "axis": 1}, ValueError, "axis=1 is out of range"),
        ({"k": 4, "axis": 0.0}, TypeError, "axis must be an int"),
        ({"k": 4, "axis": (0, 0)}, ValueError, "names an axis twice"),
        ({"k": 1, "preserve_zeros": True}, ValueError, "k must be >= 2"),
        ({"k": 4, "preserve_zeros": "yes"}, TypeError, "preserve_zeros must be True or False"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        cluster.kmeans(_data(0), **kwargs)


def test_bad_data():
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        cluster.kmeans(np.arange(10), 2)
    bad = _data(0)
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"'Dense_0/kernel'.*NaN/inf"):
        cluster.kmeans(bad, 4, name="Dense_0/kernel")
    few = np.repeat(np.array([1.0, 2.0, 3.0], np.float32), 10)
    with pytest.raises(ValueError, match="3 distinct values, fewer than k=4"):
        cluster.kmeans(few, 4)
    cols = np.stack([np.arange(30, dtype=np.float32), np.repeat(np.float32(1.0), 30)], 1)
    with pytest.raises(ValueError, match="channel 1"):
        cluster.kmeans(cols, 4, axis=1)
    ramp, ones = np.arange(30, dtype=np.float32), np.ones(30, np.float32)
    stacked = np.stack([np.stack([ramp, ramp]), np.stack([ramp, ones])])  # slice (1, 1) is flat
    with pytest.raises(ValueError, match=r"'layers/kernel' channel \(1, 1\) \(and 0 more\)"):
        cluster.kmeans(stacked, 4, axis=(0, 1), name="layers/kernel")
    with pytest.raises(ValueError, match="non-zero values"):
        cluster.kmeans(np.array([0, 0, 1, 2, 0, 1], np.float32), 4, preserve_zeros=True)


@pytest.mark.parametrize("init", ["linear", "density", "kmeans++"])
def test_kmeans_of_huge_weights_is_kmeans_of_their_power_of_two_scale(init):
    # 1e37-scale weights: cluster sums would pass float32's max; k-means divides by a power
    # of two first, so it equals k-means of the scaled-down values scaled back, bit for bit.
    x = _data(40, n=256)
    big = x * np.float32(2.0**123)  # ~1e37
    key = jax.random.key(1)
    c_small, a_small = cluster.kmeans(x, 8, init=init, key=key)
    for fit in (cluster.kmeans, jax.jit(cluster.kmeans, static_argnames=("k", "init"))):
        c, a = fit(big, k=8, init=init, key=key)
        assert np.isfinite(np.asarray(c)).all()
        np.testing.assert_array_equal(np.asarray(c), np.asarray(c_small) * np.float32(2.0**123))
        np.testing.assert_array_equal(a, a_small)
