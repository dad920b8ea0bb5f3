"""Tests for lightcomp/parallel/_mesh.py: meshes, replicated and sharded copies, layouts."""

import os
import socket
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lightcomp import parallel


@pytest.mark.parametrize(
    "data, model, want", [(None, 1, (8, 1)), (None, 2, (4, 2)), (2, 2, (2, 2))]
)
def test_make_mesh_shapes(data, model, want):
    mesh = parallel.make_mesh(data, model)
    assert mesh.axis_names == ("data", "model")
    assert tuple(mesh.devices.shape) == want
    np.testing.assert_array_equal(
        mesh.devices.reshape(-1), np.asarray(jax.devices()[: want[0] * want[1]], dtype=object)
    )


def test_replicate_and_place_copy_every_buffer():
    mesh = parallel.make_mesh(4, 2)
    tree = {"w": jnp.arange(64.0).reshape(8, 8), "b": jnp.ones(8), "n": np.int32(3)}
    rep = parallel.replicate(tree, mesh)
    assert rep["w"].sharding.spec == P() and len(rep["w"].sharding.device_set) == 8
    chex.assert_trees_all_equal(rep, tree)
    split = parallel.place(
        tree,
        {
            "w": NamedSharding(mesh, P(None, "model")),
            "b": NamedSharding(mesh, P()),
            "n": NamedSharding(mesh, P()),
        },
    )
    assert split["w"].sharding.spec == P(None, "model")
    chex.assert_trees_all_equal(split, tree)
    # donating the copies leaves the source alive
    jax.jit(lambda t: jax.tree.map(lambda x: x + 1, t), donate_argnums=0)(rep)
    assert not tree["w"].is_deleted() and rep["w"].is_deleted()


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 40), min_size=0, max_size=4),
    n=st.sampled_from([1, 2, 4, 8]),
    min_size=st.sampled_from([1, 64, 1024]),
)
def test_model_spec_splits_a_divisible_axis(shape, n, min_size):
    spec = parallel.model_spec(shape, n, min_size=min_size)
    size = int(np.prod(shape))
    if n == 1 or len(shape) < 2 or size < min_size:
        assert spec == P()
        return
    divisible = [d for d in range(len(shape)) if shape[d] % n == 0]
    if not divisible:
        assert spec == P()
    else:
        assert spec == P(*([None] * max(divisible)), "model")  # the last divisible axis


def _state():
    """A state-like tree: params, a mirrored compression state, a PRNG key."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((64, 16)).astype(np.float32)
    return {
        "params": {"Dense_0": {"kernel": kernel, "bias": np.zeros(16, np.float32)}},
        "comp_state": {"Dense_0": {"kernel": kernel != 0, "bias": None}},
        "rng": jax.random.key(0),
        "raw_rng": jax.random.PRNGKey(0),
    }


def test_state_shardings_include_and_keys():
    mesh = parallel.make_mesh(4, 2)
    state = _state()
    everything = parallel.state_shardings(state, mesh, min_size=64)
    assert everything["params"]["Dense_0"]["kernel"].spec == P(None, "model")
    assert everything["comp_state"]["Dense_0"]["kernel"].spec == P(None, "model")
    assert everything["params"]["Dense_0"]["bias"].spec == P()  # rank 1
    sh = parallel.state_shardings(state, mesh, min_size=64, include="^params/")
    assert sh["params"]["Dense_0"]["kernel"].spec == P(None, "model")
    assert sh["comp_state"]["Dense_0"]["kernel"].spec == P()  # not under params/
    assert sh["rng"].spec == P() and sh["raw_rng"].spec == P()
    chex.assert_trees_all_equal_structs(sh, state)
    assert all(isinstance(s, NamedSharding) for s in jax.tree.leaves(sh))
    by_fn = parallel.state_shardings(state, mesh, min_size=64, include=lambda p, x: "comp" in p)
    assert by_fn["params"]["Dense_0"]["kernel"].spec == P()
    assert by_fn["comp_state"]["Dense_0"]["kernel"].spec == P(None, "model")
    big = parallel.state_shardings(state, mesh)  # default min_size: 1024 elements stay whole
    assert big["params"]["Dense_0"]["kernel"].spec == P()


def test_bad_mesh_arguments():
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match="data \\* model = 16"):
        parallel.make_mesh(8, 2)
    with pytest.raises(ValueError, match="model=3 does not divide the 8 devices"):
        parallel.make_mesh(model=3)
    with pytest.raises(ValueError, match="model must be >= 1"):
        parallel.make_mesh(model=0)
    with pytest.raises(TypeError, match="data must be an int"):
        parallel.make_mesh(2.0)
    with pytest.raises(ValueError, match="model_axis 'tp'"):
        parallel.state_shardings(_state(), mesh, model_axis="tp")
    with pytest.raises(TypeError, match="include must be"):
        parallel.state_shardings(_state(), mesh, include=3)


# --------------------------------------------------------------------------- multi-process


_MULTIHOST = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid = int(sys.argv[1])
    jax.distributed.initialize(f"localhost:{sys.argv[2]}", num_processes=2, process_id=pid)
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from lightcomp import parallel
    assert jax.process_count() == 2 and len(jax.devices()) == 4
    mesh = parallel.make_mesh()  # spans both processes
    x = np.arange(8, dtype=np.float32) + 1
    local = x.reshape(2, 4)[pid]  # this process's half of the global batch
    arr = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
    total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, P()))(arr)
    print("SUM", float(total))
    """
)


def test_same_code_under_jax_distributed(tmp_path):
    """Two processes of 2 CPU devices each: one mesh of 4 devices over both."""
    script = tmp_path / "worker.py"
    script.write_text(_MULTIHOST)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:]
        assert "SUM 36.0" in out, out[-2000:]


# ------------------------------------------------------- state following the params' layout


def _logical_params():
    """Linen params with logical axis names (``nn.with_logical_partitioning``)."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.initializers.lecun_normal()
            x = nn.Dense(16, kernel_init=nn.with_logical_partitioning(init, ("embed", "mlp")))(x)
            return nn.Dense(4, kernel_init=nn.with_logical_partitioning(init, ("mlp", None)))(x)

    return Net().init(jax.random.key(0), jnp.ones((1, 8)))["params"]


RULES = [("embed", "data"), ("mlp", "model")]


def test_state_shardings_follow_flax_logical_names():
    mesh = parallel.make_mesh(4, 2)
    boxed = _logical_params()
    import flax.linen as nn

    params = nn.unbox(boxed)
    state = {
        "params": params,
        "comp_state": {"masks": jax.tree.map(lambda x: x != 0, params)},
        "scale": {"Dense_0": {"kernel": jnp.ones((1, 16))}},  # a per-channel range
        "centroids": {"Dense_0": {"kernel": jnp.ones(4)}},
    }
    sh = parallel.state_shardings(state, mesh, params=boxed, rules=RULES)
    assert sh["params"]["Dense_0"]["kernel"].spec == P("data", "model")
    assert sh["params"]["Dense_1"]["kernel"].spec == P("model", None)
    assert sh["comp_state"]["masks"]["Dense_0"]["kernel"].spec == P("data", "model")
    assert sh["scale"]["Dense_0"]["kernel"].spec == P(None, "model")  # [1, out]
    assert sh["centroids"]["Dense_0"]["kernel"].spec == P()
    assert sh["params"]["Dense_0"]["bias"].spec == P()
    placed = jax.device_put(state, sh)
    chex.assert_trees_all_equal(placed, state)


def test_state_shardings_follow_nnx_sharding_metadata():
    from flax import nnx

    init = nnx.with_metadata(
        nnx.initializers.lecun_normal(), out_sharding=("embed", "mlp"), eager_sharding=False
    )
    model = nnx.Linear(8, 16, kernel_init=init, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    mesh = parallel.make_mesh(4, 2)
    sh = parallel.state_shardings({"params": params}, mesh, params=params, rules=RULES)
    assert sh["params"]["kernel"].get_value().spec == P("data", "model")


def test_state_shardings_follow_placed_params():
    mesh = parallel.make_mesh(4, 2)
    kernel = jax.device_put(np.ones((8, 16), np.float32), NamedSharding(mesh, P("data", "model")))
    state = {"params": {"Dense_0": {"kernel": kernel}}, "mu": {"Dense_0": {"kernel": kernel}}}
    sh = parallel.state_shardings(state, mesh, params=state["params"])
    assert sh["mu"]["Dense_0"]["kernel"].spec == P("data", "model")


def test_state_shardings_name_the_leaf_and_the_axis():
    mesh = parallel.make_mesh(4, 2)
    boxed = _logical_params()
    with pytest.raises(
        ValueError, match=r"leaf 'Dense_0/kernel': logical axis 'embed' has no rule"
    ):
        parallel.state_shardings({}, mesh, params=boxed, rules=[("mlp", "model")])
    state = {"Dense_0": {"kernel": np.zeros((3, 4), np.float32)}}
    with pytest.raises(
        ValueError, match=r"leaf 'Dense_0/kernel': mesh axes 'model' of size 2 do not divide"
    ):  # a spec given bare is checked on the leaf that follows it
        parallel.state_shardings(state, mesh, params={"Dense_0": {"kernel": P("model", None)}})
    with pytest.raises(ValueError, match=r"leaf 'Dense_0/kernel': logical axis 'tp' has no rule"):
        parallel.state_shardings(state, mesh, params={"Dense_0": {"kernel": P("tp", None)}})
    with pytest.raises(ValueError, match=r"leaf 'Dense_0/kernel': mesh axes 'data' of size 4"):
        kernel = jax.device_put(np.zeros((4, 6), np.float32), NamedSharding(mesh, P("data")))
        parallel.state_shardings({}, mesh, params={"Dense_0": {"kernel": _Fake(kernel, (6, 4))}})


class _Fake:
    """An array-like whose sharding was made for another shape (a resharded checkpoint)."""

    def __init__(self, array, shape):
        self.sharding, self.shape, self.dtype = array.sharding, shape, array.dtype
