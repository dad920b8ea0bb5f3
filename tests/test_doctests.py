"""Every docstring example in the package runs, as a doctest, with only the usual names predefined."""

import doctest
import importlib
import pkgutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lightcomp

_SKIP = {"lightcomp.__main__", "lightcomp.cli"}
MODULES = sorted(
    m.name for m in pkgutil.walk_packages(lightcomp.__path__, "lightcomp.") if m.name not in _SKIP
)


def _examples(name):
    finder = doctest.DocTestFinder(exclude_empty=True)
    module = importlib.import_module(name)
    return [t for t in finder.find(module, name) if t.examples and t.name.startswith(name)]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    globs = {"lc": lightcomp, "jax": jax, "jnp": jnp, "np": np, "optax": optax}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in _examples(name):
        test.globs = dict(globs)
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} failing docstring example(s) in {name}"


def test_every_module_is_found():
    assert "lightcomp.transform._pruning" in MODULES and "lightcomp.demo" in MODULES
