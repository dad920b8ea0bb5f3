"""The (c') KD step with AQT (aqtp) quantized training: ``AqtDotGeneral`` in every Dense.

``nn.Dense(f, dot_general_cls=AqtDotGeneral(fully_quantized(fwd_bits=8, bwd_bits=None)))``:
the forward quantizes weights (per output channel) and activations (AQT's calibration: one
scale per row, over the contracted axis) to int8 every step and runs int8 x int8 -> int32
dot_generals; the backward is in float (``bwd_bits=None``).
"""

from __future__ import annotations

import functools

import _protocol as P
import _qat as Q
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from aqt.jax.v2 import config as aqt_config
from aqt.jax.v2 import utils
from aqt.jax.v2.flax import aqt_flax


class MLP(nn.Module):
    sizes: tuple
    quantized: bool = False

    @nn.compact
    def __call__(self, x):
        dg = None
        if self.quantized:
            cfg = aqt_config.fully_quantized(
                fwd_bits=P.BITS, bwd_bits=None, use_stochastic_rounding=False
            )
            dg = functools.partial(
                aqt_flax.AqtDotGeneral,
                cfg,
                lhs_quant_mode=utils.QuantMode.TRAIN,
                rhs_quant_mode=utils.QuantMode.TRAIN,
                lhs_freeze_mode=aqt_flax.FreezerMode.NONE,
                rhs_freeze_mode=aqt_flax.FreezerMode.NONE,
                prng_name=None,
            )
        for i, f in enumerate(self.sizes):
            x = nn.Dense(f, dot_general_cls=dg)(x)
            if i < len(self.sizes) - 1:
                x = nn.relu(x)
        return x


def build(batch: int):
    key = jax.random.key(P.SEED)
    x0 = jnp.zeros((1, P.IN_FEATURES), jnp.float32)
    teacher_model = MLP(P.TEACHER)
    student, qstudent = MLP(P.STUDENT), MLP(P.STUDENT, quantized=True)
    teacher = teacher_model.init(jax.random.fold_in(key, 1), x0)["params"]
    params = student.init(jax.random.fold_in(key, 2), x0)["params"]
    t_apply = lambda p, x: teacher_model.apply({"params": p}, x)
    made = {
        "b": Q.runner(
            lambda p, x: student.apply({"params": p}, x), params, t_apply, teacher, batch
        ),
        "q": Q.runner(
            lambda p, x: qstudent.apply({"params": p}, x), params, t_apply, teacher, batch
        ),
    }
    runners = {v: run for v, (run, _) in made.items()}
    return runners, lambda: Q.check(made["q"][1])


def versions() -> str:
    from importlib.metadata import version

    return f"aqtp {version('aqtp')}, jax {jax.__version__}, flax {flax.__version__}"


if __name__ == "__main__":
    P.main(build, versions)
