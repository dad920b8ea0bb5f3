"""Adapters that turn linen and nnx models into a `StatefulApply` the step can carry.

``linen_apply(module, train=True)`` runs ``module.apply({"params": params,
**model_state}, inputs, mutable=[every collection of model_state], rngs=...)``;
``nnx_apply(model, train=True)`` merges a copy of the module from ``(params,
model_state)`` in every call and splits it again afterwards. Both draw dropout from the
step's key, carry BatchNorm statistics (and any other mutable state) in
``model_state``, and bind BatchNorm's ``axis_name`` (see `StatefulApply`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from typing import Any

import flax.errors
import flax.linen as nn
import jax
from flax import nnx

from lightcomp import quant, tree
from lightcomp.train._stateful import StatefulApply, check_norm_axis, norm_axis_names

PyTree = Any
RANGES = "act_ranges"  # the model-state key of activation ranges (as lightcomp.serve reads it)


def _linen_guard(bound: tuple[str, ...]):
    """``device_axis -> context``: refuses train-mode ``nn.BatchNorm`` layers that would not sync."""

    def guard(device_axis):
        def interceptor(next_fun, args, kwargs, context):
            mod = context.module
            if isinstance(mod, nn.BatchNorm) and context.method_name == "__call__":
                ura = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
                ura = mod.use_running_average if ura is None else ura
                if not ura and not mod.is_initializing():
                    where = "/".join(mod.path)
                    check_norm_axis(where, mod.axis_name, device_axis, bound, "linen_apply")
            return next_fun(*args, **kwargs)

        return nn.intercept_methods(interceptor)

    return guard


def _with_ranges(aq, observe, run_module, params, model_state, inputs, rngs):
    """``run_module`` under the activation quantizer ``aq``, ranges in ``model_state[RANGES]``."""
    ranges = dict(model_state.get(RANGES, {}))
    rest = {k: v for k, v in model_state.items() if k != RANGES}

    def fn(p, x):
        return run_module(p, rest, x, rngs)

    if observe:
        (out, updates), ranges = aq.update(fn, ranges, params, inputs)
    else:
        out, updates = aq.apply(fn, ranges, params, inputs)
    return out, ({**updates, RANGES: ranges} if RANGES in model_state else updates)


def linen_apply(
    module: nn.Module,
    *,
    rng_collections: Sequence[str] = ("dropout",),
    axis_name: str | Sequence[str] | None = "batch",
    statistics: Sequence[str] = ("batch_stats",),
    act_quant: quant.ActQuant | None = None,
    update_ranges: bool | None = None,
    **call_kwargs: Any,
) -> StatefulApply:
    """Wraps a linen module as a `StatefulApply` (``apply(params, inputs, key=None)`` too).

    Every collection of ``model_state`` is mutable: a train-mode forward returns the new
    ``batch_stats`` (and any other collection it writes), which the step carries; an
    eval-mode one (``train=False``) reads the running statistics and changes nothing.

    Args:
      module: a ``flax.linen.Module``.
      rng_collections: rng streams fed from the step's key (each gets ``fold_in(key, i)``).
      axis_name: the axis name(s) the model's BatchNorm layers average over; bound to a
        size-1 axis when the step maps over no device axis (Flax's ResNet: ``"batch"``).
      statistics: the collections holding running statistics (`recalibrate`).
      act_quant: a `lightcomp.quant.activation_quant` quantizer run around every forward
        (with ``weight_bits``, on integer contractions); its ranges ride in the model state
        as ``model_state["act_ranges"]`` (``act_quant.init(fn, params, x)``; not needed for
        ``ranges="dynamic"``) and are updated by each forward: the step carries them.
      update_ranges: update the activation ranges in this forward; None: unless
        ``train=False`` is among ``call_kwargs``.
      **call_kwargs: static keywords of the module's ``__call__``, e.g. ``train=True``.

    Returns:
      A `StatefulApply`; its ``model_state`` is ``{}``: start from ``module.init``'s
      variables other than ``"params"`` (``init_state(..., model_state={"batch_stats":
      variables["batch_stats"]})``).

    Raises:
      TypeError: ``module`` is not a linen module, or bad names.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a flax.linen.Module, got {type(module).__name__}")
    names = tuple(norm_axis_names(rng_collections, "rng_collections"))
    axes = norm_axis_names(axis_name)
    stats = tuple(norm_axis_names(statistics, "statistics"))
    train = call_kwargs.get("train")
    if act_quant is not None and not isinstance(act_quant, quant.ActQuant):
        raise TypeError(f"act_quant must be a lightcomp.quant.ActQuant, got {act_quant!r}")
    if update_ranges is not None and not isinstance(update_ranges, bool):
        raise TypeError(f"update_ranges must be True, False or None, got {update_ranges!r}")
    observe = update_ranges if update_ranges is not None else train is not False

    def run_module(params, model_state, inputs, rngs):
        variables = {"params": params, **model_state}
        mutable = list(model_state)
        if not mutable:
            return module.apply(variables, inputs, rngs=rngs, **call_kwargs), {}
        return module.apply(variables, inputs, rngs=rngs, mutable=mutable, **call_kwargs)

    def forward(params, model_state, inputs, key):
        rngs = None if key is None else {c: jax.random.fold_in(key, i) for i, c in enumerate(names)}
        try:
            if act_quant is None:
                out, updates = run_module(params, model_state, inputs, rngs)
            else:
                out, updates = _with_ranges(act_quant, observe, run_module, params, model_state,
                                            inputs, rngs)  # fmt: skip
            if not model_state:
                return out, model_state
        except flax.errors.ScopeCollectionNotFound as e:
            raise ValueError(
                f"{e}\nThe model needs non-parameter collections: pass them as the model state, "
                "e.g. init_state(..., model_state={'batch_stats': variables['batch_stats']}) "
                "(every collection of module.init's variables but 'params')"
            ) from e
        new = {**model_state, **updates}
        return out, type(model_state)(new) if not isinstance(model_state, dict) else new

    def statistic_leaves(model_state):
        return [p.split("/")[0] in stats for p in tree.paths(model_state)]

    return StatefulApply(
        forward,
        {},
        axes,
        train if isinstance(train, bool) else None,
        statistic_leaves,
        _linen_guard(axes),
    )


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def _reseed(model_state: PyTree, key: jax.Array) -> PyTree:
    """Every rng stream's key replaced by one drawn from ``key`` (a stacked key stays stacked)."""
    leaves, treedef = jax.tree.flatten(model_state, is_leaf=_is_variable)
    out = []
    for i, v in enumerate(leaves):
        if isinstance(v, nnx.RngKey):
            k = jax.random.fold_in(key, i)
            shape = v.get_value().shape
            v = v.replace(k if shape == () else jax.random.split(k, shape))
        out.append(v)
    return jax.tree.unflatten(treedef, out)


def _keep_rng_state(new: PyTree, old: PyTree) -> PyTree:
    """``new`` with the rng streams of ``old``: keys are reseeded per step, never carried."""
    return jax.tree.map(
        lambda n, o: o if isinstance(o, nnx.RngState) else n, new, old, is_leaf=_is_variable
    )


def _nnx_mode(model: nnx.Module, train: bool | None) -> bool | None:
    """``train``, or the module's own mode read from its BatchNorm and Dropout layers."""
    if train is not None:
        return train
    modes = [
        not getattr(m, attr)
        for _, m in nnx.iter_graph(model)
        for cls, attr in ((nnx.BatchNorm, "use_running_average"), (nnx.Dropout, "deterministic"))
        if isinstance(m, cls) and isinstance(getattr(m, attr), bool)
    ]
    return any(modes) if modes else None


def _nnx_guard(model: nnx.Module):
    """``device_axis -> context``: refuses train-mode ``nnx.BatchNorm`` layers that would not sync."""
    norms = [
        ("/".join(map(str, path)), m.axis_name)
        for path, m in nnx.iter_graph(model)
        if isinstance(m, nnx.BatchNorm) and not m.use_running_average
    ]
    bound = tuple(sorted({a for _, a in norms if a is not None}))

    def guard(device_axis):
        for where, axis in norms:
            check_norm_axis(where, axis, device_axis, bound, "nnx_apply")
        return contextlib.nullcontext()

    return guard, bound


def nnx_apply(
    module: nnx.Module,
    *,
    train: bool | None = None,
    rngs_at_call: bool | None = None,
    **call_kwargs,
) -> tuple[StatefulApply, PyTree]:
    """Turns an nnx module into ``(apply, params)``; the user's module is never modified.

    The adapter works on a copy (``nnx.clone``), set to train or eval mode. Every call
    merges a fresh module from ``(params, model_state)`` (``nnx.merge(..., copy=True)``),
    so it works under ``jit`` and never touches variables it was not given; the new
    non-``Param`` state (``BatchStat`` running statistics, other variables) comes back
    as the new model state. rng streams held by modules are reseeded from the step's key
    every call, a stacked key (``nnx.vmap`` / ``nnx.scan`` layers) into as many keys;
    their state is not carried. A module whose ``__call__`` takes ``rngs`` (the nnx
    tutorials' ``model(x, rngs=rngs)``) gets ``rngs=nnx.Rngs(key)``. BatchNorm axis
    names are read from the module and bound (see `StatefulApply`).

    Args:
      module: a ``flax.nnx.Module``.
      train: True sets train mode (batch statistics, dropout on), False eval mode, None
        keeps the module's.
      rngs_at_call: pass ``rngs=`` to ``__call__``; None when its signature has ``rngs``.
      **call_kwargs: further keywords of the module's ``__call__``.

    Returns:
      ``(apply, params)``: a `StatefulApply` whose ``model_state`` is the copy's
      non-``Param`` state (pass it to ``init_state(..., model_state=apply.model_state)``)
      and the copy's ``nnx.Param`` state.

    Raises:
      TypeError: ``module`` is not an nnx module, or a bad ``train``.
    """
    if not isinstance(module, nnx.Module):
        raise TypeError(f"module must be a flax.nnx.Module, got {type(module).__name__}")
    if train is not None and not isinstance(train, bool):
        raise TypeError(f"train must be True, False or None, got {train!r}")
    copy = nnx.clone(module)
    if train is not None:
        copy.train() if train else copy.eval()
    if rngs_at_call is None:
        rngs_at_call = "rngs" in inspect.signature(type(copy).__call__).parameters
    graphdef, params, model_state = nnx.split(copy, nnx.Param, ...)
    guard, bound = _nnx_guard(copy)

    def run_copy(p, state, inputs, key):
        merged = state if key is None else _reseed(state, key)
        model = nnx.merge(graphdef, p, merged, copy=True)
        kwargs = dict(call_kwargs)
        if rngs_at_call and key is not None:
            kwargs["rngs"] = nnx.Rngs(jax.random.fold_in(key, 1 << 30))
        out = model(inputs, **kwargs)
        _, _, new = nnx.split(model, nnx.Param, ...)
        return out, _keep_rng_state(new, state)

    def forward(p, state, inputs, key):
        if not jax.tree.leaves(model_state) and not jax.tree.leaves(state):
            return run_copy(p, model_state, inputs, key)[0], state  # {}: the empty state
        if jax.tree.structure(state) != jax.tree.structure(model_state):
            bad = tree.first_mismatch(model_state, state) or "<structure>"
            raise ValueError(
                "the model state does not match the module's non-Param state (first "
                f"difference at {bad!r}); pass init_state(..., model_state=apply.model_state)"
            )
        return run_copy(p, state, inputs, key)

    def statistic_leaves(state):
        flags = []
        for v in jax.tree.leaves(state, is_leaf=_is_variable):
            flags += [isinstance(v, nnx.BatchStat)] * len(jax.tree.leaves(v))
        return flags

    mode = _nnx_mode(copy, train)
    apply = StatefulApply(forward, model_state, bound, mode, statistic_leaves, guard)
    return apply, params
