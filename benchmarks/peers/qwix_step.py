"""The (c') KD step with qwix's quantized training (``QtProvider``), int8 weights and activations.

``qwix.quantize_model(student, qwix.QtProvider(rules))`` with one rule for every module:
int8 weights (per output channel, absmax) and int8 dynamic activations (qwix's default:
one scale per row of a Dense input); the forward runs int8 x int8 -> int32 dot_generals,
the backward is in float (no ``bwd_qtype``).
"""

from __future__ import annotations

import _protocol as P
import _qat as Q
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import qwix


class MLP(nn.Module):
    sizes: tuple

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.sizes):
            x = nn.Dense(f)(x)
            if i < len(self.sizes) - 1:
                x = nn.relu(x)
        return x


def build(batch: int):
    key = jax.random.key(P.SEED)
    x0 = jnp.zeros((1, P.IN_FEATURES), jnp.float32)
    teacher_model, student = MLP(P.TEACHER), MLP(P.STUDENT)
    teacher = teacher_model.init(jax.random.fold_in(key, 1), x0)["params"]
    params = student.init(jax.random.fold_in(key, 2), x0)["params"]
    rules = [qwix.QtRule(module_path=".*", weight_qtype="int8", act_qtype="int8")]
    qt = qwix.quantize_model(student, qwix.QtProvider(rules))
    t_apply = lambda p, x: teacher_model.apply({"params": p}, x)
    made = {
        "b": Q.runner(
            lambda p, x: student.apply({"params": p}, x), params, t_apply, teacher, batch
        ),
        "q": Q.runner(lambda p, x: qt.apply({"params": p}, x), params, t_apply, teacher, batch),
    }
    runners = {v: run for v, (run, _) in made.items()}
    return runners, lambda: Q.check(made["q"][1])


def versions() -> str:
    from importlib.metadata import version

    return f"qwix {version('qwix')}, jax {jax.__version__}, flax {flax.__version__}"


if __name__ == "__main__":
    P.main(build, versions)
