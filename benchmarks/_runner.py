"""Helpers shared by pyprune's benchmarks.

* :func:`machine_info`: CPU/GPU model, cores, memory, library versions, thread count and date.
* :func:`time_call`: warm-up runs, then the median of repeated timed runs (CUDA-synchronised), optionally
  with the peak memory of the first timed run.
* :func:`log`: a progress line stamped with the seconds since the benchmark started.
* :class:`PeakMemory`: peak *extra* memory of a block: resident-set high-water mark on CPU (Linux
  ``/proc/self/clear_refs`` resets it, so the block is measured alone), ``torch.cuda.max_memory_allocated``
  on CUDA.
* :class:`OtherCpuLoad`, :func:`wait_for_idle`: how many cores other processes kept busy during a
  measurement (timings on a shared machine are only as good as that number), and waiting for a quiet moment.
* :func:`run_isolated`: run a function in a fresh ``spawn`` subprocess, so each measurement starts from a
  clean allocator and its peak memory is its own.
* :func:`markdown_table`, :func:`write_results`: reports as JSON plus Markdown under ``benchmarks/results/``.
* :func:`benchmark_parser`, :func:`parse`, :func:`publish`: the command line every script shares (``--quick``,
  ``--out``) and the end of every run (print the report, write it where ``--out``/``--quick`` say).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MIB = 1024.0**2
STARTED = time.perf_counter()
"""When the benchmark's process imported this module: the origin of :func:`log`'s time stamps."""


def log(message: str) -> None:
    """Print ``message`` with the seconds since :data:`STARTED`, flushed (runs are long, output is piped)."""
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", flush=True)


# --------------------------------------------------------------------------------------------- metadata


def package_version(distribution: str) -> str | None:
    """Installed version of a distribution, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            key, sep, value = line.partition(":")
            if not sep:
                if fields:  # the first processor block is enough
                    break
                continue
            fields.setdefault(key.strip(), value.strip())
    return fields


def _meminfo_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Everything needed to interpret a timing: hardware, versions, threads, date."""
    import numpy
    import scipy

    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    try:
        cores_available = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores_available = os.cpu_count()
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "cpu_model": cpu.get("model name") or platform.processor() or "unknown",
        "cpu_flags": sorted(flags & {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"}),
        "logical_cores": os.cpu_count(),
        "cores_available": cores_available,
        "memory_gib": _meminfo_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_mkl": torch.backends.mkl.is_available(),
        "torch_num_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pyprune": package_version("pyprune"),
        "torch_cka": package_version("torch-cka"),
        "git_commit": _git_commit(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda_runtime"] = torch.version.cuda
        info["cupy"] = package_version("cupy-cuda12x") or package_version("cupy")
    return info


def format_machine(info: dict[str, Any]) -> str:
    """Machine info as a Markdown bullet list."""
    lines = [
        f"- date: {info['date']}",
        f"- CPU: {info['cpu_model']} ({info['cores_available']} cores available, {info['logical_cores']} "
        f"logical; flags {', '.join(info['cpu_flags']) or 'n/a'}); memory {info['memory_gib']} GiB",
    ]
    if "gpu" in info:
        lines.append(f"- GPU: {info['gpu']} (CUDA {info['cuda_runtime']}, CuPy {info['cupy']})")
    lines += [
        f"- torch {info['torch']} (MKL: {info['torch_mkl']}, torch.get_num_threads() = "
        f"{info['torch_num_threads']}), numpy {info['numpy']}, scipy {info['scipy']}",
        f"- pyprune {info['pyprune']} (git {info['git_commit']}), torch-cka {info['torch_cka']}",
        f"- Python {info['python']} on {info['platform']}",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- timing


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def time_call(
    fn: Callable[[], Any],
    *,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    budget_s: float | None = None,
    memory: bool = False,
) -> dict[str, Any]:
    """Run ``fn`` ``warmup`` times untimed-for-the-median, then ``repeats`` times timed.

    With ``budget_s``, a slow ``fn`` gets fewer repeats (at least one): as many as fit in the budget at the
    speed of the last warm-up run. Returns ``median_s``, ``min_s``, ``times_s``, ``warmup_s``, ``repeats``
    and ``result`` (the value of the last call); with ``memory``, also ``peak_extra_bytes`` and
    ``memory_method`` of :class:`PeakMemory` around the first timed run (after the warm-up, so one-off
    allocations such as caches are not counted).
    """
    warm: list[float] = []
    result = None
    for _ in range(warmup):
        elapsed, result = _timed(fn, device)
        warm.append(elapsed)
    runs = repeats
    if budget_s is not None and warm:
        runs = max(1, min(repeats, int(budget_s // max(warm[-1], 1e-9))))
    times: list[float] = []
    peak: dict[str, Any] = {}
    for i in range(runs):
        if memory and i == 0:
            with PeakMemory(device) as tracked:
                elapsed, result = _timed(fn, device)
            peak = {"peak_extra_bytes": tracked.peak_extra_bytes, "memory_method": tracked.method}
        else:
            elapsed, result = _timed(fn, device)
        times.append(elapsed)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "warmup_s": warm,
        "repeats": runs,
        "result": result,
        **peak,
    }


# ----------------------------------------------------------------------------------------------- memory


def _status_kib(key: str) -> int | None:
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is None:  # not Linux: the best we have is the high-water mark
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return kib * 1024


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Peak memory a block adds over what the process held when it started.

    CPU: ``VmHWM - VmRSS`` with the high-water mark reset at entry (falls back to ``ru_maxrss``, an upper
    bound, where the reset is not allowed). CUDA: ``max_memory_allocated - memory_allocated`` (torch's caching
    allocator only; CuPy's pool is not seen).
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.baseline_bytes = 0
        self.peak_extra_bytes = 0
        self.method = ""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline_bytes = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated - memory_allocated"
        else:
            exact = reset_peak_rss()
            self.baseline_bytes = current_rss_bytes()
            self.method = "VmHWM - VmRSS (clear_refs reset)" if exact else "ru_maxrss - VmRSS (upper bound)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            hwm = _status_kib("VmHWM")
            peak = (
                hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            )
        self.peak_extra_bytes = max(0, peak - self.baseline_bytes)


# ------------------------------------------------------------------------------------ CPU contention


def _machine_cpu_seconds() -> float | None:
    """Busy CPU seconds of the whole machine (all cores) since boot, from ``/proc/stat``; None if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [
                int(v) for v in f.readline().split()[1:9]
            ]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process plus its reaped children (finished measurement subprocesses)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class OtherCpuLoad:
    """Average number of cores kept busy by *other* processes during a block (machine busy time minus this
    process's and its finished children's CPU time, over wall time). None where ``/proc/stat`` is missing."""

    def __enter__(self) -> OtherCpuLoad:
        self._machine, self._own, self._wall = _machine_cpu_seconds(), _own_cpu_seconds(), time.perf_counter()
        self.cores: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        machine = _machine_cpu_seconds()
        wall = time.perf_counter() - self._wall
        if machine is None or self._machine is None or wall <= 0:
            return
        others = (machine - self._machine) - (_own_cpu_seconds() - self._own)
        self.cores = max(0.0, others / wall)


def wait_for_idle(max_wait_s: float, threshold_cores: float = 0.3, window_s: float = 2.0) -> dict[str, Any]:
    """Wait (up to ``max_wait_s``) until other processes use fewer than ``threshold_cores`` cores over a
    ``window_s`` window. Returns ``waited_s`` and the last window's ``other_cores``."""
    start = time.perf_counter()
    if max_wait_s <= 0:
        return {"waited_s": 0.0, "other_cores": None}
    while True:
        with OtherCpuLoad() as load:
            time.sleep(window_s)
        other = load.cores
        waited = time.perf_counter() - start
        if other is None or other < threshold_cores or waited >= max_wait_s:
            return {"waited_s": waited, "other_cores": other}


# ------------------------------------------------------------------------------------------- isolation


def run_isolated(fn: Callable[..., Any], *args: Any, isolate: bool = True) -> Any:
    """``fn(*args)`` in a fresh spawned interpreter (``fn`` must be importable), or here if not ``isolate``."""
    if not isolate:
        return fn(*args)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


# ---------------------------------------------------------------------------------------------- reports


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds >= 100:
        return f"{seconds:.0f}"
    if seconds >= 1:
        return f"{seconds:.2f}"
    if seconds >= 0.01:
        return f"{seconds:.3f}"
    return f"{seconds:.2e}"


def fmt_mib(num_bytes: float | None) -> str:
    return "—" if num_bytes is None else f"{num_bytes / MIB:,.0f}"


def fmt_ratio(ratio: float | None) -> str:
    return "—" if ratio is None or not math.isfinite(ratio) else f"{ratio:.2f}×"


def fmt_cores(cores: float | None, digits: int = 1) -> str:
    """Cores kept busy by other processes (:class:`OtherCpuLoad`), "—" where unknown."""
    return "—" if cores is None else f"{cores:.{digits}f}"


def fmt_float(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "NaN"
    return f"{value:.1e}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; cells are converted with ``str``."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def bullet_section(title: str, items: Sequence[str]) -> list[str]:
    """Markdown lines of a ``## title`` section with one bullet per item, blank-line separated."""
    return [f"## {title}", "", *[f"- {item}" for item in items], ""]


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # NumPy arrays and scalars
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null (strings keep the information where it matters)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def write_results(
    stem: str, payload: dict[str, Any], markdown: str, out_dir: Path | None = None
) -> list[Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` atomically (via ``.tmp`` files); returns the two paths."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_nan_to_none(json.loads(json.dumps(payload, default=_json_default))), indent=2)
    paths = []
    for suffix, content in ((".json", text + "\n"), (".md", markdown.rstrip() + "\n")):
        path = out_dir / f"{stem}{suffix}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        tmp.replace(path)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------ command line


def benchmark_parser(
    description: str, quick_help: str, quick_flag: str = "--quick"
) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: ``--quick`` (``quick_help`` says what it
    shrinks; ``gpu_suite.py`` names it ``--dry-run`` because it also moves the run to the CPU) and ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(quick_flag, action="store_true", help=f"{quick_help}; writes nothing without --out")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results folder (default {RESULTS_DIR} for a full run; --quick writes nothing without it)",
    )
    return parser


def add_wait_idle(parser: argparse.ArgumentParser, full_s: float) -> None:
    """``--wait-idle S``: before each measurement wait up to S seconds for other processes to leave the CPU
    idle (:func:`wait_for_idle`); ``full_s`` for a full run, 0 with ``--quick``. Pass
    ``{"wait_idle": (full_s, 0.0)}`` to :func:`parse`."""
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=None,
        help=f"before each measurement wait up to this many seconds for an idle CPU (default {full_s:g}, quick 0)",
    )


def parse(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    defaults: Mapping[str, tuple[Any, Any]] | None = None,
) -> argparse.Namespace:
    """Parse ``argv``; an option left at None takes ``defaults[dest] = (full run, --quick)``."""
    args = parser.parse_args(argv)
    for key, (full, quick) in (defaults or {}).items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


def save(args: argparse.Namespace, stem: str, payload: dict[str, Any], markdown: str) -> list[Path]:
    """:func:`publish`'s writing alone (for a long run that saves what it has after every step): the paths
    written, none for a quick run without ``--out``."""
    out = args.out if args.out is not None else (None if args.quick else RESULTS_DIR)
    if out is None:
        return []
    return write_results(stem + ("_quick" if args.quick else ""), payload, markdown, out)


def publish(
    args: argparse.Namespace,
    stem: str,
    payload: dict[str, Any],
    markdown: str,
    *,
    plot: Callable[[Path], Any] | None = None,
    started: float | None = None,
) -> list[Path]:
    """Print ``markdown``, then write ``<stem>.{json,md}`` (``<stem>_quick`` for a quick run) and, with ``plot``,
    ``plot(<stem>.png)``, into ``--out`` or, for a full run, ``benchmarks/results/``. A quick run without
    ``--out`` writes nothing, so smoke tests never overwrite committed results. ``started`` (a
    ``time.perf_counter()`` value) adds the run's total time. Returns the paths written."""
    print()
    print(markdown)
    print()
    paths = save(args, stem, payload, markdown)
    if not paths:
        print("--quick without --out: nothing written")
    else:
        if plot is not None:
            paths.append(paths[0].with_suffix(".png"))
            plot(paths[-1])
        print("wrote " + ", ".join(str(p) for p in paths))
    if started is not None:
        print(f"total {time.perf_counter() - started:.0f} s")
    return paths


# ------------------------------------------------------------------------------------------ torchvision


def declare_torchvision_ops() -> None:
    """Let ``import torchvision`` (and timm, which imports it) work beside a CPU-only torch wheel: the same
    declaration the test suite makes in ``tests/conftest.py``, imported from there."""
    import importlib
    import sys

    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    importlib.import_module("tests.conftest")
