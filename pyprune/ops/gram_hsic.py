"""Fused HSIC statistics of many Gram matrices (kernel: ``csrc/cpu/gram_hsic.cpp``, ``csrc/cuda/gram_hsic.cu``)."""

from __future__ import annotations

import torch

from pyprune.ops.backend import cpu_kernels, num_threads, use_kernel
from pyprune.ops.reference import gram_hsic_terms_reference


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
    impl = use_kernel(grams_a[0].device)
    if impl == "cpu":
        arrays_b = None if grams_b is None else [g.detach().numpy() for g in grams_b]
        out = cpu_kernels().gram_hsic_terms([g.detach().numpy() for g in grams_a], arrays_b, num_threads())
        return {key: torch.from_numpy(value) for key, value in out.items()}
    if impl == "cuda":
        from pyprune.ops.cuda import gram_hsic_terms_cuda

        return gram_hsic_terms_cuda(grams_a, grams_b)
    return gram_hsic_terms_reference(grams_a, grams_b)
