"""The README's code blocks run as written (composition, by hand, many devices)."""

import os
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_code_blocks_run(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 5, "composition, by hand, own loop (TrainState, nnx), many devices"
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the checkpoint block writes ./ckpt
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    accuracy = float(re.search(r"'accuracy': ([0-9.]+)", printed).group(1))
    assert accuracy > 0.9, printed
    assert namespace["history"][-1]["sparsity"] > 0.89
    # by hand: 90% of the kernel zero, zeros kept through sharing and quantization
    w8 = np.asarray(namespace["w8"])
    assert np.mean(w8 == 0.0) >= 0.89
    # per output channel: at most the 16 shared values, each on that channel's 8-bit grid
    assert max(len(np.unique(w8[:, j])) for j in range(w8.shape[1])) <= 16
    # your own loop: 80% of every kernel exactly zero after 200 steps, TrainState and nnx
    ts = namespace["ts"]
    for path, w in [("Dense_0", ts.params["Dense_0"]["kernel"])]:
        assert abs(np.mean(np.asarray(w) == 0.0) - 0.8) < 0.01, path
    for layer in namespace["model"].layers:
        assert abs(np.mean(np.asarray(layer.kernel[...]) == 0.0) - 0.8) < 0.01
    # integer serving: the packed student on int8 codes keeps its accuracy
    assert namespace["served_acc"] > 0.9
    assert namespace["qparams"]["Dense_0"]["kernel"].values.dtype == np.int8
    # many devices: the restored state is the last saved one
    assert namespace["state"].params is not None and (tmp_path / "ckpt").exists()
