"""lightcomp/prune/_mirror.py: the mirror checks name the argument and the leaf."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from lightcomp.prune._mirror import check_mirror, check_same_shape


def test_check_mirror_accepts_none_at_leaves_and_names_the_mismatch():
    params = {"a": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}, "b": jnp.ones(2)}
    check_mirror(params, {"a": {"kernel": jnp.ones((2, 3)), "bias": None}, "b": None}, "masks")
    with pytest.raises(ValueError, match="masks does not mirror params: mismatch at leaf 'b'"):
        check_mirror(params, {"a": {"kernel": None, "bias": None}}, "masks")
    with pytest.raises(ValueError, match=r"grads does not mirror params: .*'a/extra'"):
        check_mirror(params, {"a": {"kernel": 1.0, "bias": 1.0, "extra": 1.0}, "b": 1.0}, "grads")


def test_check_same_shape_names_the_leaf():
    check_same_shape("a/kernel", jnp.ones((2, 3)), jnp.zeros((2, 3), bool), "masks")
    with pytest.raises(ValueError, match="masks leaf 'a/kernel' has shape \\(3, 2\\), params has"):
        check_same_shape("a/kernel", jnp.ones((2, 3)), jnp.zeros((3, 2)), "masks")
