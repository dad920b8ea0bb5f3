"""A one-shot result's state goes into the transforms: a short distillation keeps the masks and
stays on a grid."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lightcomp as lc


def _kernels(tree):
    return {p: np.asarray(v) for p, v in lc.tree.leaves_with_paths(tree) if p.endswith("kernel")}


def test_distillation_from_the_float_model_keeps_masks_and_grid(mlp_task):
    apply, params, x, y = mlp_task
    out, state = lc.posttrain.sparsegpt(apply, params, x, 0.5, bits=4, return_state=True)
    t = lc.chain(lc.pruning(0.5), lc.fake_quantization(4, axis=-1, learned_scale=True))
    opt = optax.adam(1e-3)
    ds = lc.train.init_state(out, opt, t, jax.random.key(0))
    ds = dataclasses.replace(ds, comp_state=state)
    for path, k in _kernels(t.apply(ds.params, ds.comp_state)).items():
        np.testing.assert_array_equal(k, _kernels(out)[path])  # the state changes nothing
    step = jax.jit(lc.train.make_step(apply, apply, opt, t, alpha=0.5, temperature=2.0))
    batch = {"inputs": x, "labels": y}
    before = float(lc.distill.cross_entropy(apply(out, x), y))
    for _ in range(8):
        ds, _ = step(ds, params, batch)
    eff = t.apply(ds.params, ds.comp_state)
    masks = dict(lc.tree.leaves_with_paths(ds.comp_state[0].masks))
    first = dict(lc.tree.leaves_with_paths(state[0].masks))
    scales = dict(lc.tree.leaves_with_paths(ds.comp_state[1].scales.value))
    for path, k in _kernels(eff).items():
        np.testing.assert_array_equal(masks[path], first[path])  # masks kept
        assert (k[~np.asarray(masks[path])] == 0).all()
        codes = k / np.asarray(scales[path])
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)  # on the (trained) grid
        assert np.abs(np.round(codes)).max() <= 7
    assert float(lc.distill.cross_entropy(apply(eff, x), y)) < before + 0.05


def test_pruning_state_of_wanda_and_magnitude_plugs_into_pruning(mlp_task):
    apply, params, x, _ = mlp_task
    for fn, scope in ((lc.posttrain.wanda, "output"), (lc.posttrain.magnitude, "layer")):
        out, st = fn(apply, params, x, 0.5, return_state=True)
        t = lc.pruning(0.5, scope=scope)
        assert isinstance(st, lc.PruningState)
        np.testing.assert_array_equal(
            t.apply(out, st)["Dense_1"]["kernel"], out["Dense_1"]["kernel"]
        )
        assert t.update(out, st, None, jnp.int32(5)) is st  # one-shot: never recomputed
    out, st = lc.posttrain.gptq(apply, params, x, 4, group_size=8, return_state=True)
    t = lc.fake_quantization(4, axis=-1, group_size=8, learned_scale=True)
    for path, k in _kernels(t.apply(out, st)).items():
        np.testing.assert_array_equal(k, _kernels(out)[path])
    with pytest.raises(ValueError, match="built by a transform configured"):
        lc.fake_quantization(4, axis=-1, learned_scale=True).apply(out, st)
