"""A layer's rows times its kernel matrices give the layer's output, for every layer type."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lightcomp.posttrain import LayerError
from lightcomp.posttrain._layers import derive

LINEN = [
    (nn.Dense(5), (2, 3, 4)),
    (nn.DenseGeneral((2, 3), axis=-1), (2, 7, 4)),
    (nn.DenseGeneral(3, axis=(-2, -1)), (5, 2, 4)),
    (nn.DenseGeneral(3, axis=-1, batch_dims=(0,)), (2, 5, 4)),
    (nn.Conv(3, (3, 3), padding="SAME"), (2, 5, 5, 2)),
    (nn.Conv(3, (2, 3), strides=(2, 1), padding="VALID", kernel_dilation=(1, 2)), (2, 6, 7, 2)),
    (nn.Conv(2, (3,), padding="CAUSAL"), (2, 9, 3)),
    (nn.Conv(2, (3, 3), padding="CIRCULAR"), (1, 4, 4, 2)),
    (nn.Conv(2, (2, 2), padding=1, input_dilation=2), (1, 3, 3, 2)),
    (nn.Einsum((3, 4, 5), "bhi,hio->bo"), (2, 3, 4)),
    (nn.Einsum((3, 4, 5), "bhi,hio->bho"), (2, 3, 4)),
    (nn.Einsum((4, 5), "...i,io->...o"), (2, 3, 4)),
]


def _check(view, rows, kernel, y):
    w = view.to_matrix(kernel)  # [S, O, I]
    s = view.n_stacked
    got = jnp.einsum("sni,soi->sno", rows, w, precision="highest")
    want = jnp.moveaxis(y, [y.ndim - len(view.outputs) - 1], [0]) if s > 1 else y
    np.testing.assert_allclose(
        np.sort(np.ravel(got)), np.sort(np.ravel(want)), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.sum(np.asarray(got) ** 2), np.sum(np.asarray(y, np.float64) ** 2), rtol=1e-5
    )


@pytest.mark.parametrize("module, shape", LINEN, ids=lambda v: v.__class__.__name__)
def test_linen_rows_times_matrix_is_the_output(module, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    module = module.clone(use_bias=False) if hasattr(module, "use_bias") else module
    params = module.init(jax.random.key(1), x)["params"]
    y = module.apply({"params": params}, x)
    view, rows = derive(module, x, (), {}, "k", params["kernel"].shape)
    assert rows.shape == (view.n_stacked, rows.shape[1], view.n_in)
    _check(view, rows, params["kernel"], y)
    back = view.from_matrix(view.to_matrix(params["kernel"]), params["kernel"].dtype)
    np.testing.assert_array_equal(back, params["kernel"])


NNX = [
    (lambda r: nnx.Linear(4, 5, use_bias=False, rngs=r), (2, 3, 4)),
    (lambda r: nnx.LinearGeneral((2, 4), 3, axis=(-2, -1), use_bias=False, rngs=r), (5, 2, 4)),
    (lambda r: nnx.Conv(2, 3, (3, 3), padding="SAME", use_bias=False, rngs=r), (2, 5, 5, 2)),
    (lambda r: nnx.Einsum("bhi,hio->bo", (3, 4, 5), rngs=r), (2, 3, 4)),
]


@pytest.mark.parametrize("make, shape", NNX)
def test_nnx_rows_times_matrix_is_the_output(make, shape):
    module = make(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), shape)
    y = module(x)
    if getattr(module, "bias", None) is not None and module.bias is not None:
        y = y - module.bias[...]
    kernel = module.kernel[...]
    view, rows = derive(module, x, (), {}, "k", kernel.shape)
    _check(view, rows, kernel, y)


def test_grouped_conv_and_unknown_layers_are_refused_by_path():
    conv = nn.Conv(4, (3, 3), feature_group_count=2)
    with pytest.raises(LayerError, match=r"'a/kernel'.*grouped"):
        derive(conv, jnp.ones((1, 4, 4, 4)), (), {}, "a/kernel", (3, 3, 2, 4))
    with pytest.raises(LayerError, match=r"'e/embedding'.*Embed.*no derived input axes"):
        derive(nn.Embed(4, 3), jnp.ones((2, 3)), (), {}, "e/embedding", (4, 3))
    with pytest.raises(LayerError, match="sums input letter"):
        derive(nn.Einsum((4, 5), "bci,io->bo"), jnp.ones((2, 3, 4)), (), {}, "k", (4, 5))
