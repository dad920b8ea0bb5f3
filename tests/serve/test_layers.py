"""Tests of lightcomp.serve._layers: each layer kind's integer forward, from its attributes."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc
from lightcomp.serve._layers import check_layer, kind_of
from tests.serve.helpers import assert_close_to, fake_quant_kernels, linen_reference

RNG = np.random.default_rng(11)


class _Layer(nn.Module):
    make: object

    @nn.compact
    def __call__(self, x):
        return self.make()(x)


CASES = {
    "einsum permuted output": (lambda: nn.Einsum((4, 3, 2), "bd,dhk->bkh"), (5, 4)),
    "einsum ellipsis": (lambda: nn.Einsum((4, 6), "...d,df->...f"), (2, 3, 4)),
    "einsum batch letter": (lambda: nn.Einsum((2, 4, 3), "bnd,ndf->bnf"), (5, 2, 4)),
    "dense_general batch_dims": (lambda: nn.DenseGeneral(3, batch_dims=(0,)), (2, 5, 4)),
    "dense_general two axes": (lambda: nn.DenseGeneral((2, 3), axis=(1, 2)), (2, 4, 5)),
    "dense 3-d input": (lambda: nn.Dense(3), (2, 5, 4)),
    "conv strided no bias": (lambda: nn.Conv(4, (2, 2), strides=2, use_bias=False), (2, 6, 6, 3)),
    "conv circular dilated": (
        lambda: nn.Conv(4, (3, 3), padding="CIRCULAR", kernel_dilation=2),
        (1, 7, 7, 2),
    ),
    "conv 1-d causal": (lambda: nn.Conv(3, (3,), padding="CAUSAL"), (2, 9, 2)),
    "conv groups, extra batch": (
        lambda: nn.Conv(4, (3, 3), feature_group_count=2),
        (2, 3, 5, 5, 2),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_layer_variants_equal_the_fake_quant_forward(name):
    make, shape = CASES[name]
    model = _Layer(make)
    x = jnp.asarray(RNG.normal(size=shape).astype(np.float32))
    fq = fake_quant_kernels(model.init(jax.random.key(0), x)["params"])
    q = lc.serve.from_packed(lc.export.pack(fq))
    (layer,) = q.values()
    assert isinstance(layer["kernel"], lc.quant.QTensor)
    ref = jax.jit(lambda p, x: linen_reference(model, {"params": p}, x))(fq, x)
    assert_close_to(jax.jit(lc.serve.linen(model))(q, x), ref)


def test_kinds_and_unsupported_layers():
    assert kind_of(nn.Dense(2)) == "dense" and kind_of(nn.ConvTranspose(2, (2,))) is None
    with pytest.raises(TypeError, match=r"'up' is a ConvTranspose"):
        check_layer(nn.ConvTranspose(2, (2,)), "up")
    with pytest.raises(TypeError, match=r"'loc' is a ConvLocal"):
        check_layer(nn.ConvLocal(2, (2,)), "loc")
    with pytest.raises(ValueError, match=r"'c'.*custom conv_general_dilated"):
        check_layer(nn.Conv(2, (2,), conv_general_dilated=lambda *a, **k: None), "c")
