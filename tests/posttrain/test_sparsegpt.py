"""`sparsegpt` end to end: exact counts, zeros, n:m, joint quantization, linen and nnx, and
a smaller layer-output error than magnitude pruning."""

import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc
from tests.posttrain.helpers import layer_data, output_error


def _kernels(params):
    return {p: np.asarray(v) for p, v in lc.tree.leaves_with_paths(params) if p.endswith("kernel")}


@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_exact_counts_as_prune_masks_gives_and_zeros(zoo, sparsity):
    apply, params, xs = zoo
    out, state = lc.posttrain.sparsegpt(
        apply, params, xs, sparsity, blocksize=16, return_state=True
    )
    for path, keep in lc.tree.leaves_with_paths(state.masks):
        k = _kernels(out)[path]
        assert int((~np.asarray(keep)).sum()) == round(sparsity * keep.size), path
        assert (k[~np.asarray(keep)] == 0).all() and k.dtype == np.float32
    # biases untouched
    np.testing.assert_array_equal(out["Dense_0"]["bias"], params["Dense_0"]["bias"])


def test_two_four_on_the_input_columns(mlp_task):
    apply, params, x, _ = mlp_task
    pruned = lc.posttrain.sparsegpt(apply, params, x, lc.prune.NM(2, 4))
    same = lc.posttrain.sparsegpt(apply, params, x, "2:4")
    for path, k in _kernels(pruned).items():
        nz = (k != 0).reshape(-1, 4, k.shape[-1]).sum(axis=1)
        assert (nz <= 2).all(), path
        np.testing.assert_array_equal(k, _kernels(same)[path])


def test_beats_magnitude_on_layer_output_error():
    for seed in range(3):
        w, x, h = layer_data(seed, rows=32, cols=64, n=512)
        w_hat, _ = lc.posttrain.sparsegpt_matrix(w, h, 0.5)
        mag = np.where(np.asarray(lc.prune.masks({"w": jnp.abs(w)}, 0.5)["w"]), w, 0)
        assert output_error(x, w, np.asarray(w_hat)) < 0.9 * output_error(x, w, mag)


def test_joint_quantization_is_on_the_grid_with_pruned_zeros(mlp_task):
    apply, params, x, _ = mlp_task
    out, (pstate, qstate) = lc.posttrain.sparsegpt(
        apply, params, x, 0.5, bits=4, group_size=8, return_state=True
    )
    t = lc.chain(
        lc.pruning(0.5), lc.fake_quantization(4, axis=-1, group_size=8, learned_scale=True)
    )
    np.testing.assert_array_equal(
        lc.tree.leaves_with_paths(t.apply(out, (pstate, qstate)))[1][1],
        lc.tree.leaves_with_paths(out)[1][1],
    )
    packed = lc.export.pack(out)
    kinds = {r["path"]: r for r in lc.export.report(packed)["leaves"]}
    assert "grid" in str(kinds["Dense_0/kernel"]), kinds["Dense_0/kernel"]
    for path, k in _kernels(out).items():
        keep = np.asarray(dict(lc.tree.leaves_with_paths(pstate.masks))[path])
        assert (k[~keep] == 0).all() and int((~keep).sum()) == round(0.5 * k.size)
        codes = k.reshape(-1, 8, k.shape[-1])
        assert max(len(np.unique(c)) for c in codes.transpose(0, 2, 1).reshape(-1, 8)) <= 8


def test_nnx_model(nnx_zoo):
    apply, params, xs = nnx_zoo
    pruned = lc.posttrain.sparsegpt(apply, params, xs, 0.5)
    for path, k in _kernels(pruned).items():
        assert (k == 0).sum() >= round(0.5 * k.size), path
    assert type(pruned) is type(params)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_kernels_keep_their_dtype(mlp_task, dtype):
    apply, params, x, _ = mlp_task
    low = lc.train.cast_floating(params, dtype) if hasattr(lc.train, "cast_floating") else params
    out = lc.posttrain.sparsegpt(apply, low, x.astype(dtype), 0.5)
    k = out["Dense_1"]["kernel"]
    assert k.dtype == dtype and int((k == 0).sum()) >= k.size // 2


def test_bad_configuration_is_refused_before_any_work(mlp_task):
    apply, params, x, _ = mlp_task
    with pytest.raises(ValueError, match="sparsity"):
        lc.posttrain.sparsegpt(apply, params, x, 1.0)
    with pytest.raises(TypeError, match="sparsity"):
        lc.posttrain.sparsegpt(apply, params, x, True)
    with pytest.raises(ValueError, match="fraction or an n:m"):
        lc.posttrain.sparsegpt(apply, params, x, lc.prune.Channel())
    with pytest.raises(ValueError, match=r"m=3 does not divide.*'Dense_0/kernel'"):
        lc.posttrain.sparsegpt(apply, params, x, lc.prune.NM(1, 3))
    with pytest.raises(ValueError, match=r"group_size=5 does not divide.*'Dense_0/kernel'"):
        lc.posttrain.sparsegpt(apply, params, x, 0.5, bits=4, group_size=5)
    with pytest.raises(ValueError, match="pass bits"):
        lc.posttrain.sparsegpt(apply, params, x, 0.5, group_size=8)
    with pytest.raises(ValueError, match=r"bits must be in 2..8"):
        lc.posttrain.sparsegpt(apply, params, x, 0.5, bits=9)
    with pytest.raises(TypeError, match="sequential"):
        lc.posttrain.sparsegpt(apply, params, x, 0.5, sequential="yes")
    with pytest.raises(ValueError, match="dampening"):
        lc.posttrain.sparsegpt(apply, params, x, 0.5, dampening=-0.1)
