"""What pyprune was built with and which implementation each kernel will use (``pyprune info``)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pyprune.ops import backend, cuda
from pyprune.ops.registry import OPS

#: ``pyprune.ops.linear_gram`` on CPU and on CUDA tensors: not an OpSpec, since it calls BLAS rather than a
#: kernel of its own; every other row of the table comes from :data:`pyprune.ops.registry.OPS`.
LINEAR_GRAM = ("BLAS syrk via SciPy (half a GEMM)", "torch.mm (cuBLAS)")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def info() -> dict[str, Any]:
    """Versions, compiled-module status, threads, CUDA/CuPy availability and the per-kernel dispatch table."""
    cpu = backend.cpu_kernels()
    cuda_ready = cuda.available()
    selected = backend.get_backend()
    rows = [("linear_gram", *LINEAR_GRAM), *((op.name, op.cpu_kernel, op.cuda_kernel) for op in OPS)]
    kernels = {
        name: {
            "cpu": cpu_impl if selected == "auto" and cpu is not None else "torch reference",
            "cuda": cuda_impl if selected == "auto" and cuda_ready else "torch reference",
        }
        for name, cpu_impl, cuda_impl in rows
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
