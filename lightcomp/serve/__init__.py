"""Integer serving from the packed file: int8 matmuls for unmodified Flax models.

`from_packed` reads a packed model (`lightcomp.export`) with its kernels as
`lightcomp.quant.QTensor` (int8 codes, float32 scales; codes of at most 4 bits two per
byte); `linen` and `nnx` return ``apply(qparams, inputs, **kwargs)`` that runs the model's
own code with every Dense, DenseGeneral, Einsum and Conv as one integer ``dot_general`` /
convolution (`lightcomp.quant.int_dot_general`): the layer's input quantized per tensor
(dynamic, or a calibrated range carried with the parameters), int32 accumulation, one
float32 rescale::

    qparams = lc.serve.from_packed(lc.export.load("model.lcpk"))
    y = jax.jit(lc.serve.linen(model))(qparams, x)

References:
  Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference".
"""

from lightcomp.serve._inputs import InputQuant
from lightcomp.serve._linen import linen
from lightcomp.serve._nnx import Served, nnx
from lightcomp.serve._params import from_packed

__all__ = [
    "InputQuant",
    "Served",
    "from_packed",
    "linen",
    "nnx",
]
