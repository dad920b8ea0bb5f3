"""`fold_batchnorm`: BatchNorm's eval-mode affine map folded into the preceding Conv/Dense."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lightcomp import _checks
from lightcomp.prune import _layer_tree as lt

PyTree = Any


def _pairs(pairs: Any) -> list[tuple[str, str]]:
    if isinstance(pairs, Mapping):
        pairs = list(pairs.items())
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, (list, tuple)) or not pairs:
        raise TypeError(
            "pairs must map each Conv/Dense layer path to the BatchNorm that follows it, "
            f"e.g. {{'Conv_0': 'BatchNorm_0'}}, got {pairs!r}"
        )
    out = []
    for p in pairs:
        if not (isinstance(p, tuple) and len(p) == 2 and all(isinstance(s, str) for s in p)):
            raise TypeError(f"pairs: each entry must be (layer path, norm path), got {p!r}")
        out.append(p)
    for i, side in ((0, "layer"), (1, "norm")):
        names = [p[i] for p in out]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"pairs: {side} {twice[0]!r} appears twice (it would fold twice)")
    return out


def _affine(layer: str, norm: str, kernel, bn: Mapping, stats: Mapping, epsilon: float):
    """Per-channel ``(s, t)`` with ``BatchNorm(y) = s * y + t``, float32, checked."""
    c = kernel.shape[-1]
    if "mean" not in stats or "var" not in stats:
        raise ValueError(f"batch_stats has no 'mean' and 'var' at {norm!r}")
    parts = {
        "mean": stats["mean"],
        "var": stats["var"],
        "scale": bn.get("scale", np.ones(c, np.float32)),
        "bias": bn.get("bias", np.zeros(c, np.float32)),
    }
    for name, v in parts.items():
        if np.shape(v) != (c,):
            raise ValueError(
                f"{norm}/{name} has shape {list(np.shape(v))}, but the output axis (-1) of "
                f"{layer}/kernel has {c} channels: the norm must normalise that axis"
            )
    f = {k: np.asarray(v, np.float32) for k, v in parts.items()}
    if np.any(f["var"] + epsilon <= 0) or not all(np.all(np.isfinite(v)) for v in f.values()):
        raise ValueError(f"{norm}: running statistics are not finite or var + epsilon <= 0")
    s = f["scale"] / np.sqrt(f["var"] + np.float32(epsilon))
    return s, f["bias"] - f["mean"] * s


def fold_batchnorm(
    params: PyTree,
    batch_stats: PyTree,
    pairs: Mapping[str, str] | list[tuple[str, str]],
    *,
    epsilon: float = 1e-5,
    keep_norm: bool = True,
) -> tuple[PyTree, PyTree]:
    """Folds each eval-mode BatchNorm into the Conv or Dense layer before it.

    In eval mode ``BatchNorm(y) = s * y + t`` per channel, with ``s = scale / sqrt(var +
    epsilon)`` and ``t = bias - mean * s``; for ``y = x @ kernel + b`` that is ``x @
    (kernel * s) + (b * s + t)``. The kernel is scaled along its output axis (-1), so
    pruned zeros stay zero and a later quantization, weight sharing, export or integer
    serving sees the weights the layer really computes with. Runs eagerly on the host.

    Args:
      params: linen ``params`` or an nnx ``Param`` state (``nnx.split(model, nnx.Param,
        ...)``), holding each layer's ``kernel`` (and ``bias``) and each norm's ``scale``
        and ``bias`` (either may be absent: ``use_scale=False`` / ``use_bias=False``).
      batch_stats: the running statistics, ``mean`` and ``var`` at each norm's path:
        linen ``variables["batch_stats"]``, or the nnx model's non-``Param`` state.
      pairs: ``{layer path: norm path}`` (or ``(layer, norm)`` pairs), e.g.
        ``{"Conv_0": "BatchNorm_0"}``; the norm must directly follow the layer.
      epsilon: the norms' ``epsilon`` (Flax's default ``1e-5``).
      keep_norm: True: the same trees back, the norms turned into a shift (``scale = 1``,
        ``mean = 0``, ``var = 1 - epsilon``, the shift in the norm's ``bias``, or the
        layer's when the norm has none), so the unchanged model computes the same eval
        outputs. False: the norms removed from both trees and the shift put into the
        layer's ``bias`` (created when absent): the parameters of the same network
        declared without BatchNorm and with ``use_bias=True``.

    Returns:
      ``(params, batch_stats)`` of the types given (an ``nnx.State`` stays one with
      ``keep_norm=True``; nested dicts otherwise), every leaf in its dtype; the trees are
      new, the inputs untouched.

    Raises:
      TypeError: bad ``pairs``, ``keep_norm`` or trees.
      ValueError: a layer or norm path missing (named), a norm whose size is not the
        layer's output channels, non-finite statistics, ``epsilon`` out of (0, 1), or
        ``keep_norm=True`` where neither the layer nor the norm has a bias.

    Example:
      >>> model = lc.models.CNN((4,), 10, batch_norm=True)
      >>> v = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
      >>> p, s = lc.prune.fold_batchnorm(v["params"], v["batch_stats"],
      ...                                {"Conv_0": "BatchNorm_0"}, keep_norm=False)
      >>> sorted(p), sorted(p["Conv_0"]), s
      (['Conv_0', 'Dense_0'], ['bias', 'kernel'], {})

    References:
      Jacob et al., "Quantization and Training of Neural Networks for Efficient
      Integer-Arithmetic-Only Inference", CVPR 2018 (batch normalization folding).
    """
    pairs = _pairs(pairs)
    _checks.check_number(epsilon, "epsilon", lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    _checks.check_bool(keep_norm, "keep_norm")
    p, st = lt.as_nested(params, "params"), lt.as_nested(batch_stats, "batch_stats")
    plan = []
    for layer, norm in pairs:  # every check before any change
        node = lt.layer(p, layer, "params")
        if "kernel" not in node:
            raise ValueError(f"params: layer {layer!r} has no 'kernel'")
        s, t = _affine(
            layer, norm, node["kernel"], lt.layer(p, norm, "params"),
            lt.layer(st, norm, "batch_stats"), epsilon,
        )  # fmt: skip
        if keep_norm and "bias" not in node and "bias" not in lt.layer(p, norm, "params"):
            raise ValueError(
                f"neither {layer!r} nor {norm!r} has a bias to hold the folded shift; "
                "use keep_norm=False"
            )
        plan.append((norm, node, s, t))
    for norm, node, s, t in plan:
        kernel = node["kernel"]
        node["kernel"] = (kernel.astype(np.float32) * s).astype(kernel.dtype)
        bias = node.get("bias")
        shift = t if bias is None else t + s * bias.astype(np.float32)
        bn, stats = lt.layer(p, norm, "params"), lt.layer(st, norm, "batch_stats")
        if keep_norm:
            _to_shift(node, bn, stats, shift, epsilon)
        else:
            node["bias"] = shift.astype(kernel.dtype if bias is None else bias.dtype)
            lt.remove(p, norm)
            lt.remove(st, norm)
    if not keep_norm:
        return lt.like(p, {}), lt.like(st, {})
    return lt.like(p, params), lt.like(st, batch_stats)


def _to_shift(node: dict, bn: dict, stats: dict, shift, epsilon: float) -> None:
    """The norm as ``y + shift`` (the shift held by the norm's bias, else the layer's)."""
    if "bias" in bn:
        bn["bias"] = shift.astype(bn["bias"].dtype)
        if "bias" in node:
            node["bias"] = np.zeros_like(node["bias"])
    else:
        node["bias"] = shift.astype(node["bias"].dtype)
    if "scale" in bn:
        bn["scale"] = np.ones_like(bn["scale"])
    stats["mean"] = np.zeros_like(stats["mean"])
    stats["var"] = np.full_like(stats["var"], 1.0 - epsilon)
