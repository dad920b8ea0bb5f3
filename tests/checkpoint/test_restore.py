"""Tests of lightcomp.checkpoint._restore: damaged data, fallback, configuration, quiet orbax."""

from __future__ import annotations

import json
import logging
import shutil

import jax
import numpy as np
import pytest

import lightcomp as lc
from lightcomp import checkpoint as ckpt
from lightcomp.checkpoint._codec import encode
from tests.checkpoint.helpers import assert_bit_exact, data_files, flip_bit, numbered_state


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A directory with steps 1, 2, 3 of `numbered_state` (copy it before damaging it)."""
    directory = tmp_path_factory.mktemp("ckpt") / "run"
    for s in (1, 2, 3):
        ckpt.save(directory, numbered_state(s), s)
    return directory


@pytest.fixture
def copy(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "run")
    return tmp_path / "run"


# A failed tensorstore read can leave a callback that fires after its event loop closed
# (inside orbax, on the error path only); it is logged, or reported to pytest's hook.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def test_single_bit_flips_in_array_data_are_caught_and_name_the_leaf(saved, tmp_path):
    """Never a silently different value: a flip is a CheckpointError, or harmless."""
    rng = np.random.default_rng(0)
    target = numbered_state(0)
    paths = {p for p, _ in lc.tree.leaves_with_paths(encode(target))}
    named = 0
    for trial in range(10):
        directory = tmp_path / f"run{trial}"
        shutil.copytree(saved, directory)
        files = data_files(directory / "3")
        assert files
        flip_bit(max(files, key=lambda f: f.stat().st_size), rng)  # the file holding the arrays
        try:
            back = ckpt.restore(directory, target)
        except ckpt.CheckpointError as e:
            assert e.damaged and e.step == 3 and str(directory) in str(e)
            if e.leaf is not None:
                assert e.leaf in paths and f"leaf {e.leaf!r}" in str(e)
                named += 1
            continue
        assert_bit_exact(back, numbered_state(3))  # the flip hit bytes no array uses
    assert named >= 5  # most flips land in the arrays, and the digest names the leaf


def test_digest_mismatch_names_directory_step_and_leaf(copy):
    for f in data_files(copy / "3"):  # every byte of every data file, one bit each
        data = bytearray(f.read_bytes())
        f.write_bytes(bytes(b ^ 0x01 for b in data))
    with pytest.raises(ckpt.CheckpointError, match=f"'{copy}' step 3") as e:
        ckpt.restore(copy, numbered_state(0))
    assert e.value.damaged and e.value.step == 3


def _damage_arrays(step_dir):
    f = max(data_files(step_dir), key=lambda f: f.stat().st_size)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))


def test_fallback_restores_the_newest_step_that_verifies(copy, caplog):
    _damage_arrays(copy / "3")
    with pytest.raises(ckpt.CheckpointError, match="step 3"):
        ckpt.restore(copy, numbered_state(0))  # no fallback: the damage is reported
    with caplog.at_level(logging.WARNING, logger="lightcomp.checkpoint"):
        back, step = ckpt.restore(copy, numbered_state(0), fallback=True, return_step=True)
    assert step == 2
    assert_bit_exact(back, numbered_state(2))
    (record,) = [r for r in caplog.records if r.name == "lightcomp.checkpoint"]
    assert record.levelno == logging.WARNING
    assert "restored step 2" in record.getMessage() and "step 3" in record.getMessage()
    assert_bit_exact(ckpt.restore(copy, numbered_state(0), fallback=True), numbered_state(2))
    # a step given: its older steps are the fallback
    assert ckpt.restore(copy, numbered_state(0), step=2, fallback=True, return_step=True)[1] == 2


def test_fallback_with_no_step_that_verifies(copy):
    for s in (1, 2, 3):
        _damage_arrays(copy / str(s))
    with pytest.raises(ckpt.CheckpointError, match=r"no step of checkpoint .* verifies") as e:
        ckpt.restore(copy, numbered_state(0), fallback=True)
    assert all(f"step {s}" in str(e.value) for s in (1, 2, 3))


def test_a_target_that_does_not_match_is_never_a_reason_to_fall_back(copy):
    other = {**numbered_state(0), "w": np.zeros((4, 4), np.float32)}
    with pytest.raises(ckpt.CheckpointError, match="step 3 does not match the target") as e:
        ckpt.restore(copy, other, fallback=True)
    assert not e.value.damaged


def _meta_file(step_dir):
    return step_dir / "meta" / "metadata"


def test_damaged_metadata_is_told_apart_from_a_mismatch(copy):
    meta = json.loads(_meta_file(copy / "3").read_text())
    meta["leaves"][0]["shape"] = [4, 4]  # readable JSON, wrong description
    _meta_file(copy / "3").write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match="metadata is damaged") as e:
        ckpt.restore(copy, numbered_state(0))
    assert e.value.damaged
    assert ckpt.restore(copy, numbered_state(0), fallback=True, return_step=True)[1] == 2
    config = copy / "2" / "config" / "metadata"
    config.write_text('{"bits": 9}')
    with pytest.raises(ckpt.CheckpointError, match="'config' item is damaged"):
        ckpt.restore_config(copy, step=2)
    assert ckpt.restore_config(copy, step=1) == {}


def test_a_newer_checkpoint_format_is_named(copy):
    meta = json.loads(_meta_file(copy / "3").read_text())
    meta["version"] = 99
    _meta_file(copy / "3").write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match=r"format 99; .*upgrade lightcomp") as e:
        ckpt.restore(copy, numbered_state(0))
    assert not e.value.damaged


def _compressed_state(transform, params):
    return {"params": params, "comp": transform.init(params, jax.random.key(1))}


def test_another_compression_configuration_is_refused_with_both_described(tmp_path):
    _, params = lc.models.init_mlp([16, 10], 32, jax.random.key(0))
    saved_t = lc.chain(lc.pruning(0.5, scope="layer"), lc.fake_quantization(8, axis=-1))
    other_t = lc.chain(lc.pruning(0.5, scope="global"), lc.fake_quantization(3, axis=None))
    state = _compressed_state(saved_t, params)
    other = _compressed_state(other_t, params)
    shapes = lambda s: [(p, np.shape(x)) for p, x in lc.tree.leaves_with_paths(s)]
    assert shapes(state) == shapes(other)  # the same tree: only the configuration differs
    ckpt.save(tmp_path, state, 1)
    with pytest.raises(ckpt.CheckpointError, match="another compression configuration") as e:
        ckpt.restore(tmp_path, other)
    message = str(e.value)
    assert "at 'comp/0'" in message
    assert "pruning(scope='layer'" in message and "pruning(scope='global'" in message
    assert not e.value.damaged
    quant_only = lc.chain(lc.pruning(0.5, scope="layer"), lc.fake_quantization(3, axis=None))
    with pytest.raises(ckpt.CheckpointError, match=r"bits=8.*the target has .*bits=3"):
        ckpt.restore(tmp_path, _compressed_state(quant_only, params))
    back = ckpt.restore(tmp_path, _compressed_state(saved_t, params))  # the same: restores
    assert back["comp"][0].fingerprint == state["comp"][0].fingerprint


def test_orbax_tracebacks_stay_off_the_terminal(copy, caplog):
    """A damaged orbax file: one clear error; orbax's own records only at DEBUG, on our logger.

    (orbax prints its records through the ``absl`` logger's handlers; none may reach them.)
    """
    (copy / "3" / "_CHECKPOINT_METADATA").write_bytes(b"\x00garbage")  # orbax logs ERRORs
    (copy / "2" / "state" / "_METADATA").write_text("{")
    with caplog.at_level(logging.DEBUG):
        assert ckpt.steps(copy) == [1, 2, 3]
        assert_bit_exact(ckpt.restore(copy, numbered_state(0)), numbered_state(3))
        with pytest.raises(ckpt.CheckpointError, match="step 2 could not be read") as e:
            ckpt.restore(copy, numbered_state(0), step=2)
    assert "\n" not in str(e.value) and len(str(e.value)) < 600
    assert not [r for r in caplog.records if r.name == "absl"]
    ours = [r for r in caplog.records if r.name == "lightcomp.checkpoint"]
    assert any("orbax: Failed to json parse" in r.getMessage() for r in ours)
    assert any(r.exc_info for r in ours)  # the read error's traceback, at DEBUG
    assert all(r.levelno == logging.DEBUG for r in ours)
