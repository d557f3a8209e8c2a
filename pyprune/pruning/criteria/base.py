"""What a pruning criterion is: an object that scores the weights or the output channels of one layer.

A criterion only scores; it never decides how many go or touches the model (that is the planner's job, see
:mod:`pyprune.pruning.selection`). Higher scores mean *more important*: the lowest-scoring weights or channels are
removed first, ties broken by index.

Two granularities:

* :class:`WeightCriterion` returns one score per weight, shaped like ``module.weight``.
* :class:`ChannelCriterion` returns one score per output channel (conv filter, row of a Linear), shape ``(C_out,)``.

Scores are computed from the *effective* weight ``module.weight``, so a layer that already carries a
``torch.nn.utils.prune`` mask is scored with its masked weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from pyprune.pruning.attention import UnitSpec

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Criterion:
    """Base class of all criteria. Subclasses set :attr:`name` and :attr:`granularity`."""

    name: ClassVar[str]
    granularity: ClassVar[Literal["weight", "channel"]]
    #: True when scores come from data (hooks, a data pass) rather than from the weights alone.
    needs_data: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WeightCriterion(Criterion):
    granularity = "weight"

    def scores(self, module: nn.Module, name: str) -> torch.Tensor:
        """Importance of every weight of ``module`` (named ``name`` in the model); shaped like its weight."""
        raise NotImplementedError


class ChannelCriterion(Criterion):
    granularity = "channel"

    def scores(
        self, module: nn.Module, name: str, dropped_inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Importance of every output channel of ``module``: float tensor ``(C_out,)``.

        Args:
            module: a Linear or ConvNd layer.
            name: its qualified name in the model (criteria that accumulate data key their state by it).
            dropped_inputs: optional int64 indices into the flattened input dimension of ``module.weight``
                (dim 1) that earlier layers already remove; Li et al.'s "greedy" mode ignores those kernels.
        """
        raise NotImplementedError

    def unit_scores(self, spec: UnitSpec) -> torch.Tensor | None:
        """Importance of the attention heads (or MLP units) ``spec`` describes, measured on the units themselves:
        float tensor ``(spec.num_units,)``; or None (the default) when the criterion scores them through their
        projections' rows, which :func:`pyprune.pruning.attention.unit_scores` then reduces per unit."""
        return None
