"""lightcomp: pruning, quantization-aware training, weight sharing and knowledge
distillation as pure JAX functions over parameter pytrees.

The face imports every package but the demo (``lightcomp.demo``, imported on use by the
``lightcomp demo`` command).
"""

from lightcomp import (
    checkpoint,
    cluster,
    data,
    distill,
    export,
    models,
    parallel,
    posttrain,
    prune,
    quant,
    serve,
    train,
    transform,
    tree,
)
from lightcomp.train import effective, wrap_optax
from lightcomp.transform import (
    FakeQuantState,
    Learned,
    PruningState,
    Transform,
    WeightSharingState,
    chain,
    combine,
    fake_quantization,
    identity,
    masks_of,
    partition,
    pruning,
    weight_sharing,
)

__version__ = "0.1.0"

__all__ = [
    "FakeQuantState",
    "Learned",
    "PruningState",
    "Transform",
    "WeightSharingState",
    "chain",
    "checkpoint",
    "cluster",
    "combine",
    "data",
    "distill",
    "effective",
    "export",
    "fake_quantization",
    "identity",
    "masks_of",
    "models",
    "parallel",
    "partition",
    "posttrain",
    "prune",
    "pruning",
    "quant",
    "serve",
    "train",
    "transform",
    "tree",
    "weight_sharing",
    "wrap_optax",
]
