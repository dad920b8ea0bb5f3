"""`weight_sharing`: k-means shared values with trainable centroids (Deep Compression)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from lightcomp import _checks, cluster, quant, tree
from lightcomp.transform._base import Transform, check_state, fingerprint
from lightcomp.transform._learned import Learned

PyTree = Any


@struct.dataclass
class WeightSharingState:
    """State of `weight_sharing` (arrays only; the configuration is in the closure).

    Attributes:
      centroids: `Learned` tree of float32 codebooks, ``[k]`` per leaf (``[c, k]`` with
        ``axis``), None at unselected leaves.
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
    axis: int | None = None,
    iters: int | None = None,
    select: tree.SelectLike = None,
) -> Transform:
    """Replaces each selected weight by its cluster's centroid (k-means weight sharing).

    ``init`` clusters every selected leaf with `lightcomp.cluster.kmeans`; ``apply``
    gathers the (trainable, `Learned`) centroids by the fixed assignments. The backward
    pass gives each centroid the sum of its weights' gradients and passes the gradient
    straight through to the raw weights, so ``update`` can re-cluster them every
    ``recluster_every`` steps (warm-started from the trained centroids).

    With ``preserve_zeros`` (the default), exact zeros (pruned weights) take no part in
    clustering and stay exactly 0.0, whatever their assignment.

    Args:
      k: number of shared values per leaf (per slice with ``axis``), 2..65536.
      init: centroid initialisation, as `lightcomp.cluster.kmeans`.
      preserve_zeros: keep exact zeros at 0.0 and out of the clustering.
      recluster_every: re-run k-means every this many steps (None: never).
      axis: cluster each slice along this axis separately (per output channel: -1).
      iters: the most Lloyd steps (None: run to the fixed point).
      select: which leaves (`lightcomp.tree.as_select`).

    Returns:
      A `Transform` whose state is a `WeightSharingState`.

    References:
      Han, Mao & Dally 2016, "Deep Compression"; Wu et al. 2018, "Deep k-Means".
    """
    k = _checks.check_int(k, "k", lo=2, hi=65536)
    preserve_zeros = _checks.check_bool(preserve_zeros, "preserve_zeros")
    recluster_every = _checks.check_opt_int(recluster_every, "recluster_every", lo=1)
    iters = _checks.check_opt_int(iters, "iters", lo=1)
    if axis is not None:
        _checks.check_int(axis, "axis")
    _checks.check_choice(init, cluster.INITS, "init")
    rule = tree.as_select(select)
    config = fingerprint("weight_sharing", k=k, axis=axis, preserve_zeros=preserve_zeros)
    kmeans_kw = {} if iters is None else {"iters": iters}

    def cluster_leaf(path, w, key, warm=None):
        c, a = cluster.kmeans(
            w,
            k,
            init=init if warm is None else warm,
            key=key,
            preserve_zeros=preserve_zeros,
            axis=axis,
            name=path,
            **kmeans_kw,
        )
        return c.astype(jnp.float32), a

    def centroid_shape(leaf):
        return (k,) if axis is None else (leaf.shape[axis], k)

    def check(params, state):
        check_state(state, WeightSharingState, config)
        tree.check_mirror(params, state.assignments, "weight_sharing state assignments")
        tree.check_mirror(params, state.centroids.value, "weight_sharing centroids", centroid_shape)

    def init_fn(params, key):
        paths = tree.selected_paths(params, rule)
        if not paths:
            tree.selection(params, rule, require_any=True)  # raises, listing the paths
        keys = dict(zip(paths, jax.random.split(key, len(paths)), strict=True))

        def one(path, w):
            _checks.norm_axis(axis, w.ndim, path=path)
            return cluster_leaf(path, w, keys[path])

        pairs = tree.map_selected(one, params, select=rule, unselected="none", with_path=True)
        centroids, codes = _unzip(pairs)
        return WeightSharingState(Learned(centroids), codes, config)

    def apply(params, state):
        check(params, state)

        def one(w, c, a):
            y = cluster.share(c, a, axis=axis, preserve_zeros=preserve_zeros, dtype=w.dtype)
            if preserve_zeros:  # also zeros pruned after the last re-clustering
                y = jnp.where(w == 0, jnp.zeros((), w.dtype), y)
            return quant.straight_through(w, y)

        return tree.map_selected(one, params, state.centroids.value, state.assignments, select=rule)

    def update(params, state, grads, step):
        del grads
        check(params, state)
        if recluster_every is None:
            return state
        step = jnp.asarray(step, jnp.int32)
        due = (step > 0) & (step % recluster_every == 0)

        def recluster():
            pairs = tree.map_selected(
                lambda path, w, c: cluster_leaf(path, jax.lax.stop_gradient(w), None, warm=c),
                params,
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

    return Transform(init_fn, apply, update)
