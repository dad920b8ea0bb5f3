"""The LeNet-300-100 KD step in PyTorch: ``torch.nn.utils.prune`` + ``torch.ao`` fake quantization.

(c) builds the student from ``torch.ao.nn.qat.Linear`` layers whose weight goes
through a per-output-channel symmetric 8-bit ``FakeQuantize`` (quant range
[-127, 127], scale max|w| / 127 from a per-channel min/max observer, STE), and
prunes each weight with ``prune.l1_unstructured(amount=0.5)`` (a fixed
magnitude mask applied in a forward pre-hook). Eager mode.
"""

from __future__ import annotations

import _protocol as P
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao import quantization as tq
from torch.ao.nn import qat
from torch.nn.utils import prune


def _mlp(sizes, linear=nn.Linear, **kw):
    layers, fan_in = [], P.IN_FEATURES
    for i, n in enumerate(sizes):
        layers.append(linear(fan_in, n, **kw))
        if i < len(sizes) - 1:
            layers.append(nn.ReLU())
        fan_in = n
    return nn.Sequential(*layers)


def _kd(s, t, labels):
    t_ = P.TEMPERATURE
    log_ps = F.log_softmax(s / t_, dim=-1)
    log_pt = F.log_softmax(t / t_, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean() * t_**2
    return (1 - P.ALPHA) * F.cross_entropy(s, labels) + P.ALPHA * kl


def _qconfig():
    weight = tq.FakeQuantize.with_args(
        observer=tq.PerChannelMinMaxObserver,
        quant_min=-(2 ** (P.BITS - 1) - 1),
        quant_max=2 ** (P.BITS - 1) - 1,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,  # torch Linear weights are [out, in]
    )
    return tq.QConfig(activation=nn.Identity, weight=weight)


def build(batch: int):
    torch.manual_seed(P.SEED)
    x_np, y_np = P.batch_arrays(batch)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np).long()
    teacher = _mlp(P.TEACHER).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def make(variant):
        if variant == "c":
            student = _mlp(P.STUDENT, qat.Linear, qconfig=_qconfig())
            for m in student:
                if isinstance(m, qat.Linear):
                    prune.l1_unstructured(m, "weight", amount=P.SPARSITY)
        else:
            student = _mlp(P.STUDENT)
        student.train()
        opt = torch.optim.SGD(student.parameters(), lr=P.LEARNING_RATE, momentum=P.MOMENTUM)

        def run(iters):
            for _ in range(iters):
                opt.zero_grad(set_to_none=True)
                s = student(x)
                if variant == "a":
                    loss = F.cross_entropy(s, y)
                else:
                    with torch.no_grad():
                        t = teacher(x)
                    loss = _kd(s, t, y)
                loss.backward()
                opt.step()
            loss.item()

        def effective_kernels():
            with torch.no_grad():
                return [
                    m.weight_fake_quant(m.weight).numpy().T  # [out, in] -> [in, out]
                    for m in student
                    if isinstance(m, qat.Linear)
                ]

        return run, effective_kernels

    return P.variants({v: make(v) for v in ("a", "b", "c")})


def versions() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads"


if __name__ == "__main__":
    P.main(build, versions)
