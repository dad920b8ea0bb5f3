"""Calibration by interception: the Gram matrix ``H = sum x^T x`` of every layer's inputs.

``apply_fn(params, inputs)`` runs unchanged while every call of a linen ``Dense`` /
``DenseGeneral`` / ``Conv`` / ``Einsum`` (``flax.linen.intercept_methods``) and of an nnx
``Linear`` / ``LinearGeneral`` / ``Conv`` / ``Einsum`` is seen on the way in. nnx has no
interception hook: during the trace the ``__call__`` of those four classes is replaced by
one that records and then calls the original (restored at once, even on error; the
user's model objects are not touched). A call is tied to its kernel leaf by identity:
the kernel the layer reads is the very array of ``params`` that ``apply_fn`` received,
so paths are exact for linen, nnx and any wrapper that passes the leaves through.

The inputs of a call become rows ``[S, N, I]`` (see `lightcomp.posttrain._layers`) and
``H = sum_n x_n^T x_n`` is summed in float32 (``Precision.HIGHEST``) over every call and
every batch: one jitted step per batch adds into the running sums (donated), so memory
does not grow with the number of batches.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lightcomp import tree as lt
from lightcomp._checks import check_callable
from lightcomp.posttrain._layers import (
    KNOWN,
    LINEN_LAYERS,
    NNX_LAYERS,
    LayerError,
    LayerView,
    derive,
    stacked_view,
)
from lightcomp.posttrain._unroll import Slices, looped_scans

PyTree = Any
WEIGHT_NAMES = ("kernel", "embedding")  # Flax's names for a layer's weight matrix


class Gram(NamedTuple):
    """The streamed Gram matrix of one layer's inputs.

    Attributes:
      matrix: float32 ``[S, I, I]``: ``sum x^T x`` over every input row (``S`` matrices
        for a kernel with stacked axes, 1 otherwise).
      rows: float32 ``[]``: the number of rows summed into each matrix.
    """

    matrix: jax.Array
    rows: jax.Array


Unit = tuple[str, tuple[int, ...]]  # (kernel path, layer index in its stack; () if unstacked)


class Plan(NamedTuple):
    """The layers a calibration found, in the order ``apply_fn`` first calls them.

    Attributes:
      views: kernel path -> `LayerView`.
      groups: lists of units ``(kernel path, layer index)``, the index ``()`` for an
        unstacked kernel and one int per enclosing scan for a layer of a scanned stack; the
        layers of a group read the same input array (the query, key and value projections
        of an attention), so a sequential pass compresses them together.
    """

    views: dict[str, LayerView]
    groups: list[list[Unit]]


def as_batches(calib_inputs: Any) -> list[Any]:
    """The calibration batches: one array (or dict) is one batch; a sequence is several.

    A batch that is a mapping with an ``"inputs"`` key contributes ``batch["inputs"]``.

    Raises:
      ValueError: no batch.
    """
    if hasattr(calib_inputs, "shape") or isinstance(calib_inputs, Mapping):
        batches = [calib_inputs]
    elif isinstance(calib_inputs, Iterable) and not isinstance(calib_inputs, (str, bytes)):
        batches = list(calib_inputs)
    else:
        raise TypeError(
            "calib_inputs must be an array, a dict with 'inputs', or a sequence of them; "
            f"got {type(calib_inputs).__name__}"
        )
    if not batches:
        raise ValueError("calib_inputs is empty: calibration needs at least one batch")
    return [b["inputs"] if isinstance(b, Mapping) and "inputs" in b else b for b in batches]


class _Recorder:
    """Collects, during one trace, what every intercepted layer call saw."""

    def __init__(self, wanted: frozenset[str] | None, compute: bool):
        self.ids: dict[int, str] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.slices = Slices()
        self.wanted = wanted
        self.compute = compute
        self.views: dict[str, LayerView] = {}
        self.depth: dict[str, int] = {}  # path -> the number of scans around its layer
        self.groups: dict[int, list[Unit]] = {}
        self.sums: dict[Unit, tuple[jax.Array, jax.Array]] = {}
        self.owners: dict[str, str] = {}  # leaf path -> type of an unknown module using it

    def layer(self, module, x, args, kwargs, kernel) -> None:
        found = self.slices.resolve(kernel, self.ids)
        if found is None or (self.wanted is not None and found[0] not in self.wanted):
            return  # not a leaf of params nor a slice of one, or not chosen
        path, index = found
        inner, rows = derive(module, x, args, kwargs, path, tuple(kernel.shape))
        view = stacked_view(inner, self.shapes[path], len(index))
        old = self.views.setdefault(path, view)
        if old != view:
            raise LayerError(f"layer {path!r} is called with inputs of two different layouts")
        self.depth[path] = len(index)
        unit = (path, index)
        group = self.groups.setdefault(id(x), [])
        if unit not in group and not any(unit in g for g in self.groups.values() if g is not group):
            group.append(unit)
        if self.compute:
            r = rows.astype(jnp.float32)
            h = jnp.einsum("sni,snj->sij", r, r, precision=jax.lax.Precision.HIGHEST)
            n = jnp.asarray(r.shape[1], jnp.float32)
            if unit in self.sums:
                h0, n0 = self.sums[unit]
                h, n = h0 + h, n0 + n
            self.sums[unit] = (h, n)

    def gram(self, view: LayerView) -> tuple[jax.Array, jax.Array] | None:
        """``(H [S, I, I], rows)`` of one path, its layers stacked in index order (None when a
        layer of it was not reached)."""
        units = [(view.path, i) for i in np.ndindex(*view.shape[: self.depth[view.path]])]
        if any(u not in self.sums for u in units):
            return None
        h = jnp.concatenate([self.sums[u][0] for u in units], axis=0)
        return h, self.sums[units[0]][1]

    def other(self, module) -> None:
        """Notes the parameters of a module of another type (for the error messages)."""
        try:
            own = module.variables.get("params", {})
        except Exception:  # an unbound module: nothing to note
            return
        for name, leaf in own.items():
            path = self.ids.get(id(leaf))
            if path is not None and hasattr(leaf, "ndim"):
                self.owners.setdefault(path, f"{type(module).__name__} (at {name!r})")


@contextlib.contextmanager
def _nnx_calls(rec: _Recorder):
    originals = {cls: cls.__dict__["__call__"] for cls in NNX_LAYERS}

    def wrapped(orig):
        @functools.wraps(orig)
        def call(self, x, *args, **kwargs):
            rec.layer(self, x, args, kwargs, self.kernel[...])
            return orig(self, x, *args, **kwargs)

        return call

    try:
        for cls, orig in originals.items():
            cls.__call__ = wrapped(orig)
        yield
    finally:
        for cls, orig in originals.items():
            cls.__call__ = orig


def _intercepted(apply_fn, rec: _Recorder, params, inputs):
    """``apply_fn(params, inputs)`` with every layer call recorded; ``params`` are the (traced)
    leaves the layers will read, so they are what the calls are matched against."""
    items = lt.leaves_with_paths(params)
    rec.ids = {id(leaf): path for path, leaf in items}
    rec.shapes = {path: tuple(getattr(leaf, "shape", ())) for path, leaf in items}

    def linen(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name == "__call__" and args:
            if isinstance(mod, LINEN_LAYERS):
                rec.layer(mod, args[0], args[1:], kwargs, mod.get_variable("params", "kernel"))
            else:
                rec.other(mod)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(linen), _nnx_calls(rec), looped_scans(rec.slices):
        return apply_fn(params, inputs)


def plan(apply_fn: Callable, params: PyTree, inputs: Any, select: lt.SelectLike = None) -> Plan:
    """Finds the layers to compress by one abstract trace (``jax.eval_shape``, no compute).

    Args:
      apply_fn: ``(params, inputs) -> outputs``, not already jitted (a cached trace would
        not be seen).
      params: the parameter tree ``apply_fn`` takes.
      inputs: one calibration batch.
      select: None for every kernel of a layer ``apply_fn`` calls; otherwise
        `lightcomp.tree.as_select`'s rule narrows them. A leaf named ``kernel`` or
        ``embedding`` that an ``include`` pattern matches must be such a kernel.

    Returns:
      A `Plan`.

    Raises:
      ValueError: no selected layer is reached, or a weight an ``include`` pattern names is
        not the kernel of a layer the inputs reach (naming it; `LayerError` when its layer
        type has no derived input axes).
    """
    check_callable(apply_fn, "apply_fn")
    rec = _Recorder(None, compute=False)
    jax.eval_shape(functools.partial(_intercepted, apply_fn, rec), params, inputs)
    rule = lt.as_select(select)
    picked = set(lt.selected_paths(params, rule))
    chosen = [p for p in rec.views if select is None or p in picked]
    if rule.include:  # a weight named on purpose must be a kernel the inputs reach
        for path in sorted(picked - set(rec.views)):
            if path.rsplit("/", 1)[-1] in WEIGHT_NAMES:
                _not_reached(path, rec)
    if not chosen:
        raise ValueError(
            f"apply_fn(params, calib_inputs) called no selected layer of the types {KNOWN} "
            "whose kernel is a leaf of params (is apply_fn already jitted? pass the plain "
            f"function); layers seen: {sorted(rec.views)}"
        )
    keep = set(chosen)
    groups = [[u for u in g if u[0] in keep] for g in rec.groups.values()]
    views = {p: rec.views[p] for g in groups for p, _ in g}
    return Plan(views, [g for g in groups if g])


def _not_reached(path: str, rec: _Recorder) -> None:
    if path in rec.owners:
        raise LayerError(
            f"select chose {path!r}, a parameter of a {rec.owners[path]} layer, which has no "
            f"derived input axes (lightcomp derives them for {KNOWN})"
        )
    raise ValueError(
        f"select chose {path!r}, but the calibration inputs never reach a layer that uses it "
        f"as its kernel: no call of {KNOWN} read it during apply_fn(params, calib_inputs) "
        "(layers under jax.vmap, or stacked along an axis other than 0, are not seen)"
    )


def gram_step(apply_fn: Callable, paths: Iterable[str]) -> Callable:
    """A jitted ``(sums, params, inputs) -> sums`` adding one batch's Gram matrices.

    ``sums`` maps each path to a `Gram` (start from `zero_grams`); it is donated, so the
    running sums are updated in place. The step compiles once per batch shape, and is
    shared by every method called with the same ``apply_fn`` and layers.
    """
    return _gram_step(apply_fn, frozenset(paths))


@functools.lru_cache(maxsize=16)
def _gram_step(apply_fn: Callable, wanted: frozenset[str]) -> Callable:

    def step(sums, params, inputs):
        rec = _Recorder(wanted, compute=True)
        _intercepted(apply_fn, rec, params, inputs)
        new = {p: rec.gram(rec.views[p]) if p in rec.views else None for p in sums}
        missing = sorted(p for p, g in new.items() if g is None)
        if missing:
            raise ValueError(f"this calibration batch never reaches the layers {missing}")
        return {p: Gram(g.matrix + new[p][0], g.rows + new[p][1]) for p, g in sums.items()}

    return jax.jit(step, donate_argnums=0)


def zero_grams(views: Mapping[str, LayerView]) -> dict[str, Gram]:
    """Zero running sums for `gram_step`."""
    return {
        p: Gram(jnp.zeros((v.n_stacked, v.n_in, v.n_in), jnp.float32), jnp.zeros((), jnp.float32))
        for p, v in views.items()
    }


def grams(
    apply_fn: Callable,
    params: PyTree,
    calib_inputs: Any,
    *,
    select: lt.SelectLike = None,
) -> dict[str, Gram]:
    """The Gram matrix of the inputs of every selected layer, summed over the batches.

    Args:
      apply_fn: ``(params, inputs) -> outputs`` (a linen ``model.apply`` wrapper or an nnx
        ``merge``-and-call), not already jitted.
      params: the parameters ``apply_fn`` takes (a linen ``params`` dict, an ``nnx.State``).
      calib_inputs: an input array, a dict with ``"inputs"``, or a sequence of them.
      select: as `plan`.

    Returns:
      ``{kernel path: Gram}``; ``Gram.matrix`` is float32 ``[S, I, I]`` along the layer's
      input (contracting) axes, in the order of `LayerView.to_matrix`'s columns.

    Raises:
      ValueError / TypeError: as `plan`, or no batch.

    References:
      Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
      One-Shot", 2023 (the layer-wise Hessian ``2 X X^T``).

    Example:
      >>> model = lc.models.MLP((3, 2))
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 2)))["params"]
      >>> x = jnp.array([[1.0, 2.0], [0.0, 1.0]])
      >>> h = lc.posttrain.grams(lambda p, x: model.apply({"params": p}, x), params, x)
      >>> h["Dense_0/kernel"].matrix[0]
      Array([[1., 2.],
             [2., 5.]], dtype=float32)
    """
    batches = as_batches(calib_inputs)
    found = plan(apply_fn, params, batches[0], select)
    return accumulate(gram_step(apply_fn, found.views), params, batches, found.views)


def accumulate(step: Callable, params: PyTree, batches: list, views) -> dict[str, Gram]:
    """Runs `gram_step`'s ``step`` over ``batches`` from zero sums."""
    sums = zero_grams(views)
    for x in batches:
        sums = step(sums, params, x)
    return sums


def dead_columns(gram: Gram) -> np.ndarray:
    """int ``[S]``: input columns with ``diag H == 0`` (inputs that were always zero)."""
    return np.asarray(jnp.sum(jnp.diagonal(gram.matrix, axis1=-2, axis2=-1) == 0, axis=-1))


def matrix_case(w: Any, h: Any) -> tuple[LayerView, jax.Array, Gram]:
    """A bare ``[O, I]`` matrix and its Gram as a Dense kernel ``[I, O]``."""
    w, h = jnp.asarray(w), jnp.asarray(h, jnp.float32)
    if w.ndim != 2 or h.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"w must be [O, I] and h [I, I]; got w {w.shape}, h {h.shape}")
    view = LayerView("w", "matrix", (w.shape[1], w.shape[0]), (), (0,), (1,))
    return view, w.T.astype(jnp.float32), Gram(h[None], jnp.ones((), jnp.float32))
