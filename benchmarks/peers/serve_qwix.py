"""Serving the MLP with qwix's post-training quantization (PTQ, w8a8).

``qwix.quantize_model(model, qwix.PtqProvider(rules))`` with one rule for every module
(int8 weights, per output channel; int8 dynamic activations), the weights quantized ahead
of time by ``qwix.quantize_params``; the forward runs int8 x int8 -> int32 dots.
"""

from __future__ import annotations

import _serving as S
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(S.SIZES):
            x = nn.Dense(f)(x)
            if i < len(S.SIZES) - 1:
                x = nn.relu(x)
        return x


def build(args):
    x = jnp.asarray(S.inputs(args.batch))
    params = S.params_dict(jnp)
    model = MLP()
    rules = [qwix.QuantizationRule(module_path=".*", weight_qtype="int8", act_qtype="int8")]
    ptq = qwix.quantize_model(model, qwix.PtqProvider(rules))
    abstract = jax.eval_shape(ptq.init, jax.random.key(0), x)
    qparams = qwix.quantize_params(params, abstract["params"])
    f32, q = jax.jit(model.apply), jax.jit(ptq.apply)
    fv, qv = {"params": params}, {"params": qparams}

    def check():
        dtypes = sorted({str(a.dtype) for a in jax.tree.leaves(qparams)})
        err = S.relative_error(q(qv, x), f32(fv, x))
        return f"served leaves {dtypes}; max|int8 - float32| / max|float32| = {err:.4f}"

    return {"f32": S.timed(f32, fv, x), "int8": S.timed(q, qv, x)}, check


def versions() -> str:
    from importlib.metadata import version

    return f"qwix {version('qwix')}, jax {jax.__version__}, flax {flax.__version__}"


if __name__ == "__main__":
    S.main(build, versions)
