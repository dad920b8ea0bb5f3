"""Learned compression quantities and the one split of what a training step differentiates.

Shared centroids and LSQ step sizes are trained like weights. A transform wraps them in
`Learned` inside its state; masks, codes and ranges are fixed. A training step splits
``(params, comp_state)`` once by one predicate - a floating leaf that is a parameter or
sits inside a `Learned` node - differentiates the trainable part, updates it with one
optax optimizer, and joins the parts again.
"""

from __future__ import annotations

from typing import Any

import jax

from lightcomp import tree

PyTree = Any


@jax.tree_util.register_pytree_node_class
class Learned:
    """Marks a trainable leaf (or subtree) inside a transform's state.

    `partition` and `split_trainable` find these markers; everything else in a state is
    fixed. The marker adds the key ``0`` to the leaf paths below it.
    """

    __slots__ = ("value",)

    def __init__(self, value: PyTree):
        self.value = value

    def tree_flatten(self):
        return (self.value,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux
        return cls(children[0])

    def __repr__(self) -> str:
        return f"Learned({self.value!r})"


def is_learned(x: Any) -> bool:
    """True for a `Learned` node."""
    return isinstance(x, Learned)


def partition(state: PyTree) -> tuple[PyTree, PyTree]:
    """Splits a transform state into ``(learned, fixed)``.

    Both have the state's structure with `Learned` nodes kept: ``learned`` holds
    the learned values and ``None`` in every other leaf; ``fixed`` holds the other
    leaves and ``Learned(None)`` where a learned value was.
    """

    def learned_part(x):
        return x if is_learned(x) else None

    def fixed_part(x):
        return Learned(jax.tree.map(lambda _: None, x.value)) if is_learned(x) else x

    learned = jax.tree.map(learned_part, state, is_leaf=is_learned)
    fixed = jax.tree.map(fixed_part, state, is_leaf=is_learned)
    return learned, fixed


def combine(learned: PyTree, fixed: PyTree) -> PyTree:
    """Inverse of `partition`: ``combine(*partition(s))`` equals ``s``."""

    def pick(f, lv):
        return lv if is_learned(f) else f

    return jax.tree.map(pick, fixed, learned, is_leaf=lambda x: is_learned(x) or x is None)


def _trainable_flags(params: PyTree, comp_state: PyTree) -> tuple[PyTree, PyTree]:
    """True at every parameter leaf and every leaf inside a `Learned` node."""
    p_flags = jax.tree.map(lambda _: True, params)

    def mark(x):
        return jax.tree.map(lambda _: True, x) if is_learned(x) else False

    return p_flags, jax.tree.map(mark, comp_state, is_leaf=is_learned)


def split_trainable(params: PyTree, comp_state: PyTree) -> tuple[PyTree, PyTree]:
    """Splits ``(params, comp_state)`` into ``(trainable, rest)``, once.

    A leaf is trainable when it is floating and is a parameter or sits inside a
    `Learned` node. Integer and boolean leaves (codes, masks, counters) are never
    differentiated nor handed to the optimizer.

    Returns:
      Two trees with the structure of ``(params, comp_state)``, each holding None where
      the other holds the leaf. ``trainable`` is what the optimizer is initialised on.
    """
    both = (params, comp_state)
    leaves, treedef = jax.tree.flatten(both)
    flags = treedef.flatten_up_to(_trainable_flags(params, comp_state))
    take = [f and tree.is_floating(x) for x, f in zip(leaves, flags, strict=True)]
    trainable = [x if t else None for x, t in zip(leaves, take, strict=True)]
    rest = [None if t else x for x, t in zip(leaves, take, strict=True)]
    return jax.tree.unflatten(treedef, trainable), jax.tree.unflatten(treedef, rest)


def join(trainable: PyTree, rest: PyTree) -> tuple[PyTree, PyTree]:
    """Inverse of `split_trainable`: ``(params, comp_state)``."""
    return jax.tree.map(
        lambda t, r: r if t is None else t, trainable, rest, is_leaf=lambda x: x is None
    )
