"""What pyprune was built with and which implementation each kernel will use (``pyprune info``)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pyprune.ops import backend

# name -> (what runs on CPU with the compiled module, what runs on CUDA with CuPy)
KERNELS: dict[str, tuple[str, str]] = {
    "linear_gram": ("BLAS syrk via SciPy (half a GEMM)", "torch.mm (cuBLAS)"),
    "gram_hsic_terms": ("C++ csrc/cpu/gram_hsic.cpp", "CUDA csrc/cuda/gram_hsic.cu"),
    "rbf_from_linear_gram": ("C++ csrc/cpu/rbf_gram.cpp", "CUDA csrc/cuda/rbf_gram.cu"),
    "greedy_removal_order": ("C++ csrc/cpu/cka_damage.cpp", "CUDA csrc/cuda/cka_damage.cu"),
    "rbf_candidate_scan": ("C++ csrc/cpu/cka_damage.cpp", "CUDA csrc/cuda/cka_damage.cu"),
    "sensitivity_update": ("C++ csrc/cpu/sensitivity.cpp", "CUDA csrc/cuda/sensitivity.cu"),
    "nm_select": ("C++ csrc/cpu/nm_select.cpp", "CUDA csrc/cuda/nm_select.cu"),
    "permutation_hsic": ("C++ csrc/cpu/permutation_hsic.cpp", "CUDA csrc/cuda/permutation_hsic.cu"),
}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def info() -> dict[str, Any]:
    """Versions, compiled-module status, threads, CUDA/CuPy availability and the per-kernel dispatch table."""
    from pyprune.ops import cuda

    cpu = backend.cpu_kernels()
    cuda_ready = cuda.available()
    selected = backend.get_backend()
    kernels = {}
    for name, (cpu_impl, cuda_impl) in KERNELS.items():
        kernels[name] = {
            "cpu": cpu_impl if selected == "auto" and cpu is not None else "torch reference",
            "cuda": cuda_impl if selected == "auto" and cuda_ready else "torch reference",
        }
    return {
        "pyprune": _version("pyprune"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "scipy": _version("scipy"),
        "backend": selected,
        "cpu_kernels_loaded": cpu is not None,
        "cpu_kernels_error": backend.cpu_import_error(),
        "cpu_kernels_path": getattr(cpu, "__file__", None),
        "threads": backend.num_threads(),
        "torch_cuda_available": torch.cuda.is_available(),
        "cupy": _version("cupy-cuda12x") or _version("cupy-cuda13x") or _version("cupy"),
        "cuda_kernels_available": cuda_ready,
        "cuda_kernels_reason": None if cuda_ready else cuda.unavailable_reason(),
        "cupy_kernel_cache": os.environ.get("CUPY_CACHE_DIR", str(Path.home() / ".cupy" / "kernel_cache")),
        "kernels": kernels,
    }


def format_info(details: dict[str, Any] | None = None) -> str:
    """Human-readable form of :func:`info`."""
    d = info() if details is None else details
    lines = [
        f"pyprune {d['pyprune']}  (python {d['python']}, torch {d['torch']}, numpy {d['numpy']}, scipy {d['scipy']})",
        f"platform          {d['platform']}",
        f"backend           {d['backend']}  (set with pyprune.set_backend or PYPRUNE_BACKEND)",
        f"C++ kernels       {'loaded from ' + str(d['cpu_kernels_path']) if d['cpu_kernels_loaded'] else 'NOT loaded: ' + str(d['cpu_kernels_error'])}",
        f"CPU threads       {d['threads']}  (torch.get_num_threads(); governs the C++ kernels too)",
        f"torch CUDA        {'available' if d['torch_cuda_available'] else 'not available'}",
        f"CuPy              {d['cupy'] or 'not installed'}",
        f"CUDA kernels      {'available' if d['cuda_kernels_available'] else 'unavailable: ' + str(d['cuda_kernels_reason'])}",
        f"CuPy kernel cache {d['cupy_kernel_cache']}",
        "",
        f"{'kernel':<22} {'on CPU tensors':<36} on CUDA tensors",
    ]
    for name, impl in d["kernels"].items():
        lines.append(f"{name:<22} {impl['cpu']:<36} {impl['cuda']}")
    return "\n".join(lines)
