"""Pruning a trained model in one call: scores, then masks, then `apply_masks`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lightcomp import tree as lt
from lightcomp.prune._granularity import Element, Granularity, as_granularity
from lightcomp.prune._masks import apply_masks, masks
from lightcomp.prune._scores import ScoreFn, as_score, magnitude, wanda

PyTree = Any


def _scores_of(params, score, input_norms, grads, select) -> PyTree:
    """The scores tree ``one_shot_prune`` ranks, from a score function, name or tree."""
    if score is wanda:
        if input_norms is None:
            raise ValueError("score=wanda needs input_norms= (see lightcomp.prune.input_norms)")
        return wanda(params, input_norms, select=select)
    if not (isinstance(score, (str, ScoreFn)) or callable(score)):
        lt.check_mirror(params, score, "score")
        return score
    try:
        fn, needs_grads = as_score(score)
    except ValueError:
        raise ValueError(
            "score must be magnitude, wanda, gradient or taylor (or their names), a function "
            f"(params, grads) -> scores, or a scores tree; got {score!r}"
        ) from None
    if needs_grads and grads is None:
        name = getattr(score, "__name__", score)
        raise ValueError(f"score {name} needs grads= (one_shot_prune has no training step)")
    return fn(params, grads, select)


def one_shot_prune(
    params: PyTree,
    sparsity: Any,
    *,
    score: Callable[..., PyTree] | str | PyTree = magnitude,
    input_norms: PyTree = None,
    grads: PyTree = None,
    scope: str | None = None,
    granularity: Granularity | str = "element",
    n: int | None = None,
    m: int | None = None,
    block: int | tuple[int, int] | None = None,
    keep_one: bool = False,
    select: lt.SelectLike = None,
) -> tuple[PyTree, PyTree]:
    """Prunes a trained model to ``sparsity`` in one call (no training loop).

    Args:
      params: trained parameters.
      sparsity: as in `lightcomp.prune.masks` (a float, a per-leaf tree such as `erk`'s,
        or None for an n:m granularity).
      score: `magnitude` (default), `wanda` (needs ``input_norms``), any score
        `lightcomp.prune.as_score` takes (`gradient`, `taylor` or a ``(params, grads) ->
        scores`` function: they need ``grads``), the names ``"magnitude"``, ``"wanda"``,
        ``"gradient"``, ``"taylor"``, or a scores tree mirroring params.
      input_norms: from `lightcomp.prune.input_norms`, for `wanda`.
      grads: gradients mirroring params, for a score that needs them.
      scope: as in `masks`; default ``"output"`` for Wanda's element pruning (the paper's
        per-output comparison), else ``"layer"``.
      granularity: as in `masks` (a typed value such as `NM(2, 4)`, or a string).
      n: as in `masks`.
      m: as in `masks`.
      block: as in `masks`.
      keep_one: as in `masks`.
      select: which leaves.

    Returns:
      ``(pruned params, masks)``.

    Raises:
      ValueError: an unknown score name, a score without the inputs it needs, a scores
        tree that does not mirror params, or anything `masks` refuses.

    Example:
      >>> params = {"w": jnp.array([[1.0, -4.0], [2.0, 0.5]]), "b": jnp.ones(2)}
      >>> pruned, keep = lc.prune.one_shot_prune(params, 0.5, score=lc.prune.magnitude)
      >>> pruned["w"]
      Array([[ 0., -4.],
             [ 2.,  0.]], dtype=float32)
    """
    gran = as_granularity(granularity, n=n, m=m, block=block)
    if isinstance(score, str) and score == "wanda":
        score = wanda
    if scope is None:
        scope = "output" if score is wanda and isinstance(gran, Element) else "layer"
    scores = _scores_of(params, score, input_norms, grads, select)
    mk = masks(scores, sparsity, scope=scope, granularity=gran, keep_one=keep_one)
    return apply_masks(params, mk), mk
