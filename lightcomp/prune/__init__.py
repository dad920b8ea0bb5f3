"""Pruning: scores, one `masks` for every scope and granularity, schedules, penalties,
mask-preserving optimizers and dynamic sparse training.

Everything works on parameter pytrees (a linen ``params`` dict, an ``nnx.State``, any
pytree of arrays). Trees that mirror the parameters (scores, masks, per-leaf sparsities,
input norms) hold ``None`` at leaves that are not selected (by default: Flax kernels and
embeddings by name, or floating arrays with ``ndim >= 2`` in a tree without Flax names;
see `lightcomp.tree`). The algorithm is its score (`as_score`): every
score feeds the one `masks` function, whose counts are exact (ties broken by index) and
which works under ``jax.jit`` with a traced sparsity. The structure of sparsity is a
value: `Element`, `Channel`, `Block`, `NM`.

Conventions:
  * ``sparsity`` is the fraction of selected weights set to zero; the lowest scores go
    first.
  * Which axes of a leaf are layers of a scanned stack, inputs and outputs comes from
    `lightcomp.tree.axes` (Dense ``(in, out)``, Conv ``(h, w, in, out)``, attention
    ``(embed, heads, head_dim)`` / ``(heads, head_dim, embed)``, ``[layers, ...]`` stacks);
    every slice of a stacked leaf is its own layer, n:m groups run along the last input
    axis.
  * Scores and statistics are float32; masks are ``bool`` arrays of the leaf's shape;
    `apply_masks` and `zero_pruned` keep each leaf's dtype.
"""

from lightcomp.prune._distributions import erk
from lightcomp.prune._fold import fold_batchnorm
from lightcomp.prune._granularity import NM, Block, Channel, Element, Granularity, as_granularity
from lightcomp.prune._input_norms import input_norms
from lightcomp.prune._masks import apply_masks, masks
from lightcomp.prune._one_shot import one_shot_prune
from lightcomp.prune._optax import keep_pruned, land_pruned, reset_moments, zero_pruned
from lightcomp.prune._penalties import group_lasso_penalty, l1_penalty
from lightcomp.prune._rebuild import smaller_module
from lightcomp.prune._report import sparsity_report, sparsity_table
from lightcomp.prune._rigl import prune_and_regrow
from lightcomp.prune._schedules import (
    constant_schedule,
    cosine_fraction,
    iterative_schedule,
    one_shot_schedule,
    polynomial_schedule,
)
from lightcomp.prune._scores import (
    ScoreFn,
    as_score,
    fisher,
    gradient,
    magnitude,
    movement,
    random_scores,
    taylor,
    wanda,
)
from lightcomp.prune._shrink import shrink
from lightcomp.prune._sq_grads import SqGrads, sq_grads_init, sq_grads_update

# The names of 0.1.0.
constant = constant_schedule
one_shot = one_shot_schedule
iterative = iterative_schedule
random = random_scores

__all__ = [
    "NM",
    "Block",
    "Channel",
    "Element",
    "Granularity",
    "ScoreFn",
    "SqGrads",
    "apply_masks",
    "as_granularity",
    "as_score",
    "constant",
    "constant_schedule",
    "cosine_fraction",
    "erk",
    "fisher",
    "fold_batchnorm",
    "gradient",
    "group_lasso_penalty",
    "input_norms",
    "iterative",
    "iterative_schedule",
    "keep_pruned",
    "l1_penalty",
    "land_pruned",
    "magnitude",
    "masks",
    "movement",
    "one_shot",
    "one_shot_prune",
    "one_shot_schedule",
    "polynomial_schedule",
    "prune_and_regrow",
    "random",
    "random_scores",
    "reset_moments",
    "shrink",
    "smaller_module",
    "sparsity_report",
    "sparsity_table",
    "sq_grads_init",
    "sq_grads_update",
    "taylor",
    "wanda",
    "zero_pruned",
]
