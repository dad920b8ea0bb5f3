"""Tests for lightcomp/parallel/_steps.py on 8 host CPU devices (set in tests/conftest.py).

Each way of running the step on many devices (pmap, jit over a mesh, shard_map) is checked
against the single-device run on the same global batches.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import lightcomp as lc
from lightcomp import parallel
from tests.train.helpers import STATEFUL, family, key_data, run

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

    def make(self, axis_name=None, **kwargs):
        return lc.train.make_step(
            self.apply, self.t_apply, self.opt, self.transform, axis_name=axis_name, **kwargs
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
    # device i holds rows i * per_device : (i + 1) * per_device
    for i in range(n):
        np.testing.assert_array_equal(out["labels"][i], batch["labels"][i * 16 // n :][: 16 // n])


def test_shard_batch_default_is_local_device_count():
    out = parallel.shard_batch({"x": np.zeros((16, 2))})
    chex.assert_shape(out["x"], (jax.local_device_count(), 16 // jax.local_device_count(), 2))


@pytest.mark.parametrize(
    "batch,n,exc,match",
    [
        ({"inputs": np.zeros((10, 2))}, 4, ValueError, "'inputs' has 10 rows.*n_devices=4"),
        ({"s": np.float32(1.0)}, 2, ValueError, "'s' is a scalar"),
        ({"x": np.zeros((4,))}, 0, ValueError, "n_devices must be >= 1"),
        ({"x": np.zeros((4,))}, 2.0, TypeError, "n_devices must be an int"),
        ({"x": "rows"}, 2, TypeError, "batch"),
    ],
)
def test_shard_batch_errors(batch, n, exc, match):
    with pytest.raises(exc, match=match):
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


def test_pmap_step_with_compressed_gradient_all_reduce(setup, reference):
    reduce = parallel.compressed_mean("batch", bits=16)
    step = setup.make(axis_name="batch", grad_reduce=reduce)
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


# --------------------------------------------------------------------------- model families

FAMILY_STEPS = 3

# (family, dropout, BatchNorm axis of the nnx CNN, how): dropout draws per-device masks
# under pmap and shard_map (each device folds its index into the key), so those runs
# compare without it; data_parallel draws the global batch's masks and keeps dropout.
# Each family runs one or two ways (compilation dominates: every case is two programs).
FAMILY_CASES = [
    ("resnet", 0.1, None, "pmap"),
    ("resnet", 0.1, None, "shard_map"),
    ("lm", 0.0, None, "pmap"),  # padding falls unevenly across devices
    ("linen_scan", 0.0, None, "shard_map"),
    ("nnx_cnn", 0.0, "batch", "pmap"),
    ("nnx_cnn", 0.1, None, "mesh"),
    ("nnx_scan", 0.1, None, "mesh"),
]


def _many_devices(f, how):
    if how == "pmap":
        return parallel.pmap_step(f.step(axis_name="batch"))
    if how == "shard_map":  # the mesh's "data" axis bound as BatchNorm's "batch"
        return parallel.shard_map_step(f.step(axis_name="batch"), parallel.make_mesh())
    return parallel.data_parallel(f.step(), parallel.make_mesh(), donate=False)


@pytest.mark.parametrize(("name", "dropout", "bn_axis", "how"), FAMILY_CASES)
def test_model_families_on_eight_devices_match_one_device(name, dropout, bn_axis, how):
    """BatchNorm statistics, token weights and dropout: 8 devices = 1 on the global batch."""
    f = family(name, dropout, bn_axis)
    _, ref_states, ref_metrics = run(name, dropout, bn_axis)
    step = _many_devices(f, how)
    state = f.init()
    for i, b in enumerate(f.batches[:FAMILY_STEPS]):
        state, m = step(
            state, f.teacher_params, parallel.shard_batch(b, N_DEV) if how == "pmap" else b
        )
        if how == "pmap":
            m = jax.tree.map(lambda v: v[0], m)
        ref = ref_states[i]
        chex.assert_trees_all_close(
            key_data(state.model_state), key_data(ref.model_state), rtol=1e-4, atol=1e-5
        )
        chex.assert_trees_all_close(state.params, ref.params, rtol=1e-4, atol=1e-5)
        chex.assert_trees_all_close(m, ref_metrics[i], rtol=1e-4, atol=1e-5)
        chex.assert_trees_all_equal(_masks(state), _masks(ref))
    if name in STATEFUL:  # the statistics did move: the comparison is not of constants
        start = jax.tree.leaves(f.model_state)
        assert any(
            not np.allclose(a, b)
            for a, b in zip(start, jax.tree.leaves(state.model_state), strict=True)
        )


# --------------------------------------------------------------------------- bad input


def _noop(state, teacher_params, batch):
    return state, {}


def test_bad_arguments_are_named():
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match=r"'inputs' has 12 rows.*'data' axis of size 8"):
        parallel.data_parallel(_noop, mesh)({}, {}, {"inputs": np.zeros((12, 64), np.float32)})
    with pytest.raises(ValueError, match=r"'s' is a scalar.*'data' axis of size 8"):
        parallel.shard_map_step(_noop, mesh)({}, {}, {"s": np.float32(1.0)})
    with pytest.raises(ValueError, match="data_axis 'rows'"):
        parallel.data_parallel(_noop, mesh, data_axis="rows")
    with pytest.raises(ValueError, match="axis_name 'batch'"):
        parallel.shard_map_step(
            _noop, jax.sharding.Mesh(mesh.devices, ("x", "y")), axis_name="batch"
        )
    built = lc.train.make_step(lambda p, x: x, None, optax.sgd(0.1), lc.identity(), alpha=0.0)
    with pytest.raises(ValueError, match="built without axis_name"):
        parallel.pmap_step(built)
    named = lc.train.make_step(
        lambda p, x: x, None, optax.sgd(0.1), lc.identity(), alpha=0.0, axis_name="batch"
    )
    with pytest.raises(ValueError, match=r"averages over axis_name='batch'.*'data'"):
        parallel.shard_map_step(named, mesh, axis_name="data")
    with pytest.raises(TypeError, match="step must be callable"):
        parallel.pmap_step(None)
    with pytest.raises(TypeError, match="step must be callable"):
        parallel.data_parallel("step", mesh)
    with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh"):
        parallel.shard_map_step(_noop, [jax.devices()])
    with pytest.raises(TypeError, match="axis_name must be a string"):
        parallel.pmap_step(_noop, axis_name=0)
    with pytest.raises(TypeError, match="donate must be True or False"):
        parallel.data_parallel(_noop, mesh, donate="yes")
