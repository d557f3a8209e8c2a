"""Benchmark: peak extra memory of ``cka_matrix`` and ``cka`` on large layers (many samples, wide features).

The floor for linear CKA in feature space is one ``p x p`` covariance plus one centred ``n x p`` layer (in the
activations' dtype); pyprune promises at most twice that (it reads the layers in row chunks and keeps only the
covariances). Compared, each in a fresh ``spawn`` subprocess on the same seeded float32 activations:

1. ``pyprune``: ``pyprune.cka_matrix(xs)`` (auto method) and ``pyprune.cka(x, y)``.
2. ``plain torch``: what one writes without care for memory: centre every layer, concatenate, one
   ``Z^T Z``, block sums of squares (float32 products, as ``cka_matrix``; float64 for the pair, as ``cka``).
3. ``plain torch, Gram``: the sample-space ``Xc Xc^T`` of most CKA libraries (torch-cka, the Google notebook),
   only where ``n x n`` Grams are affordable (``n <= 8192``).

Memory is the resident-set high-water mark over the call (``/proc/self/clear_refs`` + ``VmHWM``), minus the
resident size before it; accuracy is the largest |difference| from a float64 feature-space computation.

Run ``python benchmarks/bench_cka_memory.py`` (the issue's case, 3 layers of 20,000 x 2,048; several minutes
on 2 cores) or ``--quick`` (3 layers of 4,000 x 512). Results: ``benchmarks/results/cka_memory.{json,md}``
(``_quick`` suffix for ``--quick --out DIR``; a quick run writes nothing without ``--out``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch
from _runner import (
    MIB,
    OtherCpuLoad,
    PeakMemory,
    benchmark_parser,
    fmt_cores,
    fmt_mib,
    fmt_ratio,
    fmt_seconds,
    format_machine,
    machine_info,
    markdown_table,
    parse,
    publish,
    run_isolated,
)

_GRAM_LIMIT = 8192


def _layers(n: int, p: int, count: int, seed: int) -> list[torch.Tensor]:
    """Correlated float32 layers: each a random mix of the previous one plus noise, post-ReLU."""
    g = torch.Generator().manual_seed(seed)
    layers = [torch.randn(n, p, generator=g)]
    for _ in range(count - 1):
        mix = torch.randn(p, p, generator=g) / p**0.5
        layers.append(torch.relu(layers[-1] @ mix + 0.5 * torch.randn(n, p, generator=g)))
    return layers


def _plain_feature(xs: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    sizes = [x.shape[1] for x in xs]
    z = torch.cat([(x - x.mean(dim=0)).to(dtype) for x in xs], dim=1)
    cov = z.T @ z
    blocks = [torch.split(row, sizes, dim=1) for row in torch.split(cov, sizes, dim=0)]
    squares = torch.tensor([[float(b.double().square().sum()) for b in row] for row in blocks])
    norms = squares.diagonal().sqrt()
    return squares / torch.outer(norms, norms)


def _plain_gram(xs: list[torch.Tensor]) -> torch.Tensor:
    grams = []
    for x in xs:
        xc = x - x.mean(dim=0)
        k = xc @ xc.T
        grams.append((k - k.mean(dim=0) - k.mean(dim=1, keepdim=True) + k.mean()).flatten())
    g = torch.stack(grams)
    cross = g @ g.T
    norms = cross.diagonal().sqrt()
    return cross.double() / torch.outer(norms, norms).double()


def _measure(implementation: str, call: str, n: int, p: int, count: int, seed: int) -> dict[str, Any]:
    """One measurement in this (fresh) process: peak extra memory, time and the CKA matrix."""
    import pyprune

    xs = _layers(n, p, count, seed)
    if call == "cka":
        xs = xs[:2]
    small = [x[:64, :8].contiguous() for x in xs]
    if implementation == "pyprune":
        run = (
            (lambda v: pyprune.cka_matrix(v)) if call == "cka_matrix" else (lambda v: pyprune.cka(v[0], v[1]))
        )
    elif implementation == "plain torch":
        dtype = torch.float32 if call == "cka_matrix" else torch.float64
        run = lambda v: _plain_feature(v, dtype)  # noqa: E731
    elif implementation == "plain torch, Gram":
        run = _plain_gram
    else:  # the float64 reference
        run = lambda v: _plain_feature([x.double() for x in v], torch.float64)  # noqa: E731
    run(small)  # loads BLAS and kernels outside the measurement
    with PeakMemory() as memory, OtherCpuLoad() as load:
        start = time.perf_counter()
        result = run(xs)
        elapsed = time.perf_counter() - start
    value = torch.as_tensor(result, dtype=torch.float64)
    if call == "cka" and value.ndim == 2:
        value = value[0, 1]
    return {
        "extra_bytes": memory.peak_extra_bytes,
        "seconds": elapsed,
        "other_cores": load.cores,
        "value": value.reshape(-1).tolist(),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.split("\n\n")[0], "3 layers of 4,000 x 512 instead of 20,000 x 2,048")
    parser.add_argument("--seed", type=int, default=0)
    return parse(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    n, p, count = (4000, 512, 3) if args.quick else (20_000, 2048, 3)
    minimum = 4 * (p * p + n * p)  # one float32 covariance plus one centred float32 layer
    rows, records = [], []
    for call in ("cka_matrix", "cka"):
        reference = run_isolated(_measure, "float64 reference", call, n, p, count, args.seed)["value"]
        implementations = ["pyprune", "plain torch"] + (["plain torch, Gram"] if n <= _GRAM_LIMIT else [])
        results = {
            impl: run_isolated(_measure, impl, call, n, p, count, args.seed) for impl in implementations
        }
        for impl, r in results.items():
            error = max(abs(a - b) for a, b in zip(r["value"], reference, strict=True))
            record = {
                "call": call,
                "implementation": impl,
                "extra_mib": r["extra_bytes"] / MIB,
                "extra_over_minimum": r["extra_bytes"] / minimum,
                "memory_vs_pyprune": r["extra_bytes"] / max(results["pyprune"]["extra_bytes"], 1),
                "seconds": r["seconds"],
                "time_vs_pyprune": r["seconds"] / results["pyprune"]["seconds"],
                "max_abs_error_vs_float64": error,
                "other_cores": r["other_cores"],
            }
            records.append(record)
            rows.append(
                [
                    call,
                    impl,
                    fmt_mib(r["extra_bytes"]),
                    fmt_ratio(record["extra_over_minimum"]),
                    fmt_ratio(record["memory_vs_pyprune"]),
                    fmt_seconds(r["seconds"]),
                    fmt_ratio(record["time_vs_pyprune"]),
                    f"{error:.1e}",
                    fmt_cores(r["other_cores"]),
                ]
            )
    headers = [
        "call",
        "implementation",
        "peak extra MiB",
        "/ minimum",
        "/ pyprune",
        "time s",
        "time / pyprune",
        "max |err| vs float64",
        "other cores busy",
    ]
    table = markdown_table(headers, rows)
    info = machine_info()
    within = [r for r in records if r["implementation"] == "pyprune"]
    worst = max(r["extra_over_minimum"] for r in within)
    conclusion = (
        f"pyprune's peak extra memory is at most {worst:.2f}x the floor of one covariance plus one centred layer "
        f"({fmt_mib(minimum)} MiB) for {count} float32 layers of {n:,} x {p:,}: "
        + ("within" if worst <= 2 else "OUTSIDE")
        + " the promised 2x."
    )
    markdown = "\n\n".join(
        [
            f"# CKA peak memory ({count} layers of {n:,} x {p:,} float32)",
            format_machine(info),
            table,
            conclusion,
            "Reproduce: `python benchmarks/bench_cka_memory.py" + (" --quick`" if args.quick else "`"),
        ]
    )
    payload = {"machine": info, "n": n, "p": p, "layers": count, "minimum_bytes": minimum, "rows": records}
    publish(args, "cka_memory", payload, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
