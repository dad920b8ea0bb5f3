"""Serving the MLP with AQT (aqtp) in serve mode.

Each ``nn.Dense`` gets ``dot_general_cls=AqtDotGeneral(fully_quantized(8 bits))``: the
weights are frozen to int8 codes and scales once (``QuantMode.CONVERT``, into the ``aqt``
collection) and served from them (``QuantMode.SERVE``); the activations are quantized
dynamically (per row, AQT's scale over the contracted axis) and the dots run int8 x int8 ->
int32. ``--dump`` writes the frozen codes and scales, for bench_serve's check that
lightcomp's grid, given AQT's scales, gives AQT's codes.
"""

from __future__ import annotations

import functools

import _serving as S
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from aqt.jax.v2 import config as aqt_config
from aqt.jax.v2 import utils
from aqt.jax.v2.flax import aqt_flax


class MLP(nn.Module):
    weights: utils.QuantMode | None = None  # None: float32

    @nn.compact
    def __call__(self, x):
        dg = None
        if self.weights is not None:
            dg = functools.partial(
                aqt_flax.AqtDotGeneral,
                aqt_config.fully_quantized(fwd_bits=8, bwd_bits=8),
                lhs_quant_mode=utils.QuantMode.TRAIN,  # dynamic activations
                rhs_quant_mode=self.weights,
                lhs_freeze_mode=aqt_flax.FreezerMode.NONE,
                rhs_freeze_mode=aqt_flax.FreezerMode.CALIBRATION_AND_VALUE,
                prng_name=None,
            )
        for i, f in enumerate(S.SIZES):
            x = nn.Dense(f, dot_general_cls=dg)(x)
            if i < len(S.SIZES) - 1:
                x = nn.relu(x)
        return x


def build(args):
    x = jnp.asarray(S.inputs(args.batch))
    params = S.params_dict(jnp)
    _, frozen = MLP(utils.QuantMode.CONVERT).apply({"params": params}, x, mutable=True)
    f32, q = jax.jit(MLP().apply), jax.jit(MLP(utils.QuantMode.SERVE).apply)
    fv = {"params": params}
    if args.dump:
        codes = {}
        for name, layer in frozen["aqt"].items():
            qr = layer["AqtDotGeneral_0"]["qrhs"]
            codes[f"{name}/value"] = np.asarray(qr["value"])
            codes[f"{name}/scale"] = np.asarray(qr["scale"])
        np.savez(args.dump, **codes)

    def check():
        dtypes = sorted({str(a.dtype) for a in jax.tree.leaves(frozen["aqt"])})
        err = S.relative_error(q(frozen, x), f32(fv, x))
        return f"frozen weights {dtypes}; max|int8 - float32| / max|float32| = {err:.4f}"

    return {"f32": S.timed(f32, fv, x), "int8": S.timed(q, frozen, x)}, check


def versions() -> str:
    from importlib.metadata import version

    return f"aqtp {version('aqtp')}, jax {jax.__version__}, flax {flax.__version__}"


if __name__ == "__main__":
    S.main(build, versions)
