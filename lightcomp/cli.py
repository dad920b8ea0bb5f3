"""The ``lightcomp`` command: ``lightcomp demo`` runs the whole compression job on the digits.

``lightcomp inspect FILE`` prints the size report of a packed model file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

__all__ = ["MODELS", "main"]

# ``--model`` name -> (module, function, help): ``run(cfg: demo.DemoConfig, on_stage)``, or
# ``command(args, console, usage_error)`` for a demo with its own options and table;
# ``run`` returns the dict `lightcomp.demo.run` documents; a module is imported only when run.
MODELS = {
    "mlp": ("lightcomp.demo", "run", "a 512-256 perceptron"),
    "cnn": ("lightcomp.demo_cnn", "run", "two convs with BatchNorm, folded after pruning"),
    "lm": (
        "lightcomp.demo_lm",
        "command",
        "a char-level Transformer LM on the standard library's source, one-shot SparseGPT 2:4 "
        "+ GPTQ, then distilled (reads --steps, --seed, --out, --bits, --quiet)",
    ),
}


class _UsageError(Exception):
    """A bad command line: reported on one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump, no traceback
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lightcomp",
        description="Compress neural networks in JAX: pruning, weight sharing, quantization "
        "and distillation, packed into real bytes.",
    )
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    demo = sub.add_parser(
        "demo",
        help="distill a compressed student on the built-in digits task",
        description="Train a float teacher on scikit-learn's digits, distill a student "
        "and compress it in Deep Compression's stages (prune -> share -> quantize), pack it "
        "into a file, load the file back and evaluate it again.",
    )
    _demo_options(demo)
    inspect = sub.add_parser("inspect", help="print the size report of a packed model file")
    inspect.add_argument("file", help="a file written by lightcomp.export.save")
    return parser


def _demo_options(demo: argparse.ArgumentParser) -> None:
    demo.add_argument(
        "--model",
        choices=list(MODELS),
        default="mlp",
        help="the network: "
        + "; ".join(f"{name}: {text}" for name, (_, _, text) in MODELS.items())
        + " [default: %(default)s]",
    )
    demo.add_argument(
        "--sparsity",
        type=float,
        default=0.9,
        help="fraction of each kernel's weights pruned to exactly zero, in [0, 1) "
        "(reached gradually, on a cubic schedule) [default: %(default)s]",
    )
    demo.add_argument(
        "--bits",
        type=int,
        default=None,
        help="bit width of the weights in the quantize stage, 2..16 [default: 3; lm: 4]",
    )
    demo.add_argument(
        "--clusters",
        type=int,
        default=16,
        help="shared values (k-means centroids) per kernel in the share stage, 2..256 "
        "[default: %(default)s]",
    )
    demo.add_argument(
        "--steps",
        type=int,
        default=400,
        help="distillation steps per student stage; the teacher trains twice as long "
        "[default: %(default)s]",
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the data split, initialisation and batches"
    )
    demo.add_argument(
        "--out",
        default=None,
        help="where to write the packed model file [default: digits_MODEL.lcpk]",
    )
    demo.add_argument(
        "--devices",
        type=int,
        default=1,
        help="devices to run the steps on with jax.pmap (the batch of 128 is split between "
        "them; on a CPU-only machine this many host devices are created) [default: 1]",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")


def _demo(args, console) -> int:
    from lightcomp import demo

    module, function, _ = MODELS[args.model]
    run = getattr(importlib.import_module(module), function)
    if function == "command":  # a demo with its own options and table
        return run(args, console, _UsageError)
    cfg = demo.DemoConfig(
        sparsity=args.sparsity,
        bits=3 if args.bits is None else args.bits,
        clusters=args.clusters,
        steps=args.steps,
        seed=args.seed,
        out=f"digits_{args.model}.lcpk" if args.out is None else args.out,
        devices=args.devices,
        progress=not args.quiet,
    )
    try:
        demo.check_config(cfg)
    except (ValueError, TypeError) as e:
        raise _UsageError(str(e)) from None
    import jax

    if jax.local_device_count() < cfg.devices:
        raise _UsageError(
            f"--devices {cfg.devices}: only {jax.local_device_count()} device(s) available"
        )

    def show(row):
        if cfg.progress:
            console.print(
                f"  {row['stage']}: test accuracy {row['accuracy']:.4f}, packed "
                f"{row['bytes']:,} bytes ({row['ratio_vs_student']:.1f}x smaller than float32)"
            )

    result = run(cfg, on_stage=show)
    title = result.get("title", f"lightcomp demo: digits {args.model.upper()}")
    ok = demo.print_table(result, console, title=title)
    return 0 if ok else 1


def _inspect(args, console) -> int:
    from lightcomp import export

    try:
        packed = export.load(args.file)
    except (OSError, ValueError) as e:
        raise _UsageError(str(e)) from None
    console.print(export.report_table(packed, title=args.file))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lightcomp`` and ``python -m lightcomp``; returns the exit code.

    Bad arguments print one line ``lightcomp: error: ...`` and return 2.
    """
    from rich.console import Console

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        if args.command is None:
            parser.print_help()
            return 0
        if args.command == "demo" and args.devices > 1:
            flags = os.environ.get("XLA_FLAGS", "")
            if "xla_force_host_platform_device_count" not in flags:  # before JAX starts
                os.environ["XLA_FLAGS"] = (
                    f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
                )
        console = Console()
        return _demo(args, console) if args.command == "demo" else _inspect(args, console)
    except _UsageError as e:
        print(f"lightcomp: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
