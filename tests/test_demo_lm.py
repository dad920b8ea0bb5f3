"""``lightcomp demo --model lm`` at tiny sizes: the table's numbers are consistent, the file loads
back bit-exact and serves as the fake-quantized forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightcomp as lc
from lightcomp import cli, demo_lm
from tests.serve.helpers import assert_close_to, linen_reference

TINY = dict(
    steps=5,
    d_model=16,
    heads=2,
    layers=1,
    seq_len=16,
    batch_size=8,
    calib_windows=16,
    train_chars=20_000,
    eval_chars=1_000,
    progress=False,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "lm.lcpk"
    return demo_lm.run(demo_lm.LMDemoConfig(out=str(out), **TINY))


def test_table_is_consistent(result):
    rows = {r["method"].strip(): r for r in result["rows"]}
    assert list(rows) == [
        "float", "magnitude 2:4", "Wanda 2:4", "SparseGPT 2:4", "RTN 4-bit", "GPTQ 4-bit",
        "SparseGPT 2:4 + GPTQ 4-bit", "+ distilled", "served (int8 activations)",
    ]  # fmt: skip
    assert rows["float"]["sparsity"] == 0
    for name in ("magnitude 2:4", "Wanda 2:4", "SparseGPT 2:4"):
        assert rows[name]["sparsity"] == 0.5  # exactly 2 of every 4 weights, every kernel
    for name in ("SparseGPT 2:4 + GPTQ 4-bit", "+ distilled"):
        assert 0.5 <= rows[name]["sparsity"] < 0.6  # and a few kept weights rounded to 0
        assert rows[name]["bytes"] < rows["SparseGPT 2:4"]["bytes"]
        assert rows[name]["bits_per_weight"] < rows["RTN 4-bit"]["bits_per_weight"]
    assert rows["RTN 4-bit"]["bits_per_weight"] < 8 < rows["float"]["bits_per_weight"]
    assert all(np.isfinite(r["perplexity"]) and r["perplexity"] > 1 for r in rows.values())
    assert result["masks_kept"] and result["bit_exact"]
    assert result["file_bytes"] == rows["+ distilled"]["bytes"]


def test_file_serves_as_the_fake_quant_forward(result):
    packed = lc.export.load(result["file"])
    np.testing.assert_array_equal(
        np.asarray(lc.export.unpack(packed)["head"]["kernel"]),
        np.asarray(result["effective"]["head"]["kernel"]),
    )
    kernel = lc.serve.from_packed(packed, int4=False)["Block_0"]["fc1"]["kernel"]
    assert isinstance(kernel, lc.quant.QTensor) and int(jnp.abs(kernel.values).max()) <= 7
    x = jax.random.randint(jax.random.key(0), (2, 16), 0, 128)
    y = jax.jit(result["served"])(result["qparams"], x)
    assert_close_to(y, linen_reference(result["model"], {"params": result["effective"]}, x))


def test_bad_options_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="d_model=24 must be a multiple of 4 \\* heads"):
        demo_lm.check_config(demo_lm.LMDemoConfig(d_model=24, heads=4, out=str(tmp_path / "a")))
    with pytest.raises(TypeError, match="--steps"):
        demo_lm.check_config(demo_lm.LMDemoConfig(steps=True, out=str(tmp_path / "a")))
    assert cli.main(["demo", "--model", "lm", "--bits", "9", "--quiet"]) == 2
