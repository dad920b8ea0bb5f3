"""Importance scores: the one thing a pruning algorithm decides.

Every score function returns a float32 tree mirroring the parameters, with ``None`` at
leaves that are not selected (by default: Flax kernels and embeddings by name, see
`lightcomp.tree`). The lowest scores are pruned first by `lightcomp.prune.masks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from lightcomp import tree as lt
from lightcomp._checks import check_callable, check_floating, check_key

PyTree = Any


def map_scores(fn, params: PyTree, *others: PyTree, select, names) -> PyTree:
    """Maps ``fn(path, w, *others)`` over the selected leaves; None elsewhere.

    Each tree of ``others`` (named by ``names``, for messages) must mirror ``params`` and
    hold an array of the leaf's shape at every selected leaf.
    """
    for other, name in zip(others, names, strict=True):
        lt.check_mirror(params, other, name, shapes=False)

    def one(path, w, *rest):
        for r, name in zip(rest, names, strict=True):
            if r is None:
                raise ValueError(f"{name} has no value at selected leaf {path!r}")
            lt.check_shape(path, w, r, name)
        return fn(path, w, *rest)

    return lt.map_selected(one, params, *others, select=select, unselected="none", with_path=True)


def magnitude(params: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """Magnitude scores ``|w|``.

    Args:
      params: parameter pytree.
      select: which leaves; default by role (`lightcomp.tree.default_rule`).

    Returns:
      float32 tree, each selected leaf's shape; None at unselected leaves.

    References:
      Han, Pool, Tran & Dally, "Learning both Weights and Connections for Efficient
      Neural Networks", 2015.

    Example:
      >>> params = {"w": jnp.array([[1.0, -3.0], [0.5, 2.0]]), "b": jnp.ones(2)}
      >>> lc.prune.magnitude(params)["w"]
      Array([[1. , 3. ],
             [0.5, 2. ]], dtype=float32)
    """
    fn = lambda _, w: jnp.abs(w).astype(jnp.float32)
    return map_scores(fn, params, select=select, names=())


def gradient(params: PyTree, grads: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """Gradient scores ``|g|``: weights where the loss is insensitive go first.

    Args:
      params: parameter pytree (decides selection).
      grads: gradients, the structure and shapes of ``params``.
      select: which leaves.

    Returns:
      float32 tree; None at unselected leaves.

    Example:
      >>> params = {"w": jnp.ones((2, 2))}
      >>> lc.prune.gradient(params, {"w": jnp.array([[0.5, -2.0], [1.0, 0.0]])})["w"]
      Array([[0.5, 2. ],
             [1. , 0. ]], dtype=float32)
    """
    fn = lambda _, w, g: jnp.abs(g).astype(jnp.float32)
    return map_scores(fn, params, grads, select=select, names=("grads",))


def taylor(params: PyTree, grads: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """First-order Taylor saliency ``|w * g|``.

    Args:
      params: parameter pytree (decides selection).
      grads: gradients, the structure and shapes of ``params``.
      select: which leaves.

    Returns:
      float32 tree, each selected leaf's shape; None at unselected leaves.

    References:
      Molchanov, Tyree, Karras, Aila & Kautz, "Pruning Convolutional Neural Networks
      for Resource Efficient Inference", 2017.

    Example:
      >>> params = {"w": jnp.array([[1.0, -2.0], [3.0, 4.0]])}
      >>> lc.prune.taylor(params, {"w": jnp.full((2, 2), -0.5)})["w"]
      Array([[0.5, 1. ],
             [1.5, 2. ]], dtype=float32)
    """
    fn = lambda _, w, g: jnp.abs(w.astype(jnp.float32) * g.astype(jnp.float32))
    return map_scores(fn, params, grads, select=select, names=("grads",))


def fisher(params: PyTree, sq_grads: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """Diagonal-Fisher (Optimal Brain Damage) saliency ``0.5 * w**2 * F``.

    ``F`` is the running mean of squared per-batch gradients, from `sq_grads_init` /
    `sq_grads_update` (pass ``acc.mean``) or any tree of the params' shapes (None allowed
    at unselected leaves).

    Args:
      params: parameter pytree.
      sq_grads: mean squared gradients, params' shapes.
      select: which leaves.

    Returns:
      float32 tree, each selected leaf's shape; None at unselected leaves.

    References:
      LeCun, Denker & Solla, "Optimal Brain Damage", 1990; Theis, Korshunova, Tejani &
      Huszár, "Faster gaze prediction with dense networks and Fisher pruning", 2018.

    Example:
      >>> params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
      >>> acc = lc.prune.sq_grads_init(params)
      >>> for g in (1.0, 3.0):
      ...     acc = lc.prune.sq_grads_update(acc, {"w": jnp.full((2, 2), g)})
      >>> lc.prune.fisher(params, acc.mean)["w"]
      Array([[ 2.5, 10. ],
             [22.5, 40. ]], dtype=float32)
    """
    fn = lambda _, w, f: 0.5 * jnp.square(w.astype(jnp.float32)) * f.astype(jnp.float32)
    return map_scores(fn, params, sq_grads, select=select, names=("sq_grads",))


def movement(params: PyTree, grads_accum: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """Movement scores ``-w * G`` with ``G`` the gradient accumulated over training steps.

    Weights moving away from zero score high and are kept; weights the optimizer pushes
    towards zero go first.

    Args:
      params: parameter pytree.
      grads_accum: gradients summed over the steps so far, params' shapes.
      select: which leaves.

    Returns:
      float32 tree, each selected leaf's shape; None at unselected leaves.

    References:
      Sanh, Wolf & Rush, "Movement Pruning: Adaptive Sparsity by Fine-Tuning", 2020.

    Example:
      >>> params = {"w": jnp.array([[1.0, -1.0], [2.0, 0.5]])}
      >>> lc.prune.movement(params, {"w": jnp.ones((2, 2))})["w"]
      Array([[-1. ,  1. ],
             [-2. , -0.5]], dtype=float32)
    """
    fn = lambda _, w, g: -(w.astype(jnp.float32) * g.astype(jnp.float32))
    return map_scores(fn, params, grads_accum, select=select, names=("grads_accum",))


def random_scores(key: jax.Array, params: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """Uniform random scores in [0, 1) (the random-pruning baseline); one key per leaf.

    Args:
      key: a PRNG key.
      params: parameter pytree (shapes only).
      select: which leaves.

    Returns:
      float32 tree, each selected leaf's shape; None at unselected leaves.

    Raises:
      TypeError: ``key`` is not a PRNG key.

    Example:
      >>> params = {"w": jnp.ones((4, 5))}
      >>> s = lc.prune.random_scores(jax.random.key(0), params)
      >>> int((~lc.prune.masks(s, 0.5)["w"]).sum())
      10
    """
    check_key(key)
    flags = jax.tree.leaves(lt.selection(params, select))
    keys = iter(jax.random.split(key, max(1, len(flags))))
    fn = lambda _, w: jax.random.uniform(next(keys), w.shape, jnp.float32)
    return map_scores(fn, params, select=select, names=())


def wanda(params: PyTree, input_norms: PyTree, *, select: lt.SelectLike = None) -> PyTree:
    """Wanda scores ``|W_ij| * ||X_i||_2``: weight magnitude times input-feature norm.

    Args:
      params: parameter pytree; kernels ``(..., in, out)``.
      input_norms: a tree mirroring params with a float ``[in]`` vector at each selected
        kernel (see `lightcomp.prune.input_norms`), None elsewhere.
      select: which leaves.

    Returns:
      float32 scores; None at unselected leaves. The paper compares weights per output:
      use ``masks(..., scope="output")``.

    References:
      Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large
      Language Models", 2023.

    Example:
      >>> params = {"w": jnp.array([[1.0, -2.0], [3.0, 4.0]])}
      >>> lc.prune.wanda(params, {"w": jnp.array([2.0, 0.5])})["w"]
      Array([[2. , 4. ],
             [1.5, 2. ]], dtype=float32)
    """
    lt.check_mirror(params, input_norms, "input_norms", shapes=False)

    def one(path, w, norm):
        if norm is None:
            raise ValueError(f"input_norms has no value at selected leaf {path!r}")
        if w.ndim < 2 or tuple(norm.shape) != (w.shape[-2],):
            raise ValueError(
                f"input_norms leaf {path!r} has shape {tuple(norm.shape)}, "
                f"expected ({w.shape[-2] if w.ndim >= 2 else '?'},) for kernel {tuple(w.shape)}"
            )
        return jnp.abs(w.astype(jnp.float32)) * norm.astype(jnp.float32)[:, None]

    return lt.map_selected(
        one, params, input_norms, select=select, unselected="none", with_path=True
    )


class ScoreFn(NamedTuple):
    """A score as a function, and whether it needs gradients.

    Attributes:
      fn: ``fn(params, grads, select) -> scores``: a float32 tree mirroring ``params``,
        None at unselected leaves (``grads`` may be None when ``needs_grads`` is False).
      needs_grads: whether ``fn`` reads ``grads``.
    """

    fn: Callable[[PyTree, PyTree, lt.SelectLike], PyTree]
    needs_grads: bool


_ALIASES = {"magnitude": magnitude, "gradient": gradient, "taylor": taylor}


def _check_grads(grads: PyTree, name: str) -> None:
    if grads is None:
        raise ValueError(f"score {name} needs grads, got None")


def _magnitude_fn(params, grads, select):
    del grads
    return magnitude(params, select=select)


def _gradient_fn(params, grads, select):
    _check_grads(grads, "gradient")
    return gradient(params, grads, select=select)


def _taylor_fn(params, grads, select):
    _check_grads(grads, "taylor")
    return taylor(params, grads, select=select)


_LIBRARY = (
    (magnitude, ScoreFn(_magnitude_fn, False)),
    (gradient, ScoreFn(_gradient_fn, True)),
    (taylor, ScoreFn(_taylor_fn, True)),
)


def as_score(score: str | Callable[..., PyTree] | ScoreFn) -> ScoreFn:
    """Turns a score (a library function, its name, or a user function) into a `ScoreFn`.

    Args:
      score: `magnitude` (needs no gradients), `gradient` or `taylor` (need them), the
        strings ``"magnitude"``, ``"gradient"``, ``"taylor"`` for those three, a user
        function ``(params, grads) -> scores`` (needs gradients; its output must mirror
        ``params`` with a float array of the leaf's shape at every selected leaf, checked
        at each call), or a `ScoreFn` (returned as is).

    Returns:
      A `ScoreFn`.

    Raises:
      ValueError: an unknown score name.
      TypeError: ``score`` is neither a name nor callable.

    Example:
      >>> params = {"w": jnp.array([[1.0, -3.0], [0.5, 2.0]])}
      >>> fn, needs_grads = lc.prune.as_score("magnitude")
      >>> needs_grads, fn(params, None, None)["w"].tolist()
      (False, [[1.0, 3.0], [0.5, 2.0]])
      >>> custom = lc.prune.as_score(lambda p, g: {"w": p["w"] ** 2})
      >>> custom.needs_grads
      True
    """
    if isinstance(score, ScoreFn):
        return score
    if isinstance(score, str):
        if score not in _ALIASES:
            raise ValueError(
                f"score must be one of {list(_ALIASES)} or a function (params, grads) -> "
                f"scores, got {score!r}"
            )
        score = _ALIASES[score]
    check_callable(score, "score")
    for library, score_fn in _LIBRARY:
        if score is library:
            return score_fn
    return ScoreFn(_user_score(score), True)


def _user_score(score: Callable[[PyTree, PyTree], PyTree]):
    """``(params, grads, select) -> scores`` for a user's ``(params, grads) -> scores``.

    The output is checked at each call to mirror params, with a float array of the leaf's
    shape at every selected leaf (errors name the path), and cast to float32.
    """
    argname = "score function output"

    def one(path, w, sc):
        if sc is None:
            raise ValueError(f"{argname} has no value at selected leaf {path!r}")
        check_floating(sc, argname, path=path)
        lt.check_shape(path, w, sc, argname)
        return jnp.asarray(sc, jnp.float32)

    def fn(params, grads, select):
        _check_grads(grads, "function")
        scores = score(params, grads)
        lt.check_mirror(params, scores, argname, shapes=False)
        return lt.map_selected(
            one, params, scores, select=select, unselected="none", with_path=True
        )

    return fn
