"""Compression transforms that compose like optax's gradient transformations.

A `Transform` is a NamedTuple of three pure functions:

- ``init(params, key) -> state``
- ``apply(params, state) -> effective params`` (differentiable; STE where rounding happens)
- ``update(params, state, grads, step) -> state`` (refresh masks, ranges, assignments)

Learned compression quantities (shared centroids, LSQ step sizes) are wrapped
in `Learned` inside a transform's state. `partition` splits a state into the
learned part and the fixed part (masks, assignments, ranges), so a training
step differentiates with respect to ``(params, learned)`` and one optax
optimizer updates both; `combine` puts them back together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

__all__ = [
    "Learned",
    "Transform",
    "chain",
    "combine",
    "identity",
    "partition",
]

PyTree = Any


class Transform(NamedTuple):
    """A compression step: a triple of pure functions over a parameter pytree.

    Attributes:
      init: ``(params, key) -> state``.
      apply: ``(params, state) -> effective params``, same structure, shapes and dtypes.
      update: ``(params, state, grads, step) -> state``; ``grads`` are the gradients
        with respect to the raw params (for gradient-based scores), ``step`` an int32 scalar.
    """

    init: Callable[[PyTree, jax.Array], PyTree]
    apply: Callable[[PyTree, PyTree], PyTree]
    update: Callable[[PyTree, PyTree, PyTree, jax.Array], PyTree]


@jax.tree_util.register_pytree_node_class
class Learned:
    """Marks a trainable leaf (or subtree) inside a transform's state.

    `partition` finds these markers; everything else in a state is fixed.
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


def _is_learned(x: Any) -> bool:
    return isinstance(x, Learned)


def partition(state: PyTree) -> tuple[PyTree, PyTree]:
    """Splits a transform state into ``(learned, fixed)``.

    Both have the state's structure with `Learned` nodes kept: ``learned`` holds
    the learned values and ``None`` in every other leaf; ``fixed`` holds the other
    leaves and ``Learned(None)`` where a learned value was.
    """

    def learned_part(x):
        return x if _is_learned(x) else None

    def fixed_part(x):
        return Learned(jax.tree.map(lambda _: None, x.value)) if _is_learned(x) else x

    learned = jax.tree.map(learned_part, state, is_leaf=_is_learned)
    fixed = jax.tree.map(fixed_part, state, is_leaf=_is_learned)
    return learned, fixed


def combine(learned: PyTree, fixed: PyTree) -> PyTree:
    """Inverse of `partition`: ``combine(*partition(s))`` equals ``s``."""

    def pick(f, lv):
        return lv if _is_learned(f) else f

    return jax.tree.map(pick, fixed, learned, is_leaf=lambda x: _is_learned(x) or x is None)


def identity() -> Transform:
    """The transform that changes nothing; its state is an empty tuple."""

    def init(params, key):
        del params, key
        return ()

    def apply(params, state):
        del state
        return params

    def update(params, state, grads, step):
        del params, grads, step
        return state

    return Transform(init, apply, update)


def chain(*transforms: Transform) -> Transform:
    """Applies ``transforms`` in order, keeping their states as a tuple (as ``optax.chain``).

    ``chain(pruning(...), weight_sharing(...), fake_quantization(...))`` is the
    Deep Compression order; any order works.
    """
    for i, t in enumerate(transforms):
        if not isinstance(t, Transform):
            raise TypeError(
                f"chain argument {i} must be a lightcomp Transform, got {type(t).__name__}"
            )

    def init(params, key):
        keys = jax.random.split(key, max(len(transforms), 1))
        states = []
        current = params
        for t, k in zip(transforms, keys, strict=False):
            s = t.init(current, k)
            states.append(s)
            current = t.apply(current, s)
        return tuple(states)

    def apply(params, state):
        _check_chain_state(state, len(transforms))
        for t, s in zip(transforms, state, strict=True):
            params = t.apply(params, s)
        return params

    def update(params, state, grads, step):
        _check_chain_state(state, len(transforms))
        new_states = []
        current = params
        for t, s in zip(transforms, state, strict=True):
            s = t.update(current, s, grads, step)
            new_states.append(s)
            current = t.apply(current, s)
        return tuple(new_states)

    return Transform(init, apply, update)


def _check_chain_state(state: Any, n: int) -> None:
    if not isinstance(state, tuple) or len(state) != n:
        got = f"a tuple of {len(state)}" if isinstance(state, tuple) else type(state).__name__
        raise ValueError(
            f"state of a chain of {n} transforms must be a tuple of {n} states, got {got}"
        )
