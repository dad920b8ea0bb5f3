"""lightcomp/tree/_mirror.py: trees that mirror the parameters (None at unselected leaves)."""

import jax.numpy as jnp
import pytest

from lightcomp import tree


def test_first_mismatch(linen_params):
    masks = tree.map_selected(lambda w: w > 0, linen_params, unselected="none")
    assert tree.first_mismatch(linen_params, masks) is None
    broken = {"layers_0": masks["layers_0"]}
    assert tree.first_mismatch(linen_params, broken) == "layers_2/bias"


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
