"""Per-row lowest-k and N:M selection fused with Wanda scoring (kernels: ``csrc/cpu/nm_select.cpp``,
``csrc/cuda/nm_select.cu``; definition: :func:`pyprune.ops.reference.nm_select_reference`).

One pass over the weight computes ``|W_ij| * norms_j`` in float64 and marks the lowest scores of each row (or
of each group of ``m`` consecutive columns), without materialising a float64 score matrix or sorting whole rows
as ``torch.topk``/``torch.sort`` do. Ties go to the lowest column index in all three implementations, so the
masks are identical bit for bit. On CUDA, float32 subnormal weights count as zero (NVRTC compiles with
``-ftz=true``); the CPU kernel and the reference keep them.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from pyprune.ops.backend import cpu_kernels, num_threads, use_kernel
from pyprune.ops.reference import nm_select_reference

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_nm_select_arguments(
    weight: torch.Tensor, norms: torch.Tensor | None, k: int | None, n_m: tuple[int, int] | None
) -> tuple[int | None, tuple[int, int] | None]:
    """Validate :func:`nm_select`'s arguments; returns ``(k, n_m)`` as Python ints. Raises TypeError/ValueError."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype not in _FLOATS:
        raise TypeError(f"weight: expected a floating dtype {[str(d) for d in _FLOATS]}, got {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D (rows, cols) matrix, got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight: contains NaN or inf")
    cols = weight.shape[1]
    if norms is not None:
        if not isinstance(norms, torch.Tensor):
            raise TypeError(f"norms: expected a torch.Tensor or None, got {type(norms).__name__}")
        if norms.dtype not in _FLOATS:
            raise TypeError(f"norms: expected a floating dtype, got {norms.dtype}")
        if tuple(norms.shape) != (cols,):
            raise ValueError(
                f"norms: expected shape ({cols},) (one per weight column), got {tuple(norms.shape)}"
            )
        if norms.device != weight.device:
            raise ValueError(f"norms: expected a tensor on {weight.device}, got one on {norms.device}")
        if not torch.isfinite(norms).all() or bool((norms < 0).any()):
            raise ValueError("norms: expected finite, non-negative input-feature norms")
    if (k is None) == (n_m is None):
        raise ValueError(f"k, n_m: pass exactly one of them, got k={k!r}, n_m={n_m!r}")
    if k is not None:
        try:
            k = operator.index(k)
        except TypeError:
            raise TypeError(f"k: expected an int, got {type(k).__name__}") from None
        if not 0 <= k <= cols:
            raise ValueError(f"k: expected 0 <= k <= {cols} (the number of columns), got {k}")
        return k, None
    n, m = check_n_m(n_m)
    if cols % m:
        raise ValueError(f"n_m: {cols} columns do not split into groups of m={m}")
    return None, (n, m)


def check_n_m(n_m: object) -> tuple[int, int]:
    """``n_m`` as a pair of ints ``(n, m)`` with ``0 < n < m``; TypeError/ValueError otherwise."""
    try:
        n, m = (operator.index(v) for v in n_m)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"n_m: expected a pair of ints (n, m) such as (2, 4), got {n_m!r}") from None
    if not 0 < n < m:
        raise ValueError(f"n_m: expected 0 < n < m (keep n of every m weights), got ({n}, {m})")
    return n, m


def nm_select(
    weight: torch.Tensor,
    norms: torch.Tensor | None = None,
    *,
    k: int | None = None,
    n_m: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The weights a per-row Wanda (``norms`` given) or magnitude (``norms=None``) selection removes.

    Args:
        weight: ``(rows, cols)``, float16/bfloat16/float32/float64, finite; any strides.
        norms: ``(cols,)`` non-negative input-feature norms ``||X_j||_2`` on the weight's device, or None.
        k: remove the ``k`` lowest scores of every row (unstructured, Wanda's per-output comparison group); or
        n_m: ``(n, m)``: keep ``n`` of every ``m`` consecutive columns of each row (``cols % m == 0``).

    Returns:
        bool ``(rows, cols)`` on the weight's device, True where removed; equal scores remove the lowest column
        first. See :func:`pyprune.ops.reference.nm_select_reference` for the exact definition.
    """
    k, n_m = check_nm_select_arguments(weight, norms, k, n_m)
    impl = use_kernel(weight.device)
    if impl == "reference" or weight.numel() == 0:
        return nm_select_reference(weight, norms, k=k, n_m=n_m)
    # Half types widen exactly to float32, so the kernels see the same scores as the reference.
    work = weight.detach()
    if work.dtype in (torch.float16, torch.bfloat16):
        work = work.float()
    work = work.contiguous()
    norm64 = None if norms is None else norms.detach().to(torch.float64).contiguous()
    n, m = (0, 0) if n_m is None else n_m
    if impl == "cuda":
        return _nm_select_cuda(work, norm64, 0 if k is None else k, n, m)
    removed = cpu_kernels().nm_select(
        work.numpy(), None if norm64 is None else norm64.numpy(), 0 if k is None else k, n, m, num_threads()
    )
    return torch.from_numpy(removed.view(np.bool_))


def _nm_select_cuda(weight: torch.Tensor, norms: torch.Tensor | None, k: int, n: int, m: int) -> torch.Tensor:
    from pyprune.ops import cuda

    threads = cuda.LAUNCH_CONSTANTS["PP_THREADS"]  # the kernels' NM_THREADS
    rows, cols = weight.shape
    removed = torch.zeros((rows, cols), dtype=torch.uint8, device=weight.device)
    suffix = "f64" if weight.dtype == torch.float64 else "f32"
    ones = norms if norms is not None else torch.ones(cols, dtype=torch.float64, device=weight.device)
    with cuda._OnTorchStream(weight.device) as cupy:
        args = [cupy.from_dlpack(weight), cupy.from_dlpack(ones), np.int64(rows), np.int64(cols)]
        if m:
            groups = rows * (cols // m)
            kernel = cuda.module("nm_select").get_function(f"nm_select_groups_{suffix}")
            blocks = max(1, min(65535, (groups + threads - 1) // threads))
            kernel((blocks,), (threads,), (*args, np.int64(n), np.int64(m), cupy.from_dlpack(removed)))
        elif k:
            kernel = cuda.module("nm_select").get_function(f"nm_select_rows_{suffix}")
            kernel((max(1, min(rows, 65535)),), (threads,), (*args, np.int64(k), cupy.from_dlpack(removed)))
    return removed.bool()
