"""The `Transform` triple, its composition, and the configuration check of states.

A compression step is a `Transform`: a NamedTuple of three pure functions, composed
with `chain` the way optax composes ``GradientTransformation``s. A transform's state
holds arrays only; its static configuration lives in the constructor's closure. The
state carries a small static *fingerprint* of that configuration (pytree aux data, so
it costs nothing under ``jit``), and a transform refuses a state built under another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax

from lightcomp._checks import check_key

PyTree = Any


class Transform(NamedTuple):
    """A compression step: a triple of pure functions over a parameter pytree.

    Attributes:
      init: ``(params, key) -> state``.
      apply: ``(params, state) -> effective params``, same structure, shapes and dtypes.
      update: ``(params, state, grads, step) -> state``; ``grads`` are the gradients
        with respect to the raw params (for gradient-based scores; None is accepted by
        transforms that do not need them), ``step`` an int32 scalar (may be traced).
    """

    init: Callable[[PyTree, jax.Array], PyTree]
    apply: Callable[[PyTree, PyTree], PyTree]
    update: Callable[[PyTree, PyTree, PyTree, jax.Array], PyTree]


def fingerprint(name: str, **config: Any) -> str:
    """A readable fingerprint of a transform's static configuration, e.g.
    ``"fake_quantization(bits=8, axis=-1)"``."""
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in config.items())})"


def check_state(state: Any, cls: type, expected: str) -> None:
    """Refuses a state of another type or built under another configuration.

    Raises:
      TypeError: ``state`` is not a ``cls``.
      ValueError: its fingerprint differs from ``expected``; the message gives both.
    """
    name = expected.split("(", 1)[0]
    if not isinstance(state, cls):
        raise TypeError(
            f"{name} expects a {cls.__name__} (from its init), got {type(state).__name__}"
        )
    if state.fingerprint != expected:
        raise ValueError(
            f"{name}: this state was built by a transform configured as "
            f"{state.fingerprint or '<unknown>'}, but it is applied by one configured as "
            f"{expected}; build the state with this transform's init"
        )


def identity() -> Transform:
    """The transform that changes nothing; its state is an empty tuple."""

    def init(params, key):
        del params
        check_key(key)
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
    Deep Compression order; any order works. Each transform's ``init`` and
    ``update`` see the parameters as the transforms before it left them (so
    weight sharing clusters the pruned weights); ``grads`` are passed unchanged.

    Raises:
      TypeError: an argument is not a `Transform`.
    """
    for i, t in enumerate(transforms):
        if not isinstance(t, Transform):
            raise TypeError(
                f"chain argument {i} must be a lightcomp Transform, got {type(t).__name__}"
            )
    n = len(transforms)

    def check(state):
        if not isinstance(state, tuple) or len(state) != n:
            got = f"a tuple of {len(state)}" if isinstance(state, tuple) else type(state).__name__
            raise ValueError(
                f"state of a chain of {n} transforms must be a tuple of {n} states, got {got}"
            )

    def init(params, key):
        check_key(key)
        keys = jax.random.split(key, max(n, 1))
        states = []
        for t, k in zip(transforms, keys, strict=False):
            states.append(t.init(params, k))
            params = t.apply(params, states[-1])
        return tuple(states)

    def apply(params, state):
        check(state)
        for t, s in zip(transforms, state, strict=True):
            params = t.apply(params, s)
        return params

    def update(params, state, grads, step):
        check(state)
        new_states = []
        for t, s in zip(transforms, state, strict=True):
            new_states.append(t.update(params, s, grads, step))
            params = t.apply(params, new_states[-1])
        return tuple(new_states)

    return Transform(init, apply, update)
