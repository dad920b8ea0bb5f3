"""Tests for lightcomp.parallel on 8 host CPU devices (set in conftest.py)."""

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import lightcomp as lc
from lightcomp import parallel

N_DEV = 8
STEPS = 5
BATCH = 32


def _transform():
    # Masks grow 20% -> 50% over steps 0..4, recomputed every 2 steps from Taylor scores
    # (|w g|, so they depend on the averaged gradients); k-means re-clusters every 3 steps
    # (warm-started from the trained, Learned centroids).
    return lc.chain(
        lc.transform.pruning(
            lc.prune.polynomial_schedule(0.2, 0.5, 0, 4), update_every=2, score="taylor"
        ),
        lc.transform.weight_sharing(4, recluster_every=3, iters=2),
    )


class _Setup:
    def __init__(self):
        self.apply, self.params = lc.models.init_mlp([16, 10], 64, jax.random.key(0))
        self.t_apply, self.t_params = lc.models.init_mlp([32, 10], 64, jax.random.key(1))
        self.opt = optax.adam(1e-2)
        self.transform = _transform()
        # jitted once: eager k-means in init_state would dispatch op by op
        # (params passed as an argument, not closed over: XLA would constant-fold k-means)
        self._init_jit = jax.jit(
            lambda p, key: lc.train.init_state(p, self.opt, self.transform, key)
        )
        self._init = lambda key: self._init_jit(self.params, key)
        rng = np.random.default_rng(0)
        self.batches = [
            {
                "inputs": rng.random((BATCH, 64), dtype=np.float32),
                "labels": rng.integers(0, 10, BATCH).astype(np.int32),
            }
            for _ in range(STEPS)
        ]

    def fresh(self):
        return self._init(jax.random.key(2))

    def make(self, axis_name=None):
        return lc.train.make_step(
            self.apply, self.t_apply, self.opt, self.transform, axis_name=axis_name
        )


@pytest.fixture(scope="module")
def setup():
    return _Setup()


@pytest.fixture(scope="module")
def reference(setup):
    """The single-device run: per-step states and metrics."""
    step = jax.jit(setup.make())
    state, states, metrics = setup.fresh(), [], []
    for b in setup.batches:
        state, m = step(state, setup.t_params, b)
        states.append(state)
        metrics.append(m)
    return states, metrics


def _masks(state):
    return lc.transform.masks_of(state.comp_state)


def _assignments(state):
    return state.comp_state[1].assignments


def _assert_same_run(states, metrics, reference):
    ref_states, ref_metrics = reference
    for i, (s, m, rs, rm) in enumerate(zip(states, metrics, ref_states, ref_metrics, strict=True)):
        # Integer and boolean state (masks, assignments, step) is identical; floats agree
        # to float32 round-off (the reductions run in another order).
        chex.assert_trees_all_equal(_masks(s), _masks(rs), custom_message=f"masks, step {i}")
        chex.assert_trees_all_equal(s.step, rs.step)
        ints_s = jax.tree.leaves(_assignments(s))
        ints_r = jax.tree.leaves(_assignments(rs))
        for a, b in zip(ints_s, ints_r, strict=True):
            # a centroid equidistant from two weights may flip one assignment
            assert np.mean(np.asarray(a) != np.asarray(b)) <= 0.01, f"assignments, step {i}"
        chex.assert_trees_all_close(s.params, rs.params, rtol=1e-4, atol=1e-5)
        chex.assert_trees_all_close(
            lc.partition(s.comp_state)[0], lc.partition(rs.comp_state)[0], rtol=1e-4, atol=1e-5
        )
        chex.assert_trees_all_close(m, rm, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(
            jax.random.key_data(s.rng), jax.random.key_data(rs.rng), err_msg=f"rng, step {i}"
        )


def test_reference_run_updates_masks_and_reclusters(reference):
    """The runs compared below really include mask updates and a re-clustering."""
    states, _ = reference
    sparsity = [float(np.mean(~np.asarray(_masks(s)["Dense_0"]["kernel"]))) for s in states]
    assert sparsity[0] < sparsity[-1]  # masks recomputed with a growing target
    a = [np.asarray(_assignments(s)["Dense_0"]["kernel"]) for s in states]
    # re-clustering at step 3 changes assignments (masks at steps 2 and 4 too: zeros move)
    assert any(np.any(a[i] != a[i + 1]) for i in range(len(a) - 1))


# --------------------------------------------------------------------------- shard_batch


@pytest.mark.parametrize("n", [1, 2, 8])
def test_shard_batch_matches_numpy(n):
    rng = np.random.default_rng(n)
    batch = {"inputs": rng.random((16, 3, 2)), "labels": rng.integers(0, 9, 16)}
    out = parallel.shard_batch(batch, n)
    chex.assert_shape(out["inputs"], (n, 16 // n, 3, 2))
    chex.assert_shape(out["labels"], (n, 16 // n))
    np.testing.assert_array_equal(out["inputs"], batch["inputs"].reshape(n, -1, 3, 2))
    assert isinstance(out["inputs"], np.ndarray)
    jout = parallel.shard_batch(jax.tree.map(jnp.asarray, batch), n)
    np.testing.assert_array_equal(jout["labels"], out["labels"])


def test_shard_batch_default_is_local_device_count():
    out = parallel.shard_batch({"x": np.zeros((16, 2))})
    chex.assert_shape(out["x"], (jax.local_device_count(), 16 // jax.local_device_count(), 2))


@pytest.mark.parametrize(
    "batch,n,match",
    [
        ({"inputs": np.zeros((10, 2))}, 4, "'inputs' has 10 rows"),
        ({"s": np.float32(1.0)}, 2, "'s' is a scalar"),
        ({"x": np.zeros((4,))}, 0, "n_devices"),
    ],
)
def test_shard_batch_errors(batch, n, match):
    with pytest.raises(ValueError, match=match):
        parallel.shard_batch(batch, n)


# --------------------------------------------------------------------------- equal to one device


def test_pmap_step_matches_single_device(setup, reference):
    pstep = parallel.pmap_step(setup.make(axis_name="batch"))
    state, states, metrics = setup.fresh(), [], []
    for b in setup.batches:
        state, m = pstep(state, setup.t_params, parallel.shard_batch(b, N_DEV))
        for v in m.values():  # one row per device, all equal (pmean'd)
            chex.assert_shape(v, (N_DEV,))
            np.testing.assert_array_equal(v, np.full_like(v, v[0]))
        states.append(state)
        metrics.append(jax.tree.map(lambda v: v[0], m))
    _assert_same_run(states, metrics, reference)


@pytest.mark.parametrize("mesh_shape", [(8, 1), (4, 2)])
def test_data_parallel_matches_single_device(setup, reference, mesh_shape):
    mesh = parallel.make_mesh(*mesh_shape)
    state = setup.fresh()
    if mesh_shape[1] > 1:
        shardings = parallel.state_shardings(state, mesh, min_size=64)
        # the kernels, their Adam moments, masks and assignments are split over "model"
        assert shardings.params["Dense_0"]["kernel"].spec == P(None, "model")
        assert _masks(shardings)["Dense_0"]["kernel"].spec == P(None, "model")
        assert _assignments(shardings)["Dense_0"]["kernel"].spec == P(None, "model")
        assert shardings.params["Dense_0"]["bias"].spec == P()
        state = parallel.place(state, shardings)
    else:
        shardings = None
        state = parallel.replicate(state, mesh)
    first = state
    step = parallel.data_parallel(setup.make(), mesh, state_shardings=shardings)
    states, metrics = [], []
    for b in setup.batches:
        state, m = step(state, setup.t_params, b)
        # the input state was donated; the params init_state was given are untouched,
        # because replicate/place copy before laying out
        assert first.params["Dense_0"]["kernel"].is_deleted()
        assert not setup.params["Dense_0"]["kernel"].is_deleted()
        states.append(jax.tree.map(lambda x: x.copy(), state))  # the next step donates
        metrics.append(m)
    k = state.params["Dense_0"]["kernel"]
    assert k.sharding.spec == (P(None, "model") if mesh_shape[1] > 1 else P())
    assert set(k.sharding.device_set) == set(mesh.devices.flat)
    _assert_same_run(states, metrics, reference)


def test_shard_map_step_matches_single_device(setup, reference):
    mesh = parallel.make_mesh()
    step = parallel.shard_map_step(setup.make(axis_name="data"), mesh)
    state, states, metrics = setup.fresh(), [], []
    for b in setup.batches:
        state, m = step(state, setup.t_params, b)
        states.append(state)
        metrics.append(m)
    _assert_same_run(states, metrics, reference)


def test_bad_arguments_are_named(setup):
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match=r"'inputs'.*'data' axis of size 8"):
        parallel.data_parallel(setup.make(), mesh)(
            setup.fresh(), setup.t_params, {"inputs": np.zeros((12, 64), np.float32)}
        )
    with pytest.raises(ValueError, match="data_axis 'rows'"):
        parallel.data_parallel(setup.make(), mesh, data_axis="rows")
    with pytest.raises(ValueError, match="axis_name 'batch'"):
        parallel.shard_map_step(setup.make(), mesh, axis_name="batch")
    with pytest.raises(TypeError, match="step must be callable"):
        parallel.pmap_step(None)
    with pytest.raises(ValueError, match="data \\* model = 16"):
        parallel.make_mesh(8, 2)
    with pytest.raises(ValueError, match="model_axis 'tp'"):
        parallel.state_shardings(setup.params, mesh, model_axis="tp")


# --------------------------------------------------------------------------- model sharding


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


def test_state_shardings_include_and_keys(setup):
    mesh = parallel.make_mesh(4, 2)
    state = setup.fresh()
    sh = parallel.state_shardings(state, mesh, min_size=64, include="^params/")
    assert sh.params["Dense_0"]["kernel"].spec == P(None, "model")
    assert _masks(sh)["Dense_0"]["kernel"].spec == P()  # not under params/
    assert sh.rng.spec == P()
    chex.assert_trees_all_equal_structs(sh, state)
    assert all(isinstance(s, NamedSharding) for s in jax.tree.leaves(sh))


# --------------------------------------------------------------------------- compressed all-reduce


def _compressed(mesh, bits):
    def f(g, key):
        g = jax.tree.map(lambda x: x[0], g)  # this device's gradients
        out = parallel.compressed_pmean(g, "data", bits, key)
        return jax.tree.map(lambda x: x[None], out), jax.lax.pmean(g, "data")

    return jax.jit(
        jax.shard_map(
            f, mesh=mesh, in_specs=(P("data"), P()), out_specs=(P("data"), P()), check_vma=False
        )
    )


@pytest.fixture(scope="module")
def grads8():
    k1, k2 = jax.random.split(jax.random.key(7))
    return {
        "w": jax.random.normal(k1, (N_DEV, 6, 5)),
        "b": jax.random.normal(k2, (N_DEV, 5)).astype(jnp.bfloat16),
    }


@pytest.mark.parametrize("bits", [4, 8])
def test_compressed_pmean_is_close_equal_on_devices_and_unbiased(grads8, bits):
    fn = _compressed(parallel.make_mesh(), bits)
    qmax = 2 ** (bits - 1) - 1
    scale = jax.tree.map(lambda g: np.max(np.abs(np.asarray(g, np.float32))) / qmax, grads8)
    exact = jax.tree.map(lambda g: np.mean(np.asarray(g, np.float32), 0), grads8)
    draws = []
    for i in range(32):
        out, pmean = fn(grads8, jax.random.key(i))
        for k in out:  # every device holds the same result, in the gradient's dtype
            assert out[k].dtype == grads8[k].dtype
            np.testing.assert_array_equal(out[k], np.broadcast_to(out[k][:1], out[k].shape))
            # each device's code is within one step of its value, so the mean is too
            err = np.abs(np.asarray(out[k][0], np.float32) - exact[k])
            tol = 1.01 * scale[k] + (0.02 if k == "b" else 1e-6) * np.abs(exact[k])
            assert np.all(err <= tol + 1e-3 * (k == "b"))
        draws.append(jax.tree.map(lambda x: np.asarray(x[0], np.float32), out))
    np.testing.assert_allclose(pmean["w"], exact["w"], rtol=1e-5, atol=1e-6)
    mean = jax.tree.map(lambda *xs: np.mean(xs, 0), *draws)
    # unbiased: the average of 32 draws is several times closer than one step of the grid
    for k in mean:
        assert np.max(np.abs(mean[k] - exact[k])) < 0.35 * scale[k] + (0.01 if k == "b" else 0)


def test_compressed_pmean_exact_on_the_grid():
    """Gradients that are multiples of the shared scale are reduced exactly (NumPy mean)."""
    rng = np.random.default_rng(3)
    codes = rng.integers(-7, 8, (N_DEV, 4, 3)).astype(np.float32)
    codes[0, 0, 0] = 7.0  # max |g| = 7 * 0.25 on some device: scale = 0.25 for 4 bits
    g = {"w": jnp.asarray(codes * 0.25)}
    out, _ = _compressed(parallel.make_mesh(), 4)(g, jax.random.key(0))
    np.testing.assert_allclose(out["w"][0], np.mean(codes * 0.25, 0), rtol=1e-6)


def test_compressed_pmean_sums_in_narrow_ints():
    """The all-reduce of 4-bit codes over 8 devices travels as int8 (8 * 7 <= 127)."""
    mesh = parallel.make_mesh()
    g = {"w": jnp.ones((N_DEV, 64, 32))}
    hlo = _compressed(mesh, 4).lower(g, jax.random.key(0)).compile().as_text()
    reduces = [ln for ln in hlo.splitlines() if " all-reduce(" in ln]
    assert sum("s8[64,32]" in ln for ln in reduces) == 1, reduces  # the codes
    assert sum("f32[64,32]" in ln for ln in reduces) == 1, reduces  # the test's reference pmean
    assert sum("f32[]" in ln for ln in reduces) == 1, reduces  # the shared scale (pmax)


@pytest.mark.parametrize(
    "bits,n,wire,itemsize", [(4, 8, "int8", 1), (8, 8, "int16", 2), (8, 1, "int8", 1)]
)
def test_allreduce_bytes(bits, n, wire, itemsize):
    g = {"a": jnp.zeros((10, 4)), "b": jax.ShapeDtypeStruct((3,), jnp.bfloat16)}
    r = parallel.allreduce_bytes(g, n, bits)
    assert r["float_bytes"] == 40 * 4 + 3 * 2
    assert r["wire_dtype"] == wire
    assert r["compressed_bytes"] == 43 * itemsize + 2 * 4
    assert r["saved_bytes"] == r["float_bytes"] - r["compressed_bytes"]
    assert parallel.allreduce_bytes(g, n)["compressed_bytes"] is None
    with pytest.raises(ValueError, match="bits"):
        parallel.compressed_mean("batch", bits=1)


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
    import socket

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


def test_pmap_step_with_compressed_gradient_all_reduce(setup, reference):
    step = lc.train.make_step(
        setup.apply,
        setup.t_apply,
        setup.opt,
        setup.transform,
        axis_name="batch",
        grad_reduce=parallel.compressed_mean("batch", bits=16),
    )
    state, _ = parallel.pmap_step(step)(
        setup.fresh(), setup.t_params, parallel.shard_batch(setup.batches[0], N_DEV)
    )
    ref = reference[0][0]
    # 16-bit stochastic codes: the mean gradient is within a few codes of the float one,
    # so one Adam step lands close to the float step; pruned weights stay exactly zero.
    chex.assert_trees_all_close(state.params, ref.params, atol=2e-3)
    kernel = np.asarray(state.params["Dense_0"]["kernel"])
    mask = np.asarray(_masks(state)["Dense_0"]["kernel"])
    assert not mask.all() and np.all(kernel[~mask] == 0.0)


def test_grad_reduce_needs_axis_name(setup):
    with pytest.raises(ValueError, match="grad_reduce"):
        lc.train.make_step(
            setup.apply,
            setup.t_apply,
            setup.opt,
            setup.transform,
            grad_reduce=parallel.compressed_mean("batch", bits=8),
        )
