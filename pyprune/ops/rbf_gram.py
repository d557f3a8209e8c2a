"""RBF kernel matrix from a linear Gram matrix (kernel: ``csrc/cpu/rbf_gram.cpp``, ``csrc/cuda/rbf_gram.cu``)."""

from __future__ import annotations

import torch

from pyprune.backend import cpu_kernels, num_threads, use_kernel
from pyprune.ops.reference import rbf_from_linear_gram_reference


def rbf_from_linear_gram(gram: torch.Tensor, threshold: float) -> float:
    """Turn the lower triangle of ``gram = X X^T`` into the RBF kernel, in place.

    ``K_ab = exp(-|x_a - x_b|^2 / (2 t^2 m))`` where ``t = threshold`` and ``m`` is the median of all ``n^2``
    squared distances, zero diagonal included (Kornblith et al. 2019; the bandwidth is ``t`` times the median
    distance). A constant representation gives the all-ones matrix.

    Args:
        gram: ``(n, n)`` float32/float64 tensor, rows contiguous; only its lower triangle is read and written.
        threshold: ``t > 0``.

    Returns:
        The median squared distance ``m``.

    Raises:
        ValueError: if ``m`` is 0 while some distances are not (more than half the samples coincide).
    """
    impl = use_kernel(gram.device)
    if impl == "cpu":
        return cpu_kernels().rbf_from_linear_gram(gram.detach().numpy(), float(threshold), num_threads())
    if impl == "cuda":
        from pyprune._cuda import rbf_from_linear_gram_cuda

        return rbf_from_linear_gram_cuda(gram, threshold)
    return rbf_from_linear_gram_reference(gram, threshold)
