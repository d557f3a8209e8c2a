"""Outlier-weighed layerwise sparsity (OWL; Yin et al. 2023, Section 3).

Per block ``l``, the layerwise outlier distribution ``D_l`` is the fraction of the block's Wanda scores
``|W_ij| * ||X_j||_2`` (all its prunable layers together) that exceed ``M`` times their mean. Blocks with more
outliers are pruned less: the densities ``1 - S_l`` are ``D_l`` mapped linearly onto ``[0, 2 lambda]`` and
shifted so their mean is the target density, i.e. ``S_l = S - lambda * (2 (D_l - min D) / (max D - min D) - 1)``
plus the shift that makes ``mean_l S_l = S`` exactly (the authors' implementation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

OWL_THRESHOLD = 5.0
"""``M``: a score is an outlier above ``M`` times the block's mean score (the paper's choice for LLaMA)."""

OWL_LAMBDA = 0.08
"""``lambda``: block sparsities spread over ``[S - lambda, S + lambda]`` (the paper's choice for LLaMA)."""


def outlier_ratio(scores: Sequence[torch.Tensor], threshold: float = OWL_THRESHOLD) -> float:
    """``D``: the fraction of all entries of ``scores`` (one block's Wanda score matrices) above ``threshold``
    times their mean."""
    flat = torch.cat([s.reshape(-1).to(torch.float64) for s in scores])
    if flat.numel() == 0:
        raise ValueError("scores: a block without prunable weights has no outlier ratio")
    return float((flat > threshold * flat.mean()).sum()) / flat.numel()


def owl_sparsities(ratios: Sequence[float], target: float, spread: float = OWL_LAMBDA) -> list[float]:
    """Per-block sparsities from outlier ratios ``D_l``; their mean is ``target`` and ``max - min == 2 * spread``
    (0 when every ratio is equal).

    Raises ValueError naming ``owl_lambda`` when a sparsity would leave ``[0, 1)``.
    """
    if not ratios:
        raise ValueError("ratios: expected one outlier ratio per block, got none")
    if not (isinstance(spread, (int, float)) and math.isfinite(spread) and spread >= 0):
        raise ValueError(f"owl_lambda: expected a finite number >= 0, got {spread!r}")
    d = torch.tensor(list(ratios), dtype=torch.float64)
    width = float(d.max() - d.min())
    scaled = (d - d.min()) / width * (2 * spread) if width > 0 else torch.zeros_like(d)
    density = scaled - scaled.mean() + (1.0 - target)
    sparsity = (1.0 - density).tolist()
    if min(sparsity) < 0 or max(sparsity) >= 1:
        raise ValueError(
            f"owl_lambda: {spread} spreads the target {target} to block sparsities in "
            f"[{min(sparsity):.3f}, {max(sparsity):.3f}], outside [0, 1); use a smaller owl_lambda"
        )
    return sparsity


def owl_n_per_block(sparsities: Sequence[float], m: int) -> list[int]:
    """Mixed N:M for OWL: each block keeps ``n_l`` of every ``m`` weights, ``n_l`` the block density times ``m``
    rounded by largest remainder, so ``sum n_l = round(sum density_l * m)`` (mean preserved up to 1/m) and
    ``1 <= n_l <= m - 1``."""
    density = [(1.0 - s) * m for s in sparsities]
    floors = [min(max(math.floor(v), 1), m - 1) for v in density]
    budget = math.floor(sum(density) + 0.5) - sum(floors)
    order = sorted(range(len(density)), key=lambda i: (-(density[i] - floors[i]), i))
    for i in order:
        if budget <= 0:
            break
        if floors[i] < m - 1:
            floors[i] += 1
            budget -= 1
    return floors
