"""The column sweep (through `sparsegpt_matrix` / `gptq_matrix`) against the papers' algorithms
written directly in NumPy, with every update applied at once (no lazy batches)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc
from lightcomp.posttrain import _obs
from tests.posttrain.helpers import layer_data, np_gptq, np_sparsegpt


@pytest.mark.parametrize("seed, blocksize", [(0, 16), (1, 128), (2, 24)])
def test_sparsegpt_unstructured_matches_numpy(seed, blocksize):
    w, _, h = layer_data(seed, cols=60)
    ref, ref_pruned = np_sparsegpt(w, h, sparsity=0.5, blocksize=min(blocksize, 60))
    w_hat, keep = lc.posttrain.sparsegpt_matrix(w, h, 0.5, blocksize=blocksize)
    np.testing.assert_array_equal(~np.asarray(keep), ref_pruned)
    np.testing.assert_allclose(w_hat, ref, rtol=2e-4, atol=2e-4)
    assert int((~keep).sum()) == round(0.5 * w.size)


def test_sparsegpt_nm_matches_numpy():
    w, _, h = layer_data(3)
    ref, ref_pruned = np_sparsegpt(w, h, nm=(2, 4), blocksize=32)
    w_hat, keep = lc.posttrain.sparsegpt_matrix(w, h, lc.prune.NM(2, 4), blocksize=32)
    np.testing.assert_array_equal(~np.asarray(keep), ref_pruned)
    np.testing.assert_allclose(w_hat, ref, rtol=2e-4, atol=2e-4)
    assert (np.asarray(keep).reshape(16, -1, 4).sum(-1) == 2).all()


@pytest.mark.parametrize(
    "bits, group, symmetric, act_order",
    [(4, None, True, False), (3, 16, True, False), (4, 8, False, False), (3, 16, True, True)],
)
def test_gptq_matches_numpy(bits, group, symmetric, act_order):
    w, _, h = layer_data(4 + bits)
    ref = np_gptq(w, h, bits, group=group, symmetric=symmetric, act_order=act_order)
    qt = lc.posttrain.gptq_matrix(
        w, h, bits, group_size=group, symmetric=symmetric, act_order=act_order, blocksize=32
    )
    w_hat = np.asarray(lc.quant.dequantize(qt))
    np.testing.assert_allclose(w_hat, ref, rtol=1e-4, atol=1e-4)


def test_sweep_jitted_and_not_agree_and_never_recompile_for_new_data():
    w, _, h = layer_data(7, cols=32)
    args = dict(width=16, nm=None, grid=_obs.Grid(4, True, 8, False), act_order=False)
    f = _obs.solve
    eager = f(jnp.asarray(w)[None], jnp.asarray(h)[None], None, jnp.float32(0.01), **args)
    again = jax.jit(lambda a, b: f(a, b, None, jnp.float32(0.01), **args))(
        jnp.asarray(w)[None], jnp.asarray(h)[None]
    )
    for a, b in zip(eager, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_gptq_with_identity_hessian_is_round_to_nearest():
    w, _, _ = layer_data(8, cols=32)
    qt = lc.posttrain.gptq_matrix(w, np.eye(32, dtype=np.float32), 4, dampening=0.0)
    rtn = lc.quant.fake_quant(jnp.asarray(w), 4, axis=0)
    np.testing.assert_array_equal(lc.quant.dequantize(qt), rtn)


@pytest.mark.parametrize("counts, size", [([0, 3, 7, 64], 64), ([1, 262143, 524287], 524288)])
def test_fractions_give_exact_counts_in_float32(counts, size):
    f = _obs.fractions(np.array(counts), size)
    assert (np.round(f * np.float32(size)) == counts).all()


def test_block_counts_add_up_exactly():
    got = _obs.block_counts(1001, 300, 128)
    assert got.sum() == 1001 and len(got) == 3


def _swept(w, h, split, frac, nm, grid):
    """`_obs.sweep` of one prepared matrix with the given split (static grid ranges per row)."""
    w, h = _obs.prepare(jnp.asarray(w), jnp.asarray(h), 0.01)
    lo = hi = gidx = None
    if grid is not None:
        n_groups = grid.n_groups(w.shape[1])
        lo = hi = jnp.zeros((w.shape[0], n_groups), jnp.float32)
        gidx = jnp.arange(w.shape[1], dtype=jnp.int32) // (grid.group_size or w.shape[1])
        if grid.static:
            lo, hi = _obs._static_ranges(w, grid)
    u = _obs.inverse_factor(h)
    kw = dict(split=split, n_real=w.shape[1], nm=nm, grid=grid)
    return _obs.sweep(w, u, frac, lo, hi, gidx, **kw)


@pytest.mark.parametrize(
    "width, nm, grid, sparse",
    [
        (4, None, None, True),  # 18 blocks in one piece
        (36, lc.prune.NM(2, 4), _obs.Grid(4, False, 6, False), False),  # whole groups per panel
        (24, None, _obs.Grid(3, True, 12, False), False),  # a range per panel or two
        (8, None, _obs.Grid(3, True, 24, False), False),  # groups of three blocks
        (72, None, _obs.Grid(4, True, None, True), True),
    ],
)
def test_sweep_gives_the_same_whatever_the_split(width, nm, grid, sparse):
    w, _, h = layer_data(10, cols=72)
    frac = None
    if sparse:
        frac = jnp.asarray(_obs.fractions(_obs.block_counts(16 * 36, 72, width), 16 * width))
    split = _obs.Split.of(72, width, nm, grid)
    assert split.sub < width or split.chunk > width  # more than one panel or block per piece
    pieces = _obs.Split(width, split.sub, max(width, 24 // width * width))  # several pieces
    whole = _obs.Split(width, width, 72)  # one panel per block, one piece
    ref = _swept(w, h, whole, frac, nm, grid)
    for got in (_swept(w, h, split, frac, nm, grid), _swept(w, h, pieces, frac, nm, grid)):
        np.testing.assert_array_equal(got[1], ref[1])
        for a, b in zip(got[::2], ref[::2], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
