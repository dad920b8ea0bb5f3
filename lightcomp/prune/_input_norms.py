"""The input-feature norms Wanda scores need, recorded by intercepting a linen model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightcomp import tree as lt

PyTree = Any
_COLLECTION = "_lightcomp_input_sq"


def _interceptor(next_fun, args, kwargs, context):
    """Sows ``sum(x**2)`` over the rows of every ``nn.Dense`` input, then calls the layer."""
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
        x = jnp.asarray(args[0]).astype(jnp.float32)
        sq = jnp.sum(jnp.square(x).reshape(-1, x.shape[-1]), axis=0)
        context.module.sow(_COLLECTION, "sq", sq)
    return next_fun(*args, **kwargs)


def input_norms(
    model: nn.Module,
    params: PyTree,
    batches: Iterable[Any],
    *,
    method: str | Callable | None = None,
) -> PyTree:
    """Per-input-feature L2 norms of the inputs of every ``nn.Dense`` of a linen model.

    The calibration batches run through ``model.apply`` (jitted) while
    ``flax.linen.intercept_methods`` records ``sum(x**2)`` over all rows of each Dense
    input; the norms are ``sqrt`` of the sums over all batches.

    Args:
      model: a linen module.
      params: its ``params`` collection.
      batches: an iterable of input arrays ``[batch, ..., in]``, or of dicts with an
        ``"inputs"`` key.
      method: passed to ``model.apply`` (default ``__call__``).

    Returns:
      A tree mirroring ``params`` with a float32 ``[in]`` vector at each Dense ``kernel``
      and None elsewhere (for `lightcomp.prune.wanda`).

    Raises:
      ValueError: ``batches`` is empty, or the model has no Dense layer.

    References:
      Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large
      Language Models", 2023.

    Example:
      >>> model = lc.models.MLP((3, 2))
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
      >>> x = jnp.array([[3.0, 0.0, 1.0, 2.0], [4.0, 1.0, 0.0, 0.0]])
      >>> lc.prune.input_norms(model, params, [x])["Dense_0"]["kernel"]
      Array([5., 1., 1., 2.], dtype=float32)
    """

    @jax.jit
    def one_batch(p, x):
        with nn.intercept_methods(_interceptor):
            _, state = model.apply({"params": p}, x, mutable=[_COLLECTION], method=method)
        return state.get(_COLLECTION, {})

    total = None
    for batch in batches:
        x = batch["inputs"] if isinstance(batch, Mapping) else batch
        sums = one_batch(params, x)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if total is None:
        raise ValueError("batches is empty: input_norms needs at least one calibration batch")
    by_module: dict[str, jax.Array] = {}
    for path, leaf in lt.leaves_with_paths(total, argname="intermediates"):
        module = path.rsplit("/sq/", 1)[0]
        by_module[module] = by_module.get(module, 0.0) + leaf
    if not by_module:
        raise ValueError("model has no nn.Dense layer: input_norms found no input to record")
    ptree = jax.tree.unflatten(jax.tree.structure(params), lt.paths(params))

    def one(path):
        module, _, name = path.rpartition("/")
        if name == "kernel" and module in by_module:
            return jnp.sqrt(by_module[module])
        return None

    return jax.tree.map(one, ptree)
