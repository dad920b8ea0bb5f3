"""A direct NumPy implementation of the quantization conventions, shared by the quant tests."""

import numpy as np
import pytest


def kept(axis, nd):
    """The kept axes of ``axis`` (None, an int or a tuple), non-negative."""
    if axis is None:
        return set()
    return {a % nd for a in (axis if isinstance(axis, tuple) else (axis,))}


def grouped(x, axis, group_size, group_axis):
    """``x`` in its grouped view and the kept axes of that view."""
    nd = x.ndim
    if group_size is None:
        return x, kept(axis, nd)
    gax = (group_axis if group_axis is not None else (-2 if nd >= 2 else 0)) % nd
    xg = x.reshape((*x.shape[:gax], x.shape[gax] // group_size, group_size, *x.shape[gax + 1 :]))
    return xg, {gax} | {a + (a > gax) for a in kept(axis, nd)}


def np_quant(x, bits, symmetric=True, axis=None, group_size=None, group_axis=None, rng=None):
    """The contract's conventions, in float32 NumPy. Returns (x_hat, codes, scale, zero_point)."""
    x = np.asarray(x, np.float32)
    xg, keep = grouped(x, axis, group_size, group_axis)
    red = tuple(i for i in range(xg.ndim) if i not in keep)
    if rng is None:
        lo, hi = xg.min(axis=red, keepdims=True), xg.max(axis=red, keepdims=True)
    else:
        lo, hi = (np.asarray(r, np.float32) for r in rng)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax
        scale = np.maximum(np.abs(lo), np.abs(hi)) / np.float32(qmax)
        zp = np.zeros_like(scale)
    else:
        qmin, qmax = 0, 2**bits - 1
        lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
        scale = (hi - lo) / np.float32(qmax)
        zp = np.round(-lo / scale)
    q = np.clip(np.round(xg / scale) + zp, qmin, qmax).astype(np.float32)
    x_hat = ((q - zp) * scale).astype(np.float32)
    return x_hat.reshape(x.shape), q.reshape(x.shape), scale, zp


class Reference:
    """The NumPy reference, as one fixture."""

    grouped = staticmethod(grouped)
    kept = staticmethod(kept)
    quant = staticmethod(np_quant)


@pytest.fixture(scope="session")
def ref():
    return Reference
