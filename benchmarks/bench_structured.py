"""Benchmark: what structured (channel) pruning buys on CPU, and what planning it costs.

Everything runs in one process and is reported as ratios measured side by side:

1. Inference speed-up from physically removing channels: ResNet-56 and VGG-16-BN (CIFAR-sized, input
   ``(N, 3, 32, 32)``, untrained, seeded), dense vs ``pyprune.plan(model, "l1_filter", amount)`` applied, at
   amounts 0.3 / 0.5 / 0.7 and batch sizes 1 and 64, with ``pyprune.latency`` at
   ``threads = torch.get_num_threads()``. Dense and pruned are timed in alternating rounds so that a change in
   machine load hits both. Stated goal: >= 1.8x at 50% on batch 64 (checked and printed, never fails the run).
2. Unstructured ``magnitude`` pruning at 0.5 / 0.9 on the same footing: masks zero weights but dense kernels
   still multiply them, so ~1.0x is the honest expectation.
3. Planning + applying time on ResNet-56 at 0.5 for ``l1_filter``, ``l2_filter``, ``random_channels`` and
   ``taylor`` (two synthetic batches), against Torch-Pruning's own ``MetaPruner`` with
   ``MagnitudeImportance(p=1)`` doing the same 50% per-group channel pruning (classifier ignored). The
   resulting architectures are compared (parameter counts, which channels were removed).

Run ``python benchmarks/bench_structured.py`` (a few minutes on 2 cores); it writes
``benchmarks/results/structured_cpu.{json,md}``. ``--quick`` (ResNet-20, amount 0.5, batches 1 and 8, few
repeats, < 60 s) is a smoke test and writes nothing unless ``--out DIR`` is given
(then ``DIR/structured_cpu_quick.{json,md}``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch_pruning as tp
from _runner import (
    OtherCpuLoad,
    add_wait_idle,
    benchmark_parser,
    fmt_cores,
    fmt_ratio,
    fmt_seconds,
    format_machine,
    machine_info,
    markdown_table,
    package_version,
    parse,
    publish,
    wait_for_idle,
)
from torch import nn

import pyprune
from pyprune import models
from pyprune.pruning import layers as planner_module

INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
MODEL_SEED = 0
INPUT_SEED = 1
GOAL_SPEEDUP = 1.8
GOAL_AMOUNT = 0.5
GOAL_BATCH = 64
BUSY_CORES = 0.3  # other processes' cores above which a timing is flagged (wait_for_idle's threshold)
CRITERIA = ("l1_filter", "l2_filter", "random_channels", "taylor")


# ------------------------------------------------------------------------------------------------ helpers


def build_model(name: str) -> nn.Module:
    """A seeded, untrained model in eval mode (weights only matter for which channels go, not for timing)."""
    torch.manual_seed(MODEL_SEED)
    return models.create(name).eval()


def example(batch: int, seed: int = INPUT_SEED) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *INPUT_SHAPE, generator=generator)


def progress(step: list[float], total: int, message: str) -> None:
    """One line per measurement; ``step`` is ``[count, start time]``, so the line also shows elapsed seconds."""
    step[0] += 1
    print(f"[{step[0]:>2.0f}/{total}, {time.perf_counter() - step[1]:4.0f} s] {message}", flush=True)


def fmt_count(n: int | None) -> str:
    if n is None:
        return "—"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def fmt_ms(ms: float | None) -> str:
    return "—" if ms is None else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def paired_latency(
    dense: nn.Module, pruned: nn.Module, x: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """Median forward time (ms) of ``dense`` and ``pruned`` on ``x``, timed in ``args.rounds`` alternating rounds.

    Each round calls ``pyprune.latency`` (``args.warmup`` untimed, ``args.repeats`` timed calls) on both models;
    the reported time is the median of the round medians, and the speed-up is dense / pruned. Alternating keeps
    a drift in machine load from landing on one side only.
    """
    if args.wait_idle > 0:
        wait_for_idle(args.wait_idle)
    dense_ms: list[float] = []
    pruned_ms: list[float] = []
    with OtherCpuLoad() as load:
        for _ in range(args.rounds):
            for model, out in ((dense, dense_ms), (pruned, pruned_ms)):
                lat = pyprune.latency(
                    model, x, warmup=args.warmup, repeats=args.repeats, threads=args.threads
                )
                out.append(lat.median_ms)
    d, p = statistics.median(dense_ms), statistics.median(pruned_ms)
    return {
        "dense_ms": d,
        "pruned_ms": p,
        "speedup": d / p,
        "dense_round_ms": dense_ms,
        "pruned_round_ms": pruned_ms,
        "other_cpu_cores": load.cores,
    }


# ------------------------------------------------------------------------------------- 1. inference speed


def speed_records(args: argparse.Namespace, step: list[float], total: int) -> list[dict[str, Any]]:
    """Latency of dense vs pruned models; FLOPs and parameters per single image (batch 1)."""
    records = []
    x1 = example(1)
    cases: list[tuple[str, str, float]] = [
        (name, "l1_filter", a) for name in (args.resnet, args.vgg) for a in args.amounts
    ]
    cases += [(args.resnet, "magnitude", a) for a in args.unstructured_amounts]
    for name in (args.resnet, args.vgg):
        # The first forward passes of a process at a new input shape set up oneDNN primitives and the thread
        # pool; keep that out of the first row.
        model = build_model(name)
        with torch.inference_mode():
            for batch in args.batches:
                for _ in range(3):
                    model(example(batch))
    for model_name, method, amount in cases:
        dense = build_model(model_name)
        plan = pyprune.plan(dense, method, amount, example_input=x1)
        pruned = plan.apply(copy.deepcopy(dense))
        before, after = pyprune.count(dense, x1), pyprune.count(pruned, x1)
        variants = [(method if method != "magnitude" else "magnitude (mask hooks)", pruned)]
        if method == "magnitude":
            # Folding the masks removes the per-forward `weight = orig * mask` recomputation; what is left is
            # a dense kernel multiplying zeros, which is the fairest case for unstructured pruning on CPU.
            variants.append(("magnitude (folded)", pyprune.make_permanent(copy.deepcopy(pruned))))
        for label, model in variants:
            for batch in args.batches:
                timing = paired_latency(dense, model, example(batch), args)
                rec = {
                    "model": model_name,
                    "method": label,
                    "structured": method != "magnitude",
                    "amount": amount,
                    "batch": batch,
                    "params_dense": before.params,
                    "params_pruned": after.params,
                    "nonzero_params_pruned": after.nonzero_params,
                    "flops_dense": before.flops,
                    "flops_pruned": after.flops,
                    **timing,
                }
                records.append(rec)
                progress(
                    step,
                    total,
                    f"{model_name} {label} {amount} batch {batch}: dense {fmt_ms(rec['dense_ms'])} ms, "
                    f"pruned {fmt_ms(rec['pruned_ms'])} ms, {rec['speedup']:.2f}x",
                )
    return records


# ---------------------------------------------------------------------------------- 2. planning time


def _timed_runs(
    run: Callable[[nn.Module], dict[str, float]], dense: nn.Module, args: argparse.Namespace
) -> dict[str, Any]:
    """``run(fresh copy)`` returns phase durations in seconds; median of each over ``args.plan_repeats`` runs
    after one warm-up (the first trace of a process pays one-off costs). The copy is made outside the timing."""
    phases: dict[str, list[float]] = {}
    for i in range(1 + args.plan_repeats):
        model = copy.deepcopy(dense)
        # Tracing leaves many cyclic objects behind; collect them now so that a collection pause triggered by
        # an earlier run does not land inside this one.
        gc.collect()
        times = run(model)
        if i == 0:
            continue
        for key, value in times.items():
            phases.setdefault(key, []).append(value)
    return {f"{key}_s": statistics.median(values) for key, values in phases.items()} | {
        "repeats": args.plan_repeats
    }


def _pyprune_run(method: str, x: torch.Tensor, data: list | None, **options: Any):
    def run(model: nn.Module) -> dict[str, float]:
        start = time.perf_counter()
        plan = pyprune.plan(
            model,
            method,
            GOAL_AMOUNT,
            example_input=x,
            data=data,
            loss_fn=nn.functional.cross_entropy if data is not None else None,
            **options,
        )
        planned = time.perf_counter()
        plan.apply(model)
        done = time.perf_counter()
        return {"plan": planned - start, "apply": done - planned, "total": done - start}

    return run


def _tp_run(x: torch.Tensor, importance: Callable[[nn.Module], Any]):
    def run(model: nn.Module) -> dict[str, float]:
        start = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            model,
            x,
            importance=importance(model),
            pruning_ratio=GOAL_AMOUNT,
            global_pruning=False,
            # The same layer pyprune leaves alone by default: the classifier.
            ignored_layers=[model.get_submodule(planner_module.output_layer_name(model))],
        )
        built = time.perf_counter()
        pruner.step()
        done = time.perf_counter()
        return {"plan": built - start, "apply": done - built, "total": done - start}

    return run


def tp_removed_channels(model: nn.Module, x: torch.Tensor) -> dict[str, list[int]]:
    """Root name -> output channels Torch-Pruning's MetaPruner (L1 magnitude, 50%, per group) removes; prunes
    ``model`` in place."""
    names = {module: name for name, module in model.named_modules()}
    output = model.get_submodule(planner_module.output_layer_name(model))
    pruner = tp.pruner.MetaPruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=GOAL_AMOUNT,
        global_pruning=False,
        ignored_layers=[output],
    )
    removed = {}
    for group in pruner.step(interactive=True):
        removed[names[group[0].dep.target.module]] = sorted(int(i) for i in group[0].idxs)
        group.prune()
    return removed


def planning_records(args: argparse.Namespace, step: list[float], total: int) -> dict[str, Any]:
    """Plan + apply time per criterion and for Torch-Pruning, plus the architecture comparison."""
    dense = build_model(args.resnet)
    x = example(1)
    generator = torch.Generator().manual_seed(INPUT_SEED + 1)
    data = [
        (
            torch.randn(args.taylor_batch, *INPUT_SHAPE, generator=generator),
            torch.randint(0, NUM_CLASSES, (args.taylor_batch,), generator=generator),
        )
        for _ in range(2)
    ]
    runs: list[tuple[str, str, Callable]] = [
        (
            "pyprune",
            c,
            _pyprune_run(
                c, x, data if c == "taylor" else None, **({"progress": False} if c == "taylor" else {})
            ),
        )
        for c in CRITERIA
    ]
    # plan_structured fills the plan's parameter/FLOP table by applying it to a copy and counting both models
    # (two FlopCounterMode forwards); this row shows how much of the planning time that bookkeeping is.
    runs.append(
        ("pyprune", "l1_filter, no param/FLOP table", _pyprune_run("l1_filter", x, None, measure=False))
    )
    runs.append(
        (
            "torch-pruning",
            "MetaPruner + MagnitudeImportance(p=1)",
            _tp_run(x, lambda m: tp.importance.MagnitudeImportance(p=1)),
        )
    )
    runs.append(
        (
            "torch-pruning",
            "MetaPruner + pyprune.TorchPruningImportance(FilterNorm(1))",
            _tp_run(x, lambda m: pyprune.TorchPruningImportance(pyprune.FilterNorm(1), m)),
        )
    )
    records = []
    for library, label, run in runs:
        if args.wait_idle > 0:
            wait_for_idle(args.wait_idle)
        with OtherCpuLoad() as load, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            timing = _timed_runs(run, dense, args)
        rec = {"library": library, "label": label, **timing, "other_cpu_cores": load.cores}
        records.append(rec)
        progress(
            step,
            total,
            f"plan+apply {library} {label}: {fmt_seconds(rec['total_s'])} s "
            f"(plan {fmt_seconds(rec['plan_s'])}, apply {fmt_seconds(rec['apply_s'])})",
        )
    tp_total = next(r["total_s"] for r in records if r["label"].startswith("MetaPruner + Magnitude"))
    for rec in records:
        rec["ratio_vs_tp"] = rec["total_s"] / tp_total

    # Architecture comparison (untimed): pyprune l1_filter vs Torch-Pruning's L1 magnitude pruner.
    plan = pyprune.plan(dense, "l1_filter", GOAL_AMOUNT, example_input=x)
    ours = plan.apply(copy.deepcopy(dense))
    theirs = copy.deepcopy(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tp_removed = tp_removed_channels(theirs, x)
    bridged = copy.deepcopy(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _tp_run(x, lambda m: pyprune.TorchPruningImportance(pyprune.FilterNorm(1), m))(bridged)
    ours_removed = {layer.name: layer.removed.tolist() for layer in plan.layers}
    shared = set(ours_removed) & set(tp_removed)
    same_channels = sum(len(set(ours_removed[n]) & set(tp_removed[n])) for n in shared)
    removed_total = sum(len(v) for v in ours_removed.values())
    shapes = {
        name: tuple(m.weight.shape)
        for name, m in ours.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    tp_shapes = {
        name: tuple(m.weight.shape)
        for name, m in theirs.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }
    comparison = {
        "params_dense": pyprune.count(dense, x).params,
        "params_pyprune": pyprune.count(ours, x).params,
        "params_torch_pruning": pyprune.count(theirs, x).params,
        "groups_pyprune": len(ours_removed),
        "groups_torch_pruning": len(tp_removed),
        "groups_same_root": len(shared),
        "layers_with_different_shape": sorted(n for n in shapes if shapes[n] != tp_shapes.get(n)),
        "removed_channels_pyprune": removed_total,
        "removed_channels_also_removed_by_tp": same_channels,
        "identical_to_tp_with_pyprune_importance": all(
            torch.equal(a, b)
            for a, b in zip(ours.state_dict().values(), bridged.state_dict().values(), strict=True)
        ),
    }
    comparison["same_params"] = comparison["params_pyprune"] == comparison["params_torch_pruning"]
    progress(
        step,
        total,
        f"architecture check: params pyprune {comparison['params_pyprune']:,} vs Torch-Pruning "
        f"{comparison['params_torch_pruning']:,} ({'same' if comparison['same_params'] else 'DIFFERENT'}); "
        f"{same_channels} of {removed_total} removed channels shared; identical to MetaPruner with pyprune's "
        f"importance: {comparison['identical_to_tp_with_pyprune_importance']}",
    )
    return {"model": args.resnet, "amount": GOAL_AMOUNT, "records": records, "comparison": comparison}


# ------------------------------------------------------------------------------------------------ report


def goal_lines(payload: dict[str, Any]) -> list[str]:
    lines = []
    for model in (payload["config"]["resnet"], payload["config"]["vgg"]):
        hit = [
            r
            for r in payload["speed"]
            if r["model"] == model
            and r["structured"]
            and r["amount"] == GOAL_AMOUNT
            and r["batch"] == GOAL_BATCH
        ]
        if hit:
            s = hit[0]["speedup"]
            verdict = "MET" if s >= GOAL_SPEEDUP else "NOT MET"
            busy = hit[0]["other_cpu_cores"]
            caveat = (
                f" (other processes used {busy:.2f} cores meanwhile: not trustworthy)"
                if busy is not None and busy > BUSY_CORES
                else ""
            )
            lines.append(
                f"- {model}: {s:.2f}x at {GOAL_AMOUNT:.0%}, batch {GOAL_BATCH} -> goal {verdict}{caveat}"
            )
        else:
            lines.append(f"- {model}: batch {GOAL_BATCH} at {GOAL_AMOUNT:.0%} not measured in this run")
    return lines


def _fmt_cores(value: float | None) -> str:
    """Like :func:`fmt_cores`, flagged " !" where other processes were busy enough to distort the timing."""
    return fmt_cores(value, 2) + (" !" if value is not None and value > BUSY_CORES else "")


def results_markdown(payload: dict[str, Any]) -> str:
    config = payload["config"]
    lines = [
        f"# Structured pruning on CPU{' (quick)' if config['quick'] else ''}",
        "",
        format_machine(payload["machine"]),
        f"- torch-pruning {payload['machine']['torch_pruning']}; timed with {config['threads']} threads",
        "",
        "## Inference speed-up",
        "",
        f"Untrained seeded models, input (N, {', '.join(map(str, INPUT_SHAPE))}). Params and FLOPs are per image "
        "(`pyprune.count`, FLOPs = 2 × multiply-adds). Latency = `pyprune.latency` median in ms, "
        f"{config['rounds']} alternating dense/pruned rounds of {config['warmup']} warm-up + {config['repeats']} "
        "timed calls, median of the round medians. Speed-up = dense / pruned. 'others' CPU' = cores other "
        "processes kept busy meanwhile.",
        "",
    ]
    headers = [
        "model",
        "method",
        "amount",
        "batch",
        "params",
        "params ratio",
        "FLOPs",
        "FLOPs ratio",
        "dense ms",
        "pruned ms",
        "speed-up",
        "others' CPU",
    ]
    rows = []
    for r in payload["speed"]:
        params = fmt_count(r["params_pruned"])
        ratio = r["params_pruned"] / r["params_dense"]
        if not r["structured"]:
            params = f"{fmt_count(r['nonzero_params_pruned'])} nonzero"
            ratio = r["nonzero_params_pruned"] / r["params_dense"]
        rows.append(
            [
                r["model"],
                r["method"],
                r["amount"],
                r["batch"],
                params,
                f"{ratio:.3f}",
                fmt_count(r["flops_pruned"]),
                f"{r['flops_pruned'] / r['flops_dense']:.3f}",
                fmt_ms(r["dense_ms"]),
                fmt_ms(r["pruned_ms"]),
                fmt_ratio(r["speedup"]),
                _fmt_cores(r["other_cpu_cores"]),
            ]
        )
    lines += [markdown_table(headers, rows), ""]
    lines += [f"Goal: >= {GOAL_SPEEDUP}x at {GOAL_AMOUNT:.0%} channels removed, batch {GOAL_BATCH}:", ""]
    lines += goal_lines(payload)
    planning = payload["planning"]
    lines += [
        "",
        f"## Planning + applying, {planning['model']} at {planning['amount']:.0%}",
        "",
        "Seconds, median of "
        f"{config['plan_repeats']} runs after one warm-up, each on a fresh deep copy (copy not timed). "
        "pyprune: 'plan' = `pyprune.plan(...)` (traces a copy, scores, and fills the plan's parameter/FLOP table), "
        "'apply' = `plan.apply(model)` (traces again, removes channels). Torch-Pruning: 'plan' = building "
        "`MetaPruner` (traces), 'apply' = `pruner.step()` (scores and removes). Ratio = total / Torch-Pruning "
        "MetaPruner + MagnitudeImportance total.",
        "",
    ]
    headers = ["library", "criterion / setup", "plan s", "apply s", "total s", "ratio vs TP", "others' CPU"]
    rows = [
        [
            r["library"],
            r["label"],
            fmt_seconds(r["plan_s"]),
            fmt_seconds(r["apply_s"]),
            fmt_seconds(r["total_s"]),
            fmt_ratio(r["ratio_vs_tp"]),
            _fmt_cores(r["other_cpu_cores"]),
        ]
        for r in planning["records"]
    ]
    lines += [markdown_table(headers, rows), ""]
    c = planning["comparison"]
    lines += [
        "Architecture check, pyprune `l1_filter` vs Torch-Pruning MetaPruner + MagnitudeImportance(p=1):",
        "",
        f"- parameters: dense {c['params_dense']:,}, pyprune {c['params_pyprune']:,}, Torch-Pruning "
        f"{c['params_torch_pruning']:,} -> {'same' if c['same_params'] else 'DIFFERENT'}; layers whose weight "
        f"shape differs: {len(c['layers_with_different_shape'])}",
        f"- dependency groups pruned: pyprune {c['groups_pyprune']}, Torch-Pruning {c['groups_torch_pruning']} "
        f"({c['groups_same_root']} with the same root layer)",
        f"- removed channels that Torch-Pruning also removed: {c['removed_channels_also_removed_by_tp']} of "
        f"{c['removed_channels_pyprune']} ({c['removed_channels_also_removed_by_tp'] / max(1, c['removed_channels_pyprune']):.0%})",
        "- pyprune l1_filter vs MetaPruner driven by `pyprune.TorchPruningImportance(FilterNorm(1))`: "
        f"{'identical weights' if c['identical_to_tp_with_pyprune_importance'] else 'weights DIFFER'}",
        "",
        "## Notes",
        "",
    ]
    lines += [f"- {note}" for note in payload["notes"]]
    return "\n".join(lines)


def _masked_speedups(speed: list[dict[str, Any]]) -> str:
    """The measured latency ratios of the masked (unstructured) rows, as a clause."""
    ratios = [r["speedup"] for r in speed if not r["structured"]]
    if not ratios:
        return ""
    return f" Measured here: dense / masked latency {min(ratios):.2f}x to {max(ratios):.2f}x."


def _table_share(records: list[dict[str, Any]]) -> str:
    """How much of ``l1_filter``'s plan + apply time the parameter/FLOP table takes, from the two rows."""
    full = next((r for r in records if r["label"] == "l1_filter"), None)
    bare = next((r for r in records if r["label"] == "l1_filter, no param/FLOP table"), None)
    if full is None or bare is None:
        return ""
    share = 1 - bare["total_s"] / full["total_s"]
    return (
        f": with the table `l1_filter` takes {fmt_seconds(full['total_s'])} s, without it "
        f"{fmt_seconds(bare['total_s'])} s, so the table is {share:.0%} of its planning time"
    )


def build_notes(payload: dict[str, Any]) -> list[str]:
    notes = [
        "Unstructured `magnitude` rows: masks zero weights but the dense convolution kernels still multiply "
        "them; with the `torch.nn.utils.prune` hooks still attached, each forward also recomputes "
        "`weight = weight_orig * weight_mask`. 'folded' = after `pyprune.make_permanent` (plain dense weights "
        "with zeros). A speed-up from such sparsity needs sparse kernels, which this benchmark does not use."
        + _masked_speedups(payload["speed"]),
        "Ratio semantics: Torch-Pruning's `pruning_ratio=r` keeps `int(n * (1 - r))` channels of an n-channel "
        "group (removes ceil-like), pyprune removes `floor(r * n + 0.5)` (round half up). At 50% of the even "
        "widths here both remove exactly half; at 0.3/0.7 they can differ by one channel per group.",
        "Scoring semantics: pyprune's `l1_filter` scores a group by the mean L1 norm of the filters of the layers "
        "whose *output* channels it prunes (root and residual partners; Li et al.). Torch-Pruning's "
        "`MagnitudeImportance(p=1)` also adds BatchNorm |gamma| and the consumers' *input* weights, and "
        "normalises per group, so the two remove the same number of channels per group but not always the "
        "same channels. Driving MetaPruner with `pyprune.TorchPruningImportance(FilterNorm(1))` "
        + (
            "reproduces pyprune's choice exactly in this run."
            if payload["planning"]["comparison"]["identical_to_tp_with_pyprune_importance"]
            else "does NOT reproduce pyprune's choice in this run."
        ),
        "`taylor` is a data-driven criterion: its time includes forward + backward over the two synthetic "
        f"batches of {payload['config']['taylor_batch']} and, as registered, it ranks channels globally "
        "(`scope='global'`), not per group like the other rows.",
        "`plan_structured` applies the plan to a copy and counts parameters and FLOPs of both models (two "
        "`FlopCounterMode` forwards) so the plan can print a per-layer table; the 'no param/FLOP table' row "
        "skips that (`measure=False`)"
        + _table_share(payload["planning"]["records"])
        + ". pyprune also traces "
        "the model twice (plan, then apply), Torch-Pruning once.",
        "Models are untrained (seeded He init); latency does not depend on weight values, only shapes.",
    ]
    others = [
        r["other_cpu_cores"]
        for r in payload["speed"] + payload["planning"]["records"]
        if r.get("other_cpu_cores") is not None
    ]
    if others:
        flagged = sum(o > BUSY_CORES for o in others)
        notes.append(
            f"Other processes kept {min(others):.2f} to {max(others):.2f} cores busy during the measurements "
            f"(on {payload['machine']['cores_available']} cores). {flagged} of {len(others)} measurements are "
            f"flagged '!' (more than {BUSY_CORES} cores busy elsewhere): there absolute times are inflated and, "
            "because load comes in bursts, even the alternating dense/pruned ratios can be far off; rerun on a "
            "quiet machine."
        )
    return notes


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(
        __doc__.split("\n\n")[0], "ResNet-20, amount 0.5, batches 1 and 8, few repeats (< 60 s)"
    )
    parser.add_argument(
        "--resnet", default=None, help="ResNet factory name (default resnet56; resnet20 quick)"
    )
    parser.add_argument("--vgg", default="vgg16", help="VGG-BN config name (default vgg16)")
    parser.add_argument("--amounts", type=float, nargs="+", default=None, help="default 0.3 0.5 0.7")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 64")
    parser.add_argument(
        "--unstructured-amounts", type=float, nargs="+", default=None, help="default 0.5 0.9 (quick 0.5)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument(
        "--rounds", type=int, default=None, help="alternating dense/pruned rounds (default 3)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per round (default 3)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per round (default 10)")
    parser.add_argument("--plan-repeats", type=int, default=None, help="timed plan+apply runs (default 5)")
    parser.add_argument("--taylor-batch", type=int, default=None, help="Taylor batch size (default 64)")
    add_wait_idle(parser, 5.0)
    full_or_quick = {
        "resnet": ("resnet56", "resnet20"),
        "amounts": ([0.3, 0.5, 0.7], [0.5]),
        "unstructured_amounts": ([0.5, 0.9], [0.5]),
        "batches": ([1, 64], [1, 8]),
        "rounds": (3, 2),
        "warmup": (3, 1),
        "repeats": (10, 3),
        "plan_repeats": (5, 2),
        "taylor_batch": (64, 8),
        "wait_idle": (5.0, 0.0),
    }
    args = parse(parser, argv, full_or_quick)
    for key in ("threads", "rounds", "repeats", "plan_repeats", "taylor_batch"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    machine = machine_info("cpu")
    machine["torch_pruning"] = package_version("torch-pruning")
    print(f"threads = {args.threads} (torch.get_num_threads() = {torch.get_num_threads()})", flush=True)
    n_speed = len(args.batches) * (2 * len(args.amounts) + 2 * len(args.unstructured_amounts))
    total = n_speed + len(CRITERIA) + 4
    step = [0, started]
    payload: dict[str, Any] = {
        "machine": machine,
        "config": {
            "quick": args.quick,
            "resnet": args.resnet,
            "vgg": args.vgg,
            "amounts": args.amounts,
            "batches": args.batches,
            "unstructured_amounts": args.unstructured_amounts,
            "threads": args.threads,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "plan_repeats": args.plan_repeats,
            "taylor_batch": args.taylor_batch,
            "wait_idle_s": args.wait_idle,
            "input_shape": list(INPUT_SHAPE),
            "goal": {"speedup": GOAL_SPEEDUP, "amount": GOAL_AMOUNT, "batch": GOAL_BATCH},
        },
    }
    payload["speed"] = speed_records(args, step, total)
    payload["planning"] = planning_records(args, step, total)
    payload["goal"] = goal_lines(payload)
    payload["notes"] = build_notes(payload)
    payload["wall_s"] = time.perf_counter() - started
    markdown = results_markdown(payload)
    publish(args, "structured_cpu", payload, markdown, started=started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
