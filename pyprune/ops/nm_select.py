"""Per-row lowest-k and N:M selection fused with Wanda scoring (kernels: ``csrc/cpu/nm_select.cpp``,
``csrc/cuda/nm_select.cu``; definition: :func:`pyprune.ops.reference.nm_select_reference`).

One pass over the weight computes ``|W_ij| * norms_j`` in float64 and marks the lowest scores of each row (or
of each group of ``m`` consecutive columns), without materialising a float64 score matrix or sorting whole rows
as ``torch.topk``/``torch.sort`` do. Ties go to the lowest column index in all three implementations, so the
masks are identical bit for bit. On CUDA, float32 subnormal weights count as zero (NVRTC compiles with
``-ftz=true``); the CPU kernel and the reference keep them.
"""

from __future__ import annotations

import numpy as np
import torch

from pyprune.ops import cuda
from pyprune.ops.backend import cpu_kernels, num_threads
from pyprune.ops.checks import check_nm_select_arguments
from pyprune.ops.reference import nm_select_reference
from pyprune.ops.spec import Call, OpSpec


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
    return SPEC(weight, norms, k=k, n_m=n_m)


def _kernel_operands(
    weight: torch.Tensor, norms: torch.Tensor | None, k: int | None, n_m: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor | None, int, int, int]:
    """Checked arguments as the kernels take them: ``(weight, norms, k, n, m)`` with a contiguous float32/float64
    weight (half types widen exactly to float32, so the kernels see the reference's scores), float64 norms or
    None, and ``k = 0`` for N:M or ``n = m = 0`` for lowest-k."""
    k, n_m = check_nm_select_arguments(weight, norms, k, n_m)
    work = weight.detach()
    if work.dtype in (torch.float16, torch.bfloat16):
        work = work.float()
    norm64 = None if norms is None else norms.detach().to(torch.float64).contiguous()
    n, m = (0, 0) if n_m is None else n_m
    return work.contiguous(), norm64, 0 if k is None else k, n, m


def _cpu(
    weight: torch.Tensor,
    norms: torch.Tensor | None = None,
    *,
    k: int | None = None,
    n_m: tuple[int, int] | None = None,
) -> torch.Tensor:
    work, norm64, k, n, m = _kernel_operands(weight, norms, k, n_m)
    if work.numel() == 0:
        return torch.zeros(work.shape, dtype=torch.bool)
    norm_array = None if norm64 is None else norm64.numpy()
    removed = cpu_kernels().nm_select(work.numpy(), norm_array, k, n, m, num_threads())
    return torch.from_numpy(removed.view(np.bool_))


def _cuda(
    weight: torch.Tensor,
    norms: torch.Tensor | None = None,
    *,
    k: int | None = None,
    n_m: tuple[int, int] | None = None,
) -> torch.Tensor:
    work, norm64, k, n, m = _kernel_operands(weight, norms, k, n_m)
    if work.numel() == 0:
        return torch.zeros(work.shape, dtype=torch.bool, device=work.device)
    return cuda.nm_select_cuda(work, norm64, k, n, m)


def _example(generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Call:
    """A 13 x 24 weight with Wanda norms; the 2:4 pattern (the lowest-k form is covered by the kernel tests)."""
    weight = torch.randn(13, 24, generator=generator, dtype=torch.float64).to(dtype)
    norms = torch.rand(24, generator=generator, dtype=torch.float64)
    return (weight.to(device), norms.to(device)), {"n_m": (2, 4)}


SPEC = OpSpec(
    name="nm_select",
    check=check_nm_select_arguments,
    cpu=_cpu,
    cuda=_cuda,
    reference=nm_select_reference,
    source="nm_select",
    dtypes=(torch.float32, torch.float64),
    example=_example,
)
