"""Post-training compression, one shot and layer by layer, from calibration inputs.

``apply_fn(params, inputs)`` runs unchanged over a few calibration batches while every
Dense / DenseGeneral / Conv / Einsum call (linen or nnx) is intercepted and the Gram
matrix ``H = sum x^T x`` of its inputs is summed along the kernel's input axes, in
float32. From ``H``: `sparsegpt` (pruning with the optimal-brain-surgeon update,
unstructured or n:m, optionally quantizing in the same pass), `gptq` (quantization with
second-order error feedback on lightcomp's grid), `wanda` (``|w| * ||x||``), and the
baselines `magnitude` and `rtn` through the same entry points::

    apply = lambda p, x: model.apply({"params": p}, x)
    pruned = lc.posttrain.sparsegpt(apply, params, calib, sparsity=0.5)   # or lc.prune.NM(2, 4)
    quantized = lc.posttrain.gptq(apply, params, calib, bits=4, group_size=128)
    pruned, state = lc.posttrain.wanda(apply, params, calib, return_state=True)

Sequential mode (the default, as in the papers) calibrates each group of layers on the
model whose earlier layers are already compressed. ``return_state=True`` also returns the
compression state the transforms use (a `lightcomp.PruningState`'s masks, a
`lightcomp.FakeQuantState`'s grid), so a short ``lc.train.make_step`` distillation can
recover accuracy while keeping both (build those transforms with the same ``select``:
its leaves must all be compressed layers, so an embedding is left out by name). A scanned stack (``nn.scan``, or blocks made by
``nnx.vmap`` and run by ``nnx.scan``; kernels ``[layers, ...]``) is seen layer by layer:
every slice is a layer of its own, with its own Gram matrix, counts and grid, compressed
in the same order as the unrolled model. An ``apply_fn`` already wrapped in ``jax.jit`` is
not traced anew: pass the plain function.

`CharLM`, `stdlib_text`, `encode`, `windows`, `train_char_lm` and `perplexity` are the small character-level
language model the benchmark and the demo compress.
"""

from lightcomp.posttrain._baselines import magnitude, rtn
from lightcomp.posttrain._calibration import Gram, grams
from lightcomp.posttrain._gptq import gptq, gptq_matrix
from lightcomp.posttrain._layers import LayerError, LayerView
from lightcomp.posttrain._lm import Block, CharLM, next_char_loss, perplexity, train_char_lm
from lightcomp.posttrain._sparsegpt import sparsegpt, sparsegpt_matrix
from lightcomp.posttrain._text import encode, stdlib_text, windows
from lightcomp.posttrain._wanda import wanda

__all__ = [
    "Block",
    "CharLM",
    "Gram",
    "LayerError",
    "LayerView",
    "encode",
    "gptq",
    "gptq_matrix",
    "grams",
    "magnitude",
    "next_char_loss",
    "perplexity",
    "rtn",
    "sparsegpt",
    "sparsegpt_matrix",
    "stdlib_text",
    "train_char_lm",
    "wanda",
    "windows",
]
