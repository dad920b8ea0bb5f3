"""The shared eager checks: one place for every argument check the public API makes.

Static configuration (bits, k, sparsities known in advance, granularities) is checked
once, in the constructor or public entry point a user calls; inner numerical functions
trust their callers. Value checks on arrays (finiteness) are made only on concrete
arrays: under ``jit`` they are skipped, never turned into a host sync.

Every error names the argument (and the leaf path where there is one). Booleans are
not numbers and strings are not booleans: ``True`` is refused where an int or a float
is expected, ``"no"`` where a bool is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

T = TypeVar("T")


def is_traced(x: Any) -> bool:
    """True when ``x`` (a leaf or a pytree) holds a JAX tracer, i.e. its values are unknown."""
    # chex's asserts_internal.has_tracers does the same, but chex keeps it private.
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def at(path: str | None) -> str:
    """`` at leaf 'Dense_0/kernel'`` (or nothing), to follow an argument's name in a message."""
    return f" at leaf {path!r}" if path else ""


def check_int(
    value: Any,
    argname: str,
    *,
    lo: int | None = None,
    hi: int | None = None,
    path: str | None = None,
) -> int:
    """A Python (or NumPy) integer in ``[lo, hi]``; a bool or a float is a TypeError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argname}{at(path)} must be an int, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            bound = f"in {lo}..{hi}"
        elif lo is not None:
            bound = f">= {lo}"
        else:
            bound = f"<= {hi}"
        raise ValueError(f"{argname}{at(path)} must be {bound}, got {value}")
    return value


def check_opt_int(value: Any, argname: str, *, lo: int | None = None) -> int | None:
    """None, or an int as `check_int`."""
    return None if value is None else check_int(value, argname, lo=lo)


def check_bool(value: Any, argname: str) -> bool:
    """True or False (NumPy bools accepted); anything else, strings included, is a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{argname} must be True or False, got {value!r}")
    return bool(value)


def check_choice(value: Any, choices: Sequence[str], argname: str) -> str:
    """One of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{argname} must be one of {list(choices)}, got {value!r}")
    return value


def check_number(
    value: Any,
    argname: str,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    path: str | None = None,
) -> float:
    """A finite real scalar in the given interval, as a Python float.

    Python and NumPy numbers and 0-d concrete arrays are accepted; bools, strings and
    arrays of other shapes are a TypeError; NaN, inf or a value outside the bounds a
    ValueError.
    """
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise TypeError(f"{argname}{at(path)} must be a number, got {value!r}")
    if isinstance(value, (jax.Array, np.ndarray, np.generic)):
        if np.ndim(value) != 0 or not (
            jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)
        ):
            raise TypeError(f"{argname}{at(path)} must be a real scalar, got {value!r}")
    elif not isinstance(value, (int, float)):
        raise TypeError(f"{argname}{at(path)} must be a number, got {type(value).__name__}")
    x = float(value)
    low_bad = lo is not None and (x <= lo if lo_open else x < lo)
    high_bad = hi is not None and (x >= hi if hi_open else x > hi)
    if not math.isfinite(x) or low_bad or high_bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ValueError(f"{argname}{at(path)} must be finite and in {span}, got {x}")
    return x


def check_fraction(value: Any, argname: str, *, allow_one: bool = False, path=None) -> Any:
    """A sparsity-like fraction in ``[0, 1)`` (``[0, 1]`` with ``allow_one``); traced passes."""
    if is_traced(value):
        return value  # a schedule's value under jit cannot be checked here
    return check_number(value, argname, lo=0.0, hi=1.0, hi_open=not allow_one, path=path)


def check_floating(x: Any, argname: str, *, path: str | None = None) -> None:
    """``x`` must be a floating-point array (float16, bfloat16, float32, float64, float8)."""
    if not hasattr(x, "dtype") or not jnp.issubdtype(x.dtype, jnp.floating):
        dtype = getattr(x, "dtype", type(x).__name__)
        raise TypeError(f"{argname}{at(path)} must be a floating-point array, got {dtype}")


def check_finite(x: Any, argname: str, *, path: str | None = None, why: str = "") -> None:
    """Raises ValueError if a concrete ``x`` holds NaN or inf; skipped when traced.

    Inside ``jit`` values are the caller's to check (e.g. with ``jax.experimental.checkify``):
    a check there would be a host sync.
    """
    if is_traced(x):
        return
    # NumPy, not jnp: an eager jnp reduction compiles again for every new shape.
    a = np.asarray(x)
    if a.dtype.kind not in "fc":
        a = a.astype(np.float32)  # bfloat16 and float8 (ml_dtypes) through float32
    bad = ~np.isfinite(a)
    count = int(bad.sum())
    if count:
        first = int(np.argmax(bad.reshape(-1)))
        tail = f"; {why}" if why else ""
        raise ValueError(
            f"{argname}{at(path)} has {count} NaN/inf value(s) (first at flat index {first}){tail}"
        )


def norm_axis(axis: Any, ndim: int, argname: str = "axis", *, path: str | None = None):
    """``axis`` in ``[-ndim, ndim)`` as a non-negative int; None stays None."""
    if axis is None:
        return None
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{argname}{at(path)} must be an int or None, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{argname}{at(path)}={axis} is out of range for an array of rank {ndim}")
    return int(axis) % ndim


def is_prng_key(x: Any) -> bool:
    """A typed key (``jax.random.key``) or a raw ``uint32[2]`` key (``jax.random.PRNGKey``)."""
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        return False
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return tuple(x.shape) == ()
    return x.dtype == jnp.uint32 and tuple(x.shape) == (2,)


def check_key(key: Any, argname: str = "key") -> None:
    """``key`` must be a single PRNG key."""
    if not is_prng_key(key):
        raise TypeError(
            f"{argname} must be a PRNG key (jax.random.key(seed)), got "
            f"{getattr(key, 'dtype', type(key).__name__)} {getattr(key, 'shape', '')}".rstrip()
        )


def check_callable(fn: Any, argname: str, *, optional: bool = False) -> None:
    if fn is None and optional:
        return
    if not callable(fn):
        extra = " or None" if optional else ""
        raise TypeError(f"{argname} must be callable{extra}, got {type(fn).__name__}")


def check_path(value: Any, argname: str = "path") -> str:
    """A file-system path (a ``str`` or ``os.PathLike``) as a ``str``; an int (a file
    descriptor to ``os``), bytes or None is a TypeError."""
    if isinstance(value, str) or (isinstance(value, os.PathLike) and not isinstance(value, bytes)):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    raise TypeError(f"{argname} must be a str or os.PathLike, got {type(value).__name__}")


def with_path(path: str, fn: Callable[[], T]) -> T:
    """Runs ``fn``; a ValueError or TypeError it raises gets ``leaf 'path': `` in front."""
    try:
        return fn()
    except (ValueError, TypeError) as e:
        raise type(e)(f"leaf {path!r}: {e}") from e
