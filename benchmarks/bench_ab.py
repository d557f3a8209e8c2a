"""Benchmark: pyprune's public API timed in two source trees side by side (before and after a change).

Each case (a CKA heatmap, minibatch CKA, and plan + apply with several methods on the reference networks and a
torchvision ResNet-18) runs in a fresh interpreter per tree with ``PYTHONPATH=<tree>``, the trees alternating, so
that both see the same machine load; a case's time is the best of its timed repetitions after one warm-up, and
the reported figure the best over ``--rounds`` interpreters. Only public API that both trees have is used, so the
ratio ``after / before`` measures the change and nothing else. Each tree needs its own built ``pyprune/_C``.

    python benchmarks/bench_ab.py --before /path/to/old/checkout --after . --label restructure
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _runner import (
    OtherCpuLoad,
    benchmark_parser,
    fmt_cores,
    fmt_ratio,
    fmt_seconds,
    format_machine,
    log,
    machine_info,
    markdown_table,
    parse,
    publish,
)

# Run inside the child interpreter: builds the case's inputs once, then times the call. Every random input comes
# from a seeded generator, so both trees see identical data.
CHILD = r"""
import json, sys, time
import torch
case, repeats = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
import pyprune
from pyprune import models
import_s = time.perf_counter() - t0
g = torch.Generator().manual_seed(0)

def digits_batches(shape, count=4, batch=64):
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(count)]

if case == "import":
    print(json.dumps({"seconds": import_s}))
    raise SystemExit
if case in ("cka_linear", "cka_rbf"):
    n = 1024 if case == "cka_linear" else 512
    widths = [2048, 1024, 512, 256, 128, 64]
    xs = [torch.relu(torch.randn(n, w, generator=g)) for w in widths]
    kernel = "linear" if case == "cka_linear" else "rbf"
    run = lambda: pyprune.cka_matrix(xs, xs, kernel=kernel)
elif case == "minibatch_cka":
    batches = [[torch.randn(256, w, generator=g) for w in (512, 256, 128)] for _ in range(8)]
    def run():
        m = pyprune.MinibatchCKA()
        for b in batches:
            m.update(b, b)
        return m.compute()
else:
    method, net = case.split("@")
    if net == "resnet18":
        sys.path.insert(0, sys.argv[3])
        import tests.conftest  # noqa: F401  (lets torchvision import beside the CPU torch wheel)
        import torchvision
        build = lambda: torchvision.models.resnet18()
        example = torch.randn(1, 3, 224, 224, generator=g)
        data = None
    else:
        shape = {"resnet20": (3, 32, 32), "lenet5": (1, 28, 28), "lenet_300_100": (1, 28, 28)}[net]
        build = lambda: models.create(net)
        example = torch.randn(2, *shape, generator=g)
        data = digits_batches(shape)
    kwargs = {"example_input": example}
    if data is not None and method in ("taylor", "cka_greedy", "sipp_det", "pfp"):
        kwargs["data"] = data
    if method in ("taylor",):
        kwargs["loss_fn"] = torch.nn.functional.cross_entropy
    if method in ("cka_greedy", "sipp_det", "pfp", "taylor"):
        kwargs["progress"] = False
    def run():
        torch.manual_seed(0)
        model = build().eval()
        pyprune.plan(model, method, 0.3, **kwargs).apply(model)
run()
best = float("inf")
for _ in range(repeats):
    t = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - t)
print(json.dumps({"seconds": best}))
"""

CASES = (
    "import",
    "cka_linear",
    "cka_rbf",
    "minibatch_cka",
    "l1_filter@resnet20",
    "magnitude_global@resnet20",
    "taylor@resnet20",
    "cka_greedy@lenet5",
    "sipp_det@lenet_300_100",
    "pfp@lenet5",
    "l1_filter@resnet18",
)
QUICK_CASES = ("import", "cka_linear", "l1_filter@resnet20")


def time_case(tree: Path, case: str, repeats: int) -> float:
    """Best time of ``case`` over ``repeats`` calls in a fresh interpreter importing pyprune from ``tree``."""
    env = {"PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, case, str(repeats), str(tree)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tree,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{case} in {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def commit_of(tree: Path) -> str:
    """The checkout's commit (with ``+dirty`` when it has uncommitted changes), or "unknown" outside git."""
    head = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def parse_args(argv: list[str] | None = None) -> Any:
    parser = benchmark_parser(__doc__.splitlines()[0], "three cases, one round")
    parser.add_argument("--before", type=Path, default=None, help="checkout timed as 'before' (required)")
    parser.add_argument(
        "--after", type=Path, default=Path(__file__).resolve().parents[1], help="default: here"
    )
    parser.add_argument("--label", default="change", help="names the results file: ab_<label>")
    parser.add_argument("--rounds", type=int, default=None, help="interpreters per tree and case (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per interpreter")
    return parse(parser, argv, {"rounds": (3, 1)})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.before is None:
        raise SystemExit("--before: expected the path of the checkout to compare with")
    started = time.perf_counter()
    machine = machine_info()
    commits = {"before": commit_of(args.before), "after": commit_of(args.after)}
    rows, records = [], []
    for case in QUICK_CASES if args.quick else CASES:
        best = {"before": float("inf"), "after": float("inf")}
        with OtherCpuLoad() as load:
            for _ in range(args.rounds):
                for side in ("before", "after"):
                    tree = (args.before if side == "before" else args.after).resolve()
                    best[side] = min(best[side], time_case(tree, case, args.repeats))
        ratio = best["after"] / best["before"]
        log(f"{case}: before {best['before']:.4f} s, after {best['after']:.4f} s, ratio {ratio:.2f}")
        records.append({"case": case, **best, "ratio": ratio, "other_cores": load.cores})
        rows.append(
            [
                case,
                fmt_seconds(best["before"]),
                fmt_seconds(best["after"]),
                fmt_ratio(ratio),
                fmt_cores(load.cores),
            ]
        )
    ratios = [r["ratio"] for r in records if r["case"] != "import"]
    summary = (
        f"after / before over the {len(ratios)} timed cases: {min(ratios):.2f} to {max(ratios):.2f} "
        f"(geometric mean {_geometric_mean(ratios):.2f})."
    )
    markdown = "\n".join(
        [
            f"# pyprune before vs after: {args.label}",
            "",
            format_machine(machine),
            "",
            f"before: `{args.before}` (commit {commits['before']}); after: `{args.after}` (commit "
            f"{commits['after']}). Best of {args.rounds} fresh interpreters per tree "
            f"(alternating) x {args.repeats} timed calls after a warm-up, `OMP_NUM_THREADS=1`.",
            "",
            markdown_table(["case", "before", "after", "after / before", "other processes (cores)"], rows),
            "",
            summary,
        ]
    )
    payload = {
        "machine": machine,
        "label": args.label,
        "commits": commits,
        "rounds": args.rounds,
        "cases": records,
    }
    publish(args, f"ab_{args.label}", payload, markdown, started=started)


def _geometric_mean(values: list[float]) -> float:
    product = 1.0
    for v in values:
        product *= v
    return product ** (1.0 / len(values))


if __name__ == "__main__":
    main()
