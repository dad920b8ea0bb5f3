"""Running the distillation step on many devices: pmap, jit over a mesh, shard_map.

The same pure step (`lightcomp.train.make_step`) runs under ``jax.pmap``
(`pmap_step`), ``jax.jit`` over a device mesh (`data_parallel`, what JAX now
recommends) or ``jax.shard_map`` (`shard_map_step`), with the numbers of one device
on the same global batch; `compressed_pmean` is a quantized gradient all-reduce.
"""

from lightcomp.parallel._allreduce import allreduce_bytes, compressed_mean, compressed_pmean
from lightcomp.parallel._mesh import make_mesh, model_spec, place, replicate, state_shardings
from lightcomp.parallel._steps import data_parallel, pmap_step, shard_batch, shard_map_step

__all__ = [
    "allreduce_bytes",
    "compressed_mean",
    "compressed_pmean",
    "data_parallel",
    "make_mesh",
    "model_spec",
    "place",
    "pmap_step",
    "replicate",
    "shard_batch",
    "shard_map_step",
    "state_shardings",
]
