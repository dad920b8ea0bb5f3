"""Views of a leaf's values that make no copy of the leaf: ``-0`` read as ``+0``, lazy raw bytes.

A leaf with negative zeros is coded as its values with ``+0`` in their place plus the
positions of the ``-0`` (`lightcomp.export._leaf`). `PlusZero` reads the leaf that way a
slice at a time, so the coders never hold a cleaned copy of all of it; `LazyBytes` is
the raw part of such values, made only when a coder or the verification needs it.
"""

from __future__ import annotations

import numpy as np


class PlusZero:
    """The values of a 1-D float array ``x`` with every ``-0`` read as ``+0``.

    Indexing (a slice, a step, an index array) returns a new array; ``dtype``, ``size``
    and ``shape`` are those of ``x``.
    """

    def __init__(self, x: np.ndarray):
        self._x = x
        self.dtype, self.size, self.shape = x.dtype, x.size, x.shape

    def __getitem__(self, key) -> np.ndarray:
        c = self._x[key]
        return np.where(c == 0, np.zeros((), c.dtype), c)


class LazyBytes:
    """The bytes of ``values`` (an array or a `PlusZero`) cast to ``dt``, made on demand.

    ``len`` is known without them; ``[lo:hi]`` makes only that range; `materialize`
    makes all of them.
    """

    def __init__(self, values, dt: np.dtype):
        self._values, self._dt = values, np.dtype(dt)

    def __len__(self) -> int:
        return self._values.size * self._dt.itemsize

    def __getitem__(self, key: slice) -> bytes:
        lo, hi, step = key.indices(len(self))
        size = self._dt.itemsize
        first = lo // size
        data = self._values[first : -(-hi // size)].astype(self._dt).tobytes()
        return data[lo - first * size : hi - first * size : step]

    def materialize(self) -> memoryview:
        """All the bytes (a view of one new array, filled a chunk at a time)."""
        out = np.empty(self._values.size, self._dt)
        step = 1 << 16
        for lo in range(0, out.size, step):
            out[lo : lo + step] = self._values[lo : lo + step]
        return memoryview(out.view(np.uint8))


def materialized(parts: list) -> list:
    """``parts`` with every `LazyBytes` made into its bytes."""
    return [p.materialize() if isinstance(p, LazyBytes) else p for p in parts]
