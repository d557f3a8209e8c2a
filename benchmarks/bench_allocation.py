"""Benchmark: what FLOPs-aware allocation (``budget="flops"``) buys over a channel budget, on CPU.

Global channel ranking spends a channel budget wherever the scores are lowest; under Taylor's per-layer
normalisation that is the wide, cheap classifier of vgg16_bn, which drops parameters but hardly any FLOPs. For
torchvision vgg16_bn and resnet50 (random weights, seeded; ``--quick``: resnet18 alone), each of global Taylor
(``--taylor-batches`` random batches of 8 with random labels over the 1,000 classes), global ``l2_filter`` and
global ``l1_filter`` at ``amount=0.5`` is planned with ``budget="channels"`` (50% of the channels) and with
``budget="flops"`` (50% of the FLOPs), on a ``1 x 3 x S x S`` example input (``--size``, default 64 so that
two cores can time batch 8). Reported: plan time, parameters and FLOPs after/before (``pyprune.count`` of the
applied model at that size), and the latency speed-up at batches 1 and 8 at the same size, dense and pruned
timed in alternating rounds (``pyprune.latency`` at ``--threads``, default 1: on a shared 2-core machine two
threads wait on each other whenever another process takes a core; speed-up of the best round medians, the median
ratio beside it), with the cores other processes kept busy meanwhile. With ``--count-size`` (default 224; 0 skips it) every plan is also made at that input size,
where the convolutions' share of the FLOPs is larger, and only its parameters and FLOPs are reported.

Run ``python benchmarks/bench_allocation.py`` (about ten minutes on 2 cores); it writes
``benchmarks/results/allocation_cpu.{json,md}``. ``--quick`` (resnet18, l2_filter only, few repeats) is a smoke
test and writes nothing unless ``--out DIR`` is given.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from _runner import (
    OtherCpuLoad,
    add_wait_idle,
    benchmark_parser,
    declare_torchvision_ops,
    fmt_cores,
    fmt_ratio,
    fmt_seconds,
    format_machine,
    log,
    machine_info,
    markdown_table,
    parse,
    publish,
    wait_for_idle,
)
from torch import nn

import pyprune

MODEL_SEED = 0
INPUT_SEED = 1
AMOUNT = 0.5
BUDGETS = ("channels", "flops")


def build(name: str) -> nn.Module:
    declare_torchvision_ops()
    import torchvision

    torch.manual_seed(MODEL_SEED)
    return getattr(torchvision.models, name)().eval()


def batches(size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` random batches of 8 images ``3 x size x size`` with random labels over the 1,000 classes."""
    generator = torch.Generator().manual_seed(INPUT_SEED)
    return [
        (
            torch.randn(8, 3, size, size, generator=generator),
            torch.randint(0, 1000, (8,), generator=generator),
        )
        for _ in range(count)
    ]


def paired_speedup(
    dense: nn.Module, pruned: nn.Module, x: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """Dense and pruned latency (ms) on ``x`` in ``args.rounds`` alternating rounds of ``pyprune.latency`` at
    ``args.threads`` threads. ``speedup`` is dense / pruned of the best round medians (the rounds least disturbed
    by other processes), ``median_speedup`` of the median round medians."""
    if args.wait_idle > 0:
        wait_for_idle(args.wait_idle)
    times: dict[str, list[float]] = {"dense": [], "pruned": []}
    with OtherCpuLoad() as load:
        for _ in range(args.rounds):
            for key, model in (("dense", dense), ("pruned", pruned)):
                latency = pyprune.latency(
                    model, x, warmup=args.warmup, repeats=args.repeats, threads=args.threads
                )
                times[key].append(latency.median_ms)
    return {
        "dense_ms": min(times["dense"]),
        "pruned_ms": min(times["pruned"]),
        "speedup": min(times["dense"]) / min(times["pruned"]),
        "median_speedup": statistics.median(times["dense"]) / statistics.median(times["pruned"]),
        "dense_round_ms": times["dense"],
        "pruned_round_ms": times["pruned"],
        "other_cpu_cores": load.cores,
    }


def planned(
    model: nn.Module, method: str, budget: str, size: int, args: argparse.Namespace
) -> tuple[nn.Module, dict[str, Any]]:
    """The model pruned by ``method`` at ``AMOUNT`` of ``budget`` on a ``1 x 3 x size x size`` input, and the plan
    time, parameters and FLOPs before and after (counted at that size) and the fraction of channels removed."""
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(INPUT_SEED))
    options: dict[str, Any] = {"example_input": x, "scope": "global", "budget": budget}
    if method == "taylor":
        options.update(data=batches(size, args.taylor_batches), progress=False)
    started = time.perf_counter()
    plan = pyprune.plan(model, method, AMOUNT, **options)
    plan_s = time.perf_counter() - started
    pruned = plan.apply(copy.deepcopy(model))
    before, after = pyprune.count(model, x), pyprune.count(pruned, x)
    return pruned, {
        "plan_s": plan_s,
        "params": [before.params, after.params],
        "flops": [before.flops, after.flops],
        "channels_removed": plan.fraction_removed,
    }


def record(name: str, model: nn.Module, method: str, budget: str, args: argparse.Namespace) -> dict[str, Any]:
    pruned, counts = planned(model, method, budget, args.size, args)
    row: dict[str, Any] = {"model": name, "method": method, "budget": budget, **counts, "latency": {}}
    if args.count_size:
        row["at_count_size"] = planned(model, method, budget, args.count_size, args)[1]
    for batch in args.batches:
        xb = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(INPUT_SEED))
        row["latency"][str(batch)] = paired_speedup(model, pruned, xb, args)
    speedups = ", ".join(f"b{b} {row['latency'][str(b)]['speedup']:.2f}x" for b in args.batches)
    params, flops = row["params"], row["flops"]
    log(
        f"{name} {method} budget={budget}: params {params[1] / params[0]:.3f}, FLOPs {flops[1] / flops[0]:.3f}, "
        f"{speedups}"
    )
    return row


def conclusions(rows: list[dict[str, Any]], batches_: Sequence[int]) -> list[str]:
    """One line per model and method: what each budget removed and what it sped up, from the rows."""
    lines = []
    by_key = {(r["model"], r["method"], r["budget"]): r for r in rows}
    for model, method in dict.fromkeys((r["model"], r["method"]) for r in rows):
        channels, flops = by_key.get((model, method, "channels")), by_key.get((model, method, "flops"))
        if channels is None or flops is None:
            continue

        def removed(row: dict[str, Any], key: str) -> float:
            return 100 * (1 - row[key][1] / row[key][0])

        speed = "; ".join(
            f"batch {b}: {channels['latency'][str(b)]['speedup']:.2f}x -> {flops['latency'][str(b)]['speedup']:.2f}x"
            for b in batches_
        )
        line = (
            f"{model} {method}: budget='channels' removes {removed(channels, 'params'):.1f}% of the parameters and "
            f"{removed(channels, 'flops'):.1f}% of the FLOPs; budget='flops' removes {removed(flops, 'params'):.1f}% "
            f"and {removed(flops, 'flops'):.1f}%. Speed-up channels -> flops, {speed}."
        )
        if "at_count_size" in channels:
            big_channels, big_flops = channels["at_count_size"], flops["at_count_size"]
            line += (
                f" Planned at the count size: channels {removed(big_channels, 'params'):.1f}% / "
                f"{removed(big_channels, 'flops'):.1f}%, flops {removed(big_flops, 'params'):.1f}% / "
                f"{removed(big_flops, 'flops'):.1f}% (parameters / FLOPs)."
            )
        lines.append(line)
    reached = [
        100 * (1 - counts["flops"][1] / counts["flops"][0])
        for r in rows
        if r["budget"] == "flops"
        for counts in [r, r.get("at_count_size")]
        if counts is not None
    ]
    spread = [
        100 * (1 - counts["flops"][1] / counts["flops"][0])
        for r in rows
        if r["budget"] == "channels"
        for counts in [r, r.get("at_count_size")]
        if counts is not None
    ]
    for b in batches_:
        speedups = [r["latency"][str(b)]["speedup"] for r in rows]
        by_flops = spearman([1 - r["flops"][1] / r["flops"][0] for r in rows], speedups)
        by_params = spearman([1 - r["params"][1] / r["params"][0] for r in rows], speedups)
        lines.append(
            f"Batch {b}: rank correlation of the speed-up with the FLOPs removed {by_flops:+.2f}, with the parameters "
            f"removed {by_params:+.2f} (all {len(rows)} rows)."
        )
    if reached and spread:
        lines.append(
            f"FLOPs removed by the {len(reached)} budget='flops' plans: {min(reached):.2f}% to {max(reached):.2f}% "
            f"(target {100 * AMOUNT:.0f}%); by the {len(spread)} budget='channels' plans at the same amount: "
            f"{min(spread):.1f}% to {max(spread):.1f}%."
        )
    return lines


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (ties ranked by position)."""

    def ranks(values: Sequence[float]) -> list[int]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0] * len(values)
        for rank, i in enumerate(order):
            result[i] = rank
        return result

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return (
        1 - 6 * sum((x - y) ** 2 for x, y in zip(ra, rb, strict=True)) / (n * (n * n - 1)) if n > 1 else 0.0
    )


def results_markdown(payload: dict[str, Any]) -> str:
    config = payload["config"]
    headers = ["model", "method", "budget", "plan s", "channels removed", "params after/before"]
    headers += ["FLOPs after/before"]
    if config["count_size"]:
        headers += [f"params / FLOPs after/before at {config['count_size']}"]
    headers += [f"speed-up b{b} (median)" for b in config["batches"]] + ["other cores"]
    table = []
    for r in payload["rows"]:
        latency = r["latency"]
        others = [latency[str(b)]["other_cpu_cores"] for b in config["batches"]]
        table.append(
            [
                r["model"],
                r["method"],
                r["budget"],
                fmt_seconds(r["plan_s"]),
                f"{100 * r['channels_removed']:.1f}%",
                f"{r['params'][1] / r['params'][0]:.3f}",
                f"{r['flops'][1] / r['flops'][0]:.3f}",
                *(
                    [
                        f"{r['at_count_size']['params'][1] / r['at_count_size']['params'][0]:.3f} / "
                        f"{r['at_count_size']['flops'][1] / r['at_count_size']['flops'][0]:.3f}"
                    ]
                    if config["count_size"]
                    else []
                ),
                *[
                    f"{fmt_ratio(latency[str(b)]['speedup'])} ({fmt_ratio(latency[str(b)]['median_speedup'])})"
                    for b in config["batches"]
                ],
                fmt_cores(max((o for o in others if o is not None), default=None)),
            ]
        )
    lines = [
        "# FLOPs-aware allocation on CPU: budget='channels' vs budget='flops'",
        "",
        format_machine(payload["machine"]),
        "",
        f"amount = {AMOUNT}, scope = 'global'; planning, counting and latency at input 3 x {config['size']} x "
        f"{config['size']}"
        + (f" (and planning and counting alone at {config['count_size']})" if config["count_size"] else "")
        + f"; Taylor from {config['taylor_batches']} random batches of 8; latency: "
        f"{config['rounds']} alternating dense/pruned rounds of {config['warmup']} warm-up + {config['repeats']} "
        f"timed calls at {config['threads']} torch thread(s); speed-up = dense / pruned of the best round medians "
        "(of the median round medians in brackets); 'other cores' = most cores other processes kept busy during "
        "one row's timing.",
        "",
        markdown_table(headers, table),
        "",
        "## Conclusions (computed from the rows)",
        "",
        *[f"- {line}" for line in payload["conclusions"]],
        "",
        f"Reproduce: `PYTHONPATH=$PWD python benchmarks/bench_allocation.py` ({payload['wall_s']:.0f} s here).",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.split("\n\n")[0], "resnet18, l2_filter only, few repeats")
    parser.add_argument(
        "--models", nargs="+", default=None, help="default vgg16_bn resnet50 (quick resnet18)"
    )
    parser.add_argument("--methods", nargs="+", default=None, help="default taylor l2_filter l1_filter")
    parser.add_argument("--size", type=int, default=64, help="input height and width (default 64)")
    parser.add_argument(
        "--count-size", type=int, default=None, help="also plan and count at this size (default 224, quick 0)"
    )
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default 1 8")
    parser.add_argument(
        "--taylor-batches", type=int, default=None, help="Taylor's random batches (default 4)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per round (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per round (default 5)")
    add_wait_idle(parser, 3.0)
    defaults = {
        "models": (["vgg16_bn", "resnet50"], ["resnet18"]),
        "methods": (["taylor", "l2_filter", "l1_filter"], ["l2_filter"]),
        "batches": ([1, 8], [1]),
        "count_size": (224, 0),
        "taylor_batches": (4, 1),
        "rounds": (5, 1),
        "warmup": (2, 1),
        "repeats": (5, 2),
        "wait_idle": (3.0, 0.0),
    }
    return parse(parser, argv, defaults)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    rows = []
    for name in args.models:
        model = build(name)
        for method in args.methods:
            for budget in BUDGETS:
                rows.append(record(name, model, method, budget, args))
    payload: dict[str, Any] = {
        "machine": machine_info("cpu"),
        "config": {
            "quick": args.quick,
            "models": args.models,
            "methods": args.methods,
            "amount": AMOUNT,
            "size": args.size,
            "count_size": args.count_size,
            "batches": args.batches,
            "taylor_batches": args.taylor_batches,
            "rounds": args.rounds,
            "threads": args.threads,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "wait_idle_s": args.wait_idle,
        },
        "rows": rows,
    }
    payload["conclusions"] = conclusions(rows, args.batches)
    payload["wall_s"] = time.perf_counter() - started
    publish(args, "allocation_cpu", payload, results_markdown(payload), started=started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
