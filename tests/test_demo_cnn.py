"""lightcomp/demo_cnn.py: the CNN demo folds BatchNorm and writes a file that serves alone."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lightcomp import data, demo, demo_cnn, export, models, serve, train


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_cnn") / "cnn.lcpk"
    cfg = demo.DemoConfig(
        sparsity=0.5, bits=4, clusters=8, steps=4, out=str(out), teacher=(4, 8), progress=False
    )
    return cfg, demo_cnn.run(cfg)


def test_cnn_demo_folds_batchnorm_and_serves_from_the_file(cnn_run):
    cfg, result = cnn_run
    rows = result["rows"]
    assert [r["stage"] for r in rows] == [
        "float teacher", "float student", "prune", "fold BN", "share", "quantize",
    ]  # fmt: skip
    assert result["bit_exact"] and result["loaded_accuracy"] == result["final_accuracy"]
    n_float = 3 * 3 * 4 + 3 * 3 * 4 * 8 + 4 * 4 * 8 * 10 + 10 + 4 * (4 + 8)  # + BN scale/bias/stats
    assert rows[1]["ratio_vs_student"] == pytest.approx(4 * n_float / rows[1]["bytes"])
    assert rows[-1]["bytes"] < rows[1]["bytes"] / 4
    # the file holds the folded net alone: no BatchNorm, every conv with its bias
    loaded = export.unpack(export.load(cfg.out))
    assert sorted(loaded) == ["Conv_0", "Conv_1", "Dense_0"] and "bias" in loaded["Conv_0"]
    ds = data.load_digits(seed=cfg.seed, image=True)
    plain = models.DigitsCNN((4, 8), batch_norm=False)
    acc = train.evaluate(lambda p, x: plain.apply({"params": p}, x), loaded, (ds.x_test, ds.y_test))
    assert acc["accuracy"] == result["final_accuracy"]
    y = jax.jit(serve.linen(plain))(serve.from_packed(export.load(cfg.out)), ds.x_test[:16])
    want = plain.apply({"params": loaded}, ds.x_test[:16])  # integer dots ~ the float forward
    np.testing.assert_allclose(y, want, atol=0.05 * float(np.max(np.abs(want))))


def test_fold_stage_keeps_the_zeros_and_drops_the_norms(cnn_run):
    _, result = cnn_run
    prune_row, fold_row = result["rows"][2:4]
    assert fold_row["sparsity"] >= prune_row["sparsity"] - 1e-6  # pruned zeros stay zero
    assert fold_row["bytes"] < prune_row["bytes"]  # no BatchNorm parameters or statistics
