"""lightcomp/prune/_fold.py: BatchNorm folded into the layer before it keeps the eval outputs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import lightcomp as lc
from lightcomp import prune as P

PAIRS = {"Conv_0": "BatchNorm_0", "Conv_1": "BatchNorm_1"}


def _randomise(tree, seed, positive=()):
    """Random values (variances and given names positive) in place of an init's constants."""
    r = np.random.default_rng(seed)

    def draw(path, x):
        name = lc.tree.path_str(path).split("/")[-1]
        v = r.normal(size=x.shape)
        v = np.abs(v) + 0.1 if name in positive else v
        return jnp.asarray(v, x.dtype)

    return jax.tree_util.tree_map_with_path(draw, tree)


@pytest.fixture(scope="module")
def bn_cnn():
    model = lc.models.CNN((6, 8), 10, batch_norm=True)
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
    v = jax.jit(model.init)(jax.random.key(0), x)
    params = _randomise(v["params"], 2, positive=("scale",))
    stats = _randomise(v["batch_stats"], 3, positive=("var",))
    return model, params, stats, x


def _eval(model, params, stats, x):
    return jax.jit(model.apply)({"params": params, "batch_stats": stats}, x)


def test_fold_matches_numpy_definition(bn_cnn):
    _, params, stats, _ = bn_cnn
    p, s = P.fold_batchnorm(params, stats, PAIRS, keep_norm=False)
    assert sorted(p) == ["Conv_0", "Conv_1", "Dense_0"] and s == {}
    for conv, bn in PAIRS.items():
        g, b = (np.asarray(params[bn][k], np.float64) for k in ("scale", "bias"))
        m, v = (np.asarray(stats[bn][k], np.float64) for k in ("mean", "var"))
        scale = g / np.sqrt(v + 1e-5)
        want = np.asarray(params[conv]["kernel"], np.float64) * scale
        np.testing.assert_allclose(p[conv]["kernel"], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(p[conv]["bias"], b - m * scale, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(p["Dense_0"]["kernel"], params["Dense_0"]["kernel"])


def test_fold_keeps_eval_outputs_with_and_without_the_norm(bn_cnn):
    model, params, stats, x = bn_cnn
    want = _eval(model, params, stats, x)
    p, s = P.fold_batchnorm(params, stats, PAIRS)  # same trees: the same model runs them
    jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype) or pytest.fail(), p, params)
    np.testing.assert_allclose(_eval(model, p, s, x), want, rtol=1e-4, atol=1e-4)
    p, s = P.fold_batchnorm(params, stats, PAIRS, keep_norm=False)
    plain = lc.models.CNN((6, 8), 10)
    out = jax.jit(plain.apply)({"params": p}, x)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    assert not any(np.isnan(np.asarray(o)).any() for o in (out, want))


def test_fold_keeps_pruned_zeros_and_dtype(bn_cnn):
    _, params, stats, _ = bn_cnn
    params = jax.tree.map(lambda w: w.astype(jnp.bfloat16), params)
    masks = P.masks(P.magnitude(params), 0.5)
    pruned = P.apply_masks(params, masks)
    p, _ = P.fold_batchnorm(pruned, stats, PAIRS, keep_norm=False)
    for conv in PAIRS:
        k = p[conv]["kernel"]
        assert k.dtype == jnp.bfloat16 and p[conv]["bias"].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(k) == 0, ~np.asarray(masks[conv]["kernel"]))


class _DenseBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(5)(x)
        x = nn.BatchNorm(use_running_average=not train, use_scale=False)(x)
        return nn.Dense(3)(nn.relu(x))


def test_dense_with_bias_into_a_norm_without_scale():
    model = _DenseBN()
    x = jax.random.normal(jax.random.key(4), (6, 7))
    v = model.init(jax.random.key(0), x)
    params = _randomise(v["params"], 5)
    stats = _randomise(v["batch_stats"], 6, positive=("var",))
    pairs = [("Dense_0", "BatchNorm_0")]
    want = model.apply({"params": params, "batch_stats": stats}, x)
    p, s = P.fold_batchnorm(params, stats, pairs)
    np.testing.assert_allclose(model.apply({"params": p, "batch_stats": s}, x), want, atol=1e-5)
    assert "scale" not in p["BatchNorm_0"]


class _NnxCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)
        self.out = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.mean(nnx.relu(self.bn(self.conv(x))), axis=(1, 2)))


def test_nnx_states_fold_and_merge_back():
    model = _NnxCNN(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = _randomise(params, 7, positive=("scale",))
    rest = _randomise(rest, 8, positive=("var",))
    x = jax.random.uniform(jax.random.key(9), (2, 8, 8, 1))
    want = nnx.merge(graphdef, params, rest)(x)
    p, s = P.fold_batchnorm(params, rest, {"conv": "bn"})
    assert isinstance(p, nnx.State) and isinstance(s, nnx.State)
    np.testing.assert_allclose(nnx.merge(graphdef, p, s)(x), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(params["bn"]["scale"][...]) > 0, True)  # untouched


@pytest.mark.parametrize("keep_norm", [False, True])
def test_folded_weights_pack_and_serve_from_one_file(bn_cnn, keep_norm):
    model, params, stats, x = bn_cnn
    p, s = P.fold_batchnorm(params, stats, PAIRS, keep_norm=keep_norm)
    fq = lc.transform.fake_quantization(8, axis=-1)
    eff = fq.apply(p, fq.init(p, jax.random.key(0)))
    served_model = model if keep_norm else lc.models.CNN((6, 8), 10)
    packed = lc.export.pack({"params": eff, "batch_stats": s} if keep_norm else eff)
    qparams = lc.serve.from_packed(packed)
    kernel = (qparams["params"] if keep_norm else qparams)["Conv_1"]["kernel"]
    assert isinstance(kernel, lc.quant.QTensor)  # the folded kernel is on the int8 grid
    y = jax.jit(lc.serve.linen(served_model))(qparams, x)
    want = _eval(model, params, stats, x)
    np.testing.assert_allclose(y, want, atol=0.05 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize(
    ("pairs", "kw", "error", "match"),
    [
        ({"Conv_7": "BatchNorm_0"}, {}, ValueError, "params has no layer 'Conv_7'"),
        ({"Conv_0": "BatchNorm_7"}, {}, ValueError, "no layer 'BatchNorm_7'"),
        ({"Conv_0": "BatchNorm_1"}, {}, ValueError, "BatchNorm_1/mean has shape"),
        ({"Dense_0": "BatchNorm_0"}, {}, ValueError, "Dense_0/kernel has 10 channels"),
        ("Conv_0", {}, TypeError, "pairs must map"),
        ([("Conv_0",)], {}, TypeError, "each entry"),
        ([("Conv_0", "BatchNorm_0"), ("Conv_1", "BatchNorm_0")], {}, ValueError, "appears twice"),
        (PAIRS, {"epsilon": 0.0}, ValueError, "epsilon"),
        (PAIRS, {"keep_norm": "yes"}, TypeError, "keep_norm"),
    ],
)
def test_bad_input_is_named_before_any_change(bn_cnn, pairs, kw, error, match):
    _, params, stats, _ = bn_cnn
    before = jax.tree.map(np.asarray, params)
    with pytest.raises(error, match=match):
        P.fold_batchnorm(params, stats, pairs, **kw)
    jax.tree.map(np.testing.assert_array_equal, params, before)


def test_non_finite_statistics_are_refused(bn_cnn):
    _, params, stats, _ = bn_cnn
    bad = jax.tree.map(lambda v: v, stats)
    bad["BatchNorm_0"] = dict(bad["BatchNorm_0"], var=-jnp.ones(6))
    with pytest.raises(ValueError, match="BatchNorm_0: running statistics"):
        P.fold_batchnorm(params, bad, PAIRS)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_property_folding_twice_changes_nothing_more(seed):
    """A folded norm is a shift: folding it again gives the same trees (float tolerance)."""
    r = np.random.default_rng(seed)
    c = int(r.integers(1, 6))
    params = {
        "Dense_0": {"kernel": jnp.asarray(r.normal(size=(3, c)), jnp.float32)},
        "BatchNorm_0": {
            "scale": jnp.asarray(r.normal(size=c), jnp.float32),
            "bias": jnp.asarray(r.normal(size=c), jnp.float32),
        },
    }
    stats = {
        "BatchNorm_0": {
            "mean": jnp.asarray(r.normal(size=c), jnp.float32),
            "var": jnp.asarray(r.uniform(0.1, 3.0, size=c), jnp.float32),
        }
    }
    pairs = {"Dense_0": "BatchNorm_0"}
    once = P.fold_batchnorm(params, stats, pairs)
    twice = P.fold_batchnorm(*once, pairs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), once, twice)
