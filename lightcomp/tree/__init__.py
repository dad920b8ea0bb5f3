"""Leaf paths, selection by role, per-leaf axes and mirror checks.

A path is a string such as ``"Dense_0/kernel"`` built from a leaf's ``jax.tree_util`` key
path (`path_str`).

**Selection** decides which leaves the compression functions touch. By default:

- a tree with Flax names (a leaf whose last path part is ``kernel`` or ``embedding``: linen
  ``params``, an ``nnx.State``) selects its floating **kernels and embeddings by name**,
  whatever their rank (`default_rule`). Biases, norm scales, attention biases
  ``[heads, head_dim]``, class tokens, position embeddings and the norms of a scanned stack
  are left alone unless selected.
- any other pytree of arrays (no Flax name) selects its floating leaves with
  ``ndim >= 2`` (`array_rule`), so every pytree of arrays still compresses.

>>> flax_like = {
...     "Dense_0": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)},
...     "attn": {"query": {"kernel": jnp.zeros((3, 2, 2)), "bias": jnp.zeros((2, 2))}},
...     "cls": jnp.zeros((1, 1, 3)),
... }
>>> lc.tree.selected_paths(flax_like)
['Dense_0/kernel', 'attn/query/kernel']
>>> lc.tree.selected_paths({"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)})
['w']

``include``/``exclude`` regexes and a predicate change that (`select`).

**Axes.** Each selected leaf has layer (stacked) axes, input (contracting) axes and output
axes: an `Axes`, derived by `axes` for Flax's standard layers (linen and nnx) and scanned
stacks of them, and given by the user where they cannot be derived.

>>> lc.tree.axes({"attn": {"out": {"kernel": jnp.zeros((2, 4, 8))}}}, overrides={
...     "out": lc.tree.Axes(inputs=(0, 1), outputs=(2,))})["attn"]["out"]["kernel"].group_axis
1

Trees that mirror a parameter tree (masks, centroids, ranges, axes) hold ``None`` at
unselected leaves. ``None`` is an empty pytree node in JAX, so such trees jit, shard and
checkpoint like the parameters, and ``jax.tree.map(f, params, masks)`` hands ``f`` a
``None`` wherever a leaf was not selected.
"""

from lightcomp.tree._axes import Axes, need_known
from lightcomp.tree._derive import axes, resolve_axes
from lightcomp.tree._mirror import check_mirror, check_shape, first_mismatch
from lightcomp.tree._options import LAYER_NAMES, AxesOptions
from lightcomp.tree._paths import is_floating, leaves_with_paths, path_str, paths
from lightcomp.tree._select import (
    ROLE_NAMES,
    Select,
    SelectLike,
    array_rule,
    as_select,
    default_rule,
    map_selected,
    role_named,
    select,
    selected_paths,
    selection,
)
from lightcomp.tree._shardings import adapt_spec, check_spec, mirror_specs, param_specs

__all__ = [
    "LAYER_NAMES",
    "ROLE_NAMES",
    "Axes",
    "AxesOptions",
    "Select",
    "SelectLike",
    "adapt_spec",
    "array_rule",
    "as_select",
    "axes",
    "check_mirror",
    "check_shape",
    "check_spec",
    "default_rule",
    "first_mismatch",
    "is_floating",
    "leaves_with_paths",
    "map_selected",
    "mirror_specs",
    "need_known",
    "param_specs",
    "path_str",
    "paths",
    "resolve_axes",
    "role_named",
    "select",
    "selected_paths",
    "selection",
]
