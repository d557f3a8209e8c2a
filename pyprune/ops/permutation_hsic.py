"""Inner products with permuted Gram matrices, for permutation tests of CKA (kernel:
``csrc/cpu/permutation_hsic.cpp``, ``csrc/cuda/permutation_hsic.cu``)."""

from __future__ import annotations

import torch

from pyprune.ops.backend import cpu_kernels, num_threads, use_kernel
from pyprune.ops.reference import check_permutation_arguments, permutation_hsic_reference


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
    check_permutation_arguments(a, b, permutations)
    impl = use_kernel(a.device)
    if impl == "cpu":
        out = cpu_kernels().permutation_hsic(
            a.detach().numpy(), b.detach().numpy(), permutations.numpy(), num_threads()
        )
        return torch.from_numpy(out)
    if impl == "cuda":
        from pyprune.ops.cuda import permutation_hsic_cuda

        return permutation_hsic_cuda(a, b, permutations)
    return permutation_hsic_reference(a, b, permutations)
