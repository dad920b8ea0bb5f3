"""Compression transforms that compose like optax's gradient transformations.

A `Transform` is a NamedTuple of three pure functions:

- ``init(params, key) -> state``
- ``apply(params, state) -> effective params`` (differentiable; STE where rounding happens)
- ``update(params, state, grads, step) -> state`` (refresh masks, ranges, assignments)

`pruning`, `weight_sharing` and `fake_quantization` wrap `lightcomp.prune`,
`lightcomp.cluster` and `lightcomp.quant`; `chain` composes them (prune -> share ->
quantize is the Deep Compression order; any order works and pruned weights stay
exactly 0.0 through every later stage). Their states hold arrays only, with a static
fingerprint of the configuration that built them.

Learned compression quantities (shared centroids, LSQ step sizes) are wrapped in
`Learned` inside a state. A training step splits ``(params, comp_state)`` once with
`split_trainable`, differentiates the trainable part and updates it with one optax
optimizer; `partition` / `combine` split a state alone into learned and fixed parts.
"""

from lightcomp.transform._base import Transform, chain, check_state, fingerprint, identity
from lightcomp.transform._fake_quantization import FakeQuantState, fake_quantization
from lightcomp.transform._learned import (
    Learned,
    combine,
    is_learned,
    join,
    partition,
    split_trainable,
)
from lightcomp.transform._pruning import PruningState, masks_of, pruning
from lightcomp.transform._weight_sharing import WeightSharingState, weight_sharing

__all__ = [
    "FakeQuantState",
    "Learned",
    "PruningState",
    "Transform",
    "WeightSharingState",
    "chain",
    "check_state",
    "combine",
    "fake_quantization",
    "fingerprint",
    "identity",
    "is_learned",
    "join",
    "masks_of",
    "partition",
    "pruning",
    "split_trainable",
    "weight_sharing",
]
