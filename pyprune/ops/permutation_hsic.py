"""Inner products with permuted Gram matrices, for permutation tests of CKA (kernel:
``csrc/cpu/permutation_hsic.cpp``, ``csrc/cuda/permutation_hsic.cu``)."""

from __future__ import annotations

import torch

from pyprune.ops import cuda
from pyprune.ops.backend import cpu_kernels, num_threads
from pyprune.ops.checks import check_permutation_arguments
from pyprune.ops.reference import permutation_hsic_reference
from pyprune.ops.spec import Call, OpSpec


def permutation_hsic(a: torch.Tensor, b: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """``out[s] = <A, P_s B P_s^T>_F = sum_ij A[i, j] B[p_s(i), p_s(j)]`` for S permutations at once.

    With ``A = HKH`` and ``B = HLH`` (centred Grams) this is the biased HSIC numerator after shuffling the
    samples of the second representation by ``p_s`` (``H`` commutes with permutations), so a permutation test
    of CKA costs ``O(S n^2)`` gathered multiply-adds instead of ``S`` new Gram matrices.

    Args:
        a: ``(n, n)`` symmetric float32/float64, rows contiguous; only its lower triangle is read.
        b: ``(n, n)`` symmetric, same dtype and device, rows contiguous, stored in full.
        permutations: int64 ``(S, n)``, contiguous, same device, each row a permutation of ``0..n-1``.

    Returns:
        float64 ``(S,)`` on the inputs' device.
    """
    return SPEC(a, b, permutations)


def _cpu(a: torch.Tensor, b: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    check_permutation_arguments(a, b, permutations)
    out = cpu_kernels().permutation_hsic(
        a.detach().numpy(), b.detach().numpy(), permutations.numpy(), num_threads()
    )
    return torch.from_numpy(out)


def _example(generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Call:
    """Two symmetric 29 x 29 matrices and 7 random permutations."""
    x, y = (torch.randn(29, 29, generator=generator, dtype=torch.float64) for _ in range(2))
    perms = torch.stack([torch.randperm(29, generator=generator) for _ in range(7)])
    return ((x + x.T).to(dtype).to(device), (y + y.T).to(dtype).to(device), perms.to(device)), {}


SPEC = OpSpec(
    name="permutation_hsic",
    check=check_permutation_arguments,
    cpu=_cpu,
    cuda=cuda.permutation_hsic_cuda,
    reference=permutation_hsic_reference,
    source="permutation_hsic",
    dtypes=(torch.float32, torch.float64),
    example=_example,
)
