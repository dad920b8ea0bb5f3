"""Tests for lightcomp/parallel/_allreduce.py: the compressed gradient all-reduce, its bytes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import lightcomp as lc
from lightcomp import parallel

N_DEV = 8


def _compressed(mesh, bits, via_mean=False):
    reduce = parallel.compressed_mean("data", bits) if via_mean else None

    def f(g, key):
        g = jax.tree.map(lambda x: x[0], g)  # this device's gradients
        out = reduce(g, key) if via_mean else parallel.compressed_pmean(g, "data", bits, key)
        return jax.tree.map(lambda x: x[None], out), jax.lax.pmean(g, "data")

    return jax.jit(
        jax.shard_map(
            f, mesh=mesh, in_specs=(P("data"), P()), out_specs=(P("data"), P()), check_vma=False
        )
    )


@pytest.fixture(scope="module")
def grads8():
    k1, k2 = jax.random.split(jax.random.key(7))
    return {
        "w": jax.random.normal(k1, (N_DEV, 6, 5)),
        "b": jax.random.normal(k2, (N_DEV, 5)).astype(jnp.bfloat16),
    }


@pytest.mark.parametrize("bits", [4, 8])
def test_compressed_pmean_is_close_equal_on_devices_and_unbiased(grads8, bits):
    fn = _compressed(parallel.make_mesh(), bits)
    qmax = 2 ** (bits - 1) - 1
    scale = jax.tree.map(lambda g: np.max(np.abs(np.asarray(g, np.float32))) / qmax, grads8)
    exact = jax.tree.map(lambda g: np.mean(np.asarray(g, np.float32), 0), grads8)
    draws = []
    for i in range(32):
        out, pmean = fn(grads8, jax.random.key(i))
        for k in out:  # every device holds the same result, in the gradient's dtype
            assert out[k].dtype == grads8[k].dtype
            np.testing.assert_array_equal(out[k], np.broadcast_to(out[k][:1], out[k].shape))
            # each device's code is within one step of its value, so the mean is too
            err = np.abs(np.asarray(out[k][0], np.float32) - exact[k])
            tol = 1.01 * scale[k] + (0.02 if k == "b" else 1e-6) * np.abs(exact[k])
            assert np.all(err <= tol + 1e-3 * (k == "b"))
        draws.append(jax.tree.map(lambda x: np.asarray(x[0], np.float32), out))
    np.testing.assert_allclose(pmean["w"], exact["w"], rtol=1e-5, atol=1e-6)
    mean = jax.tree.map(lambda *xs: np.mean(xs, 0), *draws)
    # unbiased: the average of 32 draws is several times closer than one step of the grid
    for k in mean:
        assert np.max(np.abs(mean[k] - exact[k])) < 0.35 * scale[k] + (0.01 if k == "b" else 0)


@pytest.mark.parametrize("via_mean", [False, True])
def test_compressed_pmean_exact_on_the_grid(via_mean):
    """Gradients that are multiples of the shared scale are reduced exactly (NumPy mean)."""
    rng = np.random.default_rng(3)
    codes = rng.integers(-7, 8, (N_DEV, 4, 3)).astype(np.float32)
    codes[0, 0, 0] = 7.0  # max |g| = 7 * 0.25 on some device: scale = 0.25 for 4 bits
    g = {"w": jnp.asarray(codes * 0.25), "none": None}
    out, _ = _compressed(parallel.make_mesh(), 4, via_mean)(g, jax.random.key(0))
    np.testing.assert_allclose(out["w"][0], np.mean(codes * 0.25, 0), rtol=1e-6)
    assert out["none"] is None


def test_compressed_pmean_sums_in_narrow_ints():
    """The all-reduce of 4-bit codes over 8 devices travels as int8 (8 * 7 <= 127)."""
    mesh = parallel.make_mesh()
    g = {"w": jnp.ones((N_DEV, 64, 32))}
    hlo = _compressed(mesh, 4).lower(g, jax.random.key(0)).compile().as_text()
    reduces = [ln for ln in hlo.splitlines() if " all-reduce(" in ln]
    assert sum("s8[64,32]" in ln for ln in reduces) == 1, reduces  # the codes
    assert sum("f32[64,32]" in ln for ln in reduces) == 1, reduces  # the test's reference pmean
    assert sum("f32[]" in ln for ln in reduces) == 1, reduces  # the shared scale (pmax)


@pytest.mark.parametrize(
    "bits,n,wire,itemsize", [(4, 8, "int8", 1), (8, 8, "int16", 2), (8, 1, "int8", 1)]
)
def test_allreduce_bytes(bits, n, wire, itemsize):
    g = {"a": jnp.zeros((10, 4)), "b": jax.ShapeDtypeStruct((3,), jnp.bfloat16)}
    r = parallel.allreduce_bytes(g, n, bits)
    assert r["float_bytes"] == 40 * 4 + 3 * 2
    assert r["wire_dtype"] == wire
    assert r["compressed_bytes"] == 43 * itemsize + 2 * 4
    assert r["saved_bytes"] == r["float_bytes"] - r["compressed_bytes"]
    assert r["ratio"] == r["float_bytes"] / r["compressed_bytes"]
    plain = parallel.allreduce_bytes(g, n)
    assert plain["compressed_bytes"] is None and plain["float_bytes"] == r["float_bytes"]


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: parallel.compressed_mean("batch", bits=1), ValueError, "bits must be in 2..16"),
        (lambda: parallel.compressed_mean("batch", bits=8.0), TypeError, "bits must be an int"),
        (lambda: parallel.compressed_mean(0), TypeError, "axis_name must be a string"),
        (lambda: parallel.compressed_pmean({}, "b", 17, jax.random.key(0)), ValueError, "bits"),
        (lambda: parallel.compressed_pmean({}, "b", 8, None), TypeError, "key must be a PRNG key"),
        (lambda: parallel.allreduce_bytes({}, 0), ValueError, "n_devices must be >= 1"),
        (lambda: parallel.allreduce_bytes({}, True), TypeError, "n_devices must be an int"),
        (lambda: parallel.allreduce_bytes({}, 8, bits=1), ValueError, "bits must be in 2..16"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_grad_reduce_needs_axis_name():
    apply = lambda params, inputs: inputs
    with pytest.raises(ValueError, match="grad_reduce"):
        lc.train.make_step(
            apply,
            apply,
            optax.sgd(0.1),
            lc.identity(),
            grad_reduce=parallel.compressed_mean("batch", bits=8),
        )
