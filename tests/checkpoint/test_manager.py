"""Tests of lightcomp.checkpoint._manager: whole-DistillState save/restore with orbax, exact resume."""

import logging
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import lightcomp as lc
from lightcomp import checkpoint as ckpt
from lightcomp import parallel
from tests.checkpoint.helpers import assert_bit_exact, numbered_state

N = 3  # steps before and after the save
ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def _transform():
    # masks recomputed every 2 steps, k-means re-clustered every 2, LSQ scales learned
    return lc.chain(
        lc.transform.pruning(lc.prune.polynomial_schedule(0.2, 0.6, 0, 2 * N), update_every=2),
        lc.transform.weight_sharing(4, recluster_every=2, iters=2),
        lc.transform.fake_quantization(4, learned_scale=True),
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
        self.step_fn = lc.train.make_step(self.apply, self.t_apply, self.opt, self.transform)
        self.step = jax.jit(self.step_fn)
        rng = np.random.default_rng(0)
        self.batches = [
            {
                "inputs": rng.random((16, 64), dtype=np.float32),
                "labels": rng.integers(0, 10, 16).astype(np.int32),
            }
            for _ in range(2 * N)
        ]
        self.config = {"prune": {"final": 0.6, "every": 2}, "k": 4, "bits": 4}

    def fresh(self, seed=2):
        return self._init(jax.random.key(seed))


@pytest.fixture(scope="module")
def setup():
    return _Setup()


def _leaves(state):
    """(path, numpy value, dtype) of every leaf, typed keys as their data."""
    out = []
    for path, x in lc.tree.leaves_with_paths(state, argname="state"):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            out.append((path + "#key", np.asarray(jax.random.key_data(x)), "key"))
        else:
            out.append((path, np.asarray(x), str(x.dtype)))
    return out


def _assert_identical(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert [p for p, _, _ in la] == [p for p, _, _ in lb]
    for (p, x, dx), (_, y, dy) in zip(la, lb, strict=True):
        assert dx == dy, p
        np.testing.assert_array_equal(x, y, err_msg=p)
    chex.assert_trees_all_equal_structs(a, b)


def test_roundtrip_whole_state(setup, tmp_path):
    state = setup.fresh()
    # the compression state really holds what the checkpoint must carry
    prune_s, share_s, quant_s = state.comp_state
    assert jax.tree.leaves(prune_s.masks)[0].dtype == jnp.bool_
    assert prune_s.masks["Dense_0"]["bias"] is None  # None leaves are kept
    assert jax.tree.leaves(share_s.assignments)[0].dtype == jnp.uint8
    assert isinstance(share_s.centroids, lc.Learned) and isinstance(quant_s.scales, lc.Learned)
    assert jnp.issubdtype(state.rng.dtype, jax.dtypes.prng_key)
    # plus EMA quantization ranges and a bfloat16 leaf, in any pytree
    extra = {
        "ranges": lc.quant.ema_range_update(
            lc.quant.ema_range_init((1, 4)),
            jax.random.normal(jax.random.key(3), (5, 4)),
            0.9,
            axis=-1,
        ),
        "half": jnp.arange(6, dtype=jnp.bfloat16),
        "legacy_key": jax.random.PRNGKey(4),
    }
    full = (state, extra)
    ckpt.save(tmp_path, full, 7, config=setup.config)
    assert ckpt.latest_step(tmp_path) == 7 and ckpt.steps(tmp_path) == [7]
    target = (setup.fresh(seed=9), jax.tree.map(jnp.zeros_like, extra))
    back = ckpt.restore(tmp_path, target)
    _assert_identical(back, full)
    assert ckpt.restore_config(tmp_path) == setup.config
    # without a target: the raw tree as stored (keys as uint32 data)
    raw = ckpt.restore(tmp_path)
    np.testing.assert_array_equal(raw[0]["rng"], jax.random.key_data(state.rng))


def test_exact_resume(setup, tmp_path):
    """2N steps straight == N steps, save, restore into a fresh state, N steps."""
    straight, m_straight = setup.fresh(), []
    for b in setup.batches:
        straight, m = setup.step(straight, setup.t_params, b)
        m_straight.append(m)

    state = setup.fresh()
    for b in setup.batches[:N]:
        state, _ = setup.step(state, setup.t_params, b)
    ckpt.save(tmp_path, state, int(state.step), config=setup.config)
    saved_masks = jax.tree.map(np.asarray, lc.transform.masks_of(state.comp_state))
    saved_assignments = jax.tree.map(np.asarray, state.comp_state[1].assignments)
    del state
    resumed = ckpt.restore(tmp_path, setup.fresh(seed=5))  # another key: really overwritten
    assert int(resumed.step) == N
    m_resumed = []
    for b in setup.batches[N:]:
        resumed, m = setup.step(resumed, setup.t_params, b)
        m_resumed.append(m)

    _assert_identical(resumed, straight)
    for a, b in zip(m_resumed, m_straight[N:], strict=True):
        chex.assert_trees_all_equal(a, b)
    # masks and assignments changed after the save: the resumed part updated them
    masks = lc.transform.masks_of(straight.comp_state)["Dense_0"]["kernel"]
    assert np.mean(~np.asarray(masks)) > np.mean(~saved_masks["Dense_0"]["kernel"])
    assignments = straight.comp_state[1].assignments["Dense_1"]["kernel"]
    assert np.any(np.asarray(assignments) != saved_assignments["Dense_1"]["kernel"])


def test_mesh_sharded_resume(setup, tmp_path):
    """A state split over a (data=4, model=2) mesh resumes exactly, onto its shardings."""
    mesh = parallel.make_mesh(4, 2)
    shardings = parallel.state_shardings(setup.fresh(), mesh, min_size=64)
    step = parallel.data_parallel(setup.step_fn, mesh, state_shardings=shardings)
    run = lambda s, bs: [s := step(s, setup.t_params, b)[0] for b in bs][-1]

    straight = run(parallel.place(setup.fresh(), shardings), setup.batches)
    half = run(parallel.place(setup.fresh(), shardings), setup.batches[:N])
    ckpt.save(tmp_path, half, N)
    target = parallel.place(setup.fresh(seed=6), shardings)
    resumed = ckpt.restore(tmp_path, target)
    k = resumed.params["Dense_0"]["kernel"]
    assert k.sharding == shardings.params["Dense_0"]["kernel"]
    assert k.sharding.spec == P(None, "model")
    resumed = run(resumed, setup.batches[N:])
    _assert_identical(resumed, straight)


@pytest.mark.parametrize("layout", ["replicated", "sharded", "single"])
def test_restore_onto_current_devices(setup, tmp_path, layout):
    """Saved from 8 replicated devices; restored onto whatever layout the target has."""
    mesh8 = parallel.make_mesh()
    state = setup.fresh()
    ckpt.save(tmp_path, parallel.replicate(state, mesh8), 1)
    if layout == "replicated":
        target = parallel.replicate(setup.fresh(seed=3), parallel.make_mesh(2, 1))
    elif layout == "sharded":
        target = parallel.place(
            setup.fresh(seed=3),
            parallel.state_shardings(state, parallel.make_mesh(2, 4), min_size=64),
        )
    else:
        target = setup.fresh(seed=3)
    back = ckpt.restore(tmp_path, target)
    for b, t in zip(jax.tree.leaves(back), jax.tree.leaves(target), strict=True):
        assert b.sharding == t.sharding
    _assert_identical(back, state)


# --------------------------------------------------------------------------- manager


def test_manager_keeps_last_n_and_saves_every_k(setup, tmp_path):
    state = setup.fresh()
    with ckpt.Manager(tmp_path, max_to_keep=2, save_every=3, config=setup.config) as m:
        saved = [s for s in range(10) if m.save(s, state)]
        assert saved == [0, 3, 6, 9]
        assert m.steps() == [6, 9] and m.latest_step() == 9
        assert m.save(10, state, force=True)
        assert m.steps() == [9, 10]
        with pytest.raises(ckpt.CheckpointError, match="already holds step 10"):
            m.save(10, state, force=True)
        _assert_identical(m.restore(setup.fresh(seed=4), step=9), state)
        assert m.restore_config() == setup.config
    assert sorted(os.listdir(tmp_path)) == ["10", "9"]


def test_manager_async_save(setup, tmp_path):
    state = setup.fresh()
    m = ckpt.Manager(tmp_path, async_save=True, max_to_keep=None)
    assert m.save(1, state)
    m.wait()
    assert m.latest_step() == 1
    assert m.save(2, state)
    m.close()  # waits for the pending save
    assert ckpt.steps(tmp_path) == [1, 2]
    _assert_identical(ckpt.restore(tmp_path, setup.fresh(seed=4)), state)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"max_to_keep": 0}, ValueError, "max_to_keep"),
        ({"save_every": 0}, ValueError, "save_every"),
        ({"config": {"f": object()}}, TypeError, "JSON-serializable"),
        ({"max_to_keep": 2.0}, TypeError, "max_to_keep must be an int"),
        ({"save_every": True}, TypeError, "save_every must be an int"),
        ({"async_save": "no"}, TypeError, "async_save must be True or False"),
    ],
)
def test_manager_bad_arguments(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ckpt.Manager(tmp_path, **kwargs)


# --------------------------------------------------------------------------- failures


def _tree_snapshot(directory):
    return sorted(
        (os.path.relpath(os.path.join(r, f), directory), os.path.getsize(os.path.join(r, f)))
        for r, _, fs in os.walk(directory)
        for f in fs
    )


@pytest.fixture
def two_steps(setup, tmp_path):
    state1 = setup.fresh(seed=1)
    state2 = setup.fresh(seed=2)
    ckpt.save(tmp_path, state1, 1)
    ckpt.save(tmp_path, state2, 2)
    return tmp_path, state1, state2


@pytest.mark.parametrize("how", ["tmp_dir", "no_metadata"])
def test_killed_mid_save_falls_back_to_last_complete_step(setup, two_steps, how):
    directory, _, state2 = two_steps
    # a save of step 3 interrupted: orbax's temporary directory with half the files
    # ("tmp_dir"), or, on a file system without atomic rename, the step directory
    # without the metadata orbax writes last ("no_metadata")
    name = "3.orbax-checkpoint-tmp-1700000000" if how == "tmp_dir" else "3"
    partial = directory / name
    shutil.copytree(directory / "2", partial)
    if how == "no_metadata":
        os.remove(partial / "_CHECKPOINT_METADATA")
    shutil.rmtree(partial / "meta")
    before = _tree_snapshot(directory)
    assert ckpt.latest_step(directory) == 2
    assert ckpt.steps(directory) == [1, 2]
    _assert_identical(ckpt.restore(directory, setup.fresh(seed=7)), state2)
    with pytest.raises(ckpt.CheckpointError, match="no complete step 3"):
        ckpt.restore(directory, setup.fresh(), step=3)
    assert _tree_snapshot(directory) == before  # nothing deleted or changed


def test_killed_at_a_random_moment_of_a_save_the_last_complete_step_restores(tmp_path):
    """Three savers (``numbered_state(s)`` as step s = 1, 2, ...) killed by SIGKILL at
    random moments: each directory's newest complete step restores bit for bit."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    delays = np.random.default_rng(0).uniform(0.0, 0.8, 3)  # a save takes ~0.1 s
    runs = [tmp_path / f"run{i}" for i in range(len(delays))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.checkpoint.helpers", str(d)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for d in runs
    ]
    try:
        for p, delay in zip(procs, delays, strict=True):
            ready, _, _ = select.select([p.stdout], [], [], 300)
            assert ready and p.stdout.readline().strip() == "saved 1", "the saver did not start"
            time.sleep(delay)
            p.kill()
            p.wait()
    finally:
        for p in procs:
            p.kill()
            p.wait()
            p.stdout.close()
    # killed mid-save: orbax's temporary directory of the step being written is left
    assert any(".orbax-checkpoint-tmp" in name for d in runs for name in os.listdir(d))
    for d in runs:
        steps = ckpt.steps(d)
        assert steps == list(range(1, steps[-1] + 1))
        back, step = ckpt.restore(d, numbered_state(0), return_step=True)
        assert step == steps[-1]
        assert_bit_exact(back, numbered_state(step))


def test_empty_or_missing_directory(setup, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=f"no complete checkpoint in '{tmp_path}'"):
        ckpt.restore(tmp_path, setup.fresh())
    missing = tmp_path / "nope"
    with pytest.raises(ckpt.CheckpointError, match="does not exist") as e:
        ckpt.restore(missing, setup.fresh(), step=4)
    assert e.value.directory == str(missing) and e.value.step == 4
    assert not missing.exists()
    assert ckpt.latest_step(missing) is None and ckpt.steps(tmp_path) == []


def test_tree_mismatch_names_leaf_directory_and_step(setup, two_steps):
    directory, _, _ = two_steps
    before = _tree_snapshot(directory)
    narrow = lc.models.init_mlp([8, 10], 64, jax.random.key(0))[1]
    other = setup.fresh().replace(params=narrow)
    with pytest.raises(ckpt.CheckpointError, match=r"step 2 does not match.*'params/Dense_0/bias'"):
        ckpt.restore(directory, other)
    with pytest.raises(ckpt.CheckpointError, match=r"step 1 .*not in the checkpoint") as e:
        ckpt.restore(directory, {"state": setup.fresh(), "extra": jnp.zeros(3)}, step=1)
    assert e.value.step == 1 and str(directory) in str(e.value)
    assert _tree_snapshot(directory) == before


# A failed tensorstore read can leave a callback that fires after its event loop closed
# (inside orbax, on the error path only); it is reported as an unraisable exception.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_file_is_a_clear_error(setup, two_steps):
    directory, state1, _ = two_steps
    data = [
        os.path.join(r, f)
        for r, _, fs in os.walk(directory / "2" / "state")
        for f in fs
        if os.path.basename(r) == "d"
    ]
    assert data
    for path in data:
        with open(path, "r+b") as f:
            f.truncate(max(os.path.getsize(path) // 3, 1))
    before = _tree_snapshot(directory)
    with pytest.raises(ckpt.CheckpointError, match=f"'{directory}' step 2 could not be read"):
        ckpt.restore(directory, setup.fresh())
    assert _tree_snapshot(directory) == before
    # the older step is still there and fine
    _assert_identical(ckpt.restore(directory, setup.fresh(seed=8), step=1), state1)


def test_save_rejects_bad_step_and_config(setup, tmp_path):
    with pytest.raises(TypeError, match="step must be an int"):
        ckpt.save(tmp_path, setup.fresh(), -1)
    with pytest.raises(TypeError, match="config must be a mapping"):
        ckpt.save(tmp_path, setup.fresh(), 0, config=[1, 2])
    assert ckpt.steps(tmp_path) == []
    new = tmp_path / "new"
    with pytest.raises(TypeError, match="step must be an int"):
        ckpt.save(new, setup.fresh(), True)
    with pytest.raises(TypeError, match="leaf 'a'"):
        ckpt.save(new, {"a": "text"}, 0)
    assert not new.exists()  # refused before anything was written


# --------------------------------------------------------------------------- 0.1.0


def test_v010_checkpoint_restores(tmp_path, caplog):
    """The checkpoint 0.1.0 wrote (step 3) restores into a target built as it was then."""
    directory = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "ckpt_v010", directory)  # never restore in place
    _, s_params = lc.models.init_mlp([32, 10], 64, jax.random.key(1))
    t2 = lc.chain(
        lc.pruning(0.5), lc.weight_sharing(4), lc.fake_quantization(8, learned_scale=True)
    )
    st = lc.train.init_state(s_params, optax.adam(1e-3), t2, jax.random.key(2))
    assert ckpt.steps(directory) == [3]
    with caplog.at_level(logging.WARNING, logger="lightcomp.checkpoint"):
        back = ckpt.restore(directory, st)
    (note,) = [r.getMessage() for r in caplog.records if r.name == "lightcomp.checkpoint"]
    assert "step 3 has no content digests" in note and "restored unverified" in note
    chex.assert_trees_all_equal_structs(back, st)
    with np.load(FIXTURES / "ckpt_v010_leaves.npz") as z:
        want = {k: z[k] for k in z.files}
    got = _leaves(back)
    assert [p.removesuffix("#key") for p, _, _ in got] == list(want)
    for p, x, dtype in got:
        if p.endswith("#key"):  # the PRNG key leaf: stored in the npz as its key data
            assert jnp.issubdtype(back.rng.dtype, jax.dtypes.prng_key)
            p = p.removesuffix("#key")
        else:
            assert dtype == str(want[p].dtype), p
        assert x.dtype == want[p].dtype, p
        np.testing.assert_array_equal(x, want[p], err_msg=p)
