"""lightcomp: pruning, quantization-aware training, weight sharing and knowledge
distillation as pure JAX functions over parameter pytrees."""

from lightcomp import data, models, transform, tree
from lightcomp.transform import Learned, Transform, chain, combine, identity, partition

__version__ = "0.1.0"

__all__ = [
    "Learned",
    "Transform",
    "chain",
    "combine",
    "data",
    "identity",
    "models",
    "partition",
    "transform",
    "tree",
]
