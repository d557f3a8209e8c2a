"""CKA-damage kernels: the greedy removal loop and the batched RBF candidate scan.

Kernels: ``csrc/cpu/cka_damage.cpp`` and ``csrc/cuda/cka_damage.cu``; references in
:mod:`pyprune.ops.reference` define what they compute. Both kernels are float64 only. Arguments are checked
by :func:`~pyprune.ops.reference.check_greedy_arguments` and
:func:`~pyprune.ops.reference.check_rbf_scan_arguments` on every backend, so each rejects the same inputs
with the same ``TypeError``/``ValueError``.
"""

from __future__ import annotations

import torch

from pyprune.ops.backend import cpu_kernels, num_threads, use_kernel
from pyprune.ops.reference import (
    check_greedy_arguments,
    check_rbf_scan_arguments,
    greedy_removal_order_reference,
    rbf_candidate_scan_reference,
)


def greedy_removal_order(
    interaction: torch.Tensor, active: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy removal order and CKA trajectory; see :func:`~pyprune.ops.reference.greedy_removal_order_reference`.

    Args:
        interaction: ``(p, p)`` symmetric float64 tensor, contiguous.
        active: ``(p,)`` bool tensor on the same device, contiguous, or None (every neuron active).

    Returns:
        ``order`` int64 ``(n_active,)`` and ``cka_after`` float64 ``(n_active,)``, on the input device. Ties go to
        the lowest index on every backend.
    """
    check_greedy_arguments(interaction, active)
    impl = use_kernel(interaction.device)
    if impl == "cpu":
        active_array = None if active is None else active.detach().numpy()
        order, cka_after = cpu_kernels().greedy_removal_order(
            interaction.detach().numpy(), active_array, num_threads()
        )
        return torch.from_numpy(order), torch.from_numpy(cka_after)
    if impl == "cuda":
        from pyprune.ops.cuda import greedy_removal_order_cuda

        return greedy_removal_order_cuda(interaction, active)
    return greedy_removal_order_reference(interaction, active)


def rbf_candidate_scan(
    distances_kept: torch.Tensor,
    values: torch.Tensor,
    candidates: torch.Tensor,
    inv_two_sigma_sq: torch.Tensor,
    target: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Per-candidate RBF HSIC sums; see :func:`~pyprune.ops.reference.rbf_candidate_scan_reference`.

    Args:
        distances_kept: ``(n, n)`` float64, symmetric (the kernels read only its lower triangle).
        values: ``(p, n, T)`` float64.
        candidates: ``(m,)`` int64, each in ``[0, p)`` (repeats allowed).
        inv_two_sigma_sq: ``(m,)`` float64.
        target: ``(n, n)`` float64, symmetric (the kernels read only its lower triangle).

    All contiguous and on one device.

    Returns:
        float64 tensors ``(m,)`` on the input device: ``cross``, ``self_sq``, ``row_sq``, ``total``.
    """
    check_rbf_scan_arguments(distances_kept, values, candidates, inv_two_sigma_sq, target)
    impl = use_kernel(distances_kept.device)
    if impl == "cpu":
        arrays = [t.detach().numpy() for t in (distances_kept, values, candidates, inv_two_sigma_sq, target)]
        out = cpu_kernels().rbf_candidate_scan(*arrays, num_threads())
        return {key: torch.from_numpy(value) for key, value in out.items()}
    if impl == "cuda":
        from pyprune.ops.cuda import rbf_candidate_scan_cuda

        return rbf_candidate_scan_cuda(distances_kept, values, candidates, inv_two_sigma_sq, target)
    return rbf_candidate_scan_reference(distances_kept, values, candidates, inv_two_sigma_sq, target)
