"""RBF kernel matrix from a linear Gram matrix (kernel: ``csrc/cpu/rbf_gram.cpp``, ``csrc/cuda/rbf_gram.cu``)."""

from __future__ import annotations

import math

import torch

from pyprune.ops import cuda
from pyprune.ops.backend import cpu_kernels, num_threads
from pyprune.ops.checks import check_rbf_gram_arguments
from pyprune.ops.reference import (
    RBF_MEDIAN_ZERO_MESSAGE,
    full_matrix_median,
    rbf_from_linear_gram_reference,
    strictly_lower,
    symmetric_distances,
)
from pyprune.ops.spec import Call, OpSpec

# Above this threshold u = 1 / (2 t^2) < 2^-10 and exp(-u d / m) keeps fewer than ~13 of float32's 24 bits of
# its distance from 1, the only part that survives centring: such kernels go through
# rbf_deviation_from_linear_gram instead.
WIDE_RBF_THRESHOLD = 2.0**4.5
# Below this u, expm1(-u r) / u equals its limit -r to float64 precision for any representable r.
_NEGLIGIBLE_U = 1e-250


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
    return SPEC(gram, threshold)


def _cpu(gram: torch.Tensor, threshold: float) -> float:
    check_rbf_gram_arguments(gram, threshold)
    return cpu_kernels().rbf_from_linear_gram(gram.detach().numpy(), float(threshold), num_threads())


def _example(generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Call:
    """A linear Gram matrix of 40 samples (an even count: the median is the mean of two middle values)."""
    x = torch.randn(40, 9, generator=generator, dtype=torch.float64)
    return ((x @ x.T).to(dtype).to(device), 0.8), {}


SPEC = OpSpec(
    name="rbf_from_linear_gram",
    check=check_rbf_gram_arguments,
    cpu=_cpu,
    cuda=cuda.rbf_from_linear_gram_cuda,
    reference=rbf_from_linear_gram_reference,
    source="rbf_gram",
    dtypes=(torch.float32, torch.float64),
    example=_example,
)


def rbf_deviation_from_linear_gram(gram: torch.Tensor, threshold: float) -> float:
    """In place: ``gram = X X^T`` becomes ``(K - 1) / u`` for the RBF kernel ``K`` of :func:`rbf_from_linear_gram`
    and ``u = 1 / (2 t^2)``, ``t = threshold``; returns ``log2(u)``.

    Centring removes constants and CKA ignores scale, so this matrix gives the CKA of ``K`` itself, but keeps
    its digits where ``K`` rounds to all ones: ``(K - 1) / u = expm1(-u d / m) / u`` tends to ``-d / m``
    (``d`` the squared distances, ``m`` their median) as ``t -> inf`` instead of to 0. The whole matrix is
    written (both triangles). Plain torch on any device, ``O(n^2)`` float64 temporaries.

    Raises:
        ValueError: if the median squared distance is 0 while some distances are not.
    """
    n = check_rbf_gram_arguments(gram, threshold)
    dist = symmetric_distances(gram)
    median = full_matrix_median(strictly_lower(dist), n)
    if median == 0.0 and bool(dist.any()):
        raise ValueError(RBF_MEDIAN_ZERO_MESSAGE)
    ratio = dist / median if median > 0.0 else dist
    log2_u = -1.0 - 2.0 * math.log2(threshold)
    u = 2.0**log2_u
    deviation = torch.expm1(-u * ratio) / u if u > _NEGLIGIBLE_U else -ratio
    gram.copy_(deviation)
    return log2_u
