"""Tests of lightcomp.export._structure: the tree skeleton, and trees coming back as they were."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc
from lightcomp.export._format import MAX_DEPTH
from lightcomp.export._structure import check_structure, rebuild, skeleton


class Pair(NamedTuple):
    a: jax.Array
    b: jax.Array


def _bits(x):
    x = np.asarray(x)
    return x.view(f"u{x.dtype.itemsize}")


def _assert_bit_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(_bits(a), _bits(b))


def test_skeleton_records_containers_in_leaf_order():
    tree = {"z": [1, (2, None)], "a": Pair(3, 4)}
    counter = [0]
    skel = skeleton(tree, counter)
    assert counter == [4] and counter[0] == len(jax.tree.leaves(tree))
    assert skel == {
        "dict": [
            ["a", {"node": "Pair", "keys": [["a", {"leaf": 0}], ["b", {"leaf": 1}]]}],
            ["z", {"list": [{"leaf": 2}, {"tuple": [{"leaf": 3}, None]}]}],
        ]
    }
    assert rebuild(skel, ["A", "B", "C", "D"]) == {
        "a": {"a": "A", "b": "B"},
        "z": ["C", ("D", None)],
    }


@pytest.mark.parametrize("skel", [{}, [1], {"set": []}, {"dict": [["a", {"what": 1}]]}])
def test_rebuild_rejects_corrupted_skeletons(skel):
    with pytest.raises(ValueError, match="corrupted tree structure"):
        rebuild(skel, [])


@pytest.fixture(scope="module")
def mlp_params():
    return lc.models.init_mlp((16, 10), 8, jax.random.key(0))[1]


def test_mixed_tree_structure_and_like(mlp_params):
    w = np.random.default_rng(0).normal(size=(2, 32)).astype(np.float32)
    tree = {
        "params": mlp_params,
        "seq": [jnp.arange(3, dtype=jnp.int32), (np.ones(2, np.float16), None)],
        "bf16": jnp.asarray(w, jnp.bfloat16),
    }
    back = lc.export.unpack(lc.export.pack(tree))
    chex.assert_trees_all_equal_structs(back, tree)
    jax.tree.map(_assert_bit_equal, back, tree)
    assert isinstance(back["seq"][1], tuple) and back["seq"][1][1] is None
    assert isinstance(back["bf16"], jax.Array) and back["bf16"].dtype == jnp.bfloat16
    assert isinstance(back["seq"][1][0], np.ndarray)
    nt = Pair(jnp.ones(3), jnp.zeros((2, 2)))
    packed = lc.export.pack(nt)
    as_dict = lc.export.unpack(packed)
    assert sorted(as_dict) == ["a", "b"]
    _assert_bit_equal(as_dict["b"], nt.b)
    back_nt = lc.export.unpack(packed, like=nt)
    assert isinstance(back_nt, Pair)
    jax.tree.map(_assert_bit_equal, back_nt, nt)
    with pytest.raises(ValueError, match="leaf paths"):
        lc.export.unpack(packed, like={"x": jnp.ones(3)})


@pytest.mark.parametrize(
    "skel, nleaves, match",
    [
        ({"leaf": -1}, 1, "names leaf -1 of 1"),
        ({"leaf": True}, 2, "names leaf True"),  # a bool is not an index
        ({"list": [{"leaf": 0}, {"leaf": 0}]}, 2, "uses leaf 0 twice"),
        ({"list": [{"leaf": 1}]}, 2, "does not use leaf 0"),
        ({"dict": [["a", {"leaf": 0}], ["a", {"leaf": 1}]]}, 2, "repeats a key"),
        ({"dict": [[1.5, {"leaf": 0}]]}, 1, "string or integer keys"),
        ({"node": 3, "keys": []}, 0, "type name"),
        ({"leaf": 0, "list": []}, 1, "not a skeleton node"),
        ({"tuple": {"leaf": 0}}, 1, "must hold a list"),
    ],
)
def test_check_structure_refuses_what_skeleton_never_writes(skel, nleaves, match):
    with pytest.raises(ValueError, match=match):
        check_structure(skel, nleaves)


def test_check_structure_bounds_the_depth_without_recursing():
    skel = {"leaf": 0}
    for _ in range(MAX_DEPTH):
        skel = {"list": [skel]}
    check_structure(skel, 1)  # exactly the limit
    for _ in range(100_000):  # far past the interpreter's recursion limit
        skel = {"list": [skel]}
    with pytest.raises(ValueError, match="deeper than"):
        check_structure(skel, 1)
    tree = {"z": [1, (2, None)], "a": Pair(3, 4)}
    check_structure(skeleton(tree, [0]), 4)  # what skeleton writes passes


def test_an_nnx_state_with_a_list_of_layers_round_trips():
    # nnx keeps a list of layers as a State with integer keys: the skeleton keeps them
    from flax import nnx

    model = lc.models.NnxMLP((6, 8, 3), rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    back = lc.export.unpack(lc.export.pack(params), like=params)
    chex.assert_trees_all_equal(jax.tree.leaves(back), jax.tree.leaves(params))
    assert jax.tree.structure(back) == jax.tree.structure(params)
