"""The jitted kernels of `masks`: which weights each leaf keeps, slice by slice.

A leaf is first brought into the order its granularity reads (a `Plan`: a transpose, then
a reshape to ``[layers, *slice]``, both static); every slice of a stacked leaf is then
ranked on its own (``vmap``), a leaf without layer axes as a whole. For a Dense or Conv
kernel the plan is the identity, so these are the very operations of 0.1.0.

Jitted so that an eager `masks` call compiles one fused program per leaf shape instead of
dispatching a dozen small ops; under an outer jit they are inlined. ``k`` is a traced int,
so a new sparsity never recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from lightcomp import tree as lt
from lightcomp.prune._granularity import Block, Channel, Element, Granularity
from lightcomp.prune._ranking import lowest_k, lowest_k_many, lowest_units, nm_keep


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a leaf of ``shape`` is read by a granularity (static, hashable).

    Attributes:
      shape: the leaf's shape.
      perm: the transpose into the read order (layer axes first).
      layers: the number of slices (1 without layer axes).
      stacked: whether the leaf has layer axes (then the view has a leading layer axis).
      slice_shape: the shape of one slice in the read order, as the kernels expect it.
    """

    shape: tuple[int, ...]
    perm: tuple[int, ...]
    layers: int
    stacked: bool
    slice_shape: tuple[int, ...]

    def view(self, x: jax.Array) -> jax.Array:
        """The leaf in the read order: ``[layers, *slice_shape]`` (``slice_shape`` alone
        without layer axes)."""
        if self.perm != tuple(range(len(self.shape))):
            x = jnp.transpose(x, self.perm)
        lead = (self.layers,) if self.stacked else ()
        return x.reshape((*lead, *self.slice_shape))

    def unview(self, y: jax.Array) -> jax.Array:
        """Inverse of `view`."""
        y = y.reshape(tuple(self.shape[a] for a in self.perm))
        if self.perm == tuple(range(len(self.shape))):
            return y
        return jnp.transpose(y, tuple(sorted(range(len(self.perm)), key=self.perm.__getitem__)))

    def per_slice(self, fn, *args):
        """``fn(*args)`` slice by slice of the first argument (vmapped over layers; the rest
        shared), or once on the whole leaf without layer axes."""
        if not self.stacked:
            return fn(*args)
        return jax.vmap(fn, in_axes=(0,) + (None,) * (len(args) - 1))(*args)


def plan(shape: tuple[int, ...], ax: lt.Axes, gran: Granularity, scope: str) -> Plan:
    """The `Plan` of a leaf with axes ``ax`` (checked) for ``gran`` and ``scope``.

    Element: each slice flat. Channel and ``scope="output"``: ``[inputs, outputs]`` with
    each group flattened (a unit is an output unit). Block: ``[others, group axis, last
    output axis]``, the other axes (earlier outputs) in order, each giving its own tiles.
    """
    shape = tuple(shape)
    st = ax.stacked
    layers = math.prod(shape[a] for a in st)
    if isinstance(gran, Block):
        g, o = ax.group_axis, ax.output_axis
        others = tuple(a for a in range(len(shape)) if a not in (*st, g, o))
        order = (*others, g, o)
        slice_shape = (math.prod(shape[a] for a in others), shape[g], shape[o])
        if not st:  # 0.1.0's [..., in, out] as it is
            slice_shape = tuple(shape[a] for a in order)
    elif isinstance(gran, Channel) or scope == "output":
        order = (*ax.inputs, *ax.outputs)
        slice_shape = (
            math.prod(shape[a] for a in ax.inputs),
            math.prod(shape[a] for a in ax.outputs),
        )
    else:
        order = tuple(a for a in range(len(shape)) if a not in st)
        slice_shape = (math.prod(shape[a] for a in order),)
    return Plan(shape, (*st, *order), layers, bool(st), slice_shape)


def clean(score: jax.Array) -> jax.Array:
    """float32, NaN as the lowest score."""
    return jnp.where(jnp.isnan(score), -jnp.inf, score.astype(jnp.float32))


def _unit_size(slice_shape: tuple[int, ...], gran: Granularity) -> int:
    if isinstance(gran, Element):
        return 1
    if isinstance(gran, Channel):
        return math.prod(slice_shape[:-1])
    return gran.rows * gran.cols


def _unit_scores(s: jax.Array, gran: Granularity) -> jax.Array:
    """One slice's unit scores, flat float32: weights, or L2 norms of channels or tiles."""
    if isinstance(gran, Element):
        return s.reshape(-1)
    if isinstance(gran, Channel):
        return jnp.sqrt(jnp.sum(jnp.square(s.reshape(-1, s.shape[-1])), axis=0))
    bi, bo = gran.rows, gran.cols
    lead, i, o = s.shape[:-2], s.shape[-2], s.shape[-1]
    blocks = s.reshape((*lead, i // bi, bi, o // bo, bo))
    return jnp.sqrt(jnp.sum(jnp.square(blocks), axis=(-3, -1))).reshape(-1)


def _expand(u: jax.Array, slice_shape: tuple[int, ...], gran: Granularity) -> jax.Array:
    """Unit values (flat) of one slice -> the slice's shape."""
    if isinstance(gran, Element):
        return u.reshape(slice_shape)
    if isinstance(gran, Channel):
        return jnp.broadcast_to(u, slice_shape)
    bi, bo = gran.rows, gran.cols
    lead, i, o = slice_shape[:-2], slice_shape[-2], slice_shape[-1]
    u = u.reshape((*lead, i // bi, 1, o // bo, 1))
    return jnp.broadcast_to(u, (*lead, i // bi, bi, o // bo, bo)).reshape(slice_shape)


def units(score: jax.Array, pl: Plan, gran: Granularity):
    """Unit scores ``[layers * units]``, weights per unit, and an expander to leaf shape."""
    u = pl.per_slice(lambda s: _unit_scores(s, gran), pl.view(clean(score)))

    def expand(flat):
        flat = flat.reshape(u.shape)
        return pl.unview(pl.per_slice(lambda x: _expand(x, pl.slice_shape, gran), flat))

    return u.reshape(-1), _unit_size(pl.slice_shape, gran), expand


@functools.partial(jax.jit, static_argnames=("pl", "gran"))
def layer_keep(score, k, pl, gran):
    """Each slice keeps all but its ``k // unit size`` lowest units (whole units in ``k``)."""
    u, size, expand = units(score, pl, gran)
    per = u.reshape((pl.layers, -1)) if pl.stacked else u
    return expand(jnp.logical_not(lowest_k(per, k // size, axis=-1)))


@functools.partial(jax.jit, static_argnames=("pl",))
def output_keep(score, k, pl):
    """Each output unit of each slice loses its ``k`` lowest inputs (Wanda's comparison)."""
    cols = pl.view(clean(score))
    keep = pl.per_slice(lambda c: jnp.logical_not(lowest_k(c, k, axis=0)), cols)
    return pl.unview(keep)


@functools.partial(jax.jit, static_argnames=("n", "m", "axis"))
def nm_masks(score, on, n, m, axis):
    """``n`` of every ``m`` consecutive along ``axis`` kept; everything while ``on`` is False."""
    return jnp.logical_or(nm_keep(clean(score), n, m, axis=axis), jnp.logical_not(on))


@functools.partial(jax.jit, static_argnames=("plans", "gran", "keep_one"))
def global_keep(leaves, k, plans, gran, keep_one):
    """One ranking of every unit of every slice of every leaf: the lowest ``k`` weights go.

    Element granularity (without ``keep_one``) ranks the leaves where they lie
    (`lowest_k_many`: no concatenation, nothing gathered from a sharded leaf).
    """
    if isinstance(gran, Element) and not keep_one:
        scores = [clean(s) for s in leaves]
        pruned = lowest_k_many(scores, k, [pl.perm for pl in plans])
        return [jnp.logical_not(p) for p in pruned]
    parts = [units(s, pl, gran) for s, pl in zip(leaves, plans, strict=True)]
    unit_scores = jnp.concatenate([u for u, _, _ in parts])
    if isinstance(gran, Element):
        pruned = lowest_k(unit_scores, k)
    else:  # units of different sizes across leaves
        sizes = jnp.concatenate([jnp.full(u.shape, z, jnp.int32) for u, z, _ in parts])
        pruned = lowest_units(unit_scores, sizes, k)
    out, start = [], 0
    for (u, _, expand), pl in zip(parts, plans, strict=True):  # a loop over leaves, not elements
        p = pruned[start : start + u.shape[0]].reshape((pl.layers, -1))
        start += u.shape[0]
        if keep_one:  # each slice that would lose every unit keeps its best one
            rows = u.reshape(p.shape)
            best = jnp.argmax(rows, axis=1)
            at_best = jnp.arange(p.shape[1])[None, :] == best[:, None]
            p = p & ~(at_best & jnp.all(p, axis=1, keepdims=True))
        out.append(expand(jnp.logical_not(p).reshape(-1)))
    return out
