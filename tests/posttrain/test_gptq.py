"""`gptq` end to end: exactly on lightcomp's grid (packed as integers), below round-to-nearest on
layer-output error, linen and nnx, act-order and groups."""

import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc
from tests.posttrain.helpers import layer_data, output_error


@pytest.mark.parametrize(
    "bits, group, symmetric, act_order", [(4, None, True, False), (3, 8, False, True)]
)
def test_on_grid_and_packed_as_integers(mlp_task, bits, group, symmetric, act_order):
    apply, params, x, _ = mlp_task
    out = lc.posttrain.gptq(
        apply, params, x, bits, group_size=group, symmetric=symmetric, act_order=act_order
    )
    for path in ("Dense_0/kernel", "Dense_1/kernel", "Dense_2/kernel"):
        k = dict(lc.tree.leaves_with_paths(out))[path]
        qt = lc.quant.quantize(k, bits, symmetric=symmetric, axis=-1, group_size=group)
        if symmetric and group is None:  # own range reproduces the grid when a code hits qmax
            assert np.abs(np.asarray(qt.values)).max() <= 2 ** (bits - 1) - 1
        groups = np.asarray(k).reshape(-1, group or k.shape[0], k.shape[-1])
        distinct = max(
            len(np.unique(groups[g, :, c])) for g in range(len(groups)) for c in range(k.shape[-1])
        )
        assert distinct <= 2**bits, path
    report = lc.export.report(lc.export.pack(out))
    leaf = {r["path"]: r for r in report["leaves"]}["Dense_1/kernel"]
    assert "grid" in str(leaf), leaf


def test_beats_round_to_nearest_on_layer_output_error():
    for seed in range(3):
        w, x, h = layer_data(10 + seed, rows=32, cols=64, n=512)
        for bits, group in ((3, None), (4, 16)):
            qt = lc.posttrain.gptq_matrix(w, h, bits, group_size=group)
            rtn = lc.quant.fake_quant(
                jnp.asarray(w), bits, axis=0, group_size=group, group_axis=group and 1
            )
            gptq_err = output_error(x, w, np.asarray(lc.quant.dequantize(qt)))
            assert gptq_err < 0.9 * output_error(x, w, np.asarray(rtn)), (seed, bits)


def test_nnx_and_every_layer_type(zoo, nnx_zoo):
    for apply, params, xs in (zoo, nnx_zoo):
        out = lc.posttrain.gptq(apply, params, xs, 4)
        changed = [
            p
            for (p, a), (_, b) in zip(
                lc.tree.leaves_with_paths(params), lc.tree.leaves_with_paths(out), strict=True
            )
            if not np.array_equal(a, b)
        ]
        assert changed and all(p.endswith("kernel") for p in changed)


def test_state_is_refused_where_the_transform_cannot_hold_the_grid(zoo, mlp_task):
    apply, params, xs = zoo
    with pytest.raises(ValueError, match=r"'DenseGeneral_0/kernel'.*is not the layout"):
        lc.posttrain.gptq(apply, params, xs, 4, return_state=True)
    apply, params, x, _ = mlp_task
    with pytest.raises(ValueError, match="symmetric=True"):
        lc.posttrain.gptq(apply, params, x, 4, symmetric=False, return_state=True)
    with pytest.raises(TypeError, match="act_order"):
        lc.posttrain.gptq(apply, params, x, 4, act_order=1)
    with pytest.raises(ValueError, match="group_size=7 does not divide"):
        lc.posttrain.gptq(apply, params, x, 4, group_size=7)
