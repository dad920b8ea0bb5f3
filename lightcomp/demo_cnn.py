"""``lightcomp demo --model cnn``: Deep Compression of a digits CNN with BatchNorm.

The same stages as the MLP demo (`lightcomp.demo`), on `lightcomp.models.DigitsCNN` over
the 8x8x1 digit images, with one more: after pruning, BatchNorm is folded into the convs.

1. **float teacher** and **float student**: CNNs with BatchNorm, trained through
   ``linen_apply(module, train=True)``; their running statistics ride in the step's model
   state (averaged over the device axis with ``--devices``);
2. **prune**: magnitude pruning on a cubic schedule, BatchNorm still training;
3. **fold BN**: the statistics recomputed for the pruned weights
   (`lightcomp.train.recalibrate`), then folded into the convs
   (`lightcomp.prune.fold_batchnorm`): from here the student is the same CNN without
   BatchNorm, so weight sharing and quantization see the weights it computes with;
4. **share** and **quantize**: as the MLP demo, fine-tuned by distillation.

The packed file holds the folded network: ``lc.serve.linen(DigitsCNN(c, batch_norm=False))``
serves it from that one file.

References:
  Han, Mao, Dally, "Deep Compression", ICLR 2016. Jacob et al., "Quantization and Training
  of Neural Networks for Efficient Integer-Arithmetic-Only Inference", CVPR 2018 (folding).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from lightcomp import data, models, prune, train
from lightcomp.demo import DemoConfig, Net, Stage, check_config, check_devices, run_stages, stages

__all__ = ["CNN_CHANNELS", "cnn_stages", "run"]

CNN_CHANNELS = (32, 64)  # the teacher's channels (and the student's) by default


def cnn_stages(cfg: DemoConfig, fold: Callable) -> list[Stage]:
    """The MLP demo's stages with a ``fold BN`` stage after pruning; share and quantize
    train the folded student (``model="folded"``)."""
    teacher, student, pruned, share, quantize = stages(cfg)
    folded = Stage("fold BN", "folded", "prune", pruned.transform, False, 0, 0, 0, fold)
    share = dataclasses.replace(share, model="folded", start="fold BN")
    quantize = dataclasses.replace(quantize, model="folded")
    return [teacher, student, pruned, folded, share, quantize]


def _net(module: models.DigitsCNN, params, model_state) -> Net:
    if not module.batch_norm:
        return Net(train.linen_apply(module), train.linen_apply(module), params)
    return Net(
        train.linen_apply(module, train=True),
        train.linen_apply(module, train=False),
        params,
        model_state,
    )


def _folder(module: models.DigitsCNN, images) -> Callable:
    """``(params, model_state) -> (folded params, {})``, statistics recomputed first."""
    pairs = {f"Conv_{i}": f"BatchNorm_{i}" for i in range(len(module.channels))}
    recal = train.linen_apply(module, train=True)

    def fold(params, model_state):
        model_state = train.recalibrate(recal, params, images, model_state=model_state)
        folded, _ = prune.fold_batchnorm(params, model_state["batch_stats"], pairs, keep_norm=False)
        return folded, {}

    return fold


def run(cfg: DemoConfig, on_stage: Callable[[dict], None] | None = None) -> dict:
    """The CNN demo: teacher, student, prune, fold BN, share, quantize; the file reloaded.

    ``cfg.teacher`` / ``cfg.student`` are the two convs' channels (default
    `CNN_CHANNELS`); the rest as `lightcomp.demo.run`, which documents the result.
    """
    check_config(cfg)
    check_devices(cfg)
    ds = data.load_digits(seed=cfg.seed, image=True)
    keys = jax.random.split(jax.random.key(cfg.seed), 7)
    teacher = tuple(cfg.teacher or CNN_CHANNELS)
    student = tuple(cfg.student or teacher)
    nets = {}
    for i, (name, channels) in enumerate((("teacher", teacher), ("student", student))):
        module, params, model_state = models.init_cnn(channels, keys[i])
        nets[name] = _net(module, params, model_state)
    plain = models.DigitsCNN(student, batch_norm=False)
    nets["folded"] = _net(plain, None, {})
    fold = _folder(models.DigitsCNN(student), ds.x_train)
    return run_stages(cfg, nets, cnn_stages(cfg, fold), ds, on_stage)
