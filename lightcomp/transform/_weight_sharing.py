"""`weight_sharing`: k-means shared values with trainable centroids (Deep Compression)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from lightcomp import _checks, cluster, quant, tree
from lightcomp.transform import _axes
from lightcomp.transform._base import Transform, check_state, fingerprint
from lightcomp.transform._learned import Learned
from lightcomp.transform._sharding import follow_params

PyTree = Any


@struct.dataclass
class WeightSharingState:
    """State of `weight_sharing` (arrays only; the configuration is in the closure).

    Attributes:
      centroids: `Learned` tree of float32 codebooks, ``[k]`` per leaf (``[c, k]`` with
        ``axis``; ``[*layers, k]`` / ``[*layers, c, k]`` for a stacked leaf, one per slice),
        None at unselected leaves.
      assignments: tree of integer codes (uint8 for k <= 256) shaped like the leaves.
      fingerprint: the static configuration it was built under (pytree aux data).
    """

    centroids: Learned
    assignments: PyTree
    fingerprint: str = struct.field(pytree_node=False, default="")


def _unzip(pairs: PyTree) -> tuple[PyTree, PyTree]:
    """A tree of ``(centroids, codes)`` pairs (None elsewhere) -> two trees."""
    is_pair = lambda x: isinstance(x, tuple) or x is None
    first = jax.tree.map(lambda p: None if p is None else p[0], pairs, is_leaf=is_pair)
    second = jax.tree.map(lambda p: None if p is None else p[1], pairs, is_leaf=is_pair)
    return first, second


def weight_sharing(
    k: int,
    *,
    init: str = "density",
    preserve_zeros: bool = True,
    recluster_every: int | None = None,
    axis: int | tuple[int, ...] | None = None,
    iters: int | None = None,
    select: tree.SelectLike = None,
    axes: dict[str, tree.Axes] | None = None,
    stacked: Any = None,
) -> Transform:
    """Replaces each selected weight by its cluster's centroid (k-means weight sharing).

    ``init`` clusters every selected leaf with `lightcomp.cluster.kmeans`; ``apply``
    gathers the (trainable, `Learned`) centroids by the fixed assignments. The backward
    pass gives each centroid the sum of its weights' gradients and passes the gradient
    straight through to the raw weights, so ``update`` can re-cluster them every
    ``recluster_every`` steps (warm-started from the trained centroids).

    With ``preserve_zeros`` (the default), exact zeros (pruned weights) take no part in
    clustering and stay exactly 0.0, whatever their assignment. Every slice of a stacked
    leaf (its layer axes from `lightcomp.tree.axes`, resolved from the params at ``init``)
    has its own codebook, all fitted in one compilation.

    Args:
      k: number of shared values per leaf (per slice, and per index of ``axis``), 2..65536.
      init: centroid initialisation, as `lightcomp.cluster.kmeans`.
      preserve_zeros: keep exact zeros at 0.0 and out of the clustering.
      recluster_every: re-run k-means every this many steps (None: never).
      axis: cluster each slice along this axis (or tuple of axes) separately (per output
        channel: -1).
      iters: the most Lloyd steps (None: run to the fixed point).
      select: which leaves (`lightcomp.tree.as_select`).
      axes: ``{path_regex: lightcomp.tree.Axes}`` for leaves whose axes the tree does not
        show (as `lightcomp.tree.axes`'s ``overrides``).
      stacked: layer axes the tree does not show (as `lightcomp.tree.axes`).

    Returns:
      A `Transform` whose state is a `WeightSharingState`.

    References:
      Han, Mao & Dally 2016, "Deep Compression"; Wu et al. 2018, "Deep k-Means".
    """
    k = _checks.check_int(k, "k", lo=2, hi=65536)
    preserve_zeros = _checks.check_bool(preserve_zeros, "preserve_zeros")
    recluster_every = _checks.check_opt_int(recluster_every, "recluster_every", lo=1)
    iters = _checks.check_opt_int(iters, "iters", lo=1)
    axis = _axes.check_axis(axis)
    _checks.check_choice(init, cluster.INITS, "init")
    rule = tree.as_select(select)
    opts = _axes.options(axes, stacked)
    # the codebook axes resolved at each leaf join this in the state's fingerprint (`_axes`)
    config = fingerprint("weight_sharing", k=k, preserve_zeros=preserve_zeros)
    cluster_leaf = functools.partial(
        _cluster_leaf, k=k, init=init, preserve_zeros=preserve_zeros, iters=iters
    )

    def resolved(params):
        leaf_axes = _axes.resolve(params, rule, opts)
        kept = tree.map_selected(
            lambda path, w, ax: _axes.with_layers(axis, ax, path, w.ndim),
            params,
            leaf_axes,
            select=rule,
            unselected="none",
            with_path=True,
        )
        return kept, _axes.with_digest(config, _axes.digest(params, rule, kept))

    def check(params, state):
        kept, expected = resolved(params)
        if isinstance(state, WeightSharingState):  # a tree of another model: name its path
            tree.check_mirror(params, state.assignments, "weight_sharing state assignments")
        check_state(state, WeightSharingState, expected)
        _axes.check_resolved(
            params,
            state.centroids.value,
            kept,
            "weight_sharing centroids",
            lambda w, ax: (*(w.shape[a] for a in ax), k),
        )
        return kept

    def init_fn(params, key):
        _checks.check_key(key)
        paths = tree.selected_paths(params, rule)
        if not paths:
            tree.selection(params, rule, require_any=True)  # raises, listing the paths
        kept, fp = resolved(params)
        keys = dict(zip(paths, jax.random.split(key, len(paths)), strict=True))
        pairs = tree.map_selected(
            lambda path, w, ax: cluster_leaf(path, w, ax, keys[path]),
            params,
            kept,
            select=rule,
            unselected="none",
            with_path=True,
        )
        centroids, codes = _unzip(pairs)
        return WeightSharingState(Learned(centroids), codes, fp)

    def apply(params, state):
        kept = check(params, state)
        one = functools.partial(_shared, preserve_zeros=preserve_zeros)
        return tree.map_selected(
            one, params, kept, state.centroids.value, state.assignments, select=rule
        )

    def update(params, state, grads, step):
        del grads
        kept = check(params, state)
        if recluster_every is None:
            return state
        step = jnp.asarray(step, jnp.int32)
        due = (step > 0) & (step % recluster_every == 0)

        def recluster():
            pairs = tree.map_selected(
                lambda path, w, ax, c: cluster_leaf(
                    path, jax.lax.stop_gradient(w), ax, None, warm=c
                ),
                params,
                kept,
                state.centroids.value,
                select=rule,
                unselected="none",
                with_path=True,
            )
            centroids, codes = _unzip(pairs)
            return Learned(centroids), codes

        centroids, codes = jax.lax.cond(
            due, recluster, lambda: (state.centroids, state.assignments)
        )
        return state.replace(centroids=centroids, assignments=codes)

    return follow_params(Transform(init_fn, apply, update))


def _cluster_leaf(path, w, kept, key, warm=None, *, k, init, preserve_zeros, iters):
    """k-means of leaf ``w`` with a codebook per index of the ``kept`` axes (float32)."""
    c, a = cluster.kmeans(
        w,
        k,
        init=init if warm is None else warm,
        key=key,
        preserve_zeros=preserve_zeros,
        axis=kept or None,
        name=path,
        **({} if iters is None else {"iters": iters}),
    )
    return c.astype(jnp.float32), a


def _shared(w, kept, c, a, *, preserve_zeros):
    """The shared weights of leaf ``w`` (its dtype), straight-through to ``w``."""
    y = cluster.share(c, a, axis=kept or None, preserve_zeros=preserve_zeros, dtype=w.dtype)
    if preserve_zeros:  # also zeros pruned after the last re-clustering
        y = jnp.where(w == 0, jnp.zeros((), w.dtype), y)
    return quant.straight_through(w, y)
