"""The ``lightcomp`` command."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``lightcomp`` and ``python -m lightcomp``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="lightcomp", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="distill a compressed student on the built-in digits task")
    parser.parse_args(argv)
    print("lightcomp: the demo is not built yet; built so far: lightcomp.tree, lightcomp.transform.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
