"""The 0.1.0 path of activation quantization, kept as an alias: use `lightcomp.quant`."""

from lightcomp.quant import ActQuant, FakeQuantInputs, activation_quant, wrap_nnx

__all__ = [
    "ActQuant",
    "FakeQuantInputs",
    "activation_quant",
    "wrap_nnx",
]
