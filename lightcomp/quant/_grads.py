"""Gradient quantization for compressed all-reduces (one scale per leaf, stochastic rounding)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree
from lightcomp._checks import check_finite, check_floating, check_key
from lightcomp.quant._numerics import check_bits, codes, int_dtype, levels
from lightcomp.quant._qtensor import QTensor, dequantize

PyTree = Any


def _check_leaves(grads: PyTree) -> None:
    for path, leaf in tree.leaves_with_paths(grads, argname="grads"):
        check_floating(leaf, "grads", path=path)
        check_finite(leaf, "grads", path=path)


@functools.partial(jax.jit, static_argnames=("bits",))
def _amax_scale(g, *, bits):
    return jnp.max(jnp.abs(g)).astype(jnp.float32) / levels(bits, True)[1]


def grad_scales(grads: PyTree, bits: int) -> PyTree:
    """Per-leaf symmetric scales ``max|g| / qmax`` (float32 scalars), for `quantize_grads`.

    For an all-reduce every device must use the same scale: take
    ``jax.lax.pmax(grad_scales(grads, bits), axis_name)`` and pass it as ``scales``.

    Args:
      grads: pytree of floating arrays (None leaves are kept).
      bits: 2..16.

    Returns:
      A tree of float32 scalars with ``grads``'s structure.

    Raises:
      ValueError / TypeError: bad ``bits``, a non-float leaf, NaN/inf in a concrete leaf
        (names its path).
    """
    bits = check_bits(bits)
    _check_leaves(grads)
    return jax.tree.map(lambda g: _amax_scale(g, bits=bits), grads)


@functools.partial(jax.jit, static_argnames=("bits",))
def _grad_codes(g, scale, key, *, bits):
    q, _ = codes(g.astype(jnp.float32), scale, jnp.zeros_like(scale), bits, True, "stochastic", key)
    return q.astype(int_dtype(bits, True))


def quantize_grads(
    grads: PyTree, bits: int, key: jax.Array, *, scales: PyTree | None = None
) -> PyTree:
    """Quantizes each gradient leaf to ``bits`` with one scale and unbiased stochastic rounding.

    ``E[dequantize(q)] = g`` whenever ``|g| <= qmax * scale`` (always true for the leaf's own
    scale, and for a scale taken as the max over devices), so the compressed all-reduce is
    unbiased. The codes of several devices sharing ``scales`` can be summed in int32.

    Args:
      grads: pytree of floating arrays (None leaves are kept).
      bits: 2..16.
      key: PRNG key; each leaf uses ``fold_in(key, leaf_index)``.
      scales: optional tree of float32 scalars mirroring ``grads`` (see `grad_scales`).

    Returns:
      A tree of `QTensor` (symmetric, per tensor) with ``grads``'s structure.

    Raises:
      ValueError: bad ``bits``, a missing key, a non-float leaf, NaN/inf in a concrete leaf
        (names its path), ``scales`` that do not mirror ``grads``.

    References:
      Alistarh et al. 2017 (QSGD); Gupta et al. 2015 (stochastic rounding).
    """
    bits = check_bits(bits)
    if key is None:
        raise ValueError("quantize_grads needs a PRNG key (stochastic rounding)")
    check_key(key)
    _check_leaves(grads)
    if scales is None:
        scales = jax.tree.map(lambda g: _amax_scale(g, bits=bits), grads)
    leaves, treedef = jax.tree.flatten(grads)
    try:
        s_leaves = treedef.flatten_up_to(scales)
    except (ValueError, TypeError) as e:
        where = tree.first_mismatch(grads, scales)
        raise ValueError(f"scales does not mirror grads (first difference: {where!r}): {e}") from e
    paths = [p for p, _ in tree.leaves_with_paths(grads, argname="grads")]
    s_leaves = [jnp.asarray(s, jnp.float32) for s in s_leaves]
    for path, s in zip(paths, s_leaves, strict=True):
        if s.shape != ():
            raise ValueError(f"scales leaf {path!r} must be a scalar, got shape {s.shape}")
    out = []
    for i, (g, s) in enumerate(zip(leaves, s_leaves, strict=True)):
        values = _grad_codes(g, s, jax.random.fold_in(key, i), bits=bits)
        out.append(QTensor(values, s, None, bits, True, None, None, None, np.dtype(g.dtype)))
    return jax.tree.unflatten(treedef, out)


def dequantize_grads(qgrads: PyTree) -> PyTree:
    """Inverse of `quantize_grads`: a tree of `QTensor` -> a tree of arrays."""
    return jax.tree.map(dequantize, qgrads, is_leaf=lambda x: isinstance(x, QTensor))
