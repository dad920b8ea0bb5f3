"""The notebooks run from top to bottom in a fresh kernel, and are committed without outputs.

Each notebook executes with nbclient in a new ``python3`` kernel, with the
notebooks folder as its working directory. The kernel is this interpreter
(the virtual environment the tests run in): a ``python3`` kernel spec naming
``sys.executable`` is put first on ``JUPYTER_PATH``, so that a spec installed
elsewhere for another Python cannot be picked up. Any error in any cell fails
the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
CELL_TIMEOUT_S = 120


def test_the_notebooks_are_there():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06"], IDS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_with_outputs_cleared(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory):
    """A folder holding a ``python3`` kernel spec for this interpreter."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"})
    )
    return root


def test_kernel_is_this_interpreter(kernel_dir, monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager

    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable


@pytest.fixture(scope="module")
def executed(kernel_dir):
    """Every notebook run in its own fresh kernel, two at a time; name -> notebook or exception.

    The kernels are separate processes, so two notebooks share a 2-core machine's cores.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(kernel_dir))
        # A fresh kernel inherits this environment; each notebook sets up JAX's devices
        # itself (03 asks for 8 host devices in its first cell), so the tests' flags go.
        mp.delenv("XLA_FLAGS", raising=False)
        mp.setenv("JAX_PLATFORMS", "cpu")
        mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        return asyncio.run(_execute_all(NOTEBOOKS, parallel=min(2, os.cpu_count() or 1)))


async def _execute_all(paths, parallel):
    gate = asyncio.Semaphore(parallel)

    async def one(path):
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            timeout=CELL_TIMEOUT_S,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        async with gate:
            try:
                await client.async_execute()  # raises CellExecutionError at a failing cell
            except Exception as e:  # reported by the notebook's own test
                return e
        return nb

    results = await asyncio.gather(*(one(p) for p in paths))
    return {p.stem: r for p, r in zip(paths, results, strict=True)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_executes(path, executed):
    nb = executed[path.stem]
    if isinstance(nb, Exception):
        raise nb
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{path.name} shows no plot"
