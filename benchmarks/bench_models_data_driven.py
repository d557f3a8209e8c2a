"""Benchmark: data-driven pruning methods on real models: status, planning time and peak memory, at two numbers
of data batches (does the memory grow with the data?).

Models, randomly initialised (nothing downloaded): torchvision ``resnet50`` and ``vit_b_16`` on random 224 x 224
images, and a Hugging Face GPT-2 small config (12 layers, width 768, 124M parameters) on random token batches,
with the language-model loss (cross-entropy of the logits against random targets). Methods: ``taylor``,
``oracle``, ``cka_greedy``, ``cka_single``, ``sipp_det``, ``pfp``, ``wanda`` and ``sparsegpt``, at amount 0.3,
``progress=False``.

Each model x method runs in a fresh ``spawn`` subprocess. A warm-up on the quick configuration of the same
architecture loads the method's modules and kernels; then the model and every batch are built, and the method
plans on the small number of batches, the large one and the small one again (``--batches``), each inside
:class:`_runner.PeakMemory`: the resident-set high-water mark (reset through ``/proc/self/clear_refs``) minus the
resident size just before the call. The model, its weights and the batches are in that baseline, so the figure is
what planning adds; a one-off allocation left after the warm-up lands on the first small run, so the large run is
compared with the second. Bounded means: the large run's peak is within 25% (or 16 MiB) of the second small run's.

The oracle ablates every candidate channel with one forward pass of the model each (Molchanov et al. 2017): on
these models that is thousands of forwards per batch, so it scores one layer only, at ``--oracle-batches`` (the
same code path as the ``oracle`` method's scoring): ResNet-50's stem ``conv1`` (64 channels) through
:func:`pyprune.ablation_damage`, the transformers' first attention layer (12 heads) through
``unit_ablation_damage``. The table gives the full plan's number of candidates, and the conclusions the time a
full plan would take at the measured time per candidate.

Sizes: batches of 1 image (224 px) or 1 x 32 tokens (2 for CKA, which needs at least 4 samples), 2 and 8 batches
(oracle: 1 and 2), chosen so that a run on 2 quiet cores stays near 10 minutes; the table's last column and the
conclusions give the load and the time it really took. The results file is rewritten after every row, so a stopped
run keeps its rows and lists what it did not reach. ``python benchmarks/bench_models_data_driven.py``
-> ``benchmarks/results/models_data_driven_cpu.{json,md}``. ``--quick`` runs small configurations of the same
three families (MobileNetV3-small at 32 px, a 2-layer ViT and GPT-2, 1 and 2 batches) and writes nothing unless
``--out DIR`` is given. ``--models`` / ``--methods`` choose subsets.
"""

from __future__ import annotations

import argparse
import copy
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from _runner import (
    MIB,
    OtherCpuLoad,
    PeakMemory,
    benchmark_parser,
    declare_torchvision_ops,
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
    save,
)

declare_torchvision_ops()

import torch  # noqa: E402 - after the torchvision declaration
import torchvision.models as tvm  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402

import pyprune  # noqa: E402

AMOUNT = 0.3
METHODS = ["taylor", "oracle", "cka_greedy", "cka_single", "sipp_det", "pfp", "wanda", "sparsegpt"]
MODELS = ["gpt2", "resnet50", "vit_b_16"]  # cheapest first: a run stopped early keeps the most rows
BOUNDED_RATIO, BOUNDED_SLACK_MIB = 1.25, 16.0


def _lm_loss(output: Any, target: torch.Tensor) -> torch.Tensor:
    logits = output if isinstance(output, torch.Tensor) else output.logits
    return nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())


def _setup(name: str, quick: bool, batch: int, tokens: int) -> tuple[nn.Module, Callable[[int], Any], Any]:
    """``(model, make batch i, loss_fn)`` for one model (``loss_fn`` None: the methods' cross-entropy default)."""
    torch.manual_seed(0)
    if name == "gpt2":
        config = (
            transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=64)
            if quick
            else transformers.GPT2Config()
        )
        model = transformers.GPT2LMHeadModel(config).eval()

        def make_tokens(i: int) -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.Generator().manual_seed(i)
            ids = torch.randint(0, config.vocab_size, (2, batch, tokens), generator=g)
            return ids[0], ids[1]

        return model, make_tokens, _lm_loss
    if name == "resnet50":
        # Quick: a small CNN, since SparseGPT's cost on ResNet-50 is its 4,608-column Hessians whatever the input.
        model, size, classes = (
            (tvm.mobilenet_v3_small(num_classes=10), 32, 10) if quick else (tvm.resnet50(), 224, 1000)
        )
    else:
        model, size, classes = (
            (
                tvm.VisionTransformer(
                    32, 16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
                ),
                32,
                10,
            )
            if quick
            else (tvm.vit_b_16(), 224, 1000)
        )

    def make_images(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return torch.randn(batch, 3, size, size, generator=g), torch.randint(
            0, classes, (batch,), generator=g
        )

    return model.eval(), make_images, None


def _oracle_candidates(model: nn.Module) -> tuple[Callable[[list[Any]], Any], int, int]:
    """The oracle's reduced run on ``model``: ``(score one layer over the batches, its candidates, candidates of a
    full plan)``. A CNN's stem conv by :func:`pyprune.ablation_damage`; a transformer's first attention layer's
    heads by ``unit_ablation_damage`` (on a copy whose attention calls its output projection as a module)."""
    from pyprune.pruning.attention import expose_unit_inputs, find_units
    from pyprune.pruning.criteria.ablation import unit_ablation_damage

    units = find_units(model)
    if not units:
        convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        stem, conv = convs[0]
        return (
            lambda data, loss_fn: pyprune.ablation_damage(model, stem, data, loss_fn=loss_fn),
            conv.out_channels,
            sum(m.out_channels for _, m in convs),
        )
    exposed = copy.deepcopy(model)
    expose_unit_inputs(exposed)
    spec = find_units(exposed)[0]
    mlp = sum(s.num_units for s in units if s.granularity == "units") or sum(
        m.out_features for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith("mlp.0")
    )
    return (
        lambda data, loss_fn: unit_ablation_damage(exposed, spec, data, loss_fn=loss_fn),
        spec.num_units,
        sum(s.num_units for s in units if s.granularity == "heads") + mlp,
    )


def _runner(name: str, method: str, quick: bool, batch: int, tokens: int) -> tuple[Callable, list, dict]:
    """``(run(batches) -> layers planned, batches, record)`` of one model x method."""
    model, make, loss_fn = _setup(name, quick, batch, tokens)
    record: dict[str, Any] = {
        "model": name,
        "method": method,
        "params": sum(p.numel() for p in model.parameters()),
    }
    example = make(0)[0][:1]
    if method == "oracle":
        score, record["oracle_candidates"], record["oracle_full_candidates"] = _oracle_candidates(model)
        return (lambda data: int(score(data, loss_fn).numel() > 0)), make, record
    options: dict[str, Any] = {"progress": False}
    if method == "taylor" and loss_fn is not None:
        options["loss_fn"] = loss_fn
    if method == "sipp_det" and name == "gpt2":
        # SiPP prunes the classifier by default; GPT-2's is tied to the embedding, which the planner refuses.
        options["layers"] = [
            n for n, m in model.named_modules() if type(m).__name__ == "Conv1D" or isinstance(m, nn.Linear)
        ]
        options["layers"].remove("lm_head")

    def run(data: list[Any]) -> int:
        return len(pyprune.plan(model, method, AMOUNT, example_input=example, data=data, **options).layers)

    return run, make, record


def _measure(
    name: str, method: str, counts: list[int], quick: bool, batch: int, tokens: int
) -> dict[str, Any]:
    """One model x method in this (fresh) process. A warm-up on the quick configuration of the same architecture
    loads the method's modules and kernels; then the small batch count runs, the large one, and the small one
    again: the large run is compared with the second small run (one-off allocations land on the first)."""
    record: dict[str, Any] = {"model": name, "method": method}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SiPP/PFP: fewer samples than their bound asks for
            warm, make_warm, _ = _runner(name, method, True, 4, 8)  # CKA needs at least 4 samples
            start = time.perf_counter()
            warm([make_warm(0)])
            warmup_s = time.perf_counter() - start
            run, make, described = _runner(name, method, quick, batch, tokens)
            record.update(described, warmup_s=warmup_s)
            batches = [make(i) for i in range(max(counts))]
            record["batch_bytes"] = sum(t.numel() * t.element_size() for t in batches[0])
            small, large = counts
            # small, large, small again: one-off allocations land on the first run, so the large run is compared
            # with the second small one, and both are free of them.
            for key, count in (("first", small), (f"n{large}", large), (f"n{small}", small)):
                with PeakMemory() as memory, OtherCpuLoad() as load:
                    start = time.perf_counter()
                    layers = run(batches[:count])
                    elapsed = time.perf_counter() - start
                record[key] = {
                    "plan_s": elapsed,
                    "peak_extra_bytes": memory.peak_extra_bytes,
                    "memory_method": memory.method,
                    "other_cores": load.cores,
                    "layers": layers,
                }
        record["status"] = "ok"
    except Exception as error:  # a refusal is a result: record it with its message
        record["status"] = f"{type(error).__name__}: {error}".splitlines()[0][:160]
        record["traceback"] = traceback.format_exc(limit=4)
    return record


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(
        __doc__.split("\n\n")[0], "small configurations of the three architectures, 1 and 2 batches"
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument(
        "--batches", nargs=2, type=int, default=None, help="small and large batch counts (2 8)"
    )
    parser.add_argument("--oracle-batches", nargs=2, type=int, default=None, help="for the oracle (1 2)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images or sequences per batch (2; CKA needs 4 samples)"
    )
    parser.add_argument("--tokens", type=int, default=None, help="tokens per GPT-2 sequence (32)")
    return parse(
        parser,
        argv,
        {
            "batches": ([2, 8], [1, 2]),
            "oracle_batches": ([1, 2], [1, 2]),
            "batch_size": (1, 2),
            "tokens": (32, 16),
        },
    )


def _bounded(small: float, large: float) -> bool:
    return large <= small * BOUNDED_RATIO or (large - small) / MIB <= BOUNDED_SLACK_MIB


def _batch_size(args: argparse.Namespace, method: str) -> int:
    # CKA centres over samples and needs at least 4: two per batch at the small count of 2 batches.
    return max(args.batch_size, 2) if method.startswith("cka") else args.batch_size


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    info = machine_info()
    planned = [(name, method) for name in args.models for method in args.methods]
    records: list[dict[str, Any]] = []
    for name, method in planned:
        counts = args.oracle_batches if method == "oracle" else args.batches
        print(f"[{time.perf_counter() - started:6.1f} s] {name} {method} at {counts} batches", flush=True)
        batch = _batch_size(args, method)
        record = run_isolated(_measure, name, method, counts, args.quick, batch, args.tokens)
        records.append({**record, "batch_size": batch})
        print(f"    {records[-1]['status']}", flush=True)
        # Written after every row: a stopped run keeps what it measured, and says what it did not reach.
        save(args, "models_data_driven_cpu", *_report(args, info, records, planned, started))
    publish(args, "models_data_driven_cpu", *_report(args, info, records, planned, started))
    return 0


def _report(
    args: argparse.Namespace,
    info: dict[str, Any],
    records: list[dict[str, Any]],
    planned: list[tuple[str, str]],
    started: float,
) -> tuple[dict[str, Any], str]:
    """``(payload, markdown)`` of the rows measured so far."""
    rows = []
    for r in records:
        counts = args.oracle_batches if r["method"] == "oracle" else args.batches
        small, large = (r.get(f"n{c}") for c in counts)
        if small and large:
            r["bounded"] = _bounded(small["peak_extra_bytes"], large["peak_extra_bytes"])
            # A ratio of two peaks under 1 MiB is noise: shown as "—", the 16 MiB slack decides.
            r["peak_ratio"] = (
                large["peak_extra_bytes"] / small["peak_extra_bytes"]
                if small["peak_extra_bytes"] >= MIB
                else None
            )
        method = r["method"] + (
            f" ({r['oracle_candidates']} of {r['oracle_full_candidates']:,} candidates)"
            if "oracle_candidates" in r
            else ""
        )
        rows.append(
            [
                r["model"],
                method,
                r["status"],
                f"{counts[0]} / {counts[1]} of {r['batch_size']}",
                fmt_seconds(small and small["plan_s"]),
                fmt_seconds(large and large["plan_s"]),
                fmt_mib(r["first"]["peak_extra_bytes"] if "first" in r else None),
                fmt_mib(small and small["peak_extra_bytes"]),
                fmt_mib(large and large["peak_extra_bytes"]),
                fmt_ratio(r.get("peak_ratio")),
                "yes" if r.get("bounded") else ("no" if "bounded" in r else "—"),
                fmt_cores(max((x["other_cores"] or 0) for x in (small, large)) if small and large else None),
            ]
        )
    headers = [
        "model",
        "method",
        "status",
        "batches small / large (of n)",
        "time s (small)",
        "time s (large)",
        "peak extra MiB (first small run)",
        "peak extra MiB (small, again)",
        "peak extra MiB (large)",
        "large / small",
        "bounded",
        "other cores busy (max)",
    ]
    ok = [r for r in records if "bounded" in r]
    grown = [f"{r['model']} {r['method']} ({fmt_ratio(r['peak_ratio'])})" for r in ok if not r["bounded"]]
    failed = [f"{r['model']} {r['method']}: {r['status']}" for r in records if r["status"] != "ok"]
    conclusions = [
        f"{len(ok)} of {len(records)} model x method runs finished; peak memory stayed bounded (large-batch peak "
        f"within {BOUNDED_RATIO:.2f}x or {BOUNDED_SLACK_MIB:g} MiB of the small-batch peak) in "
        f"{sum(r['bounded'] for r in ok)} of them"
        + (f"; it grew in: {', '.join(grown)}" if grown else "")
        + ".",
    ]
    if failed:
        conclusions.append("Did not finish: " + "; ".join(failed) + ".")
    missing = planned[len(records) :]
    if missing:
        conclusions.append(
            "Not reached when this file was written: " + ", ".join(f"{n} {m}" for n, m in missing) + "."
        )
    for r in records:
        if "oracle_candidates" in r and r["status"] == "ok":
            count = args.oracle_batches[1]
            per = r[f"n{count}"]["plan_s"] / (count * r["oracle_candidates"])
            conclusions.append(
                f"oracle on {r['model']}: {per:.3g} s per candidate and batch, so a full plan's "
                f"{r['oracle_full_candidates']:,} candidates would take about "
                f"{fmt_seconds(per * r['oracle_full_candidates'])} s per batch."
            )
    methods = sorted(
        {r[k]["memory_method"] for r in ok for k in r if k.startswith("n") and isinstance(r[k], dict)}
    )
    total = time.perf_counter() - started
    conclusions.append(f"Whole run: {total:.0f} s.")
    markdown = "\n\n".join(
        [
            "# Data-driven methods on real models: time and peak memory against the number of batches",
            format_machine(info),
            f"Amount {AMOUNT}; batches of n images (224 px)"
            + (" (quick: smaller)" if args.quick else "")
            + f" or n GPT-2 sequences of {args.tokens} tokens. Peak extra memory: the resident-set high-water mark over "
            f"the call minus the resident size before it ({', '.join(methods) or 'not measured'}; model and "
            "batches excluded); each model x method in a fresh process, after a warm-up on a small configuration "
            "of the same architecture, small, large, then small again (the large run compared with the second small one).",
            markdown_table(headers, rows),
            "\n".join(f"- {c}" for c in conclusions),
            "Reproduce: `python benchmarks/bench_models_data_driven.py"
            + (" --quick`" if args.quick else "`"),
        ]
    )
    payload = {
        "machine": info,
        "amount": AMOUNT,
        "batches": args.batches,
        "oracle_batches": args.oracle_batches,
        "batch_size": args.batch_size,
        "tokens": args.tokens,
        "rows": records,
        "total_s": total,
    }
    return payload, markdown


if __name__ == "__main__":
    raise SystemExit(main())
