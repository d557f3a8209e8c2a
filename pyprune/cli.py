"""The ``pyprune`` command line: ``pyprune info``, ``pyprune demo`` and ``pyprune --version``.

Subcommands import what they need when they run, so ``--version`` and ``--help`` stay fast and one broken
optional dependency does not take down the other subcommands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("pyprune")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="pyprune",
        description="Fast, exact neural-network pruning and layer-similarity analysis for PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"pyprune {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("info", help="show versions, compiled kernels and devices available")
    demo = commands.add_parser(
        "demo",
        help="train two small CNNs on the 8x8 digits and plot their layer-by-layer CKA",
        description="Train two small CNNs on scikit-learn's 8x8 digits (CPU, a few seconds) and save "
        "linear-CKA heatmaps between their layers, plus the numbers as JSON.",
    )
    demo.add_argument(
        "--out", default="pyprune-demo", metavar="DIR", help="output folder (default: %(default)s)"
    )
    demo.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="train for 2 epochs instead of 8")
    demo.add_argument("--no-progress", action="store_true", help="print only the final summary")
    return parser


def _info() -> int:
    from pyprune.system_info import format_info

    print(format_info())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pyprune.demo import format_summary, missing_dependencies, run_demo

    missing = missing_dependencies()
    if missing:
        print(
            f"pyprune demo: missing {', '.join(missing)}; install with: pip install pyprune[demo]",
            file=sys.stderr,
        )
        return 1
    result = run_demo(args.out, seed=args.seed, quick=args.quick, progress=not args.no_progress)
    print(format_summary(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    ``--version`` and ``--help`` exit through ``SystemExit(0)``, as argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "demo":
        return _demo(args)
    parser.print_help(sys.stderr)
    return 2
