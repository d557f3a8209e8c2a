"""Benchmark: a CKA permutation test (1,000 shuffles, 4,096 samples) vs recomputing CKA for every shuffle, and
CKA between many models at once (5 models x 10 layers, 2,048 samples) vs looping over model pairs.

Part 1, permutation test.

What is timed, on the same activations (two synthetic conv-like layers, float32, ``(n, p)`` with p = 2,048 and
1,024 features: the size of a flattened mid-network conv map):

1. ``pyprune.similarity_test(x, y, n_permutations=S)``: one Gram matrix per side, centred once, then the
   batched kernel ``pyprune.ops.permutation_hsic`` for all ``S`` shuffles (C++ here).
2. the kernel alone (``permutation_hsic`` on the prepared matrices).
3. the naive test: ``pyprune.cka(x, y[p])`` for every shuffle ``p`` (new Gram matrices each time; pyprune's own
   fast CKA, so this ratio is against the best recomputation available, not a slow peer). Timed on ``--sample``
   shuffles and scaled to ``S``.
4. the same shortcut with the plain-torch reference of the kernel (``use_backend("reference")``), timed on
   ``--sample`` shuffles and scaled.

Linear and RBF (threshold 0.5) CKA. No other similarity library offers a permutation test, so there is no peer
row. Accuracy: the shortcut's null values are compared with the recomputed CKAs of the same shuffles.

Part 2, many models. Five CNNs of one architecture (8 convs + 2 linear layers, default init, seeds 0-4) on
the same 2,048 random 3x16x16 inputs; all 10 layers of each captured once. ``pyprune.cka_matrix_models`` (each
of the 50 Gram matrices formed once, one fused pass over all pairs) vs the loop a user writes without it:
``pyprune.cka_matrix(acts[i], acts[j])`` for every pair i < j plus ``cka_matrix(acts[i])`` for each model (15
calls, every layer's Gram formed 6 times). Accuracy: max |difference| between the two.

Run ``python benchmarks/bench_similarity_stats.py`` (a few minutes on 2 cores); ``--quick`` (n = 1,024, 100
shuffles) writes nothing. Results: ``benchmarks/results/similarity_stats_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from _runner import (
    OtherCpuLoad,
    PeakMemory,
    benchmark_parser,
    fmt_float,
    fmt_mib,
    fmt_ratio,
    fmt_seconds,
    format_machine,
    machine_info,
    markdown_table,
    parse,
    publish,
    time_call,
)

import pyprune
from pyprune.ops import permutation_hsic
from pyprune.similarity.statistics import _permutations, _prepare, _with_identity

FEATURES = (2048, 1024)


def make_layers(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two related float32 representations, post-ReLU like conv activations."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 64, generator=gen)
    x = torch.relu(
        base @ torch.randn(64, FEATURES[0], generator=gen) + torch.randn(n, FEATURES[0], generator=gen)
    )
    y = torch.relu(
        base @ torch.randn(64, FEATURES[1], generator=gen) + torch.randn(n, FEATURES[1], generator=gen)
    )
    return x, y


def run_case(x: torch.Tensor, y: torch.Tensor, kernel: str, perms: int, sample: int) -> dict[str, Any]:
    n = x.shape[0]
    options = {"kernel": kernel}
    with OtherCpuLoad() as load:
        test = time_call(lambda: pyprune.similarity_test(x, y, n_permutations=perms, **options), repeats=1)
        result = test["result"]
        side_x = _prepare(x.double(), "x", kernel, 0.5, False)
        side_y = _prepare(y.double(), "y", kernel, 0.5, False)
        batch = _with_identity(_permutations(n, perms, torch.Generator().manual_seed(0)))
        kernel_only = time_call(lambda: permutation_hsic(side_x.matrix, side_y.matrix, batch), repeats=1)
        shuffles = _permutations(n, perms, torch.Generator().manual_seed(0))[:sample]
        naive = time_call(lambda: [pyprune.cka(x, y[p], **options) for p in shuffles], repeats=1)
        with pyprune.use_backend("reference"):
            small = _with_identity(shuffles)
            reference = time_call(lambda: permutation_hsic(side_x.matrix, side_y.matrix, small), repeats=1)
    naive_total = naive["median_s"] / sample * perms
    reference_total = reference["median_s"] / (sample + 1) * (perms + 1)
    error = max(abs(a - b) for a, b in zip(naive["result"], result.null[:sample].tolist(), strict=True))
    return {
        "kernel": kernel,
        "n": n,
        "permutations": perms,
        "observed": result.observed,
        "p_value": result.p_value,
        "similarity_test_s": test["median_s"],
        "kernel_only_s": kernel_only["median_s"],
        "naive_per_cka_s": naive["median_s"] / sample,
        "naive_total_s_extrapolated": naive_total,
        "reference_total_s_extrapolated": reference_total,
        "sampled_shuffles": sample,
        "speedup_vs_naive": naive_total / test["median_s"],
        "speedup_vs_reference_kernel": reference_total / kernel_only["median_s"],
        "max_abs_error_vs_recomputed": error,
        "other_cpu_load_cores": load.cores,
    }


def cnn(seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    nn = torch.nn
    layers: list[nn.Module] = []
    channels = [
        (3, 16, 1),
        (16, 16, 1),
        (16, 32, 2),
        (32, 32, 1),
        (32, 64, 2),
        (64, 64, 1),
        (64, 64, 2),
        (64, 64, 1),
    ]
    for c_in, c_out, stride in channels:
        layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.ReLU()]
    layers += [nn.Flatten(), nn.Linear(64 * 2 * 2, 128), nn.ReLU(), nn.Linear(128, 10)]
    return nn.Sequential(*layers)


def models_case(n: int, num_models: int) -> dict[str, Any]:
    inputs = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    acts = {}
    for seed in range(num_models):
        model = cnn(seed).eval()
        names = [str(i) for i, m in enumerate(model) if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        acts[f"cnn{seed}"] = pyprune.capture(model, inputs, layers=names)

    def loop() -> torch.Tensor:
        keys = list(acts)
        blocks = {}
        for i, a in enumerate(keys):
            blocks[(i, i)] = pyprune.cka_matrix(acts[a])
            for j in range(i + 1, len(keys)):
                blocks[(i, j)] = pyprune.cka_matrix(acts[a], acts[keys[j]])
        return torch.cat(
            [
                torch.cat(
                    [blocks[min(i, j), max(i, j)] if i <= j else blocks[j, i].T for j in range(len(keys))], 1
                )
                for i in range(len(keys))
            ]
        )

    with OtherCpuLoad() as load:
        with PeakMemory() as fused_memory:
            fused = time_call(lambda: pyprune.cka_matrix_models(acts), repeats=1)
        with PeakMemory() as loop_memory:
            looped = time_call(loop, repeats=1)
    error = float((fused["result"].values - looped["result"]).abs().max())
    layers = sum(len(a) for a in acts.values())
    return {
        "models": num_models,
        "layers": layers,
        "n": n,
        "fused_s": fused["median_s"],
        "loop_s": looped["median_s"],
        "speedup": looped["median_s"] / fused["median_s"],
        "fused_peak_extra_bytes": fused_memory.peak_extra_bytes,
        "loop_peak_extra_bytes": loop_memory.peak_extra_bytes,
        "max_abs_difference": error,
        "other_cpu_load_cores": load.cores,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.split("\n")[0], "smaller sizes (n = 1,024 / 512)")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument(
        "--sample", type=int, default=5, help="shuffles timed for the naive and reference rows"
    )
    parser.add_argument("--models-n", type=int, default=2048)
    return parse(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n, perms = (1024, 100) if args.quick else (args.n, args.permutations)
    machine = machine_info()

    x, y = make_layers(n)
    cases = [run_case(x, y, kernel, perms, args.sample) for kernel in ("linear", "rbf")]
    del x, y
    rows = [
        [
            c["kernel"],
            fmt_seconds(c["similarity_test_s"]),
            fmt_seconds(c["kernel_only_s"]),
            fmt_seconds(c["naive_total_s_extrapolated"]),
            fmt_ratio(c["speedup_vs_naive"]),
            fmt_seconds(c["reference_total_s_extrapolated"]),
            fmt_ratio(c["speedup_vs_reference_kernel"]),
            f"{c['max_abs_error_vs_recomputed']:.1e}",
            fmt_float(c["other_cpu_load_cores"]),
        ]
        for c in cases
    ]
    headers = [
        "CKA",
        f"similarity_test ({perms} shuffles)",
        "kernel alone",
        f"{perms} full CKAs (extrapolated)",
        "speed-up",
        "torch reference kernel (extrapolated)",
        "kernel vs reference",
        "max |null - recomputed|",
        "other load (cores)",
    ]
    permutation_table = markdown_table(headers, rows)
    best = min(c["speedup_vs_naive"] for c in cases)
    permutation_conclusion = (
        f"At n = {n}, p = {FEATURES[0]} / {FEATURES[1]}, a {perms}-shuffle permutation test of CKA costs "
        f"{fmt_seconds(cases[0]['similarity_test_s'])} s (linear) and "
        f"{fmt_seconds(cases[1]['similarity_test_s'])} s (RBF): {best:.0f}x or more less than recomputing CKA for "
        f"every shuffle; the null values equal the recomputed CKAs to "
        f"{max(c['max_abs_error_vs_recomputed'] for c in cases):.1e}."
    )

    models_n = 512 if args.quick else args.models_n
    multi = models_case(models_n, 5)
    models_table = markdown_table(
        [
            "models x layers",
            "n",
            "cka_matrix_models",
            "loop over pairs (15 cka_matrix calls)",
            "speed-up",
            "peak extra memory (fused / loop)",
            "max |difference|",
            "other load (cores)",
        ],
        [
            [
                f"{multi['models']} x {multi['layers'] // multi['models']}",
                multi["n"],
                fmt_seconds(multi["fused_s"]),
                fmt_seconds(multi["loop_s"]),
                fmt_ratio(multi["speedup"]),
                f"{fmt_mib(multi['fused_peak_extra_bytes'])} / {fmt_mib(multi['loop_peak_extra_bytes'])}",
                f"{multi['max_abs_difference']:.1e}",
                fmt_float(multi["other_cpu_load_cores"]),
            ]
        ],
    )
    models_conclusion = (
        f"All layer pairs of {multi['models']} models ({multi['layers']} layers, n = {multi['n']}) take "
        f"{fmt_seconds(multi['fused_s'])} s with cka_matrix_models vs {fmt_seconds(multi['loop_s'])} s looping over "
        f"model pairs ({multi['speedup']:.1f}x), identical to {multi['max_abs_difference']:.1e}."
    )
    markdown = "\n\n".join(
        [
            "# Similarity statistics and many-model CKA",
            format_machine(machine),
            "## CKA permutation test: batched permuted-Gram kernel vs recomputing CKA",
            f"n = {n} samples, layers of {FEATURES[0]} and {FEATURES[1]} float32 features; naive and reference "
            f"rows timed on {args.sample} shuffles and scaled.",
            permutation_table,
            permutation_conclusion,
            "## Many models at once",
            models_table,
            models_conclusion,
            "Reproduce: `python benchmarks/bench_similarity_stats.py`",
        ]
    )
    payload = {
        "machine": machine,
        "features": FEATURES,
        "permutation_cases": cases,
        "models_case": multi,
        "conclusions": [permutation_conclusion, models_conclusion],
    }
    publish(args, "similarity_stats_cpu", payload, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
