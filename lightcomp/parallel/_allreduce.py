"""A compressed gradient all-reduce: integer codes summed over devices, and its byte count.

`compressed_pmean` is an all-reduce of gradients quantized with
`lightcomp.quant.quantize_grads` (unbiased stochastic rounding, one scale per leaf shared
by all devices through a ``pmax``, integer codes summed in the narrowest integer type that
cannot overflow); `allreduce_bytes` says how many bytes that saves.

References:
  Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient Quantization and
  Encoding", 2017.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lightcomp import quant, tree
from lightcomp._checks import check_int, check_key

PyTree = Any


def _check_axis_name(axis_name: Any) -> None:
    if not isinstance(axis_name, str):
        raise TypeError(f"axis_name must be a string, got {axis_name!r}")


def _wire_dtype(bits: int, n: int) -> np.dtype:
    """The narrowest signed integer type that holds a sum of ``n`` codes in ``[-qmax, qmax]``."""
    _, qmax = quant.qrange(bits)
    bound = int(qmax) * int(n)
    for dt in (np.int8, np.int16, np.int32):
        if bound <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise ValueError(f"a sum of {n} codes of {bits} bits does not fit in int32")


def _pmean(grads: PyTree, axis_name: str, bits: int, key: jax.Array) -> PyTree:
    """`compressed_pmean` on checked arguments."""
    n = lax.axis_size(axis_name)
    wire = _wire_dtype(bits, n)
    # Work on the flat list of array leaves: None leaves (state-shaped gradient trees)
    # drop out of the flattening and come back with the unflattening.
    flat_g, treedef = jax.tree.flatten(grads)
    scales = lax.pmax(quant.grad_scales(flat_g, bits), axis_name)
    key = jax.random.fold_in(key, lax.axis_index(axis_name))
    qgrads = quant.quantize_grads(flat_g, bits, key, scales=scales)

    def reduce(g, q, s):
        total = lax.psum(q.values.astype(wire), axis_name)
        return (total.astype(jnp.float32) * (s / n)).astype(g.dtype)

    out = [reduce(g, q, s) for g, q, s in zip(flat_g, qgrads, scales, strict=True)]
    return jax.tree.unflatten(treedef, out)


def compressed_pmean(grads: PyTree, axis_name: str, bits: int, key: jax.Array) -> PyTree:
    """Mean of ``grads`` over ``axis_name`` through quantized integer codes (inside pmap/shard_map).

    Each device quantizes its gradients with `lightcomp.quant.quantize_grads` to
    ``bits`` with one scale per leaf, ``scale = pmax_devices(max|g|) / qmax`` (shared, so
    codes add up), and unbiased stochastic rounding with a per-device key; the codes are
    summed with ``lax.psum`` in the narrowest integer type that cannot overflow
    (``n * qmax`` must fit), and ``sum * scale / n`` is the mean. Every device gets the
    same result, and ``E[result] = pmean(grads)``.

    Args:
      grads: pytree of floating arrays (None leaves kept).
      axis_name: the mapped axis.
      bits: 2..16 bits per code.
      key: a PRNG key; folded with the device index.

    Returns:
      The averaged gradients, dtypes of ``grads``.

    Raises:
      TypeError: ``axis_name`` not a string, ``bits`` not an int, ``key`` not a PRNG key.
      ValueError: ``bits`` outside 2..16.

    References:
      Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient Quantization and
      Encoding", 2017.
    """
    _check_axis_name(axis_name)
    bits = check_int(bits, "bits", lo=2, hi=16)
    check_key(key)
    return _pmean(grads, axis_name, bits, key)


def compressed_mean(axis_name: str, bits: int = 8) -> Callable[[PyTree, jax.Array], PyTree]:
    """``reduce(grads, key) -> grads``: `compressed_pmean` with its configuration bound.

    The form a step's gradient all-reduce hook takes in place of ``lax.pmean``
    (``lightcomp.train.make_step(..., grad_reduce=compressed_mean("batch"))``).

    Args:
      axis_name: the mapped axis.
      bits: 2..16 bits per code.

    Returns:
      ``reduce(grads, key)``, the mean of ``grads`` over ``axis_name``.

    Raises:
      TypeError: ``axis_name`` not a string, ``bits`` not an int.
      ValueError: ``bits`` outside 2..16.
    """
    _check_axis_name(axis_name)
    bits = check_int(bits, "bits", lo=2, hi=16)

    def reduce(grads, key):
        return _pmean(grads, axis_name, bits, key)

    return reduce


def allreduce_bytes(grads: PyTree, n_devices: int, bits: int | None = None) -> dict[str, Any]:
    """Bytes one device contributes to a gradient all-reduce, plain and compressed.

    Plain: each leaf in its own dtype. Compressed (`compressed_pmean` with ``bits``): each
    leaf's codes in the integer type the sum travels in, plus one float32 scale per
    leaf for the ``pmax``. (A ring all-reduce moves about twice this per device.)

    Args:
      grads: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. the params).
      n_devices: devices in the all-reduce (sets the integer width of the sums).
      bits: code width, or None for the plain figure only.

    Returns:
      ``{"float_bytes", "compressed_bytes", "saved_bytes", "ratio", "wire_dtype"}``
      (the last four None when ``bits`` is None).

    Raises:
      TypeError: ``n_devices`` or ``bits`` not an int, a leaf that is not an array.
      ValueError: ``n_devices`` < 1, ``bits`` outside 2..16.

    Example:
      >>> g = {"w": jnp.zeros((4, 8)), "b": jnp.zeros(8)}
      >>> r = lc.parallel.allreduce_bytes(g, n_devices=8, bits=4)
      >>> r["float_bytes"], r["compressed_bytes"], r["wire_dtype"]
      (160, 48, 'int8')
    """
    n_devices = check_int(n_devices, "n_devices", lo=1)
    if bits is not None:
        bits = check_int(bits, "bits", lo=2, hi=16)
    leaves = [x for _, x in tree.leaves_with_paths(grads, argname="grads")]
    plain = sum(math.prod(np.shape(x)) * jnp.dtype(x.dtype).itemsize for x in leaves)
    out: dict[str, Any] = {
        "float_bytes": int(plain),
        "compressed_bytes": None,
        "saved_bytes": None,
        "ratio": None,
        "wire_dtype": None,
    }
    if bits is None:
        return out
    wire = _wire_dtype(bits, n_devices)
    comp = sum(math.prod(np.shape(x)) * wire.itemsize + 4 for x in leaves)
    out.update(
        compressed_bytes=int(comp),
        saved_bytes=int(plain - comp),
        ratio=plain / comp if comp else None,
        wire_dtype=str(wire),
    )
    return out
