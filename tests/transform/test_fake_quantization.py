"""Tests for lightcomp.fake_quantization: the contract's grid, LSQ step sizes, dtypes."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp import transform as T

KEY = jax.random.key(0)


def _np_fake_quant(x, bits):
    # the contract: symmetric, per output channel (axis -1), round half to even
    x = np.asarray(x, np.float32)
    qmax = 2 ** (bits - 1) - 1
    scale = np.abs(x).max(axis=0, keepdims=True) / np.float32(qmax)
    q = np.clip(np.round(x / scale), -qmax, qmax)
    return (q * scale).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quantization_matches_contract(params, kernels, bits):
    t = T.fake_quantization(bits)
    s = t.init(params, KEY)
    assert s.scales is None and jax.tree.leaves(s) == []
    out = jax.jit(t.apply)(params, s)
    chex.assert_trees_all_equal(t.apply(params, s), out)
    for w, o in zip(kernels(params), kernels(out), strict=True):
        np.testing.assert_allclose(np.asarray(o), _np_fake_quant(w, bits), rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_equal(out["Dense_1"]["bias"], params["Dense_1"]["bias"])


@pytest.mark.parametrize("group_size", [None, 2])
def test_lsq_scales_are_learned_with_lsq_gradient(params, new_params, group_size):
    bits = 3
    t = T.fake_quantization(bits, learned_scale=True, group_size=group_size)
    s = t.init(params, KEY)
    assert isinstance(s.scales, T.Learned)
    learned, fixed = T.partition(s)
    w = params["Dense_0"]["kernel"]
    sc = s.scales.value["Dense_0"]["kernel"]
    view = (6, 6) if group_size is None else (3, 2, 6)
    qp = 2 ** (bits - 1) - 1
    x = np.asarray(w, np.float32).reshape(view)
    red = (0,) if group_size is None else (1,)
    s_np = np.asarray(sc, np.float32).reshape(np.mean(x, axis=red, keepdims=True).shape)
    np.testing.assert_allclose(
        s_np, 2 * np.abs(x).mean(axis=red, keepdims=True) / np.sqrt(qp), rtol=1e-5
    )
    cot = new_params(12)

    def f(p, lrn):
        eff = t.apply(p, T.combine(lrn, fixed))
        return sum(
            jnp.sum(e * r) for e, r in zip(jax.tree.leaves(eff), jax.tree.leaves(cot), strict=True)
        )

    gp, gl = jax.jit(jax.grad(f, argnums=(0, 1)))(params, learned)
    v = x / s_np
    r = np.asarray(cot["Dense_0"]["kernel"], np.float32).reshape(view)
    inside = (v > -qp) & (v < qp)
    # Esser et al. 2019: d/ds = round(v) - v inside, -Q_N / Q_P outside; times 1/sqrt(N Q_P)
    ds = np.where(v <= -qp, -qp, np.where(v >= qp, qp, np.round(v) - v))
    n = x.size / s_np.size
    want = (r * ds).sum(axis=red, keepdims=True) / np.sqrt(n * qp)
    got = np.asarray(gl.scales.value["Dense_0"]["kernel"]).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
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
def test_dtypes_are_kept_through_the_chain(new_params, dtype):
    p = new_params(5, dtype)
    t = T.chain(T.pruning(0.5), T.weight_sharing(4), T.fake_quantization(8, learned_scale=True))
    s = t.init(p, KEY)
    out = jax.jit(t.apply)(p, s)
    chex.assert_trees_all_equal_dtypes(out, p)
    chex.assert_type(s[1].centroids.value["Dense_0"]["kernel"], jnp.float32)
    chex.assert_type(s[2].scales.value["Dense_0"]["kernel"], jnp.float32)


@pytest.fixture(scope="module")
def jit_quant(params):
    """bits -> a jitted ``params -> fake-quantized params`` (compiled once per width)."""

    def compiled(bits):
        t = T.fake_quantization(bits)
        state = t.init(params, KEY)
        return jax.jit(lambda p: t.apply(p, state))

    return {bits: compiled(bits) for bits in (2, 5, 8)}


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), bits=st.sampled_from([2, 5, 8]))
def test_fake_quantization_idempotent_and_few_levels(new_params, jit_quant, seed, bits):
    once = jit_quant[bits](new_params(seed))
    twice = jit_quant[bits](once)
    chex.assert_trees_all_close(once, twice, rtol=1e-6, atol=1e-7)
    for o in (once["Dense_0"]["kernel"], once["Dense_1"]["kernel"]):
        for j in range(o.shape[1]):
            assert len(np.unique(np.asarray(o)[:, j])) <= 2**bits - 1


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: T.fake_quantization(1), ValueError, "bits"),
        (lambda: T.fake_quantization(8.0), TypeError, "bits"),
        (lambda: T.fake_quantization(True), TypeError, "bits"),
        (lambda: T.fake_quantization(8, group_size=0), ValueError, "group_size"),
        (lambda: T.fake_quantization(8, symmetric="no"), TypeError, "symmetric"),
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
