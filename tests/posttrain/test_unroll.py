"""Scanned stacks (``nn.scan``, ``nnx.vmap`` + ``nnx.scan``): every slice is its own layer, as in
the unrolled model with the same weights."""

import jax
import numpy as np
import pytest
from flax import nnx

import lightcomp as lc

LAYERS = 2
LAYERS_ONLY = lc.tree.select(exclude="embedding")


def _lm(scan):
    return lc.posttrain.CharLM(d_model=16, heads=2, layers=LAYERS, max_len=16, scan=scan)


def _unrolled_params(stacked):
    """The unrolled `CharLM`'s params holding the slices of a scanned one's."""
    out = {k: v for k, v in stacked.items() if k != "Blocks"}
    for i in range(LAYERS):
        out[f"Block_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked["Blocks"]["Block"])
    return out


def _slices(stacked_tree):
    return [
        jax.tree.map(lambda a, i=i: a[i], stacked_tree["Blocks"]["Block"]) for i in range(LAYERS)
    ]


@pytest.fixture(scope="module")
def lms():
    x = jax.random.randint(jax.random.key(0), (4, 16), 0, 128)
    scanned, unrolled = _lm(True), _lm(False)
    params = scanned.init(jax.random.key(1), x)["params"]
    apply_s = lambda p, x: scanned.apply({"params": p}, x)
    apply_u = lambda p, x: unrolled.apply({"params": p}, x)
    np.testing.assert_allclose(apply_s(params, x), apply_u(_unrolled_params(params), x), atol=1e-5)
    return apply_s, apply_u, params, x


@pytest.fixture(scope="module")
def joint(lms):
    """SparseGPT 2:4 with 4-bit GPTQ in one pass on the scanned LM, with its state."""
    apply_s, _, params, x = lms
    return lc.posttrain.sparsegpt(
        apply_s, params, x, "2:4", bits=4, select=LAYERS_ONLY, return_state=True
    )


def _assert_slices_equal(got, want, atol=2e-4):
    for i, block in enumerate(_slices(got)):
        for (path, a), (_, b) in zip(
            lc.tree.leaves_with_paths(block),
            lc.tree.leaves_with_paths(want[f"Block_{i}"]),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, atol=atol, err_msg=f"layer {i}: {path}")
    np.testing.assert_allclose(got["head"]["kernel"], want["head"]["kernel"], atol=atol)


def test_scanned_slices_compress_as_the_unrolled_layers(lms, joint):
    apply_s, apply_u, params, x = lms
    unrolled = _unrolled_params(params)
    want = lc.posttrain.sparsegpt(apply_u, unrolled, x, "2:4", bits=4, select=LAYERS_ONLY)
    _assert_slices_equal(joint[0], want)  # sequential: layer 1 calibrated on compressed layer 0
    _assert_slices_equal(
        lc.posttrain.wanda(apply_s, params, x, 0.5), lc.posttrain.wanda(apply_u, unrolled, x, 0.5)
    )


def test_two_four_and_grid_per_slice_with_the_transforms_state(joint):
    out, (pstate, qstate) = joint
    t = lc.chain(
        lc.pruning(None, granularity="2:4", select=LAYERS_ONLY),
        lc.fake_quantization(4, learned_scale=True, select=LAYERS_ONLY),
    )
    eff = t.apply(out, (pstate, qstate))
    for path, k in lc.tree.leaves_with_paths(out):
        if path.endswith("kernel"):
            np.testing.assert_array_equal(eff_leaf := _at(eff, path), k)
            assert eff_leaf.dtype == k.dtype
    k = np.asarray(out["Blocks"]["Block"]["fc1"]["kernel"])  # [layers, in, out]
    mask = np.asarray(pstate.masks["Blocks"]["Block"]["fc1"]["kernel"])
    groups = mask.reshape(LAYERS, -1, 4, k.shape[-1]).sum(axis=2)
    assert (groups == 2).all()  # exactly 2 of every 4 inputs kept, in every layer
    scale = np.asarray(qstate.scales.value["Blocks"]["Block"]["fc1"]["kernel"])
    assert scale.shape == (LAYERS, 1, k.shape[-1])  # a grid per layer and output unit
    codes = k / scale
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
    assert not np.allclose(scale[0], scale[1])


def _at(tree, path):
    return dict(lc.tree.leaves_with_paths(tree))[path]


class _NBlock(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.fc2 = nnx.Linear(16, 8, rngs=rngs)

    def __call__(self, x):
        return x + self.fc2(nnx.relu(self.fc1(x)))


class _NStack(nnx.Module):
    """Blocks made by ``nnx.vmap``, run by ``nnx.scan``."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=LAYERS)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return _NBlock(rngs)

        self.blocks = make(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(x, block):
            return block(x)

        return body(x, self.blocks)


def test_nnx_vmap_stack_slices_are_layers_of_their_own():
    graphdef, params, rest = nnx.split(_NStack(nnx.Rngs(0)), nnx.Param, ...)
    apply = lambda p, x: nnx.merge(graphdef, p, rest)(x)
    x = jax.random.normal(jax.random.key(3), (32, 8))
    h = lc.posttrain.grams(apply, params, x)
    assert h["blocks/fc1/kernel"].matrix.shape == (LAYERS, 8, 8)
    k0 = np.asarray(params["blocks"]["fc1"]["kernel"][...])
    b0 = np.asarray(params["blocks"]["fc1"]["bias"][...])
    np.testing.assert_allclose(h["blocks/fc1/kernel"].matrix[0], x.T @ x, rtol=1e-4)
    y0 = (
        np.asarray(x)
        + np.maximum(np.asarray(x) @ k0[0] + b0[0], 0)
        @ np.asarray(params["blocks"]["fc2"]["kernel"][...][0])
        + np.asarray(params["blocks"]["fc2"]["bias"][...][0])
    )
    np.testing.assert_allclose(h["blocks/fc1/kernel"].matrix[1], y0.T @ y0, rtol=1e-3, atol=1e-3)
    out = lc.posttrain.sparsegpt(apply, params, x, "2:4", sequential=False)
    k = np.asarray(out["blocks"]["fc2"]["kernel"][...])
    assert ((k.reshape(LAYERS, 4, 4, 8) != 0).sum(axis=2) <= 2).all()
    ref, _ = lc.posttrain.sparsegpt_matrix(
        np.asarray(params["blocks"]["fc2"]["kernel"][...][1]).T,
        h["blocks/fc2/kernel"].matrix[1],
        "2:4",
    )
    np.testing.assert_allclose(k[1], np.asarray(ref).T, atol=1e-5)
