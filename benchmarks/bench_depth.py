"""Depth pruning: held-out perplexity after removing 25% of the blocks, chosen by each similarity score, against
removing the last blocks and random blocks; latency at batch 1.

The model is the small byte-level GPT-2 of ``_lm.py`` (8 blocks; 25% = 2). Scores (``pyprune.block_importance``)
come from calibration windows of the training split, one set per seed: angular distance (Gromov et al. 2024) as a
contiguous run, Block Influence (Men et al. 2024, ShortGPT) of single blocks, and 1 - linear CKA both ways. No
healing (fine-tuning) after removal, so the numbers are the raw damage each choice does.

    python benchmarks/bench_depth.py            # writes benchmarks/results/depth_cpu.{md,json,png}
    python benchmarks/bench_depth.py --quick    # 60-step model, one seed, writes nothing
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _lm
import torch
from _runner import (
    OtherCpuLoad,
    fmt_cores,
    format_machine,
    machine_info,
    markdown_table,
    publish,
    time_call,
)

import pyprune
from pyprune.pruning.depth import BlockPlan
from pyprune.pruning.fingerprint import model_fingerprint

SELECTIONS = (
    ("angular, best run", "angular", True),
    ("angular, single blocks", "angular", False),
    ("block influence (ShortGPT), single blocks", "bi", False),
    ("block influence, best run", "bi", True),
    ("1 - CKA, single blocks", "cka", False),
    ("1 - CKA, best run", "cka", True),
)


def remove(model: Any, blocks: list[str]) -> Any:
    pruned = copy.deepcopy(model)
    BlockPlan(blocks, model_fingerprint(model)).apply(pruned)
    return pruned


def latencies(models: list[Any], seq_len: int, repeats: int) -> list[float]:
    """Batch-1 forward time of each model: the minimum over ``repeats`` rounds that time the models in turn, so
    a burst of load from other processes hits all of them alike (the minimum is the least disturbed run)."""
    x = torch.randint(0, 256, (1, seq_len), generator=torch.Generator().manual_seed(0))
    best = [float("inf")] * len(models)
    with torch.no_grad():
        for _ in range(repeats):
            for i, model in enumerate(models):
                best[i] = min(
                    best[i], time_call(lambda m=model: m(input_ids=x), repeats=1, warmup=1)["min_s"]
                )
    return best


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return _lm.parse_arguments(__doc__.split("\n\n")[0], argv, 64)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seeds, count = args.seeds_used, args.eval_windows
    model, record, train, held_out = _lm.trained_model(quick=args.quick)
    seq_len = record["train"]["seq_len"]
    names = [f"transformer.h.{i}" for i in range(len(model.transformer.h))]
    drop = round(0.25 * len(names))
    info = machine_info()
    dense = _lm.perplexity(model, held_out, seq_len, count)
    runs: list[dict[str, Any]] = []
    scores: dict[str, list[float]] = {}
    with OtherCpuLoad() as load:
        for seed in range(seeds):
            calibration = _lm.calibration_batches(train, seq_len, args.calibration, seed)
            for label, metric, contiguous in SELECTIONS:
                plan = pyprune.plan_blocks(
                    model,
                    calibration,
                    drop,
                    metric,
                    contiguous=contiguous,
                    blocks="transformer.h",
                    progress=False,
                )
                if seed == 0 and not contiguous:
                    scores[metric] = plan.options["scores"]
                ppl = _lm.perplexity(remove(model, plan.removed), held_out, seq_len, count)
                runs.append({"selection": label, "seed": seed, "removed": plan.removed, "perplexity": ppl})
                print(f"  {label:45s} seed {seed}: {plan.removed} -> ppl {ppl:.3f}")
            chosen = sorted(random.Random(seed).sample(range(len(names)), drop))
            blocks = [names[i] for i in chosen]
            runs.append(
                {
                    "selection": "random blocks",
                    "seed": seed,
                    "removed": blocks,
                    "perplexity": _lm.perplexity(remove(model, blocks), held_out, seq_len, count),
                }
            )
        last = names[
            -drop - 1 : -1
        ]  # the last blocks before the final one (Gromov et al.'s baseline keeps it)
        final = names[-drop:]
        for label, blocks in (("last blocks but the final one", last), ("last blocks", final)):
            ppl = _lm.perplexity(remove(model, blocks), held_out, seq_len, count)
            runs.append({"selection": label, "seed": 0, "removed": blocks, "perplexity": ppl})
        repeats = 5 if args.quick else 30
        dense_latency, pruned_latency = latencies([model, remove(model, last)], seq_len, repeats)

    rows = []
    for label in [
        *(s[0] for s in SELECTIONS),
        "random blocks",
        "last blocks but the final one",
        "last blocks",
    ]:
        ppl = [r["perplexity"] for r in runs if r["selection"] == label]
        removed = sorted(
            {", ".join(b.rsplit(".", 1)[1] for b in r["removed"]) for r in runs if r["selection"] == label}
        )
        rows.append(
            {
                "selection": label,
                "runs": len(ppl),
                "ppl_mean": statistics.fmean(ppl),
                "ppl_std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
                "removed": removed,
            }
        )
    best = min(rows, key=lambda r: r["ppl_mean"])
    random_row = next(r for r in rows if r["selection"] == "random blocks")
    last_row = next(r for r in rows if r["selection"] == "last blocks")
    lines = [
        f"lowest perplexity after removing {drop} of {len(names)} blocks: {best['selection']} "
        f"({best['ppl_mean']:.3f}, {best['ppl_mean'] / dense:.2f}x dense {dense:.3f})",
        *(
            f"{r['selection']}: {r['ppl_mean'] / last_row['ppl_mean']:.3f}x the perplexity of removing the last "
            f"blocks, {r['ppl_mean'] / random_row['ppl_mean']:.2f}x that of random blocks (mean of "
            f"{random_row['runs']} draws)"
            for r in rows[: len(SELECTIONS)]
        ),
        "random draws: "
        + ", ".join(
            f"blocks {', '.join(b.rsplit('.', 1)[1] for b in r['removed'])} -> {r['perplexity']:.3f}"
            for r in runs
            if r["selection"] == "random blocks"
        ),
        f"latency at batch 1 ({seq_len} bytes, best of {repeats} interleaved runs): {dense_latency * 1e3:.2f} ms dense, {pruned_latency * 1e3:.2f} ms "
        f"with {len(names) - drop} blocks ({dense_latency / pruned_latency:.2f}x faster)",
    ]
    table = markdown_table(
        ["blocks removed by", "runs", "held-out ppl (mean +/- sd)", "x dense", "blocks removed"],
        [["(dense)", 1, f"{dense:.3f}", "1.00", "-"]]
        + [
            [
                r["selection"],
                r["runs"],
                f"{r['ppl_mean']:.3f} +/- {r['ppl_std']:.3f}",
                f"{r['ppl_mean'] / dense:.2f}",
                "; ".join(r["removed"]),
            ]
            for r in rows
        ],
    )
    score_table = markdown_table(
        ["block", *scores],
        [[i, *(f"{scores[m][i]:.4f}" for m in scores)] for i in range(len(names))],
    )
    markdown = "\n\n".join(
        [
            f"# Depth pruning on CPU{' (quick)' if args.quick else ''}",
            f"Model: byte-level GPT-2, {record['parameters']:,} parameters, {len(names)} blocks, trained "
            f"{record['train']['steps']} steps on the Python standard library's sources; {drop} blocks (25%) removed, "
            f"no healing; perplexity per byte on {count} held-out windows; {seeds} calibration seed(s) of "
            f"{args.calibration} windows. Other processes kept "
            f"{fmt_cores(load.cores)} cores busy on average.",
            table,
            "## Single-block scores (seed 0; low = removed first)",
            score_table,
            "## Conclusions (computed from the table)",
            "\n".join(f"- {line}" for line in lines),
            format_machine(info),
            "Reproduce: `python benchmarks/bench_depth.py` (the model is shared with bench_lm_oneshot.py).",
        ]
    )
    payload = {
        "config": vars(args) | {"out": str(args.out)},
        "machine": info,
        "training": record,
        "dense_perplexity": dense,
        "runs": runs,
        "summary": rows,
        "scores": scores,
        "latency_s": {"dense": dense_latency, "pruned": pruned_latency},
        "conclusions": lines,
        "other_cores": load.cores,
    }
    publish(args, "depth_cpu", payload, markdown, plot=lambda path: plot(rows, scores, dense, path))
    return 0


def plot(rows: list[dict[str, Any]], scores: dict[str, list[float]], dense: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [r["selection"] for r in rows]
    left.barh(labels, [r["ppl_mean"] for r in rows], xerr=[r["ppl_std"] for r in rows], color="tab:blue")
    left.axvline(dense, color="black", linestyle="--", label=f"dense {dense:.2f}")
    left.set_xscale("log")
    left.set_xlabel("held-out perplexity per byte, log scale (25% of blocks removed)")
    left.invert_yaxis()
    left.legend()
    for metric, values in scores.items():
        top = max(values)
        right.plot(range(len(values)), [v / top for v in values], marker="o", label=metric)
    right.set_xlabel("block")
    right.set_ylabel("score / max (low = removable)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
