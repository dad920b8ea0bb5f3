"""lightcomp/tree/_paths.py: leaf paths of linen params, nnx states, containers, dataclasses."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightcomp import tree


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


def test_paths_of_nnx_state_drop_variable_value(nnx_net):
    _, state = nnx_net
    ps = tree.paths(state)
    assert "embed/embedding" in ps
    assert "layers/0/kernel" in ps
    assert "layers/1/bias" in ps
    assert all(not p.endswith("/value") for p in ps)


def test_paths_of_partitioned_boxes_drop_value():
    boxed = {"Dense_0": {"kernel": nn.Partitioned(jnp.zeros((2, 3)), names=("embed", "mlp"))}}
    assert tree.paths(boxed) == ["Dense_0/kernel"]


def test_paths_of_nested_containers_and_dataclass():
    t = {
        "a": [np.zeros((2, 2)), (np.zeros(3), {"b": np.zeros((1, 4))})],
        "blk": _Block(np.zeros((3, 3)), np.ones(3)),
    }
    assert tree.paths(t) == ["a/0", "a/1/0", "a/1/1/b", "blk/kernel", "blk/scale"]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_is_floating_all_float_dtypes(dtype):
    assert tree.is_floating(jnp.zeros((2, 3), dtype))
    assert not tree.is_floating(jnp.zeros((2, 3), jnp.int32))


def test_not_a_pytree_of_arrays():
    with pytest.raises(TypeError, match=r"params.*'a/name'.*str"):
        tree.selection({"a": {"name": "dense", "w": np.zeros((2, 2))}})
