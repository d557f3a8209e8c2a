"""CKA-damage kernels: the greedy removal loop and the batched RBF candidate scan.

Kernels: ``csrc/cpu/cka_damage.cpp`` and ``csrc/cuda/cka_damage.cu``; references in
:mod:`pyprune.ops.reference` define what they compute. Both kernels are float64 only. Arguments are checked
by :func:`~pyprune.ops.checks.check_greedy_arguments` and
:func:`~pyprune.ops.checks.check_rbf_scan_arguments` on every backend, so each rejects the same inputs
with the same ``TypeError``/``ValueError``.
"""

from __future__ import annotations

import torch

from pyprune.ops import cuda
from pyprune.ops.backend import cpu_kernels, num_threads
from pyprune.ops.checks import check_greedy_arguments, check_rbf_scan_arguments
from pyprune.ops.reference import greedy_removal_order_reference, rbf_candidate_scan_reference
from pyprune.ops.spec import Call, OpSpec


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
    return GREEDY_SPEC(interaction, active)


def _greedy_cpu(
    interaction: torch.Tensor, active: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    check_greedy_arguments(interaction, active)
    active_array = None if active is None else active.detach().numpy()
    order, cka_after = cpu_kernels().greedy_removal_order(
        interaction.detach().numpy(), active_array, num_threads()
    )
    return torch.from_numpy(order), torch.from_numpy(cka_after)


def _greedy_example(generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Call:
    """The interaction matrix ``M[a, b] = <u_a, u_b>^2`` (PSD) of 23 neurons, 20 of them active. Small integer
    ``u``: every sum of ``M``'s entries is exact, so the scores differ by rounding only, never in the order."""
    u = torch.randint(-3, 4, (23, 6), generator=generator).to(torch.float64)
    active = torch.ones(23, dtype=torch.bool)
    active[[2, 11, 17]] = False
    return ((u @ u.T).square().to(device), active.to(device)), {}


GREEDY_SPEC = OpSpec(
    name="greedy_removal_order",
    check=check_greedy_arguments,
    cpu=_greedy_cpu,
    cuda=cuda.greedy_removal_order_cuda,
    reference=greedy_removal_order_reference,
    source="cka_damage",
    dtypes=(torch.float64,),
    example=_greedy_example,
)


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
    return SCAN_SPEC(distances_kept, values, candidates, inv_two_sigma_sq, target)


def _scan_cpu(
    distances_kept: torch.Tensor,
    values: torch.Tensor,
    candidates: torch.Tensor,
    inv_two_sigma_sq: torch.Tensor,
    target: torch.Tensor,
) -> dict[str, torch.Tensor]:
    check_rbf_scan_arguments(distances_kept, values, candidates, inv_two_sigma_sq, target)
    arrays = [t.detach().numpy() for t in (distances_kept, values, candidates, inv_two_sigma_sq, target)]
    out = cpu_kernels().rbf_candidate_scan(*arrays, num_threads())
    return {key: torch.from_numpy(value) for key, value in out.items()}


def _scan_example(generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Call:
    """A layer of 6 neurons with 3 features each on 33 samples; 5 candidates, one of them repeated."""
    values = torch.randn(6, 33, 3, generator=generator, dtype=torch.float64)
    flat = values.permute(1, 0, 2).reshape(33, -1)
    sq = flat.square().sum(1)
    distances = (sq[:, None] + sq[None, :] - 2 * flat @ flat.T).clamp_min(0)
    candidates = torch.tensor([0, 3, 5, 3, 1])
    inv_two_sigma_sq = 0.5 / (1 + torch.rand(5, generator=generator, dtype=torch.float64))
    t = torch.randn(33, 33, generator=generator, dtype=torch.float64)
    target = t + t.T
    args = (distances, values, candidates, inv_two_sigma_sq, target)
    return tuple(a.to(device) for a in args), {}


SCAN_SPEC = OpSpec(
    name="rbf_candidate_scan",
    check=check_rbf_scan_arguments,
    cpu=_scan_cpu,
    cuda=cuda.rbf_candidate_scan_cuda,
    reference=rbf_candidate_scan_reference,
    source="cka_damage",
    dtypes=(torch.float64,),
    example=_scan_example,
)
