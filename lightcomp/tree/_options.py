"""`AxesOptions`: what a user says about leaf axes (``overrides``, ``stacked``), checked once."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from lightcomp._checks import check_int
from lightcomp.tree._axes import Axes

PyTree = Any

# Partitioning names that mark a layer axis (``nn.scan(..., metadata_params={nn.PARTITION_NAME:
# "layers"})``, ``nnx.vmap(..., transform_metadata={nnx.PARTITION_NAME: "layers"})``).
LAYER_NAMES = ("layers", "layer", "stack", "stacked", "scan", "repeat")


def _overrides(overrides: Any) -> tuple[tuple[str, Axes], ...]:
    if overrides is None:
        return ()
    if isinstance(overrides, tuple) and all(
        isinstance(t, tuple) and len(t) == 2 for t in overrides
    ):
        overrides = dict(overrides)  # an AxesOptions' own normal form
    if not isinstance(overrides, Mapping):
        raise TypeError(
            "overrides must be a dict {path_regex: lightcomp.tree.Axes}, got "
            f"{type(overrides).__name__}"
        )
    out = []
    for pat, ax in overrides.items():
        if not isinstance(pat, str):
            raise TypeError(f"overrides keys must be path regexes (str), got {pat!r}")
        if not isinstance(ax, Axes):
            raise TypeError(f"overrides[{pat!r}] must be a lightcomp.tree.Axes, got {ax!r}")
        _compile(pat, "overrides")
        out.append((pat, ax))
    return tuple(out)


def _compile(pat: str, argname: str) -> re.Pattern:
    try:
        return re.compile(pat)
    except re.error as e:
        raise ValueError(f"{argname} pattern {pat!r} does not compile: {e}") from e


def _stacked(stacked: Any) -> int | str | tuple[tuple[str, int], ...] | None:
    if stacked is None or isinstance(stacked, str):
        return stacked
    if isinstance(stacked, tuple) and all(isinstance(t, tuple) and len(t) == 2 for t in stacked):
        stacked = dict(stacked)
    if isinstance(stacked, Mapping):
        out = []
        for pat, n in stacked.items():
            if not isinstance(pat, str):
                raise TypeError(f"stacked keys must be path regexes (str), got {pat!r}")
            _compile(pat, "stacked")
            out.append((pat, check_int(n, f"stacked[{pat!r}]", lo=0)))
        return tuple(out)
    try:
        return check_int(stacked, "stacked", lo=0)
    except TypeError:
        raise TypeError(
            "stacked must be None, an int (leading layer axes of every leaf), a partitioning "
            f"name (str) or a dict {{path_regex: int}}, got {stacked!r}"
        ) from None


@dataclasses.dataclass(frozen=True)
class AxesOptions:
    """What a user says about leaf axes: `axes`'s ``overrides`` and ``stacked``, checked once.

    Frozen and hashable (the transforms keep one in their closure and name it in their
    state's fingerprint); dicts are kept as tuples of pairs.

    Attributes:
      overrides: ``{path_regex: Axes}`` (as ``((pattern, Axes), ...)``).
      stacked: None, an int, a partitioning name, or ``{path_regex: int}`` (as pairs).
    """

    overrides: Any = ()
    stacked: Any = None

    def __post_init__(self):
        object.__setattr__(self, "overrides", _overrides(self.overrides))
        object.__setattr__(self, "stacked", _stacked(self.stacked))

    @property
    def layer_names(self) -> tuple[str, ...]:
        """The partitioning names that mark a layer axis."""
        return (self.stacked,) if isinstance(self.stacked, str) else LAYER_NAMES

    def stacked_of(self, path: str) -> int | None:
        """The number of leading layer axes the user gave for ``path`` (None: not given)."""
        if isinstance(self.stacked, int):
            return self.stacked
        if isinstance(self.stacked, tuple):
            return next((n for p, n in self.stacked if re.search(p, path)), None)
        return None
