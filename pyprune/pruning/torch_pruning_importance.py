"""A pyprune channel criterion as a Torch-Pruning importance, for Torch-Pruning's own pruners.

Kept apart from :mod:`pyprune.pruning.groups` because the class derives from Torch-Pruning's: importing this module
imports Torch-Pruning, which the rest of pyprune loads only when it first traces a model.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from pyprune.pruning.criteria.base import ChannelCriterion
from pyprune.pruning.groups import GroupReduction, group_reducer, group_scores


class TorchPruningImportance(tp.importance.Importance):
    """A pyprune channel criterion as a Torch-Pruning importance, for Torch-Pruning's own pruners.

    Example:
        >>> imp = TorchPruningImportance(pyprune.FilterNorm(p=1), model)
        >>> pruner = tp.pruner.MetaPruner(model, example_inputs, importance=imp, pruning_ratio=0.5)

    ``model`` is needed once, to know the layers' names (data-driven criteria such as Taylor key their
    statistics by name).
    """

    def __init__(
        self, criterion: ChannelCriterion, model: nn.Module, group_reduction: GroupReduction = "mean"
    ):
        if not isinstance(criterion, ChannelCriterion):
            raise TypeError(f"criterion: expected a ChannelCriterion, got {type(criterion).__name__}")
        group_reducer(group_reduction)
        self.criterion = criterion
        self.group_reduction = group_reduction
        self._names = {module: name for name, module in model.named_modules()}

    @torch.no_grad()
    def __call__(self, group: tp.Group) -> torch.Tensor:
        return group_scores(group, self.criterion, self._names, self.group_reduction).float()
