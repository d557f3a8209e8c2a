"""Benchmark: pyprune on the models people bring (torchvision, timm, Hugging Face), next to Torch-Pruning.

For every model x method: ok or refused (with the refusal), planning time (measuring included) and applying
time, parameters and FLOPs after/before (``pyprune.count``), and the latency speed-up of the pruned model at
batch 1 and batch 8 (``pyprune.latency``, dense and pruned timed in alternation). Next to it, on the same model,
Torch-Pruning's ``MetaPruner`` with its own ``GroupMagnitudeImportance(p=1)`` at the same ratio (the equivalent
of ``l1_filter``; attention configured as its own examples do, see ``_torch_pruning_options``), timed from
construction to ``step()`` and one forward pass (pyprune's ``apply`` also runs one, to verify); and
``magnitude_global`` against ``torch.nn.utils.prune.global_unstructured`` with L1 magnitude on the same layers
(identical masks by construction: both take the globally smallest ``|w|``).

Models are randomly initialised (nothing downloaded); one untimed run of each library on resnet18 comes first,
and each time is the median of ``--repeats`` runs (3), each on a freshly built model. Inputs: 224 px images (batch 1
for planning), 64 tokens for the Hugging Face decoders. The machine is shared: every row records the average number of cores other
processes kept busy while it ran (``other_cores``), and torch runs with the intra-op threads it was given.

Run ``python benchmarks/bench_models.py`` (tens of minutes on 2 cores) -> ``benchmarks/results/models_cpu.{json,md}``;
``--quick`` (four small models, l1_filter and magnitude_global) is a smoke test that writes nothing unless
``--out DIR`` is given. ``--models`` / ``--methods`` choose subsets.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from _runner import (
    OtherCpuLoad,
    benchmark_parser,
    declare_torchvision_ops,
    fmt_cores,
    fmt_ratio,
    fmt_seconds,
    format_machine,
    machine_info,
    markdown_table,
    parse,
    save,
)

declare_torchvision_ops()

import timm  # noqa: E402 - after the torchvision declaration
import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402
import torchvision.models as tvm  # noqa: E402
import transformers  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils import prune as torch_prune  # noqa: E402

import pyprune  # noqa: E402
from pyprune.pruning.layers import output_layer_name, select_layers  # noqa: E402

AMOUNT = 0.3
IMAGE = (1, 3, 224, 224)


def _gpt2() -> nn.Module:
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=4, n_embd=256, n_head=8))


def _llama() -> nn.Module:
    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
        vocab_size=32000,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def _bert() -> nn.Module:
    config = transformers.BertConfig(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024
    )
    return transformers.BertForSequenceClassification(config)


def _tokens(batch: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 1000, (batch, 64), generator=torch.Generator().manual_seed(batch))}


def _images(batch: int) -> torch.Tensor:
    return torch.randn(batch, *IMAGE[1:], generator=torch.Generator().manual_seed(batch))


# name -> (builder, inputs(batch)); the list.
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], Any]]] = {
    **{
        f"tv_{name}": (getattr(tvm, name), _images)
        for name in (
            "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
            "vgg16_bn", "googlenet", "regnet_y_400mf", "convnext_tiny", "shufflenet_v2_x1_0", "vit_b_16", "swin_t",
        )
    },
    **{
        f"timm_{name}": (lambda name=name: timm.create_model(name), _images)
        for name in (
            "resnet26d", "convnext_atto", "efficientnet_b0", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
            "mobilevitv2_050",
        )
    },
    "hf_gpt2_4l": (_gpt2, _tokens),
    "hf_bert_4l": (_bert, _tokens),
    "hf_llama_gqa_4l": (_llama, _tokens),
}  # fmt: skip
# The speed targets first, so that a stopped run still has them.
ORDER = ["tv_resnet50", "tv_densenet121", "tv_vit_b_16"]
QUICK_MODELS = ["tv_resnet18", "tv_mobilenet_v2", "timm_vit_tiny_patch16_224", "hf_llama_gqa_4l"]
METHODS = ["l1_filter", "magnitude_global"]
QUICK_METHODS = ["l1_filter", "magnitude_global"]


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MODELS[name][0]().eval()


def _latency_ratio(dense: nn.Module, pruned: nn.Module, inputs: Any, rounds: int) -> float:
    """Dense over pruned median forward time, timed in alternating rounds (a load change hits both)."""
    call = (lambda m: lambda: m(**inputs)) if isinstance(inputs, dict) else (lambda m: lambda: m(inputs))
    times: dict[int, list[float]] = {0: [], 1: []}
    with torch.inference_mode():
        for model in (dense, pruned):
            call(model)()  # warm-up
        for _ in range(rounds):
            for i, model in enumerate((dense, pruned)):
                start = time.perf_counter()
                call(model)()
                times[i].append(time.perf_counter() - start)
    return statistics.median(times[0]) / statistics.median(times[1])


def run_pyprune(name: str, method: str, rounds: int, latency: bool = True) -> dict[str, Any]:
    inputs = MODELS[name][1]
    model = _build(name)
    row: dict[str, Any] = {"model": name, "method": method, "library": "pyprune"}
    dense, example = copy.deepcopy(model), inputs(1)  # untimed: the latency reference and the input
    with OtherCpuLoad() as load:
        start = time.perf_counter()
        try:
            plan = pyprune.plan(model, method, AMOUNT, example_input=example)
        except (ValueError, TypeError) as error:
            row.update(status="refused", reason=str(error)[:300], plan_s=time.perf_counter() - start)
            return row
        planned = time.perf_counter()
        plan.apply(model)
        done = time.perf_counter()
    row.update(
        status="ok",
        plan_s=planned - start,
        apply_s=done - planned,
        total_s=done - start,
        other_cores=load.cores,
        params=plan.totals.get("params" if plan.mode == "remove" else "nonzero_params"),
        flops=plan.totals.get("flops"),
        untouched=len(plan.options.get("untouched", {})),
        hf_config=plan.options.get("hf_config"),
    )
    if plan.mode == "remove" and latency:
        for batch in (1, 8):
            row[f"speedup_b{batch}"] = _latency_ratio(dense, model, inputs(batch), rounds)
    return row


def repeated(run: Callable[[bool], dict[str, Any]], repeats: int) -> dict[str, Any]:
    """The row of the run with the median time of ``repeats`` runs (each on a freshly built model), with every
    run's time in ``times_s``; ``run(last)`` measures latencies and counts only in the last run."""
    rows = [run(i == repeats - 1) for i in range(repeats)]

    def seconds(row: dict[str, Any]) -> float:
        return row.get("total_s", row.get("plan_s"))

    chosen = dict(sorted(rows, key=seconds)[len(rows) // 2])
    chosen.update(
        {key: value for key, value in rows[-1].items() if key not in chosen or key.startswith("speedup")}
    )
    chosen["times_s"] = [seconds(row) for row in rows]
    return chosen


def _torch_pruning_options(model: nn.Module) -> dict[str, Any]:
    """MetaPruner's options for ``model`` as Torch-Pruning's own examples configure them.

    timm ViTs (its README and ``examples/transformers/prune_timm_vit.py``): ``num_heads`` per qkv layer, whole heads
    pruned. torchvision's ViT (its ``tests/test_torchvision_models.py``): the class token and position embedding
    as unwrapped parameters, ``round_to`` the head count, the attention's ``out_proj`` ignored (its
    ``nn.MultiheadAttention`` pruner cuts the embedding width only, never whole heads), ``num_heads`` per attention
    layer, and ``hidden_dim`` set from the patch projection after the step.
    """
    output = [model.get_submodule(output_layer_name(model))]
    if isinstance(model, tvm.VisionTransformer):
        return {
            "ignored_layers": output
            + [
                m for m in model.modules() if isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)
            ],
            "unwrapped_parameters": [(model.class_token, 2), (model.encoder.pos_embedding, 2)],
            "round_to": model.encoder.layers[0].num_heads,
            "num_heads": {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)},
        }
    heads = {m.qkv: m.num_heads for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")}
    return {
        "ignored_layers": output,
        "num_heads": heads,
        "prune_num_heads": bool(heads),
        "prune_head_dims": False,
    }


def run_torch_pruning(name: str, counts: bool = True) -> dict[str, Any]:
    inputs = MODELS[name][1]
    model = _build(name)
    row: dict[str, Any] = {
        "model": name,
        "method": "MetaPruner(GroupMagnitude p=1)",
        "library": "Torch-Pruning",
    }
    example = inputs(1)
    with OtherCpuLoad() as load:
        start = time.perf_counter()
        try:
            pruner = tp.pruner.MetaPruner(
                model,
                example,
                importance=tp.importance.GroupMagnitudeImportance(p=1),
                pruning_ratio=AMOUNT,
                **_torch_pruning_options(model),
            )
            pruner.step()
            for module in model.modules():  # its README's attribute update for timm attention
                if module.__class__.__name__ == "Attention" and hasattr(module, "qkv"):
                    module.num_heads = pruner.num_heads[module.qkv]
                    module.attn_dim = module.qkv.out_features // 3
            if isinstance(model, tvm.VisionTransformer):  # its torchvision test's update
                model.hidden_dim = model.conv_proj.out_channels
            with torch.no_grad():
                model(**example) if isinstance(example, dict) else model(example)
        except Exception as error:  # a peer's failure is data here
            row.update(status="failed", reason=f"{type(error).__name__}: {str(error)[:200]}")
            row["total_s"] = time.perf_counter() - start
            return row
        row.update(status="ok", total_s=time.perf_counter() - start)
    row["other_cores"] = load.cores
    if not counts:
        return row
    before = pyprune.count(_build(name), example)
    after = pyprune.count(model, example)
    row.update(params=[before.params, after.params], flops=[before.flops, after.flops])
    return row


def run_global_magnitude_vs_torch(name: str, repeats: int = 1) -> dict[str, Any]:
    """magnitude_global (plan + apply, measure=False like torch) vs torch.nn.utils.prune.global_unstructured; the
    median of ``repeats`` runs of each, alternating, each on a freshly built model."""
    torch_times, our_times = [], []
    for _ in range(repeats):
        model = _build(name)
        layers = [module for _, module in select_layers(model, None, None)]
        start = time.perf_counter()
        torch_prune.global_unstructured(
            [(m, "weight") for m in layers], pruning_method=torch_prune.L1Unstructured, amount=AMOUNT
        )
        torch_times.append(time.perf_counter() - start)
        torch_masks = [m.weight_mask for m in layers]
        model = _build(name)
        start = time.perf_counter()
        pyprune.prune(model, "magnitude_global", AMOUNT)
        our_times.append(time.perf_counter() - start)
        ours = [m.weight_mask for _, m in select_layers(model, None, None)]
    torch_s, ours_s = statistics.median(torch_times), statistics.median(our_times)
    # Weights whose |w| equals the threshold (the k-th smallest) are interchangeable: pyprune removes the first ones in
    # layer order, torch.topk an unspecified subset. Masks that differ only there select the same magnitudes.
    magnitudes = [m.weight_orig.detach().abs().flatten() for m in layers]
    removed = sum(int((mask == 0).sum()) for mask in torch_masks)
    threshold = torch.kthvalue(torch.cat(magnitudes), removed).values if removed else None
    differing = [(a != b).flatten() for a, b in zip(torch_masks, ours, strict=True)]
    return {
        "model": name,
        "torch_s": torch_s,
        "pyprune_s": ours_s,
        "ratio": ours_s / torch_s,
        "torch_times_s": torch_times,
        "pyprune_times_s": our_times,
        "same_masks": not any(d.any() for d in differing),
        "differing_weights": sum(int(d.sum()) for d in differing),
        "same_up_to_ties": removed == sum(int((mask == 0).sum()) for mask in ours)
        and all(
            bool((w[d] == threshold).all()) for w, d in zip(magnitudes, differing, strict=True) if d.any()
        ),
        "ties_at_threshold": 0 if threshold is None else sum(int((w == threshold).sum()) for w in magnitudes),
    }


def _fmt_pair(pair: list[int] | None) -> str:
    if not pair:
        return "-"
    return f"{pair[1] / pair[0]:.2f}" if pair[0] else "-"


def report(rows: list[dict[str, Any]], magnitude: list[dict[str, Any]], info: dict[str, Any]) -> str:
    table = []
    for row in rows:
        table.append(
            [
                row["model"], row["library"], row["method"], row["status"],
                fmt_seconds(row.get("total_s") or row.get("plan_s")),
                _fmt_pair(row.get("params")), _fmt_pair(row.get("flops")),
                fmt_ratio(row.get("speedup_b1")), fmt_ratio(row.get("speedup_b8")),
                fmt_cores(row.get("other_cores")),
                (row.get("reason") or row.get("hf_config") or "")[:90],
            ]
        )  # fmt: skip
    headers = ["model", "library", "method", "status", "plan+apply", "params after/before",
               "FLOPs after/before", "speed-up b1", "speed-up b8", "other cores", "note"]  # fmt: skip
    ratios = []
    by_model = {(r["model"], r["library"], r["method"]): r for r in rows}
    for row in rows:
        if row["library"] == "pyprune" and row["method"] == "l1_filter" and row["status"] == "ok":
            peer = by_model.get((row["model"], "Torch-Pruning", "MetaPruner(GroupMagnitude p=1)"))
            if peer and peer["status"] == "ok":
                ratios.append([row["model"], fmt_seconds(row["total_s"]), fmt_seconds(peer["total_s"]),
                               fmt_ratio(row["total_s"] / peer["total_s"])])  # fmt: skip
    ok = sum(r["status"] == "ok" for r in rows if r["library"] == "pyprune")
    refused = sum(r["status"] == "refused" for r in rows if r["library"] == "pyprune")
    peer_failed = sum(r["status"] == "failed" for r in rows if r["library"] == "Torch-Pruning")
    lines = [
        f"# Real models: pyprune vs Torch-Pruning (amount {AMOUNT})",
        "",
        format_machine(info),
        "",
        f"pyprune: {ok} ok, {refused} refused at planning; Torch-Pruning MetaPruner failed on {peer_failed}.",
        "",
        markdown_table(headers, table),
        "",
        "## Plan + apply time, l1_filter vs MetaPruner (pyprune's includes the parameter/FLOP table)",
        "",
        markdown_table(["model", "pyprune", "Torch-Pruning", "pyprune / TP"], ratios),
        "",
        "## magnitude_global vs torch.nn.utils.prune.global_unstructured",
        "",
        markdown_table(
            [
                "model",
                "torch",
                "pyprune",
                "pyprune / torch",
                "identical masks",
                "weights differing",
                "weights tied at the threshold",
                "same up to ties",
            ],
            [
                [
                    m["model"],
                    fmt_seconds(m["torch_s"]),
                    fmt_seconds(m["pyprune_s"]),
                    fmt_ratio(m["ratio"]),
                    str(m["same_masks"]),
                    str(m["differing_weights"]),
                    str(m["ties_at_threshold"]),
                    str(m["same_up_to_ties"]),
                ]
                for m in magnitude
            ],
        ),
        "",
        "Weights tied at the threshold (|w| equal to the k-th smallest) are interchangeable: pyprune removes the "
        "first ones in layer order, `torch.topk` (inside `global_unstructured`) an unspecified subset of them.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__.splitlines()[0], "four small models, two methods")
    parser.add_argument("--models", nargs="*", help=f"subset of {list(MODELS)}")
    parser.add_argument(
        "--methods", nargs="*", help="registered data-free methods (default l1_filter, magnitude_global)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="latency rounds per model (default 10, quick 3)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed plan + apply runs per row, the median reported (default 3, quick 1)",
    )
    return parse(parser, argv)


def warm_up() -> None:
    """One untimed plan + apply and one MetaPruner run on a small model, so that the first timed row pays no
    one-off costs (lazy imports, first dispatch of each operator) that the rows after it do not."""
    for run in (lambda: run_pyprune("tv_resnet18", "l1_filter", 1), lambda: run_torch_pruning("tv_resnet18")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warm_up()
    models = args.models or (QUICK_MODELS if args.quick else ORDER + [m for m in MODELS if m not in ORDER])
    methods = args.methods or (QUICK_METHODS if args.quick else METHODS)
    rounds = args.rounds or (3 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 3)
    info = machine_info()
    rows, magnitude = [], []
    for name in models:
        for method in methods:
            try:
                rows.append(repeated(lambda last, n=name, m=method: run_pyprune(n, m, rounds, last), repeats))
            except Exception as error:  # never expected: the row says so instead of stopping the table
                traceback.print_exc()
                rows.append({"model": name, "method": method, "library": "pyprune", "status": "error",
                             "reason": f"{type(error).__name__}: {error}"[:300]})  # fmt: skip
            print(rows[-1], flush=True)
        rows.append(repeated(lambda last, n=name: run_torch_pruning(n, last), repeats))
        print(rows[-1], flush=True)
        if "magnitude_global" in methods:
            magnitude.append(run_global_magnitude_vs_torch(name, repeats))
            print(magnitude[-1], flush=True)
        payload = {"machine": info, "amount": AMOUNT, "models": models, "rows": rows, "magnitude": magnitude}
        # After every model, so that a long run that is stopped still leaves its table.
        paths = save(args, "models_cpu", payload, report(rows, magnitude, info))
    print(report(rows, magnitude, info))
    print("wrote " + ", ".join(str(p) for p in paths) if paths else "--quick without --out: nothing written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
