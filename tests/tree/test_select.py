"""lightcomp/tree/_select.py: selection by role (Flax names), by rank elsewhere, rules."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from lightcomp import tree


def test_default_selection_is_the_kernels_of_linen_params(linen_params):
    sel = tree.selection(linen_params)
    assert sel == {
        "layers_0": {"bias": False, "kernel": True},
        "layers_2": {"bias": False, "kernel": True},
    }


def test_a_tree_without_flax_names_selects_by_rank():
    mixed = {"w": np.zeros((2, 2), np.float32), "i": np.zeros((2, 2), np.int32), "b": np.zeros(2)}
    assert tree.selection(mixed) == {"w": True, "i": False, "b": False}


def test_every_family_selects_exactly_its_kernels_and_embeddings(families):
    for name, (params, expected) in families.items():
        assert tree.selected_paths(params) == expected, name


def test_what_the_role_rule_leaves_alone():
    # attention biases [heads, head_dim], a class token, position embeddings, stacked norms:
    # all ndim >= 2, all left alone once the tree has Flax names
    params = {
        "attn": {"query": {"kernel": jnp.zeros((8, 2, 4)), "bias": jnp.zeros((2, 4))}},
        "cls": jnp.zeros((1, 1, 8)),
        "pos_embedding": jnp.zeros((1, 5, 8)),
        "pos_embed": {"embedding": jnp.zeros((5, 8))},
        "tok": {"embedding": jnp.zeros((11, 8))},
        "layers": {"LayerNorm_0": {"scale": jnp.zeros((3, 8)), "bias": jnp.zeros((3, 8))}},
        "w": jnp.zeros((4, 4)),
    }
    assert tree.selected_paths(params) == ["attn/query/kernel", "tok/embedding"]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_rules_on_every_float_dtype(dtype):
    assert tree.default_rule("Dense_0/kernel", jnp.zeros((2, 3), dtype))
    assert tree.default_rule("Embed_0/embedding", jnp.zeros((2, 3), dtype))
    assert tree.default_rule("scanned/kernel", jnp.zeros((3, 2, 3), dtype))
    assert not tree.default_rule("Dense_0/bias", jnp.zeros((3,), dtype))
    assert not tree.default_rule("k", jnp.zeros((2, 3), dtype))
    assert not tree.default_rule("Dense_0/kernel", jnp.zeros((2, 3), jnp.int32))
    assert tree.array_rule("k", jnp.zeros((2, 3), dtype))
    assert not tree.array_rule("b", jnp.zeros((3,), dtype))


def test_nnx_state_default_selection(nnx_net):
    _, state = nnx_net
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


def test_predicate_replaces_the_default_rules(linen_params):
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


def test_map_selected_on_nnx_state_roundtrips_through_merge(nnx_net):
    graphdef, state = nnx_net
    zeroed = tree.map_selected(jnp.zeros_like, state)
    model = nnx.merge(graphdef, zeroed)
    np.testing.assert_array_equal(model.layers[0].kernel[...], 0.0)
    assert np.any(np.asarray(model.norm.scale[...]) != 0.0)


# --- bad input -------------------------------------------------------------------------


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
@given(_shapes, st.booleans())
def test_selection_follows_the_rule_of_the_tree(shapes, flax_named):
    # without Flax names: floating and ndim >= 2; with them: the name alone
    name = (lambda i: f"Dense_{i}/kernel") if flax_named else (lambda i: f"layer_{i}")
    params = {name(i): np.ones(s, np.float32) for i, s in enumerate(shapes)}
    sel = tree.selection(params)
    for key, leaf in params.items():
        assert sel[key] == (flax_named or leaf.ndim >= 2)
    out = tree.map_selected(lambda w: -w, params)
    chex.assert_trees_all_equal_structs(out, params)
    for key, leaf in params.items():
        np.testing.assert_array_equal(out[key], -leaf if sel[key] else leaf)


def test_select_is_hashable_for_static_args():
    rule = tree.select(include="a", exclude=("b",))
    assert hash(rule) == hash(tree.select(include=("a",), exclude="b"))
    assert dataclasses.is_dataclass(rule)
