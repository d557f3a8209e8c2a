"""GPU benchmark suite: every CUDA measurement pyprune reports, in one run of at most 8 minutes on one H200.

Sections (each writes ``benchmarks/results/<name>_cuda.{json,md}`` as soon as it is done, so a run cut short
still leaves the finished ones):

1. ``cka_matrix_cuda``: the layer-by-layer CKA heatmap of ``bench_cka_matrix.py`` (VGG-like x all-conv CNNs,
   10 x 10 layers) at n = 4,096 and 16,384, linear and RBF: pyprune ``cka_matrix`` (CUDA kernels), the same
   call under ``use_backend("reference")`` (plain torch on the GPU), plain vectorised float32 torch, the cuBLAS
   GEMM floor (``torch.mm(x, x.T)`` per layer), torch-cka 0.21 (minibatch unbiased CKA, its own forwards) and
   pytorch-cka 1.1.3 (``cka_from_features``: full-batch unbiased CKA, timed against pyprune ``unbiased=True``).
2. ``sensitivity_cuda``: the SiPP/PFP sensitivity update on every distinct ResNet-56 layer and a 4,096 x 4,096
   Linear at |S| = 256: the whole update, the CUDA kernel alone (z given) and the GEMM of the same shape;
   float32 against float64 accumulation (error and time).
3. ``cka_damage_cuda``: ``CKADamage(conv, representation="flatten", greedy=True)`` on one conv layer with
   C = 256 / 1,024 / 4,096 channels (statistics, ``M``, greedy loop), the greedy kernel alone on random
   interaction matrices up to p = 16,384 (is its one-block loop a bottleneck?), and
   ``pyprune.plan(resnet56, "cka_greedy", 0.5)`` from 1,024 samples.
4. ``structured_cuda``: inference latency of ResNet-56 (32 x 32), ResNet-50 and ViT-B/16 (224 x 224), dense vs
   ``pyprune.plan(model, "l1_filter", 0.5)`` applied, with and without ``round_to=8``, at batch 1 and 64.

How the lead runs it on the device (the ``run`` tool copies the working tree; the device has no package
registry, its ``python3`` is 3.12 with torch 2.11+cu130, CuPy 14 (cupy-cuda13x), torchvision, timm):

1. Here, once: ``bash benchmarks/gpu_wheels.sh`` (pure-Python wheels of torch-pruning, torch-cka and
   pytorch-cka into ``wheelhouse/``, which git ignores). pyprune runs from the source tree; its C++ module is
   not needed on the GPU path (the CPU side falls back to torch), so no build is carried.
2. ``run`` with ``carry=["wheelhouse"]``, ``timeout_s=600`` and the command::

       python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \\
         wheelhouse/*.whl && PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \\
         python3 benchmarks/gpu_suite.py --budget-s 420 --copy-to $OUT

   (8 files come back: the four sections' ``.json`` and ``.md``.)
3. Here: copy the returned files into ``benchmarks/results/`` and commit them.

Rehearsal on CPU: ``python benchmarks/gpu_suite.py --dry-run`` runs every section with tiny sizes on the CPU
(imports, shapes, the report code; about a minute) and writes nothing unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
import _cka_damage_setup as damage_setup
import _cka_heatmap as heatmap
import _sensitivity_layers as sensitivity_layers
from _runner import (
    RESULTS_DIR,
    STARTED,
    benchmark_parser,
    fmt_float,
    fmt_mib,
    fmt_ratio,
    fmt_seconds,
    format_machine,
    log,
    machine_info,
    markdown_table,
    package_version,
    parse,
    time_call,
    write_results,
)

import pyprune
import tests.conftest  # noqa: F401  (torchvision's op schemas beside a CPU-only torch)
from pyprune import models
from pyprune.ops.backend import use_backend, use_kernel
from pyprune.ops.cka_damage import greedy_removal_order
from pyprune.ops.sensitivity import denominators, sensitivity_update
from pyprune.pruning.criteria.cka_damage import CKADamage
from pyprune.similarity.cka import cka_matrix

GOAL_HEATMAP_GEMM_RATIO = 0.6
GOAL_PLAN_S = 1.0
GOAL_SENSITIVITY_GEMM_RATIO = 2.0


# ---------------------------------------------------------------------------------------------- sizes


def sizes(dry_run: bool) -> dict[str, Any]:
    """Problem sizes of the real run, or tiny ones that exercise the same code on a CPU."""
    if dry_run:
        return {
            "heatmap_n": [32],
            "heatmap_batch": 16,
            "sensitivity_size": 4,
            "linear_width": 64,
            "damage_channels": [8],
            "damage_batch": 16,
            "greedy_p": [64],
            "plan_model": "resnet20",
            "plan_repeats": 0,
            "plan_samples": 16,
            "plan_batch": 8,
            "structured_models": {"resnet20": 32, "resnet18": 32, "vit_tiny_depth2": 32},
            "latency_batches": [1, 4],
            "latency_repeats": 2,
            "repeats": 1,
        }
    return {
        "heatmap_n": [4096, 16384],
        "heatmap_batch": 1024,
        "sensitivity_size": 256,
        "linear_width": 4096,
        "damage_channels": [256, 1024, 4096],
        "damage_batch": 256,
        "greedy_p": [1024, 4096, 16384],
        "plan_model": "resnet56",
        "plan_repeats": 2,
        "plan_samples": 1024,
        "plan_batch": 256,
        "structured_models": {"resnet56": 32, "resnet50": 224, "vit_b_16": 224},
        "latency_batches": [1, 64],
        "latency_repeats": 30,
        "repeats": 3,
    }


# -------------------------------------------------------------------------------------------- helpers


class Budget:
    """Wall-clock budget of the whole suite: a step that would start past its share is skipped (and said)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - STARTED)

    def allows(self, what: str, reserve_s: float = 0.0) -> bool:
        if self.left() > reserve_s:
            return True
        log(f"skipped (budget): {what}")
        return False


def gpu_info(device: str) -> dict[str, Any]:
    """:func:`machine_info` plus what a GPU table needs: driver, CUDA, CuPy and the peers' versions."""
    info = machine_info(device)
    for dist in ("cupy-cuda13x", "cupy-cuda12x", "cupy"):
        if package_version(dist):
            info["cupy"] = f"{dist} {package_version(dist)}"
            break
    for dist in ("torch-cka", "pytorch-cka", "torch-pruning", "torchvision", "timm"):
        info[dist.replace("-", "_")] = package_version(dist)
    info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info["gpu_sm_count"] = props.multi_processor_count
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        with contextlib.suppress(Exception):
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            info["driver"] = smi.stdout.strip().splitlines()[0]
    return info


def header(title: str, payload: dict[str, Any]) -> list[str]:
    info = payload["machine"]
    lines = [f"# {title}", "", format_machine(info)]
    if "gpu_sm_count" in info:
        lines.append(
            f"- GPU detail: {info['gpu_sm_count']} SMs, {info['gpu_memory_gib']} GiB, driver "
            f"{info.get('driver', 'unknown')}, TF32 matmul {info['tf32_matmul']}"
        )
    peers = ", ".join(
        f"{k} {info.get(k)}" for k in ("torch_cka", "pytorch_cka", "torch_pruning", "torchvision", "timm")
    )
    lines += [f"- peers and models: {peers}", f"- suite wall time so far: {payload['wall_s']:.0f} s", ""]
    if payload["config"]["dry_run"]:
        lines += [
            "**Dry run on CPU with tiny sizes: these figures check the code, they measure nothing.**",
            "",
        ]
    return lines


def error_record(exc: BaseException, **fields: Any) -> dict[str, Any]:
    log(f"ERROR {fields}: {type(exc).__name__}: {exc}")
    return {**fields, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}


def max_abs_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    diff = (a.detach().double().cpu() - b.detach().double().cpu()).abs()
    return float("nan") if bool(diff.isnan().any()) else float(diff.max())


def finish(
    name: str, title: str, payload: dict[str, Any], table: list[str], args: argparse.Namespace
) -> None:
    payload["wall_s"] = time.perf_counter() - STARTED
    markdown = "\n".join([*header(title, payload), *table])
    if args.out is None:
        log(f"{name}: dry run, nothing written\n{markdown}")
        return
    paths = write_results(f"{name}_cuda", payload, markdown, args.out)
    if args.copy_to is not None:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copy(path, args.copy_to / path.name)
    log(f"{name}: wrote {', '.join(str(p) for p in paths)}")


# --------------------------------------------------------------------------------------- 1. heatmap


def heatmap_section(args: argparse.Namespace, size: dict[str, Any], budget: Budget) -> dict[str, Any]:
    device = args.device
    model_x = heatmap.build_model("vgg", heatmap.MODEL_SEEDS["vgg"], device)
    model_y = heatmap.build_model("allconv", heatmap.MODEL_SEEDS["allconv"], device)
    names_x, names_y = heatmap.layer_names(model_x), heatmap.layer_names(model_y)
    records: list[dict[str, Any]] = []
    for n in size["heatmap_n"]:
        batch = min(size["heatmap_batch"], n)
        inputs = heatmap.make_inputs(n)
        xs = heatmap.capture(model_x, names_x, inputs, batch, device)
        ys = heatmap.capture(model_y, names_y, inputs, batch, device)
        for kernel in ("linear", "rbf"):
            if not budget.allows(f"heatmap n={n} {kernel}", reserve_s=0.45 * args.budget_s):
                continue
            reference = heatmap.plain_cka_matrix(xs, ys, kernel, 0.5, dtype=torch.float64).cpu()
            unbiased_ref = None
            if kernel == "linear":
                unbiased_ref = heatmap.unbiased_cka_reference(
                    [x.double() for x in xs], [y.double() for y in ys]
                )
            impls = heatmap_impls(
                xs, ys, kernel, reference, unbiased_ref, (model_x, model_y, n, batch, device)
            )
            for impl, fn, ref in impls:
                fields = {"n": n, "kernel": kernel, "impl": impl}
                if not budget.allows(f"heatmap {fields}", reserve_s=0.4 * args.budget_s):
                    continue
                try:
                    timing = time_call(fn, repeats=size["repeats"], device=device, memory=True)
                except Exception as exc:  # a peer missing or out of memory: record it and go on
                    records.append(error_record(exc, **fields))
                    continue
                result = timing.pop("result")
                rec = {**fields, **timing}
                if isinstance(result, torch.Tensor) and ref is not None:
                    rec["max_abs_diff_vs_f64"] = max_abs_diff(result, ref)
                records.append(rec)
                log(f"heatmap n={n} {kernel} {impl}: {rec['median_s']:.4f} s")
        del xs, ys
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {"records": records, "layers": {"vgg": names_x, "allconv": names_y}}


def heatmap_impls(
    xs: list[torch.Tensor],
    ys: list[torch.Tensor],
    kernel: str,
    reference: torch.Tensor,
    unbiased_ref: torch.Tensor | None,
    peer_args: tuple[Any, ...],
) -> list[tuple[str, Callable[[], Any], torch.Tensor | None]]:
    """(name, call, float64 reference of its estimator) of every heatmap implementation for ``kernel``."""
    impls: list[tuple[str, Callable[[], Any], torch.Tensor | None]] = [
        ("pyprune", lambda: cka_matrix(xs, ys, kernel=kernel, threshold=0.5), reference),
        ("gemm-floor", lambda: heatmap.gemm_floor(xs, ys), None),
        ("plain-torch", lambda: heatmap.plain_cka_matrix(xs, ys, kernel, 0.5), reference),
        ("torch-reference", lambda: _reference_backend(xs, ys, kernel), reference),
    ]
    if kernel == "linear":
        impls += [
            ("pyprune-unbiased", lambda: cka_matrix(xs, ys, kernel="linear", unbiased=True), unbiased_ref),
            ("pytorch-cka", lambda: _pytorch_cka(xs, ys), unbiased_ref),
            ("torch-cka", lambda: _torch_cka(*peer_args), None),
        ]
    return impls


def _reference_backend(xs: list[torch.Tensor], ys: list[torch.Tensor], kernel: str) -> torch.Tensor:
    with use_backend("reference"):
        return cka_matrix(xs, ys, kernel=kernel, threshold=0.5)


def _pytorch_cka(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    import cka  # pytorch-cka's import name

    return cka.cka_from_features(xs, ys)


def _torch_cka(model_x, model_y, n: int, batch: int, device: str) -> torch.Tensor:
    """torch-cka end to end (it runs both models' forwards itself): minibatch unbiased CKA, batches of ``batch``."""
    import torch_cka
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(heatmap.make_inputs(n)), batch_size=batch, shuffle=False)
    names_x, names_y = heatmap.layer_names(model_x), heatmap.layer_names(model_y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = torch_cka.CKA(model_x, model_y, "vgg", "allconv", names_x, names_y, device=device)
        with contextlib.redirect_stderr(io.StringIO()):
            peer.compare(loader, loader)
    return peer.export()["CKA"]


def heatmap_table(payload: dict[str, Any]) -> list[str]:
    by = {(r["n"], r["kernel"], r["impl"]): r for r in payload["records"] if "error" not in r}
    rows = []
    for rec in payload["records"]:
        if "error" in rec:
            rows.append([rec["n"], rec["kernel"], rec["impl"], f"error: {rec['error'][:70]}", "", "", "", ""])
            continue
        base = by.get(
            (rec["n"], rec["kernel"], "pyprune-unbiased" if rec["impl"] == "pytorch-cka" else "pyprune")
        )
        gemm = by.get((rec["n"], rec["kernel"], "gemm-floor"))
        rows.append(
            [
                rec["n"],
                rec["kernel"],
                rec["impl"],
                fmt_seconds(rec["median_s"]),
                fmt_ratio(rec["median_s"] / base["median_s"]) if base else "—",
                fmt_ratio(rec["median_s"] / gemm["median_s"]) if gemm else "—",
                fmt_mib(rec.get("peak_extra_bytes")),
                fmt_float(rec.get("max_abs_diff_vs_f64")),
            ]
        )
    headers = [
        "n",
        "kernel",
        "implementation",
        "time (s)",
        "× pyprune",
        "× GEMM floor",
        "peak MiB",
        "max |Δ|",
    ]
    lines = [
        "Same activations for every row (captured once on the GPU). 'pyprune' = `cka_matrix` (biased CKA, "
        "CUDA kernels); 'torch-reference' = the same call under `use_backend(\"reference\")`; 'plain-torch' = "
        "vectorised float32 torch; 'gemm-floor' = `torch.mm(x, x.T)` for every layer of both models "
        "(cuBLAS, float32). Estimators: pyprune, torch-reference, plain-torch: full-batch biased CKA; "
        "pyprune-unbiased and pytorch-cka (`cka_from_features`): full-batch unbiased CKA (Song et al. 2012 "
        "HSIC_1; pytorch-cka clamps to [0, 1]); torch-cka: minibatch unbiased CKA with its own forwards "
        "(no accuracy column: a different estimator). '× pyprune' is against pyprune-unbiased for "
        "pytorch-cka and against pyprune otherwise. max |Δ| against float64 on the same float32 activations.",
        "",
        markdown_table(headers, rows),
        "",
        "Goals:",
        "",
    ]
    for (n, kernel, impl), rec in sorted(by.items()):
        gemm = by.get((n, kernel, "gemm-floor"))
        if impl == "pyprune" and kernel == "linear" and gemm:
            ratio = rec["median_s"] / gemm["median_s"]
            verdict = "MET" if ratio <= GOAL_HEATMAP_GEMM_RATIO else "NOT MET"
            lines.append(
                f"- n = {n}: linear heatmap {ratio:.2f}× the GEMM floor (goal ≤ {GOAL_HEATMAP_GEMM_RATIO}×) -> {verdict}"
            )
        peer_base = by.get((n, kernel, "pyprune-unbiased" if impl == "pytorch-cka" else "pyprune"))
        if impl in ("pytorch-cka", "torch-cka", "torch-reference", "plain-torch") and peer_base:
            ratio = rec["median_s"] / peer_base["median_s"]
            lines.append(f"- n = {n}, {kernel}: pyprune {ratio:.2f}× faster than {impl}")
    return lines


# ----------------------------------------------------------------------------------- 2. sensitivity


def sensitivity_section(args: argparse.Namespace, size: dict[str, Any], budget: Budget) -> dict[str, Any]:
    device, s = args.device, size["sensitivity_size"]
    layers = [*sensitivity_layers.resnet_layers(s), sensitivity_layers.linear_layer(size["linear_width"], s)]
    records: list[dict[str, Any]] = []
    for layer in layers:
        if not budget.allows(f"sensitivity {layer['name']}", reserve_s=0.3 * args.budget_s):
            break
        weight = layer["weight"].to(device).contiguous()
        inputs = sensitivity_layers.doubled(layer["inputs"][:s]).to(device).contiguous()
        geometry = layer["geometry"]
        shape = sensitivity_layers.describe({**layer, "weight": layer["weight"]}, s)
        fields = {"layer": layer["name"], "count": layer["count"], **shape}
        try:
            rec = {**fields, **measure_sensitivity(weight, inputs, geometry, shape, device, size["repeats"])}
            records.append(rec)
            log(
                f"sensitivity {layer['name']}: update {rec['update']['median_s']:.5f} s, kernel "
                f"{rec['kernel']['median_s']:.5f} s, GEMM {rec['gemm']['median_s']:.5f} s"
            )
        except Exception as exc:
            records.append(error_record(exc, **fields))
    return {"records": records, "size": s}


def measure_sensitivity(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    geometry: Any,
    shape: dict[str, int],
    device: str,
    repeats: int,
) -> dict[str, Any]:
    """Whole update, kernel alone, same-shape GEMM, and the float64 path (time, and s_mean's relative error)."""

    def zeros(like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(like), torch.zeros_like(like)

    weight64, inputs64 = weight.double(), inputs.double()
    a = torch.randn(shape["examples"] * shape["patches"], shape["columns"], device=device)
    m = torch.randn(shape["columns"], shape["filters"], device=device)
    rec: dict[str, Any] = {
        "update": time_call(
            lambda: sensitivity_update(weight, inputs, geometry, *zeros(weight)),
            repeats=repeats,
            device=device,
            memory=True,
        ),
        "kernel": time_call(
            _kernel_only(weight, inputs, geometry), repeats=repeats, device=device, memory=True
        ),
        "gemm": time_call(lambda: torch.mm(a, m), repeats=repeats, device=device, memory=True),
        "update_float64": time_call(
            lambda: sensitivity_update(weight64, inputs64, geometry, *zeros(weight64)),
            repeats=repeats,
            device=device,
            memory=True,
        ),
    }
    for timing in rec.values():
        timing.pop("result", None)
    state32, state64 = zeros(weight), zeros(weight64)
    sensitivity_update(weight, inputs, geometry, *state32)
    sensitivity_update(weight64, inputs64, geometry, *state64)
    nonzero = state64[0] > 0
    rel = ((state32[0].double() - state64[0]).abs() / state64[0].where(nonzero, 1.0))[nonzero]
    rec["max_rel_diff_mean_float32"] = float(rel.max()) if rel.numel() else 0.0
    rec["kernel_path"] = use_kernel(weight.device)
    return rec


def _drop_result(timing: dict[str, Any]) -> dict[str, Any]:
    timing.pop("result", None)
    return timing


def _kernel_only(weight: torch.Tensor, inputs: torch.Tensor, geometry: Any) -> Callable[[], None]:
    """The kernel alone, z for the whole set computed beforehand: CUDA kernel on a GPU, C++ kernel on a CPU."""
    z = denominators(weight, inputs, geometry)
    if weight.device.type == "cuda":
        from pyprune.ops.cuda import sensitivity_update_cuda_unchecked

        def run() -> None:
            s_mean, s_max = torch.zeros_like(weight), torch.zeros_like(weight)
            sensitivity_update_cuda_unchecked(weight, inputs, geometry, z, s_mean, s_max, z.shape[-1])

        return run
    return sensitivity_layers.kernel_only(weight, inputs, geometry, lambda: (torch.zeros_like(weight),) * 2)


def sensitivity_table(payload: dict[str, Any]) -> list[str]:
    rows, totals = [], {"update": 0.0, "kernel": 0.0, "gemm": 0.0}
    worst = (0.0, "none")
    for rec in payload["records"]:
        if "error" in rec:
            rows.append([rec["layer"], "", f"error: {rec['error'][:70]}", "", "", "", "", "", ""])
            continue
        u, k, g = (rec[v]["median_s"] for v in ("update", "kernel", "gemm"))
        if rec["layer"].startswith("resnet56"):
            for key, value in (("update", u), ("kernel", k), ("gemm", g)):
                totals[key] += value * rec["count"]
        worst = max(worst, (k / g, rec["layer"]))
        rows.append(
            [
                rec["layer"],
                rec["count"],
                f"{rec['examples']}, {rec['filters']}, {rec['columns']}, {rec['patches']}",
                fmt_seconds(u),
                fmt_seconds(k),
                fmt_seconds(g),
                fmt_ratio(k / g),
                fmt_ratio(u / g),
                f"{rec['update_float64']['median_s'] / u:.2f}× / {rec['max_rel_diff_mean_float32']:.1e}",
            ]
        )
    headers = [
        "layer",
        "×n",
        "examples, F, J, P",
        "update (z + kernel) s",
        "kernel s",
        "GEMM s",
        "kernel / GEMM",
        "update / GEMM",
        "float64 time / float32 rel. error",
    ]
    lines = [
        f"|S| = {payload['size']} (examples after the batch-doubling rule); GEMM = `torch.mm` of (examples P x J) "
        "by (J x F), float32, on the GPU. 'update' = `pyprune.ops.sensitivity.sensitivity_update` (z+ and z- by "
        "one conv/linear of [W+; W-], then the kernel); 'kernel' = the CUDA kernel with z given. Last column: "
        "the float64 path's time over the float32 one, and the largest relative difference of s_mean between "
        "them (float32 accumulates in two levels).",
        "",
        markdown_table(headers, rows),
        "",
    ]
    if totals["gemm"] > 0:
        lines.append(
            f"- ResNet-56 total: kernel {totals['kernel'] / totals['gemm']:.2f}× the GEMM, whole update "
            f"{totals['update'] / totals['gemm']:.2f}×; worst layer kernel {worst[0]:.2f}× ({worst[1]}); goal: "
            f"kernel within {GOAL_SENSITIVITY_GEMM_RATIO:.0f}× -> "
            f"{'MET' if worst[0] <= GOAL_SENSITIVITY_GEMM_RATIO else 'NOT MET'}"
        )
    return lines


# ------------------------------------------------------------------------------------ 3. CKA damage


class SyncedPhaseTimer(damage_setup.PhaseTimer):
    """The CPU benchmark's phase timer, synchronising the GPU around each timed call, on the phases that exist."""

    TARGETS = tuple(t for t in damage_setup.PhaseTimer.TARGETS if hasattr(t[0], t[1]))

    def _wrap(self, fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
        inner = super()._wrap(fn, phase)

        def wrapper(*a: Any, **k: Any) -> Any:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            try:
                return inner(*a, **k)
            finally:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()

        return wrapper


def damage_section(args: argparse.Namespace, size: dict[str, Any], budget: Budget) -> dict[str, Any]:
    device = args.device
    out: dict[str, Any] = {"layers": [], "greedy": [], "plan": None}
    for channels in size["damage_channels"]:
        if not budget.allows(f"cka damage C={channels}", reserve_s=0.15 * args.budget_s):
            break
        try:
            layer = damage_setup.make_layer(channels).to(device)
            x = damage_setup.make_batch(size["damage_batch"], channels).to(device)
            timer, runs = SyncedPhaseTimer(), []
            for _ in range(1 + size["repeats"]):
                with timer.active():
                    start = time.perf_counter()
                    criterion = CKADamage(
                        layer, representation="flatten", greedy=True, max_samples=x.shape[0]
                    )
                    criterion.accumulate_over(x, progress=False)
                    order = criterion.removal_order(damage_setup.LAYER_NAME)
                    total = time.perf_counter() - start
                runs.append({"total": total, **timer.seconds})
            phases = {k: statistics.median(r.get(k, 0.0) for r in runs[1:]) for k in runs[-1]}
            out["layers"].append(
                {"channels": channels, "batch": x.shape[0], "order_length": len(order), **phases}
            )
            log(f"cka damage C={channels}: {phases}")
        except Exception as exc:
            out["layers"].append(error_record(exc, channels=channels))
    for p in size["greedy_p"]:
        if not budget.allows(f"greedy p={p}", reserve_s=0.12 * args.budget_s):
            break
        try:
            generator = torch.Generator().manual_seed(p)
            features = torch.randn(p, 64, generator=generator, dtype=torch.float64).to(device)
            interaction = (features @ features.T).abs_().contiguous()
            timing = _drop_result(
                time_call(
                    lambda m=interaction: greedy_removal_order(m),
                    repeats=size["repeats"],
                    device=device,
                    memory=True,
                )
            )
            out["greedy"].append({"p": p, **timing})
            log(f"greedy p={p}: {timing['median_s']:.4f} s")
        except Exception as exc:
            out["greedy"].append(error_record(exc, p=p))
    if budget.allows("resnet56 cka_greedy plan", reserve_s=0.08 * args.budget_s):
        out["plan"] = _plan_case(device, size)
    return out


def _plan_case(device: str, size: dict[str, Any]) -> dict[str, Any]:
    try:
        torch.manual_seed(damage_setup.MODEL_SEED)
        model = models.create(size["plan_model"]).eval().to(device)
        generator = torch.Generator().manual_seed(damage_setup.INPUT_SEED)
        data = [
            (
                torch.randn(b, *damage_setup.INPUT_SHAPE, generator=generator).to(device),
                torch.randint(0, damage_setup.NUM_CLASSES, (b,), generator=generator).to(device),
            )
            for b in damage_setup.batch_sizes(size["plan_samples"], size["plan_batch"])
        ]
        timer, runs = SyncedPhaseTimer(), []
        for _ in range(1 + size["plan_repeats"]):
            with timer.active(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = time.perf_counter()
                plan = pyprune.plan(
                    model,
                    "cka_greedy",
                    damage_setup.PLAN_AMOUNT,
                    example_input=data[0][0][:2],
                    data=data,
                    progress=False,
                )
                total = time.perf_counter() - start
            runs.append({"total": total, **timer.seconds})
        pruned = plan.apply(copy.deepcopy(model))
        with torch.no_grad():
            shape = tuple(pruned(data[0][0][:2]).shape)
        phases = {k: statistics.median(r.get(k, 0.0) for r in runs[1:] or runs) for k in runs[-1]}
        log(f"{size['plan_model']} cka_greedy plan: {phases}")
        return {
            "model": size["plan_model"],
            "samples": size["plan_samples"],
            "cold_s": runs[0]["total"],
            "output_shape": shape,
            **phases,
        }
    except Exception as exc:
        return error_record(exc, case="resnet56 plan")


def damage_table(payload: dict[str, Any]) -> list[str]:
    lines = [
        "## One conv layer, `CKADamage(conv, representation='flatten', greedy=True)`",
        "",
        "`Conv2d(C, C, 3, padding=1)` on relu(randn(batch, C, 8, 8)) (as `bench_cka_damage.py`); accumulate + the "
        "whole removal order, median after one warm-up; phases synchronise the GPU around each call.",
        "",
    ]
    rows = []
    for rec in payload["layers"]:
        if "error" in rec:
            rows.append([rec["channels"], f"error: {rec['error'][:70]}", "", "", "", ""])
            continue
        rows.append(
            [
                rec["channels"],
                rec["batch"],
                *(fmt_seconds(rec.get(k)) for k in ("total", "statistics", "M", "greedy")),
            ]
        )
    lines += [markdown_table(["C", "batch", "total s", "statistics s", "M s", "greedy s"], rows), ""]
    lines += [
        "## The greedy kernel alone (one block of `PP_GREEDY_THREADS` threads)",
        "",
        "Random symmetric float64 interaction matrices (|F F^T|, F: p x 64); the whole removal order of p "
        "neurons (p steps).",
        "",
    ]
    rows = [
        [r["p"], f"error: {r['error'][:70]}", "", ""]
        if "error" in r
        else [
            r["p"],
            fmt_seconds(r["median_s"]),
            f"{r['median_s'] / r['p'] * 1e6:.2f}",
            fmt_mib(r.get("peak_extra_bytes")),
        ]
        for r in payload["greedy"]
    ]
    lines += [markdown_table(["p", "time s", "µs per step", "peak MiB"], rows), ""]
    plan = payload.get("plan")
    if plan and "error" not in plan:
        verdict = "MET" if plan["total"] <= GOAL_PLAN_S else "NOT MET"
        lines += [
            f"## `pyprune.plan({plan['model']}, 'cka_greedy', {damage_setup.PLAN_AMOUNT})` from {plan['samples']} samples",
            "",
            f"- warm: {fmt_seconds(plan['total'])} s (cold {fmt_seconds(plan['cold_s'])} s); goal under "
            f"{GOAL_PLAN_S:.0f} s -> {verdict}",
            "- phases: "
            + ", ".join(
                f"{k} {fmt_seconds(v)} s"
                for k, v in plan.items()
                if k not in ("model", "samples", "cold_s", "output_shape", "total")
            ),
        ]
    elif plan:
        lines.append(f"- ResNet-56 plan: error {plan['error']}")
    return lines


# ------------------------------------------------------------------------------------ 4. structured


def build_structured(name: str, image: int) -> torch.nn.Module:
    """Untrained, seeded: pyprune's CIFAR ResNets, torchvision's ResNets, timm's ViTs (the dry run's: 2 blocks)."""
    torch.manual_seed(0)
    if name in models.MODELS:
        return models.create(name).eval()
    if name.startswith("resnet"):
        import torchvision

        return getattr(torchvision.models, name)(weights=None).eval()
    import timm

    if name == "vit_tiny_depth2":
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image, depth=2).eval()
    return timm.create_model("vit_base_patch16_224", pretrained=False, img_size=image).eval()


def structured_section(args: argparse.Namespace, size: dict[str, Any], budget: Budget) -> dict[str, Any]:
    device = args.device
    records = []
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # each (model, batch) shape gets its fastest algorithms
    for name, image in size["structured_models"].items():
        if not budget.allows(f"structured {name}", reserve_s=0.02 * args.budget_s):
            break
        try:
            dense = build_structured(name, image)
            x1 = torch.randn(1, 3, image, image)
            variants = [("dense", dense)]
            for label, options in (("pruned 50%", {}), ("pruned 50%, round_to=8", {"round_to": 8})):
                plan = pyprune.plan(dense, "l1_filter", 0.5, example_input=x1, **options)
                variants.append((label, plan.apply(copy.deepcopy(dense))))
            counts = {label: pyprune.count(model, x1) for label, model in variants}
            for label, model in variants:
                model.to(device)
                for batch in size["latency_batches"]:
                    x = torch.randn(batch, 3, image, image, device=device)
                    lat = pyprune.latency(model, x, warmup=5, repeats=size["latency_repeats"])
                    records.append(
                        {
                            "model": name,
                            "image": image,
                            "variant": label,
                            "batch": batch,
                            "median_ms": lat.median_ms,
                            "params": counts[label].params,
                            "flops": counts[label].flops,
                        }
                    )
                    log(f"structured {name} {label} batch {batch}: {lat.median_ms:.3f} ms")
                model.cpu()
        except Exception as exc:
            records.append(error_record(exc, model=name))
    return {"records": records}


def structured_table(payload: dict[str, Any]) -> list[str]:
    by = {(r["model"], r["variant"], r["batch"]): r for r in payload["records"] if "error" not in r}
    rows = []
    for rec in payload["records"]:
        if "error" in rec:
            rows.append([rec["model"], f"error: {rec['error'][:70]}", "", "", "", "", ""])
            continue
        dense = by.get((rec["model"], "dense", rec["batch"]))
        rows.append(
            [
                f"{rec['model']} ({rec['image']}²)",
                rec["variant"],
                rec["batch"],
                f"{rec['median_ms']:.3f}",
                fmt_ratio(dense["median_ms"] / rec["median_ms"]) if dense else "—",
                f"{rec['params'] / 1e6:.2f} M",
                f"{rec['flops'] / 1e9:.3f} G",
            ]
        )
    return [
        "`pyprune.latency` (CUDA-synchronised median, `torch.inference_mode`, cudnn.benchmark on), untrained "
        "models, `pyprune.plan(model, 'l1_filter', 0.5)` applied (channels removed physically), with and without "
        "`round_to=8` (kept widths rounded up to multiples of 8 for tensor-core friendly shapes). Params/FLOPs "
        "per image (`pyprune.count`). Speed-up = dense / variant at the same batch; below 1× the pruned model is "
        "slower, which is reported as measured.",
        "",
        markdown_table(["model", "variant", "batch", "median ms", "speed-up", "params", "FLOPs"], rows),
    ]


# ---------------------------------------------------------------------------------------------- main


SECTIONS: dict[str, tuple[str, Callable[..., dict[str, Any]], Callable[[dict[str, Any]], list[str]]]] = {
    "cka_matrix": ("CKA heatmap benchmark (cuda)", heatmap_section, heatmap_table),
    "sensitivity": ("Empirical sensitivity (SiPP/PFP) on the GPU", sensitivity_section, sensitivity_table),
    "cka_damage": ("CKA-damage channel pruning on the GPU", damage_section, damage_table),
    "structured": ("Structured pruning latency on the GPU", structured_section, structured_table),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = benchmark_parser(
        __doc__.split("\n\n")[0], "tiny sizes on the CPU: check imports and shapes", quick_flag="--dry-run"
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of the whole suite")
    parser.add_argument("--sections", nargs="+", choices=tuple(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--copy-to", type=Path, default=None, help="also copy each results file here ($OUT)")
    args = parse(parser, argv)
    args.device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --dry-run to rehearse on a CPU")
        args.out = args.out or RESULTS_DIR
    return args


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    args = parse_args(argv)
    size = sizes(args.dry_run)
    budget = Budget(args.budget_s)
    info = gpu_info(args.device)
    log(
        f"device {args.device}: {info.get('gpu', info['cpu_model'])}; pyprune kernels: {use_kernel(torch.device(args.device))}"
    )
    failed = []
    for name in args.sections:
        title, run, table = SECTIONS[name]
        payload: dict[str, Any] = {"machine": info, "config": {"dry_run": args.dry_run, **size}}
        try:
            payload.update(run(args, size, budget))
        except Exception as exc:  # a section's own failure must not cost the others' device minutes
            payload["error"] = error_record(exc, section=name)
        finish(
            name,
            title,
            payload,
            table(payload) if "error" not in payload else [f"error: {payload['error']}"],
            args,
        )
        failed += [f"{name}: {e}" for e in errors_in(payload)]
    log(f"done in {time.perf_counter() - STARTED:.0f} s" + (f"; errors: {failed}" if failed else ""))
    # On the device a peer's failure is a finding (recorded in the tables); in a rehearsal it is a bug.
    return 1 if failed and args.dry_run else 0


def errors_in(value: Any) -> list[str]:
    """Every ``error`` entry anywhere in a section's payload."""
    if isinstance(value, dict):
        own = [str(value["error"])] if "error" in value and not isinstance(value["error"], dict) else []
        return own + [e for v in value.values() for e in errors_in(v)]
    if isinstance(value, list):
        return [e for v in value for e in errors_in(v)]
    return []


if __name__ == "__main__":
    raise SystemExit(main())
