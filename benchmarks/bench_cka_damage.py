"""Benchmark: CKA-damage channel pruning (``SupurCalvinHiggins/cka-prune``), pyprune's closed forms against
cka-prune's naive procedure.

What is measured, all in one process (``--threads`` intra-op threads):

1. One conv layer ``Conv2d(C, C, 3, padding=1)`` (seeded He init with per-filter scales, so channels differ)
   on a batch of ``--batch`` inputs ``relu(randn(batch, C, 8, 8))``, for C in ``--channels``; half of the
   channels are removed.

   * **naive** = cka-prune's procedure (the greedy semantics of its README and its `engine_prune.py`) made
     literal for a conv layer: for every remaining candidate channel, zero its filter (the bias stays, as in
     cka-prune), recompute the layer output with ``F.conv2d`` on the whole batch (float32, as the model runs),
     flatten per example to ``(batch, C*64)``, form the full ``batch x batch`` linear Gram matrix, centre it
     (Google's biased ``center_gram``) and take CKA against the original layer output; remove the best candidate (ties: lowest
     index), keep its filter zeroed and repeat. Gram, centring and CKA are float64 (``--naive-gram-dtype``),
     so that the order comparison is not decided by float32 rounding. The original output's Gram is computed
     once. It runs to the end only where its predicted time (per-evaluation cost from a short probe x
     number of evaluations) fits ``--naive-budget`` (four times that at the smallest C, so that the orders are
     compared at least once); elsewhere the probe's per-evaluation cost times the number of evaluations (sum
     over the greedy steps of the remaining candidates) is reported, marked *extrapolated*.
   * **pyprune** = ``CKADamage(layer, representation="flatten", greedy=True)``: ``accumulate_over`` (forward
     + capture) then ``removal_order`` (interaction matrix ``M`` + greedy loop), end to end; the same with
     ``representation="channels"`` (channels as neurons, ``(N*H*W, C)``: a different representation, so its
     order is not comparable with the naive one) and with ``greedy=False`` (single-removal ranking, the
     semantics of cka-prune's code).

   The removal orders of naive and pyprune (flatten, greedy) are compared where naive ran to the end; where
   it was only probed, its first-step CKA values (single removals) are compared with pyprune's closed-form
   single-removal CKA. Goal (issue): >= 1,000x faster than naive at C = 256 with the identical removal order.
2. ``pyprune.plan(resnet56(), "cka_greedy", 0.5, example_input=x[:2], data=<1,024 synthetic CIFAR-shaped
   samples in batches of 256>, progress=False)`` end to end, broken down by wrapping pyprune's internals with
   timers (statistics pass, ``M``, greedy loop, Torch-Pruning trace, the plan's parameter/FLOP table, rest);
   a cold first run, then the median of ``--plan-repeats`` runs. The plan is applied and parameters/FLOPs
   counted before and after (``pyprune.count``, one 32x32 image). Goal (issue): under 30 s on a 2-core CPU.
3. RBF kernel (fixed bandwidth, threshold 0.5): pyprune's greedy order on one small layer against the naive
   procedure with the RBF Gram of Google's ``gram_rbf`` (bandwidth from the original output's median
   squared distance, as ``bandwidth="fixed"`` defines it).

Run ``python benchmarks/bench_cka_damage.py`` (about 4-8 minutes on an idle 2-core CPU, the longer when naive's
predicted time at C = 128 fits the budget and it runs to the end there); it writes
``benchmarks/results/cka_damage_cpu.{json,md}``. ``--quick`` (C in {16, 32}, batch 64, ResNet-20 from 256
samples, < 60 s) is a smoke test and writes nothing unless ``--out DIR`` is given (then
``DIR/cka_damage_cpu_quick.{json,md}``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from _cka_damage_setup import (
    INPUT_SEED,
    INPUT_SHAPE,
    LAYER_NAME,
    MAP_SIZE,
    MODEL_SEED,
    NUM_CLASSES,
    PLAN_AMOUNT,
    RBF_THRESHOLD,
    PhaseTimer,
    batch_sizes,
    make_batch,
    make_layer,
)
from _runner import (
    OtherCpuLoad,
    add_wait_idle,
    benchmark_parser,
    fmt_cores,
    fmt_seconds,
    format_machine,
    log,
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
from pyprune.ops.backend import cpu_import_error, cpu_kernels, use_kernel
from pyprune.pruning.criteria.cka_damage import CKADamage

GOAL_SPEEDUP = 1000.0
GOAL_CHANNELS = 256
GOAL_PLAN_S = 30.0


def fmt_ratio_big(ratio: float | None) -> str:
    if ratio is None or not math.isfinite(ratio):
        return "—"
    return f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.1f}×" if ratio >= 10 else f"{ratio:.2f}×"


def fmt_count(n: int | None) -> str:
    if n is None:
        return "—"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _fmt_diff(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


def num_evaluations(channels: int, removals: int) -> int:
    """Candidate evaluations of ``removals`` greedy steps over ``channels``: ``sum_t (channels - t)``."""
    return sum(channels - t for t in range(removals))


# ------------------------------------------------------------------------------------- naive procedure


def _center_gram(gram: torch.Tensor) -> torch.Tensor:
    """Google's biased ``center_gram`` (``H K H``, written as column means with half the grand mean)."""
    means = gram.mean(dim=0)
    means = means - means.mean() / 2
    return gram - means[:, None] - means[None, :]


def _naive_gram(
    y: torch.Tensor, kernel: str, dtype: torch.dtype, threshold: float, median: float | None
) -> tuple[torch.Tensor, float | None]:
    """Centred Gram of the per-example flattened output ``y``; for RBF also the median squared distance
    (Google's ``gram_rbf``; with ``median`` given, that fixed bandwidth is used instead)."""
    flat = y.flatten(1).to(dtype)
    gram = flat @ flat.T
    if kernel == "rbf":
        sq_norms = gram.diagonal()
        sq_distances = sq_norms[:, None] + sq_norms[None, :] - 2 * gram
        if median is None:
            median = _np_median(sq_distances)
        gram = torch.exp(-sq_distances / (2 * threshold**2 * median))
    return _center_gram(gram), median


def _np_median(values: torch.Tensor) -> float:
    """Median of all entries, NumPy convention (Google's ``gram_rbf`` uses ``np.median``)."""
    flat = values.flatten().sort().values
    k = flat.numel()
    return float(flat[k // 2]) if k % 2 else float((flat[k // 2 - 1] + flat[k // 2]) / 2)


def naive_greedy(
    layer: nn.Sequential,
    x: torch.Tensor,
    removals: int,
    *,
    kernel: str = "linear",
    gram_dtype: torch.dtype = torch.float64,
    threshold: float = RBF_THRESHOLD,
    max_seconds: float | None = None,
    min_evals: int = 3,
    report: Callable[[int, int, float], None] | None = None,
) -> dict[str, Any]:
    """cka-prune's greedy CKA-damage procedure, literally (module docstring). With ``max_seconds`` it stops after
    at least ``min_evals`` candidate evaluations once that much evaluation time has passed (a probe)."""
    conv = layer.get_submodule(LAYER_NAME)
    start = time.perf_counter()
    with torch.no_grad():
        weight = conv.weight.detach()
        bias = None if conv.bias is None else conv.bias.detach()
        work = weight.clone()

        def forward(w: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, w, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

        target, median = _naive_gram(forward(weight), kernel, gram_dtype, threshold, None)
        target_norm = torch.linalg.norm(target)
        setup_s = time.perf_counter() - start
        kept = list(range(weight.shape[0]))
        order: list[int] = []
        cka_after: list[float] = []
        first_step: dict[int, float] = {}
        eval_times: list[float] = []
        complete = True
        for step in range(removals):
            best, best_j = -math.inf, -1
            for j in kept:
                t0 = time.perf_counter()
                work[j] = 0  # zero the candidate's filter (the bias stays: the channel outputs a constant)
                gram, _ = _naive_gram(forward(work), kernel, gram_dtype, threshold, median)
                den = target_norm * torch.linalg.norm(gram)
                score = float((target * gram).sum() / den) if den > 0 else 0.0
                work[j] = weight[j]  # restore
                eval_times.append(time.perf_counter() - t0)
                if step == 0:
                    first_step[j] = score
                if score > best:  # strict: ties go to the lowest index
                    best, best_j = score, j
                if (
                    max_seconds is not None
                    and len(eval_times) >= min_evals
                    and sum(eval_times) >= max_seconds
                ):
                    complete = False
                    break
            if not complete:
                break
            kept.remove(best_j)
            work[best_j] = 0
            order.append(best_j)
            cka_after.append(best)
            if report is not None:
                report(step + 1, removals, time.perf_counter() - start)
    # The first evaluation can pay one-off costs (allocations, oneDNN primitives); leave it out of the mean.
    steady = eval_times[1:] or eval_times
    return {
        "order": order,
        "cka_after": cka_after,
        "first_step": first_step,
        "evals": len(eval_times),
        "eval_s": sum(eval_times),
        "per_eval_s": statistics.fmean(steady),
        "per_eval_median_s": statistics.median(steady),
        "setup_s": setup_s,
        "total_s": time.perf_counter() - start,
        "complete": complete,
        "median_sq_distance": median,
    }


def _median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in runs for k in r})
    return {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}


def pyprune_layer(layer: nn.Sequential, x: torch.Tensor, *, repeats: int, **options: Any) -> dict[str, Any]:
    """``CKADamage(layer, **options)``: accumulate over ``x`` then ``removal_order``; one warm-up, then the
    median of ``repeats`` timed runs (each with a fresh criterion), with the phase breakdown of each run."""
    timer = PhaseTimer()
    runs: list[dict[str, float]] = []
    result: dict[str, Any] = {}
    for i in range(1 + repeats):
        gc.collect()
        with timer.active():
            start = time.perf_counter()
            criterion = CKADamage(layer, max_samples=x.shape[0], **options)
            criterion.accumulate_over(x, progress=False)
            order = criterion.removal_order(LAYER_NAME)
            total = time.perf_counter() - start
        if i == 0:
            result = {"order": order.tolist(), "trajectory": criterion.trajectory(LAYER_NAME).tolist()}
            result["warmup_s"] = total
            continue
        runs.append({"total": total, **timer.seconds})
    phases = _median_phases(runs)
    return {
        **result,
        "time_s": phases.pop("total"),
        "times_s": [r["total"] for r in runs],
        "phases_s": phases,
    }


# ---------------------------------------------------------------------------------------------- part 1


def layer_case(args: argparse.Namespace, channels: int) -> list[dict[str, Any]]:
    """Naive vs pyprune on one conv layer with ``channels`` channels."""
    layer, x = make_layer(channels), make_batch(args.batch, channels)
    removals = channels // 2
    evaluations = num_evaluations(channels, removals)
    records: list[dict[str, Any]] = []
    if args.wait_idle > 0:
        wait_for_idle(args.wait_idle)

    # pyprune rows first (fast); the naive run's result is compared against them afterwards.
    variants = [
        ("pyprune flatten, greedy", {"representation": "flatten", "greedy": True}),
        ("pyprune channels, greedy", {"representation": "channels", "greedy": True}),
        ("pyprune flatten, single", {"representation": "flatten", "greedy": False}),
    ]
    ours: dict[str, dict[str, Any]] = {}
    for label, options in variants:
        with OtherCpuLoad() as load:
            rec = pyprune_layer(layer, x, repeats=args.repeats, **options)
        rec.update(label=label, options=options, other_cpu_cores=load.cores)
        ours[label] = rec
        phases = ", ".join(f"{k} {fmt_seconds(v)}" for k, v in rec["phases_s"].items())
        log(f"C = {channels}: {label}: {fmt_seconds(rec['time_s'])} s ({phases})")

    # Naive: probe, predict, then run to the end if the prediction fits the budget.
    dtype = getattr(torch, args.naive_gram_dtype)
    with OtherCpuLoad() as load:
        probe = naive_greedy(layer, x, removals, gram_dtype=dtype, max_seconds=args.probe_seconds)
    probe_load = load.cores
    predicted = probe["setup_s"] + probe["per_eval_s"] * evaluations
    log(
        f"C = {channels}: naive probe: {probe['evals']} evaluations, {probe['per_eval_s'] * 1e3:.1f} ms each -> "
        f"predicted {fmt_seconds(predicted)} s for {evaluations:,} evaluations ({removals} greedy steps)"
    )
    naive: dict[str, Any] = {
        "label": "naive (cka-prune's procedure)",
        "probe_evals": probe["evals"],
        "probe_per_eval_s": probe["per_eval_s"],
        "probe_other_cpu_cores": probe_load,
        "predicted_s": predicted,
        "evaluations": evaluations,
        "removals": removals,
        "gram_dtype": args.naive_gram_dtype,
    }
    first_step = dict(probe["first_step"])
    # The smallest C gets four times the budget, so that the orders are compared at least once.
    budget = args.naive_budget * (4 if channels == min(args.channels) else 1)
    if probe["complete"] or predicted <= budget:
        last = [time.perf_counter()]

        def report(step: int, total: int, elapsed: float) -> None:
            if time.perf_counter() - last[0] >= 15 or step == total:
                last[0] = time.perf_counter()
                log(f"C = {channels}: naive step {step}/{total}, {elapsed:.0f} s")

        if probe["complete"]:  # the probe already ran to the end
            full, full_load = probe, probe_load
        else:
            if args.wait_idle > 0:
                wait_for_idle(args.wait_idle)
            with OtherCpuLoad() as load:
                full = naive_greedy(layer, x, removals, gram_dtype=dtype, report=report)
            full_load = load.cores
        first_step = full["first_step"]
        naive.update(
            how="measured",
            time_s=full["total_s"],
            per_eval_s=full["per_eval_s"],
            setup_s=full["setup_s"],
            order=full["order"],
            cka_after=full["cka_after"],
            other_cpu_cores=full_load,
            prediction_error=predicted / full["total_s"] - 1,
            budget_s=budget,
        )
        log(f"C = {channels}: naive ran to the end: {fmt_seconds(full['total_s'])} s")
    else:
        naive.update(
            how="extrapolated",
            time_s=predicted,
            per_eval_s=probe["per_eval_s"],
            setup_s=probe["setup_s"],
            order=None,
            other_cpu_cores=probe_load,
        )
        log(f"C = {channels}: naive not run to the end (predicted time > its budget, {budget:.0f} s)")

    # Comparisons.
    greedy = ours["pyprune flatten, greedy"]
    single = ours["pyprune flatten, single"]
    single_cka = dict(zip(single["order"], single["trajectory"], strict=True))
    naive["first_step_candidates"] = len(first_step)
    naive["first_step_max_abs_diff_vs_single"] = max(abs(v - single_cka[j]) for j, v in first_step.items())
    if naive["order"] is not None:
        mine = greedy["order"][:removals]
        mismatch = next(
            (i for i, (a, b) in enumerate(zip(mine, naive["order"], strict=True)) if a != b), None
        )
        naive["order_identical"] = mismatch is None
        naive["first_mismatch"] = mismatch
        naive["trajectory_max_abs_diff"] = max(
            abs(a - b) for a, b in zip(greedy["trajectory"][:removals], naive["cka_after"], strict=True)
        )
        for rec in ours.values():
            rec["removed_set_overlap_with_naive"] = len(set(rec["order"][:removals]) & set(naive["order"]))
        log(
            f"C = {channels}: removal order pyprune (flatten, greedy) vs naive: "
            f"{'IDENTICAL' if mismatch is None else f'DIFFERENT from position {mismatch}'} "
            f"({removals} removals; max |Δ CKA| along the way {naive['trajectory_max_abs_diff']:.1e}); "
            f"naive order {naive['order']}"
        )
    log(
        f"C = {channels}: single-removal CKA of {len(first_step)} candidates, naive vs pyprune closed form: max "
        f"|Δ| {naive['first_step_max_abs_diff_vs_single']:.1e}"
    )
    for rec in [naive, *ours.values()]:
        rec.update(channels=channels, batch=args.batch, removals=removals)
        rec["speedup_vs_naive"] = naive["time_s"] / rec["time_s"]
        records.append(rec)
    for rec in ours.values():
        rec["order"] = rec["order"][:removals]
        rec["trajectory"] = rec["trajectory"][:removals]
    log(
        f"C = {channels}: speed-up of pyprune (flatten, greedy) over naive "
        f"({naive['how']}): {fmt_ratio_big(greedy['speedup_vs_naive'])}"
    )
    return records


def naive_scaling(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Least-squares fit of the naive per-evaluation cost ``a * C^b`` over the measured C."""
    naive = [r for r in records if r["label"].startswith("naive")]
    cs = [r["channels"] for r in naive]
    costs = [r["per_eval_s"] for r in naive]
    out: dict[str, Any] = {
        "channels": cs,
        "per_eval_s": costs,
        "evaluations": [r["evaluations"] for r in naive],
    }
    if len(set(cs)) >= 2:
        lx = [math.log(c) for c in cs]
        ly = [math.log(t) for t in costs]
        mx, my = statistics.fmean(lx), statistics.fmean(ly)
        b = sum((a - mx) * (c - my) for a, c in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)
        out["exponent"] = b
        out["coefficient"] = math.exp(my - b * mx)
    return out


# ---------------------------------------------------------------------------------------------- part 2


def plan_case(args: argparse.Namespace) -> dict[str, Any]:
    """``pyprune.plan(model, "cka_greedy", 0.5, ...)`` end to end with a phase breakdown; then apply + count."""
    torch.manual_seed(MODEL_SEED)
    model = models.create(args.model).eval()
    generator = torch.Generator().manual_seed(INPUT_SEED)
    data = [
        (
            torch.randn(size, *INPUT_SHAPE, generator=generator),
            torch.randint(0, NUM_CLASSES, (size,), generator=generator),
        )
        for size in batch_sizes(args.samples, args.plan_batch)
    ]
    example_input = data[0][0][:2]
    timer = PhaseTimer()
    runs: list[dict[str, Any]] = []
    plan = None
    for i in range(1 + args.plan_repeats):
        if args.wait_idle > 0:
            wait_for_idle(args.wait_idle)
        gc.collect()
        with OtherCpuLoad() as load, timer.active(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            plan = pyprune.plan(
                model, "cka_greedy", PLAN_AMOUNT, example_input=example_input, data=data, progress=False
            )
            total = time.perf_counter() - start
        phases = dict(timer.seconds)
        phases["other"] = total - sum(v for k, v in phases.items() if k not in PhaseTimer.NESTED)
        runs.append(
            {
                "total_s": total,
                "phases_s": phases,
                "other_cpu_cores": load.cores,
                "cold": i == 0,
                "warnings": sorted({f"{w.category.__name__}: {w.message}" for w in caught}),
            }
        )
        log(
            f"{args.model} plan cka_greedy {PLAN_AMOUNT} from {args.samples} samples "
            f"({'cold' if i == 0 else f'repeat {i}'}): {fmt_seconds(total)} s "
            f"({', '.join(f'{k} {fmt_seconds(v)}' for k, v in phases.items())})"
        )
    assert plan is not None
    warm = runs[1:] or runs
    # The floor of the statistics pass: the same forward passes without the criterion's hooks.
    forward_times = []
    for _ in range(max(1, args.plan_repeats)):
        gc.collect()
        start = time.perf_counter()
        with torch.no_grad():
            for inputs, _ in data:
                model(inputs)
        forward_times.append(time.perf_counter() - start)
    forward_s = statistics.median(forward_times)
    log(f"{args.model}: plain forward over the {args.samples} samples (no hooks): {fmt_seconds(forward_s)} s")
    pruned = copy.deepcopy(model)
    start = time.perf_counter()
    plan.apply(pruned)
    apply_s = time.perf_counter() - start
    x1 = example_input[:1]
    before, after = pyprune.count(model, x1), pyprune.count(pruned, x1)
    with torch.no_grad():
        out_shape = tuple(pruned(example_input).shape)
    kept = [layer.size - layer.num_removed for layer in plan.layers]
    result = {
        "model": args.model,
        "samples": args.samples,
        "batch": args.plan_batch,
        "amount": PLAN_AMOUNT,
        "runs": runs,
        "cold_s": runs[0]["total_s"],
        "median_s": statistics.median(r["total_s"] for r in warm),
        "median_phases_s": _median_phases([r["phases_s"] for r in warm]),
        "apply_s": apply_s,
        "forward_s": forward_s,
        "groups": len(plan.layers),
        "channels_before": sum(layer.size for layer in plan.layers),
        "channels_removed": plan.num_removed,
        "min_kept": min(kept),
        "params": [before.params, after.params],
        "flops": [before.flops, after.flops],
        "pruned_output_shape": out_shape,
    }
    log(
        f"{args.model}: applied in {fmt_seconds(apply_s)} s; params {before.params:,} -> {after.params:,}, "
        f"FLOPs {before.flops:,} -> {after.flops:,} per image; {plan.num_removed} of "
        f"{result['channels_before']} channels in {len(plan.layers)} groups removed"
    )
    return result


# ---------------------------------------------------------------------------------------------- part 3


def rbf_case(args: argparse.Namespace) -> dict[str, Any]:
    channels = args.rbf_channels
    layer, x = make_layer(channels), make_batch(args.batch, channels)
    removals = channels // 2
    if args.wait_idle > 0:
        wait_for_idle(args.wait_idle)
    with OtherCpuLoad() as load:
        ours = pyprune_layer(
            layer,
            x,
            repeats=args.repeats,
            kernel="rbf",
            greedy=True,
            threshold=RBF_THRESHOLD,
            bandwidth="fixed",
        )
    naive = naive_greedy(layer, x, removals, kernel="rbf", gram_dtype=getattr(torch, args.naive_gram_dtype))
    mine = ours["order"][:removals]
    mismatch = next((i for i, (a, b) in enumerate(zip(mine, naive["order"], strict=True)) if a != b), None)
    result = {
        "channels": channels,
        "batch": args.batch,
        "removals": removals,
        "threshold": RBF_THRESHOLD,
        "pyprune_s": ours["time_s"],
        "pyprune_phases_s": ours["phases_s"],
        "naive_s": naive["total_s"],
        "naive_evals": naive["evals"],
        "speedup_vs_naive": naive["total_s"] / ours["time_s"],
        "order_identical": mismatch is None,
        "first_mismatch": mismatch,
        "trajectory_max_abs_diff": max(
            abs(a - b) for a, b in zip(ours["trajectory"][:removals], naive["cka_after"], strict=True)
        ),
        "pyprune_order": mine,
        "naive_order": naive["order"],
        "other_cpu_cores": load.cores,
    }
    log(
        f"RBF C = {channels}: pyprune greedy {fmt_seconds(ours['time_s'])} s, naive {fmt_seconds(naive['total_s'])} s "
        f"({fmt_ratio_big(result['speedup_vs_naive'])}); order "
        f"{'IDENTICAL' if mismatch is None else f'DIFFERENT from position {mismatch}'} "
        f"(max |Δ CKA| {result['trajectory_max_abs_diff']:.1e})"
    )
    return result


# ------------------------------------------------------------------------------------------------ report


def goal_lines(payload: dict[str, Any]) -> list[str]:
    lines = []
    layer = [r for r in payload["layers"] if r["channels"] == GOAL_CHANNELS]
    naive = next((r for r in layer if r["label"].startswith("naive")), None)
    ours = next((r for r in layer if r["label"] == "pyprune flatten, greedy"), None)
    if naive and ours:
        ratio = ours["speedup_vs_naive"]
        verdict = "MET" if ratio >= GOAL_SPEEDUP else "NOT MET"
        verified = [
            r["channels"]
            for r in payload["layers"]
            if r["label"].startswith("naive") and r.get("order_identical")
        ]
        checked = [r["channels"] for r in payload["layers"] if r["label"].startswith("naive") and r["order"]]
        lines.append(
            f"- C = {GOAL_CHANNELS}: pyprune (flatten, greedy) {fmt_seconds(ours['time_s'])} s vs naive "
            f"{fmt_seconds(naive['time_s'])} s ({naive['how']}) = {fmt_ratio_big(ratio)} -> goal >= "
            f"{GOAL_SPEEDUP:,.0f}× {verdict}. "
            + (
                f"Removal order identical to naive at C = {', '.join(map(str, verified)) or 'none'} (of C = "
                f"{', '.join(map(str, checked))} where naive ran to the end)"
                if checked
                else "Removal orders not compared (naive ran to the end at no C)"
            )
            + f"; at C = {GOAL_CHANNELS} naive "
            + (
                "ran to the end"
                if naive["how"] == "measured"
                else f"was probed ({naive['first_step_candidates']} single-removal CKA values agree with pyprune's "
                f"closed form to {naive['first_step_max_abs_diff_vs_single']:.1e})"
            )
            + "."
        )
    else:
        lines.append(f"- C = {GOAL_CHANNELS} not measured in this run")
    plan = payload.get("plan")
    if plan:
        verdict = "MET" if plan["median_s"] < GOAL_PLAN_S else "NOT MET"
        lines.append(
            f"- {plan['model']}, cka_greedy at {plan['amount']:.0%} from {plan['samples']:,} samples: "
            f"{fmt_seconds(plan['median_s'])} s (median; cold {fmt_seconds(plan['cold_s'])} s) on "
            f"{payload['config']['threads']} threads -> goal < {GOAL_PLAN_S:.0f} s {verdict}"
        )
    return lines


def results_markdown(payload: dict[str, Any]) -> str:
    config = payload["config"]
    lines = [
        f"# CKA-damage pruning on CPU{' (quick)' if config['quick'] else ''}",
        "",
        format_machine(payload["machine"]),
        f"- timed with {config['threads']} threads; pyprune kernel path: {payload['kernels']}",
        "",
        "## Goals",
        "",
        *goal_lines(payload),
        "",
        f"## 1. One conv layer, batch {config['batch']}, {MAP_SIZE}×{MAP_SIZE} maps, half the channels removed",
        "",
        "`Conv2d(C, C, 3, padding=1)` (seeded He init × per-filter scale exp(U(−1, 1))), input "
        f"relu(randn({config['batch']}, C, {MAP_SIZE}, {MAP_SIZE})). naive = cka-prune's procedure, literal: per "
        "candidate, zero its filter, conv forward on the batch, flatten per example, full "
        f"{config['batch']}×{config['batch']} linear Gram ({config['naive_gram_dtype']}), biased centring, "
        "CKA vs the original output; greedy. 'extrapolated' = probe's per-evaluation cost × evaluations "
        "(+ setup). pyprune = `CKADamage(...)` → `accumulate_over` → `removal_order`, end to end, median of "
        f"{config['repeats']} run(s) after a warm-up. Speed-up = naive time / row time.",
        "",
    ]
    headers = [
        "C",
        "implementation",
        "time (s)",
        "how",
        "evaluations",
        "speed-up vs naive",
        "order vs naive",
        "others' CPU",
    ]
    rows = []
    for r in payload["layers"]:
        naive = r["label"].startswith("naive")
        if naive:
            how = (
                r["how"]
                if r["how"] == "measured"
                else f"**extrapolated** ({r['probe_evals']} evaluations timed)"
            )
            evals = f"{r['evaluations']:,}"
            order = (
                "(reference)"
                if r["order"] is not None
                else f"first-step CKA of {r['first_step_candidates']} candidates: max abs Δ "
                f"{_fmt_diff(r['first_step_max_abs_diff_vs_single'])} vs closed form"
            )
        else:
            how, evals = "measured", "—"
            ref = next(
                x
                for x in payload["layers"]
                if x["channels"] == r["channels"] and x["label"].startswith("naive")
            )
            if ref["order"] is None:
                order = "—"
            elif r["label"] == "pyprune flatten, greedy":
                order = (
                    "**identical**"
                    if ref["order_identical"]
                    else f"DIFFERENT from position {ref['first_mismatch']}"
                ) + f" (max abs Δ CKA {_fmt_diff(ref['trajectory_max_abs_diff'])})"
            else:
                order = f"n/a; same removed set {r['removed_set_overlap_with_naive']}/{r['removals']}"
        rows.append(
            [
                r["channels"],
                r["label"],
                fmt_seconds(r["time_s"]),
                how,
                evals,
                "1 (baseline)" if naive else fmt_ratio_big(r["speedup_vs_naive"]),
                order,
                fmt_cores(r.get("other_cpu_cores"), 2),
            ]
        )
    lines += [markdown_table(headers, rows), ""]
    lines += [
        "pyprune breakdown (seconds, medians): statistics = `accumulate_over` (forward + capture), M = interaction "
        "matrix, greedy/single = removal loop or ranking on M; 'of which HSIC kernel' = the fused "
        "`gram_hsic_terms` calls inside M."
    ]
    lines += [""]
    phase_names = ["statistics", "M", "hsic", "greedy", "single"]
    rows = [
        [
            r["channels"],
            r["label"],
            *[fmt_seconds(r["phases_s"].get(p)) for p in phase_names],
            fmt_seconds(r["time_s"]),
        ]
        for r in payload["layers"]
        if not r["label"].startswith("naive")
    ]
    headers = ["C", "implementation", "statistics", "M", "of which HSIC kernel", "greedy", "single", "total"]
    lines += [markdown_table(headers, rows), ""]
    lines += ["Removal orders (channel indices, first removed first) where naive ran to the end:", ""]
    for r in payload["layers"]:
        if r["label"].startswith("naive") and r["order"] is not None:
            ours = next(
                x["order"]
                for x in payload["layers"]
                if x["channels"] == r["channels"] and x["label"] == "pyprune flatten, greedy"
            )
            if r["order_identical"]:
                lines.append(f"- C = {r['channels']}, naive = pyprune (flatten, greedy): {r['order']}")
            else:
                lines.append(f"- C = {r['channels']}, naive: {r['order']}; pyprune (flatten, greedy): {ours}")
    if not any(r["label"].startswith("naive") and r["order"] is not None for r in payload["layers"]):
        lines.append("- none")
    lines += [""]
    s = payload["naive_scaling"]
    lines += ["Naive scaling (measured):", ""]
    for c, t, e in zip(s["channels"], s["per_eval_s"], s["evaluations"], strict=True):
        lines.append(f"- C = {c}: {t * 1e3:.1f} ms per candidate evaluation × {e:,} evaluations")
    if "exponent" in s:
        lines.append(
            f"- per-evaluation cost ≈ {s['coefficient']:.2e} s × C^{s['exponent']:.2f} (least-squares fit over "
            "the C above); evaluations = Σ_t (C − t) over C/2 steps ≈ 3C²/8, so naive total ≈ C^"
            f"{s['exponent'] + 2:.2f}"
        )
    for r in payload["layers"]:
        if r["label"].startswith("naive") and r["how"] == "measured":
            lines.append(
                f"- C = {r['channels']}: the probe predicted {fmt_seconds(r['predicted_s'])} s, the full run took "
                f"{fmt_seconds(r['time_s'])} s ({r['prediction_error']:+.0%}): the extrapolation model checked "
                "where naive ran"
            )
    plan = payload.get("plan")
    if plan:
        p = plan["median_phases_s"]
        lines += [
            "",
            f'## 2. `pyprune.plan({plan["model"]}, "cka_greedy", {plan["amount"]}, ...)` from '
            f"{plan['samples']:,} samples (batches of {plan['batch']})",
            "",
            "Synthetic CIFAR-shaped inputs (seeded randn), untrained seeded model, default options (linear kernel, "
            "channels representation, every conv layer but the classifier, `progress=False`). Phases by timers "
            "wrapped around pyprune's internals: statistics = `accumulate_over` (forward passes + second moments), "
            "M, greedy = scoring, trace = Torch-Pruning dependency graph, table = the plan's parameter/FLOP table "
            "(applies the plan to a copy and counts both), other = rest (deep copy, grouping, selection).",
            "",
        ]
        names = ["statistics", "M", "greedy", "trace", "table", "other"]
        rows = [
            [
                "cold (first call)" if r["cold"] else "repeat",
                fmt_seconds(r["total_s"]),
                *[fmt_seconds(r["phases_s"].get(n)) for n in names],
                fmt_cores(r["other_cpu_cores"], 2),
            ]
            for r in plan["runs"]
        ]
        rows.append(
            [
                "**median (repeats)**",
                f"**{fmt_seconds(plan['median_s'])}**",
                *[fmt_seconds(p.get(n)) for n in names],
                "",
            ]
        )
        lines += [markdown_table(["run", "total (s)", *names, "others' CPU"], rows), ""]
        (pb, pa), (fb, fa) = plan["params"], plan["flops"]
        lines += [
            f"Applied (`plan.apply`, {fmt_seconds(plan['apply_s'])} s): {plan['channels_removed']} of "
            f"{plan['channels_before']} channels removed in {plan['groups']} groups (min kept per group "
            f"{plan['min_kept']}); params {pb:,} → {pa:,} ({pa / pb:.3f}), FLOPs per image {fmt_count(fb)} → "
            f"{fmt_count(fa)} ({fa / fb:.3f}) (`pyprune.count`); pruned model output {plan['pruned_output_shape']}.",
            "",
            f"For scale: the same forward passes without hooks (`model(x)` over the {plan['samples']:,} samples, "
            f"`no_grad`) take {fmt_seconds(plan['forward_s'])} s (median); the statistics pass is "
            f"{p.get('statistics', math.nan) / plan['forward_s']:.1f}× that.",
        ]
    rbf = payload.get("rbf")
    if rbf:
        lines += [
            "",
            f"## 3. RBF kernel (fixed bandwidth, threshold {rbf['threshold']}), C = {rbf['channels']}, batch "
            f"{rbf['batch']}, {rbf['removals']} removals",
            "",
            f"- pyprune `CKADamage(kernel='rbf', greedy=True)`: {fmt_seconds(rbf['pyprune_s'])} s; naive (Google "
            f"`gram_rbf` with the original output's median, {rbf['naive_evals']} evaluations): "
            f"{fmt_seconds(rbf['naive_s'])} s; speed-up {fmt_ratio_big(rbf['speedup_vs_naive'])}",
            "- removal order: "
            + (
                "**identical**"
                if rbf["order_identical"]
                else f"DIFFERENT from position {rbf['first_mismatch']}"
            )
            + f" (max |Δ CKA| {_fmt_diff(rbf['trajectory_max_abs_diff'])}): naive {rbf['naive_order']}"
            + ("" if rbf["order_identical"] else f", pyprune {rbf['pyprune_order']}"),
            f"- pyprune's time covers the whole greedy order ({rbf['channels']} removals, "
            f"{num_evaluations(rbf['channels'], rbf['channels']):,} candidate scans), naive's only the first "
            f"{rbf['removals']} ({rbf['naive_evals']:,} evaluations).",
        ]
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in payload["notes"]]
    return "\n".join(lines)


def build_notes(payload: dict[str, Any]) -> list[str]:
    config = payload["config"]
    notes = [
        "naive keeps the original output's Gram matrix from the start (computed once, as cka-prune does per "
        "pruning pass) and recomputes the full layer output per candidate, as cka-prune's README describes; its "
        "code instead substitutes the bias into a copy of the activations (its `engine_prune.py`), which skips the conv "
        "forward but still needs a full Gram per candidate.",
        f"naive computes the Gram, centring and CKA in {config['naive_gram_dtype']} (cka-prune: float32 NumPy); "
        "`--naive-gram-dtype float32` trades precision for speed on the Gram part and can reorder near-tied "
        "candidates. The conv forward is float32 either way.",
        "pyprune's flattened representation needs every sample at once; it builds M either in feature space "
        "(C·H·W covariance) or in sample space (per-channel Gram matrices through the fused HSIC kernel), "
        "whichever is cheaper (sample space where the breakdown shows HSIC-kernel time). The channels representation (default of `pyprune.plan`) "
        "reads a conv map as (N·H·W, C) rows, so its memory does not grow with the number of samples; its "
        "removal order is that of a different representation and is not expected to equal naive's.",
        "The greedy loop is O(C) per step on M (each candidate's damage is a closed form in M); which implementation ran it is recorded as the "
        "kernel path above (`pyprune.ops.cka_damage`).",
        "All data and weights are synthetic and seeded; timings do not depend on the values, orders do.",
    ]
    plan_warnings = sorted({w for r in (payload.get("plan") or {}).get("runs", []) for w in r["warnings"]})
    if plan_warnings:
        notes.append(f"`pyprune.plan` warned: {'; '.join(plan_warnings)}")
    others = [
        v
        for v in [r.get("other_cpu_cores") for r in payload["layers"]]
        + [r["other_cpu_cores"] for r in (payload.get("plan") or {}).get("runs", [])]
        if v is not None
    ]
    if others:
        notes.append(
            f"Other processes kept {min(others):.2f} to {max(others):.2f} cores busy during the measurements (on "
            f"{payload['machine']['cores_available']} cores); where that is not near 0 absolute times are "
            "inflated (naive's long run more exposed than pyprune's short ones)."
        )
    return notes


# -------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(
        __doc__.split("\n\n")[0], "C in {16, 32}, batch 64, ResNet-20 from 256 samples (< 60 s)"
    )
    parser.add_argument(
        "--channels", type=int, nargs="+", default=None, help="layer widths (default 64 128 256)"
    )
    parser.add_argument("--batch", type=int, default=None, help="layer batch size (default 256; quick 64)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed pyprune runs after a warm-up (default 3)"
    )
    parser.add_argument(
        "--naive-budget",
        type=float,
        default=None,
        help="run naive to the end where its predicted time is at most this many seconds, else extrapolate; "
        "the smallest C gets 4x this budget, so that orders are compared at least once (default 240; quick: "
        "always run)",
    )
    parser.add_argument(
        "--probe-seconds",
        type=float,
        default=None,
        help="naive evaluation time per probe (default 8, quick 0.5)",
    )
    parser.add_argument("--naive-gram-dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--model", default=None, help="model for part 2 (default resnet56; quick resnet20)")
    parser.add_argument(
        "--samples", type=int, default=None, help="samples for part 2 (default 1024; quick 256)"
    )
    parser.add_argument(
        "--plan-batch", type=int, default=None, help="batch size for part 2 (default 256, quick 64)"
    )
    parser.add_argument(
        "--plan-repeats", type=int, default=None, help="timed plans after the cold one (default 2)"
    )
    parser.add_argument(
        "--rbf-channels", type=int, default=None, help="RBF layer width (default 32, quick 16)"
    )
    parser.add_argument("--skip-plan", action="store_true", help="skip part 2")
    parser.add_argument("--skip-rbf", action="store_true", help="skip part 3")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    add_wait_idle(parser, 5.0)
    full_or_quick = {
        "channels": ([64, 128, 256], [16, 32]),
        "batch": (256, 64),
        "repeats": (3, 2),
        "naive_budget": (240.0, math.inf),
        "probe_seconds": (8.0, 0.5),
        "model": ("resnet56", "resnet20"),
        "samples": (1024, 256),
        "plan_batch": (256, 64),
        "plan_repeats": (2, 1),
        "rbf_channels": (32, 16),
        "wait_idle": (5.0, 0.0),
    }
    args = parse(parser, argv, full_or_quick)
    for key in ("batch", "repeats", "samples", "plan_batch", "plan_repeats", "threads"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.batch < 4:
        parser.error("--batch must be >= 4 (CKA needs a few samples)")
    if any(c < 2 for c in [*args.channels, args.rbf_channels]):
        parser.error("--channels/--rbf-channels must be >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine = machine_info("cpu")
    machine["torch_pruning"] = package_version("torch-pruning")
    compiled = (
        [] if cpu_import_error() is not None else [n for n in dir(cpu_kernels()) if not n.startswith("_")]
    )
    kernels = f"{use_kernel(torch.device('cpu'))} (compiled: {', '.join(compiled) or 'none'})"
    log(f"threads = {args.threads}; kernels: {kernels}")
    payload: dict[str, Any] = {
        "machine": machine,
        "kernels": kernels,
        "config": {
            "quick": args.quick,
            "channels": args.channels,
            "batch": args.batch,
            "map_size": MAP_SIZE,
            "repeats": args.repeats,
            "naive_budget_s": args.naive_budget if math.isfinite(args.naive_budget) else None,
            "probe_seconds": args.probe_seconds,
            "naive_gram_dtype": args.naive_gram_dtype,
            "model": args.model,
            "samples": args.samples,
            "plan_batch": args.plan_batch,
            "plan_repeats": args.plan_repeats,
            "rbf_channels": args.rbf_channels,
            "threads": args.threads,
            "wait_idle_s": args.wait_idle,
            "goals": {"speedup": GOAL_SPEEDUP, "channels": GOAL_CHANNELS, "plan_s": GOAL_PLAN_S},
        },
    }
    payload["layers"] = [rec for c in args.channels for rec in layer_case(args, c)]
    payload["naive_scaling"] = naive_scaling(payload["layers"])
    payload["plan"] = None if args.skip_plan else plan_case(args)
    payload["rbf"] = None if args.skip_rbf else rbf_case(args)
    payload["goals"] = goal_lines(payload)
    payload["notes"] = build_notes(payload)
    payload["wall_s"] = time.perf_counter() - started
    markdown = results_markdown(payload)
    publish(args, "cka_damage_cpu", payload, markdown, started=started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
