"""Tests of the ``lightcomp`` command and of the demo job in a reduced configuration."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from lightcomp import cli, data, demo, demo_cnn, export, models, train


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "small.lcpk"
    cfg = demo.DemoConfig(
        sparsity=0.8, bits=4, clusters=8, steps=12, out=str(out), teacher=(24,), progress=False
    )
    return cfg, demo.run(cfg)


def test_demo_loaded_model_matches_in_memory_one(small_run):
    cfg, result = small_run
    assert [r["stage"] for r in result["rows"]] == [
        "float teacher", "float student", "prune", "share", "quantize",
    ]  # fmt: skip
    assert result["bit_exact"]
    assert result["loaded_accuracy"] == result["final_accuracy"]
    # re-evaluate the file independently of the demo
    apply, _ = models.init_mlp((*cfg.teacher, 10), 64, jax.random.key(0))
    loaded = export.unpack(export.load(cfg.out))
    ds = data.load_digits(seed=cfg.seed)
    acc = train.evaluate(apply, loaded, (ds.x_test, ds.y_test))["accuracy"]
    assert acc == result["final_accuracy"]
    assert os.path.getsize(cfg.out) == result["file_bytes"] == result["report"]["file_bytes"]


def test_demo_rows_are_consistent(small_run):
    cfg, result = small_run
    rows = result["rows"]
    n_student = 64 * 24 + 24 + 24 * 10 + 10
    final = rows[-1]
    assert final["ratio_vs_student"] == pytest.approx(4 * n_student / final["bytes"])
    assert final["sparsity"] >= 0.8 * (64 * 24 + 240) / n_student - 1e-6
    assert final["bytes"] < rows[1]["bytes"] / 4  # compressed student far under the float one
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    loaded = export.unpack(export.load(cfg.out))
    kernel = np.asarray(loaded["Dense_0"]["kernel"])
    assert len(np.unique(kernel[kernel != 0])) <= cfg.clusters


def _run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--sparsity", "1.5"], "--sparsity"),
        (["demo", "--bits", "0"], "--bits"),
        (["demo", "--clusters", "1"], "--clusters"),
        (["demo", "--steps", "0"], "--steps"),
        (["demo", "--bits", "four"], "invalid int"),
        (["demo", "--out", "/no/such/dir/m.lcpk"], "--out"),
        (["demo", "--devices", "3"], "--devices"),
        (["demo", "--devices", "0"], "--devices"),
        (["demo", "--seed", "-1"], "--seed must be in 0..4294967295"),
        (["demo", "--seed", str(2**32)], "--seed"),
        (["demo", "--steps", "2.5"], "invalid int value: '2.5'"),
        (["demo", "--sparsity", "nan"], "--sparsity must be finite"),
        (["demo", "--sparsity", "inf"], "--sparsity"),
        (["demo", "--sparsity"], "expected one argument"),
        (["demo", "--clusters", "257"], "--clusters"),
        (["demo", "--bits", "17"], "--bits"),
        (["demo", "--out", ""], "is a directory"),
        (["demo", "--frobnicate"], "unrecognized arguments"),
        (["inspect"], "the following arguments are required: file"),
        (["inspect", "/dev/null"], "not a lightcomp"),
        (["inspect", "/"], "is a directory"),
        (["inspect", "/no/such/file.lcpk"], "No such file"),
        (["frobnicate"], "invalid choice"),
        (["demo", "--model", "resnet"], "invalid choice: 'resnet'"),
    ],
)
def test_bad_arguments_one_line_exit_2(argv, message, capsys):
    code, out, err = _run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("lightcomp: error:") and message in err, err
    assert "Traceback" not in out + err


def test_unwritable_out(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # running as root: permissions are not enforced
            pytest.skip("directory permissions are not enforced for this user")
        code, _, err = _run(["demo", "--out", str(ro / "m.lcpk")], capsys)
        assert code == 2 and "not writable" in err
    finally:
        ro.chmod(0o700)
    code, _, err = _run(["demo", "--out", str(tmp_path)], capsys)
    assert code == 2 and "directory" in err


def test_help_explains_every_option(capsys):
    code, out, _ = _run(["demo", "--help"], capsys)
    assert code == 0
    for opt in ("--model", "--sparsity", "--bits", "--clusters", "--steps", "--seed", "--out",
                "--devices"):  # fmt: skip
        assert opt in out
    assert "{mlp,cnn" in out
    code, out, _ = _run([], capsys)
    assert code == 0 and "demo" in out


def test_inspect_prints_report_and_rejects_bad_file(small_run, tmp_path, capsys):
    cfg, result = small_run
    code, out, _ = _run(["inspect", cfg.out], capsys)
    assert code == 0 and "Dense_0" in out and f"{result['file_bytes']:,}" in out
    bad = tmp_path / "bad.lcpk"
    bad.write_bytes(b"hello")
    code, _, err = _run(["inspect", str(bad)], capsys)
    assert code == 2 and "not a lightcomp" in err


def test_cli_dispatches_on_model(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake_run(cfg, on_stage=None):
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(demo_cnn, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["demo", "--model", "cnn", "--steps", "2"])
    assert seen["cfg"].out == "digits_cnn.lcpk" and seen["cfg"].steps == 2
