"""Tests for lightcomp.quant._int_layers: linen and nnx layers on integer contractions."""

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lightcomp as lc
from lightcomp import quant

A = lc.tree.Axes
LINEN = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.Einsum)
NNX = (nnx.Linear, nnx.LinearGeneral, nnx.Conv, nnx.Einsum)
X = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype(np.float32))


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3), padding="CIRCULAR")(x)).reshape(x.shape[0], 8, -1)
        h = nn.DenseGeneral((2, 4), axis=-1)(h)
        h = nn.Einsum((2, 4, 5), "btgk,gkf->btf")(h)
        return nn.Dense(3)(h.reshape(h.shape[0], -1))


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.lg = nnx.LinearGeneral(32, (2, 4), rngs=rngs)
        self.ein = nnx.Einsum("btgk,gkf->btf", (2, 4, 5), (5,), rngs=rngs)
        self.lin = nnx.Linear(40, 3, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.conv(x)).reshape(x.shape[0], 8, -1)
        return self.lin(self.ein(self.lg(h)).reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def linen_setup():
    model = LinenNet()
    params = model.init(jax.random.key(0), X)["params"]
    axes = {
        "DenseGeneral_0/kernel": A(stacked=(), inputs=(0,), outputs=(1, 2)),
        "Einsum_0/kernel": A(stacked=(), inputs=(0, 1), outputs=(2,)),
    }
    t = lc.fake_quantization(8, axes=axes)
    return (
        (lambda p, x: model.apply({"params": p}, x)),
        params,
        t,
        t.init(params, jax.random.key(1)),
    )


def _int_dots(fn, *args) -> list[str]:
    """The operand dtypes of every dot_general / conv in ``fn``'s jaxpr (nested ones too)."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                found.append(str(eqn.invars[0].aval.dtype))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.parametrize(("ranges", "symmetric"), [("dynamic", True), ("ema", False)])
def test_linen_integer_forward_equals_fake_quant(linen_setup, ranges, symmetric):
    fn, params, t, cs = linen_setup
    kw = dict(symmetric=symmetric, ranges=ranges, layers=LINEN)
    ai = quant.activation_quant(8, weight_bits=8, compute="int8", **kw)
    af = quant.activation_quant(8, compute="float", **kw)
    state = ai.init(fn, params, X)

    def run(aq, p):
        return aq.update(fn, state, t.apply(p, cs), X)

    (yi, si), (yf, sf) = jax.jit(lambda p: run(ai, p))(params), run(af, params)
    np.testing.assert_allclose(yi, yf, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), si, sf)
    gi = jax.grad(lambda p: jnp.sum(run(ai, p)[0] ** 2))(params)
    gf = jax.grad(lambda p: jnp.sum(run(af, p)[0] ** 2))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), gi, gf)
    # only integer contractions in the forward (the backward's are in float); an unsigned
    # input's zero point adds one to the convolution
    dtypes = _int_dots(lambda p: run(ai, p)[0], params)
    assert dtypes.count("int8") == (4 if symmetric else 5) and "float32" not in dtypes, dtypes
    assert "int8" not in _int_dots(lambda p: run(af, p)[0], params)


def test_linen_auto_falls_back_where_not_exact(linen_setup):
    fn, params, t, cs = linen_setup
    eff = t.apply(params, cs)
    # per-channel activation ranges run along the contracted axis: float for every layer
    auto = quant.activation_quant(8, axis=-1, weight_bits=8, layers=(nn.Dense,))
    fq = quant.activation_quant(8, axis=-1, layers=(nn.Dense,))
    state = auto.init(fn, eff, X)
    np.testing.assert_allclose(
        auto.apply(fn, state, eff, X), fq.apply(fn, state, eff, X), atol=1e-6
    )
    assert "int8" not in _int_dots(lambda p: auto.apply(fn, state, p, X), eff)
    strict = quant.activation_quant(8, axis=-1, weight_bits=8, compute="int8", layers=(nn.Dense,))
    with pytest.raises(ValueError, match=r"Dense_0.*compute='int8'"):
        strict.apply(fn, state, eff, X)


def test_linen_custom_op_runs_in_float():
    class Custom(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, dot_general=lambda *a, **k: jax.lax.dot_general(*a, **k))(x)

    model, x = Custom(), X.reshape(2, -1)
    params = model.init(jax.random.key(0), x)["params"]
    fn = lambda p, x: model.apply({"params": p}, x)
    aq = quant.activation_quant(8, ranges="dynamic", weight_bits=8)
    assert "int8" not in _int_dots(lambda p: aq.apply(fn, {}, p, x), params)


def _nnx_net(weight_bits, ranges):
    model = NnxNet(nnx.Rngs(0))
    for _, node in nnx.iter_graph(model):
        if isinstance(node, (nnx.Linear, nnx.Conv, nnx.Einsum, nnx.LinearGeneral)):
            axis = (1, 2) if isinstance(node, nnx.LinearGeneral) else -1
            node.kernel[...] = quant.fake_quant(node.kernel[...], 8, axis=axis)
    compute = "int8" if weight_bits else "float"
    kw = dict(symmetric=True, ranges=ranges, weight_bits=weight_bits, compute=compute)
    return lc.train.nnx_apply(quant.wrap_nnx(model, 8, layers=NNX, **kw), train=True)


@pytest.mark.parametrize("ranges", ["dynamic", "ema"])
def test_nnx_integer_forward_equals_fake_quant(ranges):
    (ai, pi), (af, pf) = _nnx_net(8, ranges), _nnx_net(None, ranges)
    yi, si = jax.jit(ai.forward)(pi, ai.model_state, X, None)
    yf, sf = af.forward(pf, af.model_state, X, None)
    np.testing.assert_allclose(yi, yf, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), si, sf)
    gi = jax.grad(lambda p: jnp.sum(ai.forward(p, ai.model_state, X, None)[0]))(pi)
    gf = jax.grad(lambda p: jnp.sum(af.forward(p, af.model_state, X, None)[0]))(pf)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), gi, gf)
    dtypes = _int_dots(lambda p: ai.forward(p, ai.model_state, X, None)[0], pi)
    assert dtypes.count("int8") == 4, dtypes
