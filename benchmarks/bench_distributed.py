"""Data-driven planning under torchrun: ResNet-56, one process vs two, on the same total data.

Taylor (Molchanov et al. 2017), PFP (Liebenwein et al. 2020) and greedy CKA damage plan ResNet-56 (He et al. 2016,
CIFAR variant, random init, eval mode) from ``--samples`` CIFAR-sized inputs with random labels, in three
configurations:

* one process, 1 intra-op thread, no process group: the reference plan and time;
* two processes under ``torchrun`` (gloo), 1 thread each, rank r holding the r-th contiguous half of the batches;
* with ``--two-threads`` also one process with 2 threads (on a loaded 2-core machine, two threads that wait for
  each other are many times slower than one, so that row measures the machine's load more than pyprune).

Time is barrier to barrier on every rank around ``pyprune.plan`` (so the slowest rank counts), the median of
``--repeats`` runs after one untimed warm-up plan that pays imports and tracing. Plans are compared as JSON bytes (SHA-256) with the reference and across
ranks; where they differ, the number of channels planned differently is given. On the 2-core shared machine two
processes cannot show a real speed-up over one process with two threads: what matters here is plan equality and
the cost of the reductions. Results: ``benchmarks/results/distributed_cpu.{json,md}``; ``--quick`` (64 samples)
writes nothing without ``--out``.

Reproduce: ``python benchmarks/bench_distributed.py`` (about 5 minutes on a quiet 2-core machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._runner import (  # noqa: E402
    OtherCpuLoad,
    benchmark_parser,
    fmt_cores,
    fmt_ratio,
    fmt_seconds,
    format_machine,
    machine_info,
    markdown_table,
    parse,
    publish,
)

METHODS = ("taylor", "pfp", "cka_greedy")
AMOUNT = 0.3
CONFIGS = (
    {"name": "1 process × 1 thread", "processes": 1, "threads": 1},
    {"name": "2 processes × 1 thread (torchrun, gloo)", "processes": 2, "threads": 1},
)
TWO_THREADS = {"name": "1 process × 2 threads", "processes": 1, "threads": 2}


# ---------------------------------------------------------------------------------------------- worker


def _batches(samples: int, batch: int, rank: int, world: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (samples,), generator=generator)
    every = [(x[i : i + batch], y[i : i + batch]) for i in range(0, samples, batch)]
    share = len(every) // world
    return every[rank * share : (rank + 1) * share]


def worker(out: str, samples: int, batch: int, threads: int, repeats: int) -> None:
    """One rank (or the single process): plan with every method, write timings and plan digests (rank 0)."""
    import warnings

    import torch.distributed as dist

    import pyprune
    from pyprune.distributed import exit_rank
    from pyprune.models import resnet56

    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")  # PFP warns that a few hundred samples are fewer than its bound asks for
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo", timeout=timedelta(minutes=10))
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    def barrier() -> None:
        if distributed:
            dist.barrier()

    torch.manual_seed(0)
    model = resnet56().eval()
    data = _batches(samples, batch, rank, world)
    example = data[0][0][:1]
    pyprune.plan(model, "l1_filter", AMOUNT, example_input=example)  # warm-up: imports, tracing
    records = {}
    for method in METHODS:
        times = []
        for _ in range(repeats):
            barrier()
            start = time.perf_counter()
            plan = pyprune.plan(model, method, AMOUNT, example_input=example, data=data, progress=False)
            barrier()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        text = plan.to_json()
        digests: list[Any] = [hashlib.sha256(text.encode()).hexdigest()]
        if distributed:
            digests = [None] * world
            dist.all_gather_object(digests, hashlib.sha256(text.encode()).hexdigest())
        records[method] = {
            "seconds": seconds,
            "times": times,
            "sha256": digests[0],
            "ranks_identical": len(set(digests)) == 1,
            "removed": {layer.name: layer.removed.tolist() for layer in plan.layers},
            "plan": json.loads(text),
        }
    if rank == 0:
        Path(out).write_text(json.dumps(records))
    if distributed:
        exit_rank()


# ------------------------------------------------------------------------------------------------ main


def run_config(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "records.json")
        script = [str(Path(__file__).resolve()), "--worker", str(out)]
        script += [
            "--samples",
            str(args.samples),
            "--batch",
            str(args.batch),
            "--repeats",
            str(args.repeats),
            "--threads",
            str(config["threads"]),
        ]
        if config["processes"] == 1:
            command = [sys.executable, *script]
        else:
            launcher = [
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc-per-node={config['processes']}",
            ]
            command = [sys.executable, *launcher, *script]
        env = {**os.environ, "OMP_NUM_THREADS": str(config["threads"])}
        with OtherCpuLoad() as load:
            started = time.perf_counter()
            subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - started
        records = json.loads(out.read_text())
    # Own processes' CPU counts as "own" only once they have finished, which they have here.
    return {**config, "records": records, "launch_wall_s": wall, "other_cores": load.cores}


def channels_differing(a: dict[str, list[int]], b: dict[str, list[int]]) -> int:
    """Channels removed by exactly one of two plans (symmetric difference, summed over layers)."""
    return sum(len(set(a.get(name, [])) ^ set(b.get(name, []))) for name in a.keys() | b.keys())


def fields_differing(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths of the JSON leaves where two plans differ (``layers[3].removed``, ``options.samples``, ...)."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(a.keys() | b.keys())
        return [p for k in keys for p in fields_differing(a.get(k), b.get(k), f"{path}.{k}" if path else k)]
    if (
        isinstance(a, list)
        and isinstance(b, list)
        and len(a) == len(b)
        and any(isinstance(x, dict) for x in a)
    ):
        return [
            p
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for p in fields_differing(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [path]


def analyse(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    reference = runs[0]["records"]
    rows = []
    for method in METHODS:
        base = reference[method]
        for run in runs:
            record = run["records"][method]
            rows.append(
                {
                    "method": method,
                    "config": run["name"],
                    "seconds": record["seconds"],
                    "speedup": base["seconds"] / record["seconds"],
                    "equal_to_reference": record["sha256"] == base["sha256"],
                    "channels_differing": channels_differing(record["removed"], base["removed"]),
                    "fields_differing": fields_differing(record["plan"], base["plan"]),
                    "channels_removed": sum(len(r) for r in record["removed"].values()),
                    "ranks_identical": record["ranks_identical"],
                    "other_cores": run["other_cores"],
                }
            )
    return rows


def summary(rows: list[dict[str, Any]]) -> list[str]:
    two = [r for r in rows if r["config"].startswith("2 processes")]
    lines = []
    equal = [r["method"] for r in two if r["equal_to_reference"]]
    different = [r for r in two if not r["equal_to_reference"]]
    lines.append(
        f"Plans of 2 processes byte-identical to the 1-process reference: {len(equal)} of {len(two)} "
        f"({', '.join(equal) or 'none'})."
    )
    for r in different:
        lines.append(
            f"{r['method']}: {r['channels_differing']} of {r['channels_removed']} removed channels differ from "
            f"the reference; fields that differ: {', '.join(r['fields_differing'][:8]) or 'none'}."
        )
    identical = all(r["ranks_identical"] for r in two)
    lines.append(f"Both ranks' plans byte-identical for every method: {'yes' if identical else 'NO'}.")
    for r in two:
        lines.append(
            f"{r['method']}: 2 processes × 1 thread ran at {fmt_ratio(r['speedup'])} the speed of 1 process × 1 "
            "thread"
            + (
                "."
                if r["other_cores"] is None
                else f" (others kept {r['other_cores']:.1f} cores busy meanwhile)."
            )
        )
    return lines


def results_markdown(payload: dict[str, Any]) -> str:
    table = markdown_table(
        [
            "method",
            "configuration",
            "plan time (s)",
            "speed vs 1×1",
            "plan = reference",
            "channels differing",
            "ranks identical",
            "others' CPU (cores)",
        ],
        [
            [
                r["method"],
                r["config"],
                fmt_seconds(r["seconds"]),
                fmt_ratio(r["speedup"]),
                "yes (bytes)" if r["equal_to_reference"] else "no",
                f"{r['channels_differing']} of {r['channels_removed']}",
                "yes" if r["ranks_identical"] else "NO",
                fmt_cores(r["other_cores"]),
            ]
            for r in payload["rows"]
        ],
    )
    setup = payload["setup"]
    return "\n".join(
        [
            "# Data-driven planning under torchrun (CPU, gloo)",
            "",
            format_machine(payload["machine"]),
            "",
            f"ResNet-56 (random init, eval mode), {setup['samples']} inputs 3×32×32 with random labels in batches "
            f"of {setup['batch']}, amount {AMOUNT} per method's default scope; two processes hold contiguous "
            "halves of the batches. Time: barrier to barrier around `pyprune.plan` (the slowest rank), median of "
            f"{setup['repeats']} run(s) after an untimed warm-up plan. Reference: 1 process × 1 thread, no process "
            "group.",
            "",
            table,
            "",
            "## Findings (computed from the table)",
            "",
            *[f"- {line}" for line in payload["summary"]],
            "- The machine has 2 cores shared with other sessions (see others' CPU): two one-thread processes "
            "compete with them for the same 2 cores, so these rows cannot show scaling. Each rank runs half the "
            "forward/backward passes but all of the planning after them (tracing, ranking, measuring), so the "
            "gain is bounded by the data pass's share even on free cores.",
            "",
            f"Reproduce: `{setup['command']}`",
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.split("\n\n")[0], "64 samples in batches of 16")
    parser.add_argument("--samples", type=int, default=256, help="total inputs (default 256)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed plans per method (median; default 3)")
    parser.add_argument("--two-threads", action="store_true", help="also time 1 process x 2 threads")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parse(parser, argv)
    if args.quick:
        args.samples, args.batch, args.repeats = 64, 16, 1
    if args.samples % (2 * args.batch):
        parser.error("--samples must be a multiple of 2 x --batch (equal halves of whole batches)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.samples, args.batch, args.threads, args.repeats)
        return 0
    runs = []
    for config in (*CONFIGS, *((TWO_THREADS,) if args.two_threads else ())):
        print(f"running {config['name']} ...", flush=True)
        runs.append(run_config(config, args))
    rows = analyse(runs)
    command = "python benchmarks/bench_distributed.py" + (" --quick" if args.quick else "")
    payload = {
        "machine": machine_info(),
        "setup": {
            "samples": args.samples,
            "batch": args.batch,
            "repeats": args.repeats,
            "amount": AMOUNT,
            "command": command,
        },
        "runs": [{k: v for k, v in run.items() if k != "records"} for run in runs],
        "rows": rows,
    }
    payload["summary"] = summary(rows)
    markdown = results_markdown(payload)
    publish(args, "distributed_cpu", payload, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
