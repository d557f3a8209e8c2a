"""Criteria that read the weights alone: magnitude, filter norms and the random baselines.

Scores are computed from the *effective* weight ``module.weight``, so a layer that already carries a
``torch.nn.utils.prune`` mask is scored with its masked weights.
"""

from __future__ import annotations

import zlib
from typing import Literal

import torch
from torch import nn

from pyprune.pruning.criteria.base import ChannelCriterion, WeightCriterion


class Magnitude(WeightCriterion):
    """``|w|``: magnitude pruning (Han et al. 2015 per layer, IMP when ranked globally)."""

    name = "magnitude"

    def scores(self, module: nn.Module, name: str) -> torch.Tensor:
        return module.weight.detach().abs()


class RandomWeights(WeightCriterion):
    """Uniform random scores: the random baseline. Reproducible from ``seed`` and the layer's name."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def scores(self, module: nn.Module, name: str) -> torch.Tensor:
        weight = module.weight
        generator = torch.Generator().manual_seed(_layer_seed(self.seed, name))
        return torch.rand(weight.shape, generator=generator, dtype=torch.float64).to(weight.device)

    def __repr__(self) -> str:
        return f"RandomWeights(seed={self.seed})"


class FilterNorm(ChannelCriterion):
    """Lp norm of each output channel's incoming weights (over input channels and kernel taps).

    ``p=1`` is Li et al.'s filter L1 norm; ``p=2`` is the unit L2 norm of unit pruning (a PyTorch row of a Linear).
    """

    def __init__(self, p: Literal[1, 2] = 1) -> None:
        if p not in (1, 2):
            raise ValueError(f"p: expected 1 or 2, got {p!r}")
        self.p = p

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"l{self.p}_norm"

    def scores(
        self, module: nn.Module, name: str, dropped_inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        weight = module.weight.detach()
        if dropped_inputs is not None and dropped_inputs.numel():
            weight = weight.clone()
            weight[:, dropped_inputs] = 0
        return torch.linalg.vector_norm(weight.flatten(1).double(), ord=self.p, dim=1)

    def __repr__(self) -> str:
        return f"FilterNorm(p={self.p})"


class RandomChannels(ChannelCriterion):
    """Uniform random channel scores: the structured random baseline."""

    name = "random_channels"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def scores(
        self, module: nn.Module, name: str, dropped_inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_layer_seed(self.seed, name))
        return torch.rand(module.weight.shape[0], generator=generator, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"RandomChannels(seed={self.seed})"


def _layer_seed(seed: int, name: str) -> int:
    # Python's hash() of a str changes between processes; crc32 does not.
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)
