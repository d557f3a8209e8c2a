"""Fused HSIC statistics of many Gram matrices (kernel: ``csrc/cpu/gram_hsic.cpp``, ``csrc/cuda/gram_hsic.cu``)."""

from __future__ import annotations

import torch

from pyprune.ops import cuda
from pyprune.ops.backend import cpu_kernels, num_threads
from pyprune.ops.checks import check_gram_hsic_arguments
from pyprune.ops.reference import gram_hsic_terms_reference
from pyprune.ops.spec import Call, OpSpec


def gram_hsic_terms(
    grams_a: list[torch.Tensor], grams_b: list[torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Everything biased HSIC, unbiased HSIC_1 and CKA need from symmetric Gram matrices, in one pass.

    Only the lower triangle (diagonal included) of each matrix is read.

    Args:
        grams_a: La tensors ``(n, n)``, float32 or float64, rows contiguous, all on one device.
        grams_b: Lb such tensors, or None to compare ``grams_a`` with itself (then only half the pairs are
            computed and the ``*_b`` results are the ``*_a`` ones).

    Returns:
        float64 tensors on the input device: ``cross`` ``(La, Lb)`` with ``<A_i, B_j>_F``; ``self_a`` ``(La,)``
        and ``self_b`` ``(Lb,)`` with ``<A_i, A_i>_F``; ``row_sums_a``/``diag_a`` ``(La, n)`` with ``A_i 1`` and
        ``diag(A_i)``; ``row_sums_b``/``diag_b`` ``(Lb, n)``.
    """
    return SPEC(grams_a, grams_b)


def _cpu(grams_a: list[torch.Tensor], grams_b: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    check_gram_hsic_arguments(grams_a, grams_b)
    arrays_b = None if grams_b is None else [g.detach().numpy() for g in grams_b]
    out = cpu_kernels().gram_hsic_terms([g.detach().numpy() for g in grams_a], arrays_b, num_threads())
    return {key: torch.from_numpy(value) for key, value in out.items()}


def _example(generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Call:
    """Two lists of Gram matrices, one of them row-strided (a view into a wider buffer)."""
    n = 37
    x = torch.randn(5, n, 11, generator=generator, dtype=torch.float64)
    grams = (x @ x.mT).to(dtype)
    wide = torch.zeros(n, n + 3, dtype=dtype)
    wide[:, :n] = grams[4]
    grams_a = [g.to(device) for g in grams[:3]]
    grams_b = [grams[3].to(device), wide.to(device)[:, :n]]
    return (grams_a, grams_b), {}


SPEC = OpSpec(
    name="gram_hsic_terms",
    check=check_gram_hsic_arguments,
    cpu=_cpu,
    cuda=cuda.gram_hsic_terms_cuda,
    reference=gram_hsic_terms_reference,
    source="gram_hsic",
    dtypes=(torch.float32, torch.float64),
    example=_example,
)
