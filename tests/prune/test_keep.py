"""lightcomp/prune/_keep.py: masks read through each leaf's axes (stacked, attention, Einsum)."""

from __future__ import annotations

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import lightcomp as lc
from lightcomp import prune as P
from tests.tree.helpers import HEAD_DIM, HEADS, LAYERS, ScannedLM, draw, linen_params

A = lc.tree.Axes


_JITTED = {}


def _masks_jit(scores, s, **kw):
    """`masks` under jit: the axes (static values, not arrays) in the closure; one
    compilation per configuration and shape."""
    fn = _JITTED.setdefault(repr(kw), jax.jit(lambda sc, s: P.masks(sc, s, **kw)))
    return fn(scores, jnp.float32(s))


def _slices(x, stacked):
    """``x`` as ``[layers, rest...]``: the stacked axes moved to the front and flattened."""
    x = np.moveaxis(np.asarray(x), stacked, tuple(range(len(stacked))))
    return x.reshape((-1, *x.shape[len(stacked) :]))


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    s=st.floats(0.0, 0.99),
    where=st.sampled_from([0, 1, 2]),
    ties=st.booleans(),
)
def test_layer_scope_exact_count_in_every_slice(seed, s, where, ties, np_layer_mask):
    r = np.random.default_rng(seed)
    shape = [5, 6]
    shape.insert(where, LAYERS)  # the layer axis anywhere
    score = np.round(r.random(shape), 1 if ties else 6).astype(np.float32)
    rest = [a for a in range(3) if a != where]
    axes = {"w": A((where,), (rest[0],), (rest[1],))}
    mk = np.asarray(P.masks({"w": jnp.asarray(score)}, s, axes=axes)["w"])
    np.testing.assert_array_equal(mk, np.asarray(_masks_jit({"w": score}, s, axes=axes)["w"]))
    for sl_mask, sl_score in zip(_slices(mk, (where,)), _slices(score, (where,)), strict=True):
        assert (~sl_mask).sum() == round(s * sl_score.size)
        np.testing.assert_array_equal(sl_mask, np_layer_mask(sl_score, s))


@pytest.fixture(scope="module")
def scanned():
    """Magnitude scores of a linen ``nn.scan`` LM (3 layers), NumPy-drawn."""
    params = draw(linen_params(ScannedLM(), jnp.zeros((1, 5), jnp.int32)), seed=3)
    return P.magnitude(params)


def test_scanned_lm_every_layer_of_every_leaf_gets_its_count(scanned, leaves):
    mk = P.masks(scanned, 0.4)  # axes derived from the scores' paths and shapes
    for path, m in leaves(mk).items():
        m = np.asarray(m)
        if path.startswith("layers/"):
            per_layer = (~m).reshape(LAYERS, -1).sum(axis=1)
            assert per_layer.tolist() == [round(0.4 * m[0].size)] * LAYERS, path
        else:
            assert (~m).sum() == round(0.4 * m.size), path


def _np_nm(score, axis, n, m):
    """Reference n:m keep-mask: groups of ``m`` consecutive along ``axis``, ties by index."""
    moved = np.moveaxis(score, axis, -1)
    groups = moved.reshape((*moved.shape[:-1], -1, m))
    keep = np.zeros(groups.shape, bool)
    np.put_along_axis(keep, np.argsort(groups, axis=-1, kind="stable")[..., m - n :], True, -1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def test_two_four_of_attention_kernels_runs_along_the_true_input_axis(scanned, leaves):
    mk = leaves(P.masks(scanned, None, granularity=P.NM(2, 4)))
    att = "layers/MultiHeadDotProductAttention_0"
    # query [layers, embed, heads, head_dim]: groups along embed; out [layers, heads,
    # head_dim, embed]: along head_dim (the last input axis), not the heads axis
    for path, axis in ((f"{att}/query/kernel", 1), (f"{att}/out/kernel", 2)):
        score = np.asarray(leaves(scanned)[path])
        np.testing.assert_array_equal(np.asarray(mk[path]), _np_nm(score, axis, 2, 4), path)


def test_channel_units_are_output_units_of_each_slice(scanned, leaves):
    path = "layers/MultiHeadDotProductAttention_0/query/kernel"
    score = np.asarray(leaves(scanned)[path])  # [layers, embed, heads, head_dim]
    mk = np.asarray(leaves(P.masks(scanned, 0.5, granularity="channel"))[path])
    for sl_mask, sl_score in zip(mk, score, strict=True):
        cols = sl_mask.reshape(sl_mask.shape[0], -1)  # embed x (heads * head_dim)
        units = cols.all(axis=0)
        np.testing.assert_array_equal(cols, np.broadcast_to(units, cols.shape))
        norms = np.linalg.norm(sl_score.reshape(sl_score.shape[0], -1), axis=0)
        assert (~units).sum() == round(0.5 * sl_score.size) // sl_score.shape[0]
        ref = np.ones(units.size, bool)
        ref[np.argsort(norms, kind="stable")[: (~units).sum()]] = False
        np.testing.assert_array_equal(units, ref)


def test_block_rows_along_the_input_axis_columns_along_the_last_output_axis():
    r = np.random.default_rng(5)
    score = r.random((8, HEADS, HEAD_DIM)).astype(np.float32)  # [embed, heads, head_dim]
    ax = {"q": A((), (0,), (1, 2))}
    mk = np.asarray(
        P.masks({"q": jnp.asarray(score)}, 0.5, granularity=P.Block(4, 2), axes=ax)["q"]
    )
    tiles = np.moveaxis(mk, 1, 0).reshape(HEADS, 2, 4, 2, 2)  # head, row block, row, col block, col
    assert np.all(tiles.all(axis=(2, 4)) == tiles.any(axis=(2, 4)))
    tile_scores = np.moveaxis(score, 1, 0).reshape(HEADS, 2, 4, 2, 2)
    norms = np.sqrt((tile_scores**2).sum(axis=(2, 4))).reshape(-1)
    ref = np.ones(norms.size, bool)
    ref[np.argsort(norms, kind="stable")[: norms.size // 2]] = False
    np.testing.assert_array_equal(tiles.all(axis=(2, 4)).reshape(-1), ref)


def test_output_scope_compares_within_each_output_unit_of_each_slice(np_lowest):
    r = np.random.default_rng(6)
    score = r.random((LAYERS, 7, 4)).astype(np.float32)
    ax = {"w": A((0,), (1,), (2,))}
    mk = np.asarray(P.masks({"w": jnp.asarray(score)}, 0.4, scope="output", axes=ax)["w"])
    for layer in range(LAYERS):
        for o in range(4):
            want = ~np_lowest(score[layer, :, o], round(0.4 * 7))
            np.testing.assert_array_equal(mk[layer, :, o], want)


def test_global_scope_ranks_all_slices_together_and_keep_one_is_per_slice():
    r = np.random.default_rng(7)
    score = r.random((LAYERS, 4, 6)).astype(np.float32)
    score[1] *= 1e-3  # layer 1 far below the others
    ax = {"w": A((0,), (1,), (2,))}
    scores = {"w": jnp.asarray(score)}
    flat = P.masks({"w": jnp.asarray(score.reshape(-1, 6))}, 0.4, scope="global")["w"]
    got = P.masks(scores, 0.4, scope="global", axes=ax)["w"]
    np.testing.assert_array_equal(np.asarray(got).reshape(-1, 6), np.asarray(flat))
    cut = P.masks(scores, 0.4, scope="global", granularity="channel", axes=ax)["w"]
    assert not bool(cut[1].any())  # the whole layer goes...
    kept = np.asarray(
        P.masks(scores, 0.4, scope="global", granularity="channel", keep_one=True, axes=ax)["w"]
    )
    assert kept[1].all(axis=0).sum() == 1  # ...unless each slice keeps its best unit
    assert int(np.argmax(np.linalg.norm(score[1], axis=0))) == int(np.argmax(kept[1].all(axis=0)))
    chex.assert_trees_all_equal(
        jax.tree.leaves(
            _masks_jit(scores, 0.4, scope="global", granularity="channel", keep_one=True, axes=ax)
        ),
        [kept],
    )


def test_elements_need_no_axes_but_structure_does():
    scores = {"Einsum_0": {"kernel": jnp.ones((3, 4, 5))}}
    assert int((~P.masks(scores, 0.5)["Einsum_0"]["kernel"]).sum()) == 30
    with pytest.raises(
        ValueError,
        match=r"granularity=Channel\(\) needs the input and output axes of leaf 'Einsum_0/kernel' \(3, 4, 5\).*overrides=\{'Einsum_0/kernel'",
    ):
        P.masks(scores, 0.5, granularity="channel")
    given = {"Einsum_0": {"kernel": A((), (0,), (1, 2))}}
    mk = P.masks(scores, 0.5, granularity="channel", axes=given)["Einsum_0"]["kernel"]
    assert int((~mk).sum()) == 30


def test_errors_name_the_leaf_and_the_axis():
    out = {"attn": {"out": {"kernel": jnp.ones((2, 6, 8))}}}  # [heads, head_dim, embed]
    ax = {"attn": {"out": {"kernel": A((), (0, 1), (2,), names=("heads", "head_dim", "embed"))}}}
    with pytest.raises(
        ValueError,
        match=r"m=4 does not divide input axis 1 \(head_dim, size 6\) of leaf 'attn/out/kernel'",
    ):
        P.masks(out, None, granularity="2:4", axes=ax)
    with pytest.raises(
        ValueError,
        match=r"block=\(3, 3\) does not divide output axis 2 \(embed, size 8\) \(block cols\)",
    ):
        P.masks(out, 0.5, granularity=P.Block(3, 3), axes=ax)
    with pytest.raises(ValueError, match="axes does not mirror params"):
        P.masks(out, 0.5, axes={"attn": None})
    with pytest.raises(
        TypeError, match=r"lightcomp.tree.Axes at scores leaf 'attn/out/kernel', got str"
    ):
        P.masks(out, 0.5, axes={"attn": {"out": {"kernel": "0, 1"}}})
    with pytest.raises(ValueError, match=r"axes does not mirror .* 'attn/out/kernel/0'"):
        P.masks(out, 0.5, axes={"attn": {"out": {"kernel": (0, 1)}}})
    with pytest.raises(
        ValueError, match=r"axes of leaf 'attn/out/kernel' \(2, 6, 8\) must put every axis"
    ):
        P.masks(out, 0.5, axes={"attn": {"out": {"kernel": A((), (0,), (2,))}}})
