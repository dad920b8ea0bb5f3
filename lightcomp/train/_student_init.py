"""Starting a smaller student from the teacher's weights.

References:
  Romero et al., "FitNets: Hints for Thin Deep Nets", 2015 (a thin student started from
  a teacher's weights). Sanh et al., "DistilBERT", 2019 (a student initialised from
  every other teacher layer).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np


def _natural_key(name: Any):
    m = re.search(r"(\d+)$", str(name))
    return (re.sub(r"\d+$", "", str(name)), int(m.group(1)) if m else -1, str(name))


def _layer_names(params: Mapping, argname: str) -> list:
    if not isinstance(params, Mapping) or not params:
        raise TypeError(
            f"{argname} must be a non-empty mapping of layers ({{'Dense_0': ..., ...}}), "
            f"got {type(params).__name__}"
        )
    return sorted(params.keys(), key=_natural_key)


def keep_layers(teacher_params: Mapping, keep: Sequence[int | str]) -> dict:
    """Starts a shallower student from a subset of the teacher's layers.

    The layers (top-level entries, in natural order ``Dense_0, Dense_1, ..., Dense_10``)
    listed in ``keep`` are copied and renumbered consecutively (``Dense_0, Dense_2`` ->
    ``Dense_0, Dense_1``), so the result loads into the same model class built with
    fewer layers. Widths must chain: a kept layer's input width must equal the previous
    kept layer's output width.

    Args:
      teacher_params: a mapping of layers, e.g. a linen ``params`` dict.
      keep: positions (ints) or names of the layers to keep, in order.

    Returns:
      A dict of the kept layers (arrays shared with the teacher, not copied).

    Raises:
      ValueError: an unknown or repeated layer, or widths that do not chain.
    """
    names = _layer_names(teacher_params, "teacher_params")
    chosen = []
    for k in keep:
        if isinstance(k, int):
            if not -len(names) <= k < len(names):
                raise ValueError(f"keep index {k} is out of range for {len(names)} layers")
            chosen.append(names[k])
        elif k in teacher_params:
            chosen.append(k)
        else:
            raise ValueError(f"keep names unknown layer {k!r}; layers are {names}")
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"keep must list distinct layers, got {list(keep)}")
    out, prev = {}, None
    for i, name in enumerate(chosen):
        layer = teacher_params[name]
        kernel = layer.get("kernel") if isinstance(layer, Mapping) else None
        if kernel is not None and prev is not None and jnp.shape(kernel)[-2] != prev[1]:
            raise ValueError(
                f"kept layers do not chain: {prev[0]!r} outputs {prev[1]} features but "
                f"{name!r} takes {jnp.shape(kernel)[-2]}"
            )
        if kernel is not None:
            prev = (name, jnp.shape(kernel)[-1])
        new_name = re.sub(r"\d+$", str(i), str(name)) if isinstance(name, str) else i
        out[new_name] = layer
    return out


def slice_channels(teacher_params: Mapping, features: Sequence[int | None]) -> dict:
    """Starts a narrower student by keeping each layer's output channels of largest norm.

    Layers (top-level entries in natural order) must form a chain in which each
    layer's output channels are the next layer's input channels: Dense layers, or
    convolutions followed by global pooling. For each layer, the input rows that the
    previous layer dropped are removed, then the ``features[i]`` output channels with
    the largest L2 norm of (kernel column, bias) are kept, in their original order.
    A channel of norm 0 contributes nothing, so slicing only such channels leaves
    the function unchanged.

    Args:
      teacher_params: ``{"Dense_0": {"kernel": [..., in, out], "bias": [out]}, ...}``.
      features: new output width per layer; None keeps a layer's width. The last
        layer's width (the classes) cannot change.

    Returns:
      A dict with the same layer names and sliced arrays.

    Raises:
      ValueError: wrong number of widths, a width above the teacher's or below 1,
        a changed output width, or a layer without a ``kernel``.
    """
    names = _layer_names(teacher_params, "teacher_params")
    features = list(features)
    if len(features) != len(names):
        raise ValueError(f"features has {len(features)} widths for {len(names)} layers {names}")
    # A one-off host computation on concrete arrays: NumPy, so that no shape compiles.
    out, prev_idx = {}, None
    for i, (name, width) in enumerate(zip(names, features, strict=True)):
        layer = teacher_params[name]
        if not isinstance(layer, Mapping) or "kernel" not in layer:
            raise ValueError(f"layer {name!r} has no 'kernel'; slice_channels needs kernels")
        kernel = np.asarray(layer["kernel"])
        bias = None if layer.get("bias") is None else np.asarray(layer["bias"])
        if prev_idx is not None:
            kernel = np.take(kernel, prev_idx, axis=-2)
        n_out = kernel.shape[-1]
        width = n_out if width is None else int(width)
        if i == len(names) - 1 and width != n_out:
            raise ValueError(f"the last layer {name!r} must keep its {n_out} outputs, got {width}")
        if not 1 <= width <= n_out:
            raise ValueError(f"features[{i}] for {name!r} must be in 1..{n_out}, got {width}")
        sq = np.sum(kernel.astype(np.float32).reshape(-1, n_out) ** 2, axis=0)
        if bias is not None:
            sq = sq + bias.astype(np.float32) ** 2
        idx = np.sort(np.argsort(-sq, kind="stable")[:width])
        new = dict(layer)
        new["kernel"] = jnp.asarray(np.take(kernel, idx, axis=-1))
        if bias is not None:
            new["bias"] = jnp.asarray(np.take(bias, idx, axis=-1))
        out[name] = new
        prev_idx = idx
    return out
