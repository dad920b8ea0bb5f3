"""Uniform quantization: fake quantization with a straight-through estimator, integer tensors,
range calibration, learned step sizes, binary/ternary weights, float casts, gradients and
activations of unmodified Flax models.

Conventions (fixed by the public contract; round half to even everywhere):

- symmetric, signed, ``b`` bits: ``qmax = 2**(b-1) - 1``, ``scale = max|x| / qmax``,
  ``q = clip(round(x / scale), -qmax, qmax)``, ``x_hat = q * scale`` (narrow range).
- asymmetric, unsigned, ``b`` bits: the range ``[min, max]`` is first widened to include 0,
  ``scale = (max - min) / (2**b - 1)``, ``zero_point = round(-min / scale)``,
  ``q = clip(round(x / scale) + zero_point, 0, 2**b - 1)``, ``x_hat = (q - zero_point) * scale``.
- ``axis`` names the axis that keeps its own scale (Flax kernels: -1, the output channel),
  or a tuple of axes whose every combination keeps its own (heads x head_dim of an attention
  kernel); ``None`` gives one scale for the whole tensor. With ``group_size``, ``group_size``
  consecutive elements along ``group_axis`` (default: the input axis, -2 for a kernel) share
  a scale. A `Layout` (from `layout`) holds this and every quantizer reads it. Which axes a
  Flax leaf's output units and input axis are comes from `lightcomp.tree.axes`.
- Statistics (ranges, scales, zero points) are float32; a fake-quantized tensor keeps its dtype.
- A zero range (an all-zero tensor or channel) has ``scale = 0`` and quantizes to exactly 0.

Integer matmuls: `int_dot_general` and `int_conv_general_dilated` contract two `QTensor`s
(int8 codes; 2..4-bit codes may be held two per byte, `PackedInt4`) exactly in int32 and
rescale once in float32; `lightcomp.serve` runs Flax models on them. In training,
`activation_quant` (linen) and `FakeQuantInputs` (nnx) with ``weight_bits`` run the forward of
Dense, DenseGeneral, Conv and Einsum on the same integer contractions, with the fake-quant
(straight-through) backward in float; their ranges are dynamic, EMA or calibrated, per tensor,
token or channel, and `lightcomp.train.linen_apply` carries them in the step's model state.

Numerics (rounding, clipping, noise) are kept apart from calibration (where a range comes
from): every quantizer accepts ``range=(min, max)`` from `minmax_range`, `ema_range_update`,
`percentile_range` or `mse_range`, and uses the tensor's own min/max when none is given.
"""

from lightcomp.quant._activations import ActQuant, activation_quant
from lightcomp.quant._binary import binarize, ternarize
from lightcomp.quant._calibration import (
    EmaRange,
    ema_range_init,
    ema_range_update,
    minmax_range,
    mse_range,
    percentile_range,
)
from lightcomp.quant._cast import cast
from lightcomp.quant._fake_quant import fake_quant
from lightcomp.quant._grads import dequantize_grads, grad_scales, quantize_grads
from lightcomp.quant._int_dot import (
    PackedInt4,
    int_conv_general_dilated,
    int_dot_general,
    pack_int4,
)
from lightcomp.quant._int_forward import einsum_dims, einsum_parts
from lightcomp.quant._layout import Layout, layout
from lightcomp.quant._lsq import lsq_fake_quant, lsq_init_scale
from lightcomp.quant._nnx import FakeQuantInputs, wrap_nnx
from lightcomp.quant._numerics import check_bits, qrange
from lightcomp.quant._qtensor import QTensor, dequantize, quantize
from lightcomp.quant._ste import straight_through

__all__ = [
    "ActQuant",
    "EmaRange",
    "FakeQuantInputs",
    "Layout",
    "PackedInt4",
    "QTensor",
    "activation_quant",
    "binarize",
    "cast",
    "check_bits",
    "dequantize",
    "dequantize_grads",
    "einsum_dims",
    "einsum_parts",
    "ema_range_init",
    "ema_range_update",
    "fake_quant",
    "grad_scales",
    "int_conv_general_dilated",
    "int_dot_general",
    "layout",
    "lsq_fake_quant",
    "lsq_init_scale",
    "minmax_range",
    "mse_range",
    "pack_int4",
    "percentile_range",
    "qrange",
    "quantize",
    "quantize_grads",
    "straight_through",
    "ternarize",
    "wrap_nnx",
]
