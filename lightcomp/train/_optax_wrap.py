"""`wrap_optax`: compression inside your own training loop, as one optax transformation.

Research code has its own train step (flax ``TrainState``, ``nnx.Optimizer``, loops in the
style of big_vision or MaxText). `wrap_optax` turns an optax optimizer and a compression
transform into one ``GradientTransformation`` whose state carries the compression state;
`effective` gives the parameters the forward pass must use. The loop changes in two
lines: the optimizer, and the forward on ``effective(params, opt_state)``.

Gradients: `effective` has a straight-through gradient (the identity with respect to
``params``), so the gradient a loop computes is the gradient with respect to the
effective parameters. ``update`` turns it into the true gradients of the raw parameters
and of the learned quantities (shared centroids, LSQ step sizes) with one vector-Jacobian
product of ``transform.apply`` (e.g. segment sums for centroids, the clipped STE and the
LSQ step-size gradient for quantization), trains both with the inner optimizer, keeps
pruned weights exactly zero and refreshes the compression state on its own schedule.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lightcomp import _checks, prune, quant, tree
from lightcomp.train._state import check_optimizer, check_transform
from lightcomp.transform import Transform, join, masks_of, split_trainable

PyTree = Any


@jax.tree_util.register_pytree_with_keys_class
class CompressionState:
    """The optax state of `wrap_optax` (a pytree; the transform is static aux data).

    Attributes:
      inner: the inner optimizer's state over the trainable part of ``(params,
        comp_state)`` (`lightcomp.transform.split_trainable`).
      comp_state: the compression transform's state (masks, codes, ranges, learned values).
      count: int32 ``[]``, the number of updates taken (the transform's step).
      transform: the compression transform (static).
    """

    __slots__ = ("comp_state", "count", "inner", "transform")

    def __init__(self, inner, comp_state, count, transform):
        self.inner = inner
        self.comp_state = comp_state
        self.count = count
        self.transform = transform

    def tree_flatten_with_keys(self):
        keys = jax.tree_util.GetAttrKey
        children = (
            (keys("inner"), self.inner),
            (keys("comp_state"), self.comp_state),
            (keys("count"), self.count),
        )
        return children, self.transform

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, aux)

    def effective(self, params: PyTree) -> PyTree:
        """``transform.apply(params, comp_state)`` with a straight-through gradient.

        nnx ``Variable`` wrappers (an ``nnx.State`` of params, an ``nnx.Optimizer``'s
        ``OptVariable`` state) are looked through; the result has ``params``' structure.
        """
        pure = nnx.as_pure(params)
        eff = self.transform.apply(pure, nnx.as_pure(self.comp_state))
        leaves = [
            quant.straight_through(p, jax.lax.stop_gradient(e))
            for p, e in zip(jax.tree.leaves(pure), jax.tree.leaves(eff), strict=True)
        ]
        return jax.tree.unflatten(jax.tree.structure(params), leaves)

    def __repr__(self) -> str:
        return f"CompressionState(count={self.count!r}, comp_state={self.comp_state!r})"


def _is_state(x: Any) -> bool:
    return isinstance(x, CompressionState)


def find_compression_state(opt_state: PyTree, argname: str = "opt_state") -> CompressionState:
    """The one `CompressionState` inside any optax nesting (chain, MultiSteps, ...).

    Raises:
      ValueError: there is none, or more than one.
    """
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_state) if _is_state(x)]
    if not found:
        raise ValueError(
            f"{argname} holds no lightcomp compression state: build the optimizer with "
            "lightcomp.wrap_optax(optimizer, transform, key) and pass its state"
        )
    if len(found) > 1:
        raise ValueError(f"{argname} holds {len(found)} lightcomp compression states, not one")
    return found[0]


def effective(params: PyTree, opt_state: PyTree) -> PyTree:
    """The parameters the forward pass uses: the compression of ``params`` (jittable).

    Its gradient with respect to ``params`` is the identity (straight-through), so
    ``jax.grad`` of a loss on ``effective(params, opt_state)`` is the gradient with
    respect to the effective parameters; `wrap_optax`'s ``update`` expects exactly that.

    Args:
      params: the raw parameters (as the optimizer sees them).
      opt_state: the state of a `wrap_optax` optimizer, or of any optax nesting that holds
        one (``chain``, ``inject_hyperparams``, ``multi_transform``, ``MultiSteps``, ...).

    Returns:
      A tree like ``params``: masked, shared and fake-quantized where the transform says.

    Raises:
      ValueError: ``opt_state`` holds no (or several) lightcomp compression states.
    """
    return find_compression_state(opt_state).effective(params)


def _cotangent(grads: PyTree, params: PyTree) -> PyTree:
    """The user's gradients as a cotangent of ``transform.apply``'s output (float0 for ints)."""

    def one(g, p):
        if tree.is_floating(p):
            return jnp.asarray(g, p.dtype)
        return np.zeros(np.shape(p), jax.dtypes.float0)

    return jax.tree.map(one, grads, params)


def _masks(comp_state: PyTree, trainable: PyTree) -> PyTree | None:
    """The pruning masks as a tree over ``trainable`` (None over the learned part)."""
    masks = masks_of(comp_state)
    if masks is None:
        return None
    return masks, jax.tree.map(lambda _: None, trainable[1])


def wrap_optax(
    optimizer: optax.GradientTransformation, transform: Transform, key: jax.Array
) -> optax.GradientTransformationExtraArgs:
    """An optax optimizer that also compresses: masks, ranges and codes in its state.

    ``init(params)`` initialises the transform on ``params`` (with ``key``) and the inner
    optimizer on the trainable part of ``(params, comp_state)``. ``update(grads, state,
    params)`` takes the gradient of a loss on `effective` params and

    1. turns it into the gradients of the raw params and of the learned quantities (one
       VJP of ``transform.apply``);
    2. runs the inner optimizer on both, pruned weights getting no gradient
       (`lightcomp.prune.keep_pruned`); the learned quantities are updated in the state;
    3. refreshes the compression state (``transform.update`` at the state's own step);
    4. returns param updates that land pruned weights on exactly 0.0, new masks included.

    Args:
      optimizer: any optax ``GradientTransformation`` (``adam``, a ``chain``, ...).
      transform: a `lightcomp.Transform` (``lc.chain(lc.pruning(...), ...)``).
      key: a PRNG key for the transform's ``init``.

    Returns:
      A ``GradientTransformationExtraArgs``; its ``update`` needs ``params``. Works with
      ``flax.training.train_state.TrainState``, ``nnx.Optimizer`` and ``optax.MultiSteps``.

    Raises:
      TypeError: ``optimizer`` is not an optax transformation, ``transform`` not a
        `lightcomp.Transform`, or ``key`` not a PRNG key.
    """
    check_optimizer(optimizer)
    check_transform(transform)
    _checks.check_key(key)
    inner = optax.with_extra_args_support(optimizer)
    guard = prune.keep_pruned(inner)

    def init(params):
        comp_state = transform.init(params, key)
        trainable, _ = split_trainable(params, comp_state)
        return CompressionState(
            inner.init(trainable), comp_state, jnp.zeros((), jnp.int32), transform
        )

    def update(grads, state, params=None, **extra_args):
        if params is None:
            raise ValueError(
                "wrap_optax's update needs params: call tx.update(grads, state, params)"
            )
        if not _is_state(state):
            raise TypeError(
                f"state must be the state of this wrap_optax optimizer, got {type(state).__name__}"
            )
        trainable, rest = split_trainable(params, state.comp_state)
        _, vjp = jax.vjp(lambda tr: transform.apply(*join(tr, rest)), trainable)
        (true_grads,) = vjp(_cotangent(grads, params))
        masks = _masks(state.comp_state, trainable)
        if masks is None:
            updates, inner_state = inner.update(true_grads, state.inner, trainable, **extra_args)
        else:
            updates, inner_state = guard.update(
                true_grads, state.inner, trainable, masks=masks, **extra_args
            )
        new_params, comp = join(optax.apply_updates(trainable, updates), rest)
        comp = transform.update(new_params, comp, true_grads[0], state.count)
        param_updates = jax.tree.map(  # zero updates for the integer leaves nothing trains
            lambda u, p: jnp.zeros_like(p) if u is None else u,
            updates[0],
            params,
            is_leaf=lambda x: x is None,
        )
        new_masks = masks_of(comp)
        if new_masks is not None:
            param_updates = prune.land_pruned(param_updates, new_masks, params)
        return param_updates, CompressionState(inner_state, comp, state.count + 1, transform)

    return optax.GradientTransformationExtraArgs(init, update)
