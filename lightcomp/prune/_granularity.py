"""The structure of sparsity as a value: `Element`, `Channel`, `Block`, `NM`.

Each is frozen and hashable (a static argument under ``jit``) and validated once, in its
constructor. `as_granularity` turns the string spellings (``"element"``, ``"channel"``,
``"block"`` with ``block=``, ``"n:m"`` with ``n=``/``m=``, ``"2:4"``) into these values.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from lightcomp._checks import check_choice, check_int

_NAMES = ("element", "channel", "block", "n:m")
_NM_STRING = re.compile(r"(\d+):(\d+)")


@dataclasses.dataclass(frozen=True)
class Element:
    """Each weight is ranked on its own (unstructured sparsity)."""


@dataclasses.dataclass(frozen=True)
class Channel:
    """Whole output channels (the last axis) go together, ranked by the L2 norm of their scores."""


@dataclasses.dataclass(frozen=True)
class Block:
    """``rows x cols`` tiles of the last two axes go together, ranked by their scores' L2 norm.

    Attributes:
      rows: tile size along axis ``-2`` (an int >= 1).
      cols: tile size along axis ``-1`` (an int >= 1).

    Example:
      >>> lc.prune.Block(2, 4)
      Block(rows=2, cols=4)
    """

    rows: int
    cols: int

    def __post_init__(self):
        object.__setattr__(self, "rows", check_int(self.rows, "rows", lo=1))
        object.__setattr__(self, "cols", check_int(self.cols, "cols", lo=1))


@dataclasses.dataclass(frozen=True)
class NM:
    """``n`` weights kept in every ``m`` consecutive weights along the input axis ``-2``.

    Attributes:
      n: weights kept per group, ``1 <= n <= m``.
      m: group size.

    Example:
      >>> g = lc.prune.NM(2, 4)
      >>> g, g.sparsity
      (NM(n=2, m=4), 0.5)
    """

    n: int
    m: int

    def __post_init__(self):
        object.__setattr__(self, "n", check_int(self.n, "n", lo=1))
        object.__setattr__(self, "m", check_int(self.m, "m", lo=1))
        if self.n > self.m:
            raise ValueError(f"n (weights kept, {self.n}) must be <= m (group size, {self.m})")

    @property
    def sparsity(self) -> float:
        """The fraction of weights an n:m mask zeroes, ``(m - n) / m``."""
        return (self.m - self.n) / self.m


Granularity = Element | Channel | Block | NM
_TYPES = (Element, Channel, Block, NM)


def _block(block: Any) -> Block:
    if isinstance(block, (int, np.integer)) and not isinstance(block, (bool, np.bool_)):
        return Block(block, block)
    if isinstance(block, (tuple, list)) and len(block) == 2:
        return Block(*block)
    raise ValueError(f"granularity='block' needs block = int >= 1 or (rows, cols), got {block}")


def as_granularity(
    granularity: Granularity | str,
    *,
    n: int | None = None,
    m: int | None = None,
    block: int | tuple[int, int] | None = None,
) -> Granularity:
    """A typed granularity from a typed value or its string spelling.

    Args:
      granularity: `Element()`, `Channel()`, `Block(rows, cols)`, `NM(n, m)`, or one of
        ``"element"``, ``"channel"``, ``"block"`` (with ``block``), ``"n:m"`` (with ``n``
        and ``m``), or ``"n:m"`` written with numbers (``"2:4"``).
      n: weights kept per group, with ``"n:m"`` only.
      m: group size, with ``"n:m"`` only.
      block: an int (square tiles) or ``(rows, cols)``, with ``"block"`` only.

    Returns:
      An `Element`, `Channel`, `Block` or `NM`.

    Raises:
      ValueError: an unknown name, or ``n``/``m``/``block`` given where the granularity
        takes none (or missing where it needs them).
      TypeError: ``granularity`` is neither a string nor a typed value; non-int sizes.

    Example:
      >>> lc.prune.as_granularity("n:m", n=2, m=4) == lc.prune.as_granularity("2:4")
      True
      >>> lc.prune.as_granularity("block", block=2)
      Block(rows=2, cols=2)
    """
    if isinstance(granularity, _TYPES):
        if n is not None or m is not None or block is not None:
            raise ValueError(
                f"n, m and block are for the string granularities; {granularity!r} "
                "carries its own sizes"
            )
        return granularity
    if not isinstance(granularity, str):
        raise TypeError(
            "granularity must be Element(), Channel(), Block(rows, cols), NM(n, m) or one of "
            f"{list(_NAMES)}, got {type(granularity).__name__}"
        )
    numbers = _NM_STRING.fullmatch(granularity)
    name = "n:m" if numbers else check_choice(granularity, _NAMES, "granularity")
    if name != "n:m" and (n is not None or m is not None):
        raise ValueError(f"n and m are for granularity='n:m', not {granularity!r}")
    if name != "block" and block is not None:
        raise ValueError(f"block is for granularity='block', not {granularity!r}")
    if numbers:
        if n is not None or m is not None:
            raise ValueError(f"granularity={granularity!r} carries n and m; do not pass n= or m=")
        return NM(int(numbers[1]), int(numbers[2]))
    if name == "n:m":
        if n is None or m is None:
            raise ValueError(f"granularity='n:m' needs ints n >= 1 and m >= 1, got n={n}, m={m}")
        return NM(n, m)
    if name == "block":
        return _block(block)
    return Channel() if name == "channel" else Element()
