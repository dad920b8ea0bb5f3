"""Tests for lightcomp.tree: leaf paths and selection."""

import dataclasses

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp import tree


@pytest.fixture(scope="module")
def linen_params():
    model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(4)])
    return model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.embed = nnx.Embed(10, 6, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(6, 6, rngs=rngs), nnx.Linear(6, 3, rngs=rngs)])
        self.norm = nnx.LayerNorm(6, rngs=rngs)


@flax.struct.dataclass
class _Block:
    kernel: jax.Array
    scale: jax.Array
    name: str = flax.struct.field(pytree_node=False, default="block")


def test_paths_of_linen_params(linen_params):
    assert tree.paths(linen_params) == [
        "layers_0/bias",
        "layers_0/kernel",
        "layers_2/bias",
        "layers_2/kernel",
    ]


def test_paths_of_nnx_state_drop_variable_value():
    _, state = nnx.split(_Net(nnx.Rngs(0)))
    ps = tree.paths(state)
    assert "embed/embedding" in ps
    assert "layers/0/kernel" in ps
    assert "layers/1/bias" in ps
    assert all(not p.endswith("/value") for p in ps)


def test_paths_of_nested_containers_and_dataclass():
    t = {
        "a": [np.zeros((2, 2)), (np.zeros(3), {"b": np.zeros((1, 4))})],
        "blk": _Block(np.zeros((3, 3)), np.ones(3)),
    }
    assert tree.paths(t) == ["a/0", "a/1/0", "a/1/1/b", "blk/kernel", "blk/scale"]


def test_default_rule_selects_float_matrices_only(linen_params):
    sel = tree.selection(linen_params)
    assert sel == {
        "layers_0": {"bias": False, "kernel": True},
        "layers_2": {"bias": False, "kernel": True},
    }
    mixed = {"w": np.zeros((2, 2), np.float32), "i": np.zeros((2, 2), np.int32), "b": np.zeros(2)}
    assert tree.selection(mixed) == {"w": True, "i": False, "b": False}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_default_rule_all_float_dtypes(dtype):
    assert tree.default_rule("k", jnp.zeros((2, 3), dtype))
    assert not tree.default_rule("b", jnp.zeros((3,), dtype))


def test_nnx_state_default_selection():
    _, state = nnx.split(_Net(nnx.Rngs(0)))
    assert tree.selected_paths(state) == ["embed/embedding", "layers/0/kernel", "layers/1/kernel"]


def test_include_exclude_regex(linen_params):
    assert tree.selected_paths(linen_params, tree.select(include=r"layers_2")) == [
        "layers_2/kernel"
    ]
    assert tree.selected_paths(linen_params, tree.select(exclude=r"layers_0")) == [
        "layers_2/kernel"
    ]
    assert tree.selected_paths(linen_params, r"layers_0/kernel") == ["layers_0/kernel"]
    both = tree.select(include=[r"layers_0", r"layers_2"], exclude=r"_2/")
    assert tree.selected_paths(linen_params, both) == ["layers_0/kernel"]


def test_predicate_replaces_default_rule(linen_params):
    biases = tree.select(predicate=lambda path, leaf: path.endswith("bias"))
    assert tree.selected_paths(linen_params, biases) == ["layers_0/bias", "layers_2/bias"]
    assert tree.selected_paths(linen_params, lambda p, x: x.size > 35) == ["layers_0/kernel"]


def test_map_selected_touches_only_selected(linen_params):
    out = tree.map_selected(lambda w: w * 0.0, linen_params)
    chex.assert_trees_all_equal_structs(out, linen_params)
    np.testing.assert_array_equal(out["layers_0"]["kernel"], 0.0)
    chex.assert_trees_all_equal(out["layers_0"]["bias"], linen_params["layers_0"]["bias"])
    none = tree.map_selected(lambda w: w > 0, linen_params, unselected="none")
    assert none["layers_0"]["bias"] is None and none["layers_2"]["kernel"].dtype == jnp.bool_


def test_map_selected_with_rest_trees_and_paths(linen_params):
    masks = tree.map_selected(lambda w: jnp.abs(w) > 0.1, linen_params, unselected="none")
    out = tree.map_selected(lambda w, m: jnp.where(m, w, 0.0), linen_params, masks)
    k = linen_params["layers_0"]["kernel"]
    np.testing.assert_array_equal(out["layers_0"]["kernel"], np.where(np.abs(k) > 0.1, k, 0.0))
    seen = []
    tree.map_selected(lambda p, w: seen.append(p) or w, linen_params, with_path=True)
    assert seen == ["layers_0/kernel", "layers_2/kernel"]


def test_map_selected_jitted_equals_eager(linen_params):
    fn = lambda p: tree.map_selected(lambda w: jnp.round(w * 8) / 8, p)
    chex.assert_trees_all_equal(jax.jit(fn)(linen_params), fn(linen_params))


def test_map_selected_on_nnx_state_roundtrips_through_merge():
    graphdef, state = nnx.split(_Net(nnx.Rngs(0)))
    zeroed = tree.map_selected(jnp.zeros_like, state)
    model = nnx.merge(graphdef, zeroed)
    np.testing.assert_array_equal(model.layers[0].kernel[...], 0.0)
    assert np.any(np.asarray(model.norm.scale[...]) != 0.0)


def test_first_mismatch(linen_params):
    masks = tree.map_selected(lambda w: w > 0, linen_params, unselected="none")
    assert tree.first_mismatch(linen_params, masks) is None
    broken = {"layers_0": masks["layers_0"]}
    assert tree.first_mismatch(linen_params, broken) == "layers_2/bias"


# --- bad input -------------------------------------------------------------------------


def test_not_a_pytree_of_arrays():
    with pytest.raises(TypeError, match=r"params.*'a/name'.*str"):
        tree.selection({"a": {"name": "dense", "w": np.zeros((2, 2))}})


def test_bad_regex_fails_when_built():
    with pytest.raises(ValueError, match="include pattern"):
        tree.select(include="Dense_(")
    with pytest.raises(ValueError, match="exclude pattern"):
        tree.Select(exclude=("[",))


def test_include_matching_nothing_is_reported(linen_params):
    with pytest.raises(ValueError, match=r"'Dnese_0'.*matches no leaf.*layers_0/kernel"):
        tree.selection(linen_params, tree.select(include="Dnese_0"))


def test_predicate_that_raises_names_the_leaf(linen_params):
    def bad(path, leaf):
        raise KeyError("boom")

    with pytest.raises(ValueError, match=r"predicate raised on leaf 'layers_0/bias'"):
        tree.selection(linen_params, bad)


def test_predicate_selecting_integer_leaf():
    with pytest.raises(TypeError, match=r"'steps'.*not floating"):
        tree.selection({"steps": np.zeros((2, 2), np.int32)}, lambda p, x: True)


def test_require_any_lists_paths(linen_params):
    assert tree.selection(linen_params, lambda p, x: False) is not None
    with pytest.raises(ValueError, match=r"chose no leaf.*layers_0/bias"):
        tree.selection(linen_params, lambda p, x: False, require_any=True)


def test_bad_select_type():
    with pytest.raises(TypeError, match="select must be"):
        tree.as_select(3)


def test_unselected_argument_checked(linen_params):
    with pytest.raises(ValueError, match="unselected"):
        tree.map_selected(lambda w: w, linen_params, unselected="drop")


# --- properties ------------------------------------------------------------------------

_shapes = st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3), min_size=1, max_size=5)


@settings(max_examples=25, deadline=None)
@given(_shapes)
def test_selection_matches_rule_and_map_keeps_structure(shapes):
    params = {f"layer_{i}": np.ones(s, np.float32) for i, s in enumerate(shapes)}
    sel = tree.selection(params)
    for name, leaf in params.items():
        assert sel[name] == (leaf.ndim >= 2)
    out = tree.map_selected(lambda w: -w, params)
    chex.assert_trees_all_equal_structs(out, params)
    for name, leaf in params.items():
        np.testing.assert_array_equal(out[name], -leaf if leaf.ndim >= 2 else leaf)


def test_select_is_hashable_for_static_args():
    rule = tree.select(include="a", exclude=("b",))
    assert hash(rule) == hash(tree.select(include=("a",), exclude="b"))
    assert dataclasses.is_dataclass(rule)


def test_check_mirror_accepts_none_and_names_the_mismatch():
    params = {"a": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "b": jnp.ones(2)}
    masks = {"a": {"kernel": jnp.ones((2, 3), bool), "bias": None}, "b": None}
    flat = tree.check_mirror(params, masks, "masks")
    assert flat[0] is None and flat[2] is None and flat[1].shape == (2, 3)
    with pytest.raises(ValueError, match="masks does not mirror params: mismatch at leaf 'b'"):
        tree.check_mirror(params, {"a": {"kernel": None, "bias": None}}, "masks")
    with pytest.raises(ValueError, match=r"grads does not mirror params: .*'a/extra'"):
        tree.check_mirror(
            params, {"a": {"kernel": 1.0, "bias": 1.0, "extra": 1.0}, "b": 1.0}, "grads"
        )
    with pytest.raises(ValueError, match=r"masks leaf 'a/kernel' has shape \(3, 2\), params has"):
        tree.check_mirror(
            params, {"a": {"kernel": jnp.ones((3, 2)), "bias": None}, "b": None}, "masks"
        )
    tree.check_mirror(
        params, {"a": {"kernel": jnp.ones(7), "bias": None}, "b": None}, "n", shapes=False
    )
    with pytest.raises(
        ValueError, match=r"scales leaf 'a/kernel' has shape \(3,\), expected \(2,\)"
    ):
        tree.check_mirror(
            params,
            {"a": {"kernel": jnp.ones(3), "bias": None}, "b": None},
            "scales",
            lambda w: w.shape[:1],
        )


def test_first_mismatch_allows_none_where_the_reference_has_none():
    ref = {"a": jnp.ones(2), "b": None}
    assert tree.first_mismatch(ref, {"a": None, "b": None}) is None
    assert tree.first_mismatch(ref, {"a": None, "b": jnp.ones(2)}) == "b"
