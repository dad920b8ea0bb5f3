"""``lightcomp demo --model lm``: one-shot post-training compression of a character-level LM.

A small Transformer language model (`lightcomp.posttrain.CharLM`: ``nn.DenseGeneral``
attention, unrolled or ``nn.scan``-ned blocks) is trained briefly on the Python standard
library's own source text, then compressed without retraining by every method of
`lightcomp.posttrain` at the same settings (2:4 sparsity; ``bits``-bit weights, one scale
per output unit), each layer calibrated on the partly compressed model (sequential):

- magnitude, Wanda and SparseGPT at 2:4; round-to-nearest (RTN) and GPTQ at ``bits``;
- SparseGPT 2:4 with GPTQ ``bits`` in the same pass, then a short distillation from the float
  model (`lightcomp.train.make_step` on the token outputs) that keeps its masks and grid.

The last is packed (`lightcomp.export`), written, loaded back and served on integer
matmuls (`lightcomp.serve`, int8 activations per tensor). The table gives held-out
perplexity, the sparsity and bits per weight of the compressed kernels, and packed bytes.

References:
  Frantar & Alistarh, "SparseGPT", ICML 2023. Frantar et al., "GPTQ", ICLR 2023. Sun et
  al., "A Simple and Effective Pruning Approach for Large Language Models" (Wanda), 2023.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lightcomp import _checks, export, posttrain, serve, train, transform, tree
from lightcomp.demo import _check_out

__all__ = ["LMDemoConfig", "check_config", "markdown_table", "result_table", "run"]

# posttrain compresses the layers' kernels; the transforms must pick the same leaves
COMPRESSED = tree.select(exclude=r"embedding$")
NM = "2:4"


@dataclasses.dataclass(frozen=True)
class LMDemoConfig:
    """Configuration of `run` (``lightcomp demo --model lm``).

    Attributes:
      steps: training steps of the float LM (the distillation runs ``steps // 5``).
      seed: seed of the initialisation, the training windows and the calibration windows.
      out: path of the packed model file.
      bits: weight bit width of RTN, GPTQ and the joint result, 2..8.
      d_model, heads, layers, seq_len: the LM's width, attention heads, blocks and window.
      batch_size: training windows per step.
      calib_windows: calibration windows (in batches of 16).
      train_chars, eval_chars: characters of training and of held-out text.
      scan: blocks as one ``nn.scan`` over a stack instead of unrolled (compressed slice by
        slice; the served row is left out: `lightcomp.serve` does not yet run integer kernels
        stacked under ``nn.scan``).
      progress: print a line per result as it is measured (the command's output).
    """

    steps: int = 400
    seed: int = 0
    out: str = "char_lm.lcpk"
    bits: int = 4
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    seq_len: int = 64
    batch_size: int = 32
    calib_windows: int = 64
    train_chars: int = 300_000
    eval_chars: int = 20_000
    scan: bool = False
    progress: bool = True


def check_config(cfg: LMDemoConfig) -> None:
    """Checks every option of ``cfg`` before any work is done.

    Raises:
      ValueError / TypeError: an option out of range or of the wrong type, naming it.
    """
    if not isinstance(cfg, LMDemoConfig):
        raise TypeError(f"cfg must be an LMDemoConfig, got {type(cfg).__name__}")
    _checks.check_int(cfg.steps, "--steps", lo=1)
    _checks.check_int(cfg.seed, "--seed", lo=0, hi=2**32 - 1)
    _checks.check_int(cfg.bits, "--bits", lo=2, hi=8)
    for name in ("heads", "layers", "batch_size", "calib_windows"):
        _checks.check_int(getattr(cfg, name), name, lo=1)
    _checks.check_int(cfg.seq_len, "seq_len", lo=8)
    _checks.check_int(cfg.d_model, "d_model", lo=4)
    if cfg.d_model % (4 * cfg.heads):
        raise ValueError(
            f"d_model={cfg.d_model} must be a multiple of 4 * heads ({4 * cfg.heads}): every "
            "layer's input axis takes 2:4 groups (attention out: head_dim)"
        )
    _checks.check_int(cfg.eval_chars, "eval_chars", lo=cfg.seq_len + 2)
    _checks.check_int(cfg.train_chars, "train_chars", lo=cfg.seq_len + 2)
    _checks.check_bool(cfg.scan, "scan")
    _checks.check_bool(cfg.progress, "progress")
    _check_out(cfg.out)


def _kernels(params: Any) -> list[tuple[str, np.ndarray]]:
    return [(p, np.asarray(v)) for p, v in tree.leaves_with_paths(params) if p.endswith("kernel")]


def _row(name: str, ppl: float, params: Any, packed: export.Packed) -> dict:
    """A table row: perplexity, sparsity and bits/weight of the kernels, packed bytes."""
    kernels = _kernels(params)
    size = sum(k.size for _, k in kernels)
    rep = export.report(packed)
    kernel_bytes = sum(r["bytes"] for r in rep["leaves"] if r["path"].endswith("kernel"))
    return {
        "method": name,
        "perplexity": ppl,
        "sparsity": sum(int((k == 0).sum()) for _, k in kernels) / size,
        "bits_per_weight": 8 * kernel_bytes / size,
        "bytes": rep["file_bytes"],
    }


def _one_shot(cfg: LMDemoConfig) -> list[tuple[str, Callable]]:
    """The baselines and methods at the same settings: ``(name, fn(apply, params, calib))``."""
    s, b = {"select": COMPRESSED}, cfg.bits
    return [
        (f"magnitude {NM}", lambda a, p, c: posttrain.magnitude(a, p, c, NM, **s)),
        (f"Wanda {NM}", lambda a, p, c: posttrain.wanda(a, p, c, NM, **s)),
        (f"SparseGPT {NM}", lambda a, p, c: posttrain.sparsegpt(a, p, c, NM, **s)),
        (f"RTN {b}-bit", lambda a, p, c: posttrain.rtn(a, p, c, b, **s)),
        (f"GPTQ {b}-bit", lambda a, p, c: posttrain.gptq(a, p, c, b, **s)),
    ]


def _distill(cfg, apply, teacher, start, comp_state, tokens) -> tuple[Any, Any, Any]:
    """A short distillation from the float LM keeping the masks and grid of ``comp_state``.

    Returns ``(params, comp_state, transform)``.
    """
    t = transform.chain(
        transform.pruning(None, granularity=NM, select=COMPRESSED),
        transform.fake_quantization(cfg.bits, learned_scale=True, select=COMPRESSED),
    )
    opt = optax.adam(3e-4)
    state = train.init_state(start, opt, t, jax.random.key(cfg.seed + 2))
    state = dataclasses.replace(state, comp_state=comp_state)
    steps = max(cfg.steps // 5, 1)
    w = posttrain.windows(tokens, cfg.seq_len, steps * cfg.batch_size, seed=cfg.seed + 3)
    batches = (
        {"inputs": jnp.asarray(b[:, :-1]), "labels": jnp.asarray(b[:, 1:])}
        for b in w.reshape(steps, cfg.batch_size, -1)
    )
    step = train.make_step(apply, apply, opt, t, alpha=0.5, temperature=1.0)
    state, _ = train.fit(
        step, state, teacher, batches, steps=steps, log_every=steps, progress=False
    )
    return state.params, state.comp_state, t


def run(cfg: LMDemoConfig, on_row: Callable[[dict], None] | None = None) -> dict:
    """Trains the LM, compresses it every way, distills, packs, reloads and serves the result.

    Args:
      cfg: the configuration (checked with `check_config` first).
      on_row: called with each table row as soon as it is measured.

    Returns:
      ``{"rows": [dicts: method, perplexity, sparsity, bits_per_weight, bytes], "file",
      "file_bytes", "bit_exact" (the file unpacks to the distilled effective parameters),
      "masks_kept" (the distillation kept the one-shot masks), "model", "effective",
      "served" (``apply(qparams, tokens)``), "qparams", "config"}``. The last two rows are the
      distilled result in memory and served from the file.
    """
    check_config(cfg)
    text = posttrain.stdlib_text(cfg.train_chars + cfg.eval_chars)
    tokens = posttrain.encode(text[: cfg.train_chars])
    held_out = posttrain.encode(text[cfg.train_chars :])
    model = posttrain.CharLM(cfg.d_model, cfg.heads, cfg.layers, cfg.seq_len, scan=cfg.scan)
    apply, params = posttrain.train_char_lm(
        tokens, model, steps=cfg.steps, batch=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed
    )
    calib = posttrain.windows(tokens, cfg.seq_len, cfg.calib_windows, seed=cfg.seed + 1)
    calib = [jnp.asarray(c[:, :-1]) for c in np.array_split(calib, -(-cfg.calib_windows // 16))]
    rows = []

    def add(name, p, packed=None, ppl_of=(apply, None)):
        fn, q = ppl_of
        ppl = posttrain.perplexity(fn, p if q is None else q, held_out, seq_len=cfg.seq_len)
        rows.append(_row(name, ppl, p, export.pack(p) if packed is None else packed))
        if on_row is not None:
            on_row(rows[-1])

    add("float", params)
    for name, fn in _one_shot(cfg):
        add(name, fn(apply, params, calib))
    joint, state = posttrain.sparsegpt(
        apply, params, calib, NM, bits=cfg.bits, select=COMPRESSED, return_state=True
    )
    add(f"SparseGPT {NM} + GPTQ {cfg.bits}-bit", joint)
    p, comp_state, t = _distill(cfg, apply, params, joint, state, tokens)
    effective = jax.jit(t.apply)(p, comp_state)
    packed = export.pack(p, comp_state, t)
    add("  + distilled", effective, packed)
    size = export.save(cfg.out, packed)
    loaded = export.load(cfg.out)
    back = export.unpack(loaded)
    served, qparams = serve.linen(model), serve.from_packed(loaded)
    if not cfg.scan:  # lc.serve does not yet run integer kernels stacked under nn.scan
        add("  served (int8 activations)", effective, packed, ppl_of=(served, qparams))
    masks = transform.masks_of(comp_state)
    return {
        "rows": rows,
        "file": str(cfg.out),
        "file_bytes": size,
        "bit_exact": all(
            np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
            for a, b in zip(jax.tree.leaves(effective), jax.tree.leaves(back), strict=True)
        ),
        "masks_kept": all(
            bool(jnp.array_equal(a, b))
            for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(state[0].masks), strict=True)
        ),
        "model": model,
        "effective": effective,
        "served": served,
        "qparams": qparams,
        "config": cfg,
    }


_COLUMNS = ("method", "perplexity", "sparsity", "bits/weight (kernels)", "packed bytes")


def _cells(r: dict) -> tuple[str, ...]:
    return (
        r["method"],
        f"{r['perplexity']:.3f}",
        f"{100 * r['sparsity']:.1f}%",
        f"{r['bits_per_weight']:.2f}",
        f"{r['bytes']:,}",
    )


def result_table(result: dict, title: str = "lightcomp demo: char-level LM, post-training"):
    """The table of a `run` result, as a ``rich.table.Table``."""
    from rich.table import Table

    t = Table(title=title)
    for c in _COLUMNS:
        t.add_column(c, justify="left" if c == "method" else "right")
    for r in result["rows"]:
        t.add_row(*_cells(r))
    return t


def markdown_table(result: dict) -> str:
    """The same table in Markdown (for READMEs and benchmark logs)."""
    lines = ["| " + " | ".join(_COLUMNS) + " |", "|---" * len(_COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in result["rows"]]
    return "\n".join(lines)


def command(args: Any, console: Any, usage_error: type[Exception]) -> int:
    """``lightcomp demo --model lm``: runs `run` with ``--steps``, ``--seed``, ``--out``,
    ``--bits`` and ``--quiet``, prints the table; exit status 0 when the file unpacks
    bit-exact and the masks were kept."""
    cfg = LMDemoConfig(
        steps=args.steps,
        seed=args.seed,
        out="char_lm.lcpk" if args.out is None else args.out,
        bits=LMDemoConfig.bits if args.bits is None else args.bits,
        progress=not args.quiet,
    )
    try:
        check_config(cfg)
    except (ValueError, TypeError) as e:
        raise usage_error(str(e)) from None

    def show(row):
        if cfg.progress:
            console.print(
                f"  {row['method']}: perplexity {row['perplexity']:.3f}, "
                f"{row['bytes']:,} bytes packed"
            )

    result = run(cfg, on_row=show)
    console.print(result_table(result))
    ok = result["bit_exact"] and result["masks_kept"]
    console.print(
        f"wrote {result['file']} ({result['file_bytes']:,} bytes); loaded back "
        f"{'bit-exact' if result['bit_exact'] else 'DIFFERENT'}, masks "
        f"{'kept' if result['masks_kept'] else 'CHANGED'} by the distillation, served on "
        "integer matmuls"
    )
    return 0 if ok else 1
