"""PFP, Provable Filter Pruning (Liebenwein et al., ICLR 2020): filters kept by how much their
maps ever contribute to the next layer, with a sampling-bound budget allocation across layers.

PFP works in "in-mode": every compressible layer ``l`` (Linear or Conv2d) rates its *input channels* ``c`` by the
saliency ``s_c`` (:meth:`SensitivityTracker.channel_sensitivity`: max over the data, output units, kernel taps
and positions of the relative contribution of ``c`` to a pre-activation). Keeping ``k_l`` input channels of ``l``
means keeping those output channels of the layers that produce them. Three steps, kept apart:

1. **Units** (:func:`pfp_network`): Torch-Pruning's dependency graph says which output channel of which
   dependency group feeds which input columns of which layer. A *unit* of layer ``l`` is one channel of a group
   that ``l`` reads; its saliency is the max of ``s`` over the columns it feeds (one column after a conv, the
   ``H*W`` block of a channel after a flatten, like kernel taps). Inputs no group produces (the image channels
   of the first layer, the outputs of ignored layers) are never pruned by default. With
   ``prune_inputs=True`` (the convention of the authors' torchprune code, which prunes the input features of
   every layer, the first one's included, Liebenwein et al. 2020) every input column of a layer that reads the
   model's input directly (the image channels of the first conv, the pixels of an MLP's first Linear) is a unit
   too, with saliency ``s_c``, allocated and selected like the others. The model's input cannot shrink, so a
   dropped input feature becomes a zero column ``W_l[:, c]`` (in ``plan.rescale``); the allocator counts it as
   removed, and ``count(...).params`` of ``mode="remove"`` still counts it (``nonzero_params`` does not).
2. **PFPAllocation** (:class:`PFPAllocator`): per layer ``S_l = sum s``, ``p = s / S_l``,
   ``a_l = alpha(P_l, kappa_l, c, delta) * S_l``; one error ``eps`` for all layers gives ``m_l(eps)`` draws,
   ``in_l = min(units, expected distinct units)`` (at least 1) and a weight count ``sum_l in_l * out_l * kappa_l``;
   ``eps`` is bisected in log space until the count meets the budget.
3. **Selection** (:func:`select_channels`): the top-``k_l`` units (``"det"``), importance sampling with
   reweighting (``"rand"``), or the partially derandomised mix (``"top"``).

A channel of a group is removed only if *every* layer reading it dropped it: on a residual stream
one reader keeping a channel keeps it for all, and the readers that dropped it get zero columns for it (the
original zeroes ``W_l[:, c]`` of every dropped input channel). Removal goes through
:func:`~pyprune.pruning.selection.plan_structured`; reweighting and zeroed columns go in ``plan.rescale``.

``amount`` is the fraction of *all* parameters to remove, measured on the pruned model (``count(...).params``;
nonzero parameters with ``mode="mask"``). The allocator's weight count is only an estimate (biases,
BatchNorm, residual unions), so an outer root search on the nominal keep ratio, as in torchprune, repeats the
allocation until the measured ratio is within 0.5% of the target, or takes the closest one tried.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
import torch_pruning as tp
from scipy.optimize import brentq
from torch import nn

from pyprune.distributed import rank_identical_generator
from pyprune.measure import count
from pyprune.pruning.apply import describe_input
from pyprune.pruning.attention import find_units, projection_names
from pyprune.pruning.criteria.base import PRUNABLE_TYPES, ChannelCriterion
from pyprune.pruning.criteria.provable.bounds import (
    adapt_sample_size,
    alpha,
    expected_distinct,
    sample_complexity,
    sensitivity_set_size,
)
from pyprune.pruning.criteria.provable.sipp import SmallSensitivitySetWarning, sensitivity_layers
from pyprune.pruning.criteria.provable.tracker import SensitivityTracker
from pyprune.pruning.groups import build_dependency_graph, prunable_groups
from pyprune.pruning.layers import output_layer_name, resolve_layer_refs, select_layers
from pyprune.pruning.plan import ApplyMode, PruningPlan
from pyprune.pruning.selection import check_amount, measure_plan, plan_structured

Variant = Literal["det", "rand", "top"]
VARIANTS = ("det", "rand", "top")

EPSILON_RANGE = (1e-300, 1e150)
"""Search interval of the global error ``eps`` (the originals' bisection bracket)."""

KEEP_RATIO_TOLERANCE = 0.005
"""The outer search stops when the measured keep ratio is within this fraction of the target (torchprune)."""

MAX_TRIALS = 20
"""Iterations of the outer root search on the nominal keep ratio (torchprune)."""

_FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
# Bisection on log(eps) stops when the bracket is this narrow (about 50 halvings of [log 1e-300, log 1e150]).
_LOG_TOLERANCE = 1e-12


class KeepRatioMissedWarning(UserWarning):
    """PFP cannot reach the requested amount: every allocation it can make keeps more (or less) than asked."""


@dataclass(frozen=True)
class PFPGroup:
    """One Torch-Pruning dependency group, as PFP needs it.

    Attributes:
        root: name of the group's root layer (the key :func:`plan_structured` uses).
        size: ``C``, output channels of the root.
        writers: ``(layer, own channel indices, root channel indices)`` of every Linear/ConvNd whose *output*
            channels the group prunes (the root, residual partners).
        readers: ``(layer, input column indices, root channel indices)`` of every Linear/ConvNd whose *input*
            columns the group prunes (dim 1 of its weight; a flatten maps one root channel to a block).
    """

    root: str
    size: int
    writers: tuple[tuple[str, torch.Tensor, torch.Tensor], ...]
    readers: tuple[tuple[str, torch.Tensor, torch.Tensor], ...]


@dataclass(frozen=True)
class PFPLayer:
    """One compressible layer as a reader of its producers' channels.

    Attributes:
        name: the layer's qualified name.
        sensitivity: ``(units,)`` float64 saliencies in [0, 1], one per prunable input unit.
        sources: ``(group root, root channel)`` of every unit; ``(None, column)`` for a column fed by the model's
            input (``prune_inputs=True`` only), which no removal can take away.
        columns: input column indices (dim 1 of the weight) fed by every unit.
        in_columns: ``C_in``, dim 1 of the weight.
        out_channels: ``F``, dim 0 of the weight.
        kappa: kernel taps ``kh * kw`` (1 for a Linear).
        patches: ``P``, output positions per sample (1 for a Linear).
        sole_reader: the layer whose kept units bound this layer's kept outputs in the size estimate: set when
            this layer's output group is read by that one tracked layer only, and it reads nothing else.
            ``None`` when the group has several readers (residual streams) or none, or this
            layer's outputs are not pruned (the classifier).
    """

    name: str
    sensitivity: torch.Tensor
    sources: tuple[tuple[str, int], ...]
    columns: tuple[torch.Tensor, ...]
    in_columns: int
    out_channels: int
    kappa: int
    patches: int
    sole_reader: str | None = None

    @property
    def units(self) -> int:
        return int(self.sensitivity.numel())

    @property
    def fixed_columns(self) -> int:
        """Input columns that belong to no unit (never pruned)."""
        return self.in_columns - sum(int(c.numel()) for c in self.columns)

    @property
    def unit_width(self) -> float:
        """Mean input columns per unit (1 after a conv, ``H*W`` after a flatten)."""
        return (self.in_columns - self.fixed_columns) / self.units if self.units else 0.0

    @property
    def total_sensitivity(self) -> float:
        """``S_l = sum_c s_c``."""
        return float(self.sensitivity.sum())

    @property
    def probabilities(self) -> torch.Tensor:
        """``p = s / S_l`` (all zeros when every unit is dead)."""
        total = self.total_sensitivity
        return self.sensitivity / total if total > 0 else torch.zeros_like(self.sensitivity)

    def coefficient(self, c: float = 3.0, delta: float = 1e-16) -> float:
        """``a_l = alpha(P, kappa', c, delta) * S_l`` with ``kappa' = kappa * unit_width``: a unit spanning a
        flatten block enters like the taps of a kernel (fc1 of LeNet-5 reads 16 units of 5x5 columns)."""
        return alpha(self.patches, self.kappa * max(self.unit_width, 1.0), c, delta) * self.total_sensitivity

    def weights_per_output(self, kept_units: float) -> float:
        """Weights of one output channel when ``kept_units`` units are kept."""
        return (self.fixed_columns + kept_units * self.unit_width) * self.kappa


@dataclass(frozen=True)
class PFPAllocation:
    """The result of :meth:`PFPAllocator.solve`.

    Attributes:
        epsilon: the global error ``eps*``.
        inputs: layer name -> ``k_l``, units kept (layers with units only).
        size: estimated weights of the compressible layers at ``eps*``.
        budget: the weight budget asked for.
    """

    epsilon: float
    inputs: dict[str, int]
    size: float
    budget: float


class PFPAllocator:
    """PFP's budget allocation across layers: one global ``eps`` for all layers.

    Args:
        layers: the network's layers (:attr:`PFPNetwork.layers`).
        c, delta: the constant ``C`` and failure probability of the sampling bound.
    """

    def __init__(self, layers: Sequence[PFPLayer], c: float = 3.0, delta: float = 1e-16) -> None:
        self.layers = list(layers)
        self.c = c
        self.delta = delta
        allocated = [layer for layer in self.layers if layer.units]
        self._probabilities = {layer.name: layer.probabilities for layer in allocated}
        self._coefficients = {layer.name: layer.coefficient(c, delta) for layer in allocated}
        # size() runs some fifty times per solve and solve() once per outer trial: keep the per-layer constants,
        # the distinct-unit counts per number of draws and the inputs per eps (bisection paths repeat).
        self._fixed = [layer.weights_per_output(0) for layer in self.layers]
        self._per_unit = [layer.unit_width * layer.kappa for layer in self.layers]
        self._distinct: dict[str, dict[int, int]] = {layer.name: {} for layer in allocated}
        self._inputs: dict[float, dict[str, int]] = {}

    def draws(self, epsilon: float) -> dict[str, int]:
        """``m_l(eps)``, the sample complexity of every layer with units."""
        # sample_complexity guards the eps^2 underflow and caps the draws (bounds.MAX_DRAWS).
        return {name: sample_complexity(epsilon, a) for name, a in self._coefficients.items()}

    def inputs(self, epsilon: float) -> dict[str, int]:
        """``in_l(eps) = min(units, max(1, ceil(sum_c 1 - (1 - p_c)^m_l)))`` for every layer with units."""
        if epsilon not in self._inputs:
            inputs = {}
            for name, draws in self.draws(epsilon).items():
                known = self._distinct[name]
                if draws not in known:
                    known[draws] = expected_distinct(self._probabilities[name], draws)
                inputs[name] = min(self._probabilities[name].numel(), max(1, known[draws]))
            self._inputs[epsilon] = inputs
        return dict(self._inputs[epsilon])

    def size(self, epsilon: float) -> float:
        """Estimated weights ``sum_l in_l * out_l * kappa_l``, with ``out_l = min(F_l, in_reader)`` for a layer
        read by one layer and ``F_l`` otherwise. Non-increasing in ``eps``."""
        return self._size(self.inputs(epsilon))

    def full_size(self) -> int:
        """Weights of all compressible layers (the size with every unit kept)."""
        return sum(layer.out_channels * layer.in_columns * layer.kappa for layer in self.layers)

    def _size(self, inputs: dict[str, int]) -> float:
        total = 0.0
        for layer, fixed, per_unit in zip(self.layers, self._fixed, self._per_unit, strict=True):
            out = layer.out_channels
            if layer.sole_reader is not None:
                out = min(out, inputs[layer.sole_reader])
            total += (fixed + per_unit * inputs.get(layer.name, 0)) * out
        return total

    def solve(self, budget: float) -> PFPAllocation:
        """The smallest ``eps`` in :data:`EPSILON_RANGE` whose size fits ``budget`` (the largest network that does),
        by bisection on ``log eps``; if even the largest ``eps`` (one unit per layer) does not fit, that one."""
        low, high = (math.log(e) for e in EPSILON_RANGE)
        if self.size(math.exp(low)) <= budget:
            high = low
        elif self.size(math.exp(high)) <= budget:
            # Invariant: size(exp(low)) > budget >= size(exp(high)).
            while high - low > _LOG_TOLERANCE:
                middle = 0.5 * (low + high)
                if self.size(math.exp(middle)) <= budget:
                    high = middle
                else:
                    low = middle
        epsilon = math.exp(high)
        inputs = self.inputs(epsilon)
        return PFPAllocation(epsilon, inputs, self._size(inputs), float(budget))


@dataclass
class PFPNetwork:
    """Everything PFP reads from a model: units, groups and sensitivity statistics (see :func:`pfp_network`).

    Attributes:
        layers: every tracked Linear/Conv2d in ``named_modules()`` order.
        groups: the dependency groups whose channels can go.
        closed: roots of the groups whose readers are all tracked layers: only these can lose channels (a
            group read by another kind of layer, or by none, keeps all).
        samples: examples the sensitivities were taken over.
        samples_needed: ``|S|`` that the bound asks for (:func:`sensitivity_set_size`).
    """

    layers: list[PFPLayer]
    groups: list[PFPGroup]
    closed: set[str]
    samples: int
    samples_needed: int

    def layer(self, name: str) -> PFPLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no PFP layer named {name!r}; layers: {[layer.name for layer in self.layers]}")

    def group_keep(self, kept: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Root name -> ``(keep mask (C,), scores (C,) float64)`` of every group, from every layer's kept units
        (``kept``: layer name -> bool mask over its units).

        A channel is kept when any reader keeps it (a group that is not :attr:`closed` keeps all). Scores rank
        kept channels (``2 + saliency``) above dropped ones (``saliency``, the max over readers), so removing the
        lowest ones removes exactly the dropped ones. A group left with nothing keeps its most salient channel
        (ties by index): a layer reading several groups may take all of its units from the others.
        """
        decisions = {}
        for group in self.groups:
            saliency = torch.zeros(group.size, dtype=torch.float64)
            if group.root not in self.closed:
                decisions[group.root] = (torch.ones(group.size, dtype=torch.bool), saliency + 2)
                continue
            keep = torch.zeros(group.size, dtype=torch.bool)
            for reader, _, _ in group.readers:
                layer = self.layer(reader)
                mine = [
                    (unit, channel)
                    for unit, (root, channel) in enumerate(layer.sources)
                    if root == group.root
                ]
                units, channels = torch.tensor(mine, dtype=torch.long).reshape(-1, 2).T
                keep[channels] |= kept[reader][units]
                saliency[channels] = torch.maximum(saliency[channels], layer.sensitivity[units])
            if not keep.any():
                keep[torch.sort(-saliency, stable=True).indices[0]] = True
            decisions[group.root] = (keep, torch.where(keep, 2 + saliency, saliency))
        return decisions


def pfp_network(
    model: nn.Module,
    example_input: torch.Tensor,
    data: Iterable[Any] | torch.Tensor | SensitivityTracker,
    *,
    c: float = 3.0,
    delta: float = 1e-16,
    max_batches: int | None = None,
    progress: bool = True,
    ignored_layers: Sequence[str | nn.Module] | None = None,
    prune_inputs: bool = False,
) -> PFPNetwork:
    """Trace ``model`` and take the input-channel sensitivities of every Linear/Conv2d over ``data``.

    With ``prune_inputs``, every input column of a tracked layer that reads the model's input directly (through
    normalisation, reshapes and element-wise ops, but no other weighted layer) is
    a unit of one column, after the layer's group units, with source ``(None, column)``.

    ``data`` may also be a :class:`SensitivityTracker` of ``model`` that has seen the data (reused as is, e.g. to
    plan several amounts from one pass; ``max_batches`` and ``progress`` are then ignored). The model is not
    modified (traced on a copy; sensitivities in eval mode without gradients). Warns
    (:class:`SmallSensitivitySetWarning`) when the data holds fewer examples than :func:`sensitivity_set_size`
    asks for with ``c`` and ``delta``.

    Raises:
        ValueError: Torch-Pruning cannot trace the model; ``data`` is empty, or a tracker of another model.
    """
    work = copy.deepcopy(model)
    ignored = (
        [output_layer_name(work)]
        if ignored_layers is None
        else resolve_layer_refs(work, ignored_layers, "ignored_layers")
    )
    graph = build_dependency_graph(work, example_input)
    groups = _dependency_groups(work, graph, ignored)
    readers = _input_readers(work, graph) if prune_inputs else set()
    if isinstance(data, SensitivityTracker):
        if data.model is not model or data.num_samples == 0:
            raise ValueError("data: expected a SensitivityTracker of this model that has seen data")
        tracker = data
    else:
        # Grouped/depthwise convs are not tracked: a group they read is pruned only with the consent of its
        # other readers (see PFPNetwork.closed); a depthwise conv between two dense ones follows its channels.
        tracker = SensitivityTracker(model, sensitivity_layers(model)).accumulate_over(
            data, max_batches, progress=progress
        )
    # A layer the forward pass never reached has no statistics: PFP leaves it alone like an untracked one.
    seen = [name for name in tracker.layer_names if _has_statistics(tracker, name)]
    shapes = {name: tracker.shape(name) for name in seen}
    needed = sensitivity_set_size([shape.neurons for shape in shapes.values()], c, delta)
    if tracker.num_samples < needed:
        warnings.warn(
            f"data: PFP's bound (c={c}, delta={delta}) asks for {needed} examples to take sensitivities "
            f"over; got {tracker.num_samples}, {needed - tracker.num_samples} short, so the guarantee does not hold",
            SmallSensitivitySetWarning,
            stacklevel=3,
        )
    layers = []
    for name in seen:
        s_in = tracker.channel_sensitivity(name).detach().double().cpu()
        sources, columns = [], []
        for group in groups:
            for reader, cols, roots in group.readers:
                if reader == name:
                    for channel in roots.unique(sorted=True).tolist():
                        sources.append((group.root, channel))
                        columns.append(cols[roots == channel])
        if name in readers:
            covered = torch.zeros(len(s_in), dtype=torch.bool)
            for cols in columns:
                covered[cols] = True
            for column in (~covered).nonzero().flatten().tolist():
                sources.append((None, column))
                columns.append(torch.tensor([column]))
        sensitivity = torch.stack([s_in[cols].max() for cols in columns]) if columns else s_in[:0]
        shape = shapes[name]
        layers.append(
            PFPLayer(
                name=name,
                sensitivity=sensitivity,
                sources=tuple(sources),
                columns=tuple(columns),
                in_columns=shape.in_channels,
                out_channels=shape.out_channels,
                kappa=shape.kappa,
                patches=shape.patches,
            )
        )
    tracked = {layer.name: layer for layer in layers}
    # A group can lose channels only if every layer reading it was tracked (its wishes are known).
    closed = {
        group.root
        for group in groups
        if group.readers and all(reader in tracked for reader, _, _ in group.readers)
    }
    writer_group = {writer: group for group in groups for writer, _, _ in group.writers}
    for i, layer in enumerate(layers):
        group = writer_group.get(layer.name)
        if group is None or group.root not in closed or len(group.readers) != 1:
            continue
        reader = tracked[group.readers[0][0]]
        if reader.fixed_columns == 0 and all(root == group.root for root, _ in reader.sources):
            layers[i] = replace(layer, sole_reader=reader.name)
    return PFPNetwork(layers, groups, closed, tracker.num_samples, needed)


def select_channels(
    sensitivity: torch.Tensor, k: int, variant: Variant = "det", generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``k`` units of one layer from their saliencies.

    * ``"det"``: the ``k`` largest saliencies (ties by index), factors 1.
    * ``"rand"``: ``m = adapt_sample_size(p, k)`` draws from ``Multinomial(m, p)``, ``p = s / sum s``;
      factors ``gamma_c = count_c / (m p_c)`` (0 where ``p_c <= eps_float32``); ``E[gamma_c] = 1``.
    * ``"top"``: the ``k_det = min(#{p_c >= 1/m_hat}, k)`` largest deterministically (``m_hat`` as in rand),
      the other ``k - k_det`` sampled as in rand from ``p`` renormalised over the rest.

    When ``k`` covers every unit with a nonzero saliency (or ``k <= 1`` for ``"top"``), nothing needs sampling
    and the deterministic choice is made. At least one unit is always kept.

    Args:
        sensitivity: ``(n,)`` saliencies ``>= 0``.
        k: units to keep, ``1 <= k <= n``.
        variant: ``"det"``, ``"rand"`` or ``"top"``.
        generator: the random source of ``"rand"`` and ``"top"`` (a fresh unseeded one when ``None``).

    Returns:
        ``(kept, factors)``: a bool mask ``(n,)`` and float64 factors ``(n,)``, 0 exactly where not kept.
    """
    s = sensitivity.detach().double().cpu().flatten()
    n = s.numel()
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    if not (isinstance(k, int) and 1 <= k <= n):
        raise ValueError(f"k: expected an int in [1, {n}], got {k!r}")
    if (s < 0).any() or not torch.isfinite(s).all():
        raise ValueError("sensitivity: expected finite values >= 0")
    order = torch.sort(-s, stable=True).indices
    nonzero = int((s > 0).sum())
    factors = torch.zeros(n, dtype=torch.float64)
    if variant == "det" or k >= nonzero or (variant == "top" and k <= 1):
        factors[order[:k]] = 1.0
        return factors > 0, factors
    generator = torch.Generator() if generator is None else generator
    p = s / s.sum()
    if variant == "rand":
        factors = _importance_sample(p, k, generator)
    else:
        m_hat = adapt_sample_size(p, k)
        k_det = min(int((p >= 1 / m_hat).sum()), k)
        factors[order[:k_det]] = 1.0
        rest = p.clone()
        rest[order[:k_det]] = 0.0
        remaining = int((rest > 0).sum())
        if k > k_det and remaining:
            if k - k_det >= remaining:
                factors[rest > 0] = 1.0
            else:
                factors += _importance_sample(rest / rest.sum(), k - k_det, generator)
    if not (factors > 0).any():
        # Only units with p <= eps_float32 were drawn (vanishingly rare): keep the most salient one.
        factors[order[0]] = 1.0
    return factors > 0, factors


def _importance_sample(p: torch.Tensor, distinct: int, generator: torch.Generator) -> torch.Tensor:
    """Factors ``count_c / (m p_c)`` of ``m = adapt_sample_size(p, distinct)`` multinomial draws (0 where
    ``p_c <= eps_float32``): unbiased, ``E[factor_c] = 1`` for every such ``c``."""
    draws = adapt_sample_size(p, distinct)
    counts = _multinomial(draws, p, generator)
    usable = p > _FLOAT32_EPS
    return torch.where(usable, counts / (draws * torch.where(usable, p, 1.0)), 0.0)


def _multinomial(draws: int, p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``Multinomial(draws, p)`` counts (float64) as a chain of conditional binomials: O(n) memory whatever
    ``draws`` is (``adapt_sample_size`` gets large when some probabilities are tiny)."""
    counts = torch.zeros_like(p)
    remaining, mass = float(draws), 1.0
    support = torch.nonzero(p > 0).flatten().tolist()
    for position, i in enumerate(support):
        if remaining <= 0:
            break
        q = 1.0 if position == len(support) - 1 else min(1.0, float(p[i]) / mass)
        drawn = torch.binomial(
            torch.tensor([remaining], dtype=torch.float64),
            torch.tensor([q], dtype=torch.float64),
            generator=generator,
        )
        counts[i] = drawn[0]
        remaining -= float(drawn[0])
        mass -= float(p[i])
    return counts


def plan_pfp(
    model: nn.Module,
    amount: float,
    example_input: torch.Tensor,
    data: Iterable[Any] | torch.Tensor | SensitivityTracker,
    *,
    variant: Variant = "det",
    c: float = 3.0,
    delta: float = 1e-16,
    seed: int = 0,
    max_batches: int | None = None,
    progress: bool = True,
    mode: ApplyMode = "remove",
    ignored_layers: Sequence[str | nn.Module] | None = None,
    prune_inputs: bool = False,
) -> PruningPlan:
    """Plan PFP filter pruning that removes ``amount`` of all parameters; the model is not modified.

    Args:
        model: the model (Linear/Conv2d layers; traced by Torch-Pruning).
        amount: fraction in [0, 1) of all parameters to remove, measured on the pruned model. Units of zero
            saliency (dead on the data) go at any amount > 0, since no number of draws picks them; 0 keeps all.
        example_input: one input batch, to trace the model and count parameters.
        data: batches (a DataLoader, ``(input, target)`` pairs or tensors) to take sensitivities over, or a
            :class:`SensitivityTracker` of ``model`` that has seen them (see :func:`pfp_network`).
        variant: ``"det"`` (top-k, the papers' experiments), ``"rand"`` or ``"top"``; see :func:`select_channels`.
        c, delta: the constant ``C`` and failure probability of the bounds.
        seed: seeds the sampling of ``"rand"``/``"top"`` (one generator, layers in order).
        max_batches: use at most this many batches of ``data``.
        progress: show a progress bar while taking sensitivities.
        mode: ``"remove"`` (channels physically removed) or ``"mask"`` (rows masked, columns zeroed).
        ignored_layers: layers whose output channels are kept (default the output layer).
        prune_inputs: also prune the model's input features (torchprune's convention, Liebenwein et al. 2020):
            the input columns of the layers that read the model's input are units like the others, and the
            dropped ones become zero columns of those layers (the input keeps its size). Off by default: only
            channels that a layer of the model produces are pruned.

    Returns:
        A :class:`PruningPlan` with ``rescale`` (reweighted and zeroed input columns) and, in ``options``,
        ``variant``, ``c``, ``delta``, ``seed``, ``epsilon``, ``kept_units``/``units`` per layer, the keep ratio
        ``keep_ratio_target``/``keep_ratio_achieved``/``keep_ratio_nominal``, ``keep_ratio_within_tolerance``
        and ``keep_ratio_note`` (why the tolerance was missed, else empty), ``keep_ratio_metric``, ``trials``
        (plans measured), ``sensitivity_samples``/``sensitivity_samples_needed``, and ``prune_inputs`` when set.
    """
    amount = check_amount(amount)
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    if mode not in ("remove", "mask"):
        raise ValueError(f"mode: expected 'remove' or 'mask', got {mode!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {seed!r}")
    if not isinstance(prune_inputs, bool):
        raise TypeError(f"prune_inputs: expected True or False, got {prune_inputs!r}")
    if example_input is None:
        raise TypeError(
            "example_input: expected an input batch (a tensor, a tuple or a dict of tensors), got None"
        )
    describe_input(example_input)  # a tensor, a tuple or a dict of tensors, else TypeError
    if data is None:
        raise ValueError("data: PFP takes its sensitivities from data; pass data=<batches>")
    alpha(1, 1, c, delta)  # validates c and delta before any work

    network = pfp_network(
        model,
        example_input,
        data,
        c=c,
        delta=delta,
        max_batches=max_batches,
        progress=progress,
        ignored_layers=ignored_layers,
        prune_inputs=prune_inputs,
    )
    allocator = PFPAllocator(network.layers, c, delta)
    metric = "params" if mode == "remove" else "nonzero_params"
    total = getattr(count(model, example_input), metric)
    compressible = allocator.full_size()
    mask_roots = (
        None if mode == "remove" else {name for name, _ in select_layers(model, None, ignored_layers)}
    )
    target = 1.0 - amount
    trials: dict[tuple[int, ...], _Trial] = {}

    def measured(nominal: float, allocation: PFPAllocation) -> float:
        key = tuple(allocation.inputs.values())
        if key not in trials:
            built = _build_plan(
                model, network, allocation, variant, seed, mode, example_input, ignored_layers, mask_roots
            )
            trials[key] = _Trial(nominal, allocation, built, built.totals[metric][1] / total)
        return trials[key].ratio

    def measured_ratio(nominal: float) -> float:
        # torchprune's budget: the nominal share of all parameters, minus what is not compressible.
        budget = min(max(nominal * total - (total - compressible), 0.0), compressible)
        return measured(nominal, allocator.solve(budget))

    if amount == 0.0:
        # Nothing to remove: every unit stays, dead ones too (no eps keeps a unit of zero saliency).
        units = {layer.name: layer.units for layer in network.layers if layer.units}
        measured(1.0, PFPAllocation(0.0, units, float(compressible), float(compressible)))
    else:
        # One nominal keep ratio step is worth one parameter: a finer search cannot change the plan.
        _search(measured_ratio, target, resolution=1.0 / total)
    best = min(trials.values(), key=lambda t: (abs(t.ratio - target), t.ratio))
    within = abs(best.ratio - target) <= KEEP_RATIO_TOLERANCE * target
    note = ""
    if not within:
        below = max((t.ratio for t in trials.values() if t.ratio < target), default=0.0)
        above = min((t.ratio for t in trials.values() if t.ratio > target), default=1.0)
        note = (
            f"no allocation along PFP's error path lands within {KEEP_RATIO_TOLERANCE:.1%} of the target keep "
            f"ratio {target:.4f}; the closest tried keep {below:.4f} and {above:.4f} (one unit of a small model "
            "can be worth more than the tolerance, and units of zero sensitivity always go)"
        )
        if not all(any(side(t.ratio) for t in trials.values()) for side in (target.__gt__, target.__lt__)):
            # Not a matter of granularity: no trial lands on one side of the target at all.
            warnings.warn(
                f"amount: PFP was asked to keep {target:.4f} of the {metric} but keeps {best.ratio:.4f}, and no "
                f"allocation lands on the other side of the target ({note})",
                KeepRatioMissedWarning,
                stacklevel=3,
            )
    plan = best.plan
    measure_plan(plan, model, example_input)  # rescale zeroes columns: refresh the nonzero counts
    plan.options.update(
        {
            "amount": amount,
            "group_amounts": plan.options.get("amount"),
            "variant": variant,
            "c": c,
            "delta": delta,
            "seed": seed,
            "epsilon": best.allocation.epsilon,
            "budget": best.allocation.budget,
            "estimated_size": best.allocation.size,
            "kept_units": dict(best.allocation.inputs),
            "units": {layer.name: layer.units for layer in network.layers if layer.units},
            "keep_ratio_target": target,
            "keep_ratio_achieved": plan.totals[metric][1] / plan.totals[metric][0],
            "keep_ratio_nominal": best.nominal,
            "keep_ratio_within_tolerance": within,
            "keep_ratio_note": note,
            "keep_ratio_metric": metric,
            "trials": len(trials),
            "sensitivity_samples": network.samples,
            "sensitivity_samples_needed": network.samples_needed,
        }
    )
    if prune_inputs:
        # Recorded only when set: default plans stay byte-identical to those saved before the option existed.
        plan.options["prune_inputs"] = True
    return plan


@dataclass(frozen=True)
class _Trial:
    nominal: float
    allocation: PFPAllocation
    plan: PruningPlan
    ratio: float


class _Close(Exception):
    """Raised inside the root search to stop it as soon as a trial is close enough."""


def _search(measured_ratio: Callable[[float], float], target: float, resolution: float) -> None:
    """Root search of ``measured_ratio(nominal) = target`` on the nominal keep ratio in [0, 1] (non-decreasing up
    to sampling noise): first the target itself, then brentq on the side it points to, down to ``resolution``;
    stops at the first trial within tolerance."""

    def residual(nominal: float) -> float:
        value = measured_ratio(nominal) - target
        if abs(value) <= KEEP_RATIO_TOLERANCE * target:
            raise _Close
        return value

    try:
        first = residual(target)
        low, high = (0.0, target) if first > 0 else (target, 1.0)
        if residual(low) * residual(high) < 0:
            brentq(residual, low, high, xtol=resolution, maxiter=MAX_TRIALS, disp=False)
    except _Close:
        pass


class _KeptChannels(ChannelCriterion):
    """Precomputed scores of PFP's decision (kept channels above dropped ones); layers it does not know keep all."""

    name = "pfp"

    def __init__(self, scores: dict[str, torch.Tensor]) -> None:
        self._scores = scores

    def scores(
        self, module: nn.Module, name: str, dropped_inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        known = self._scores.get(name)
        return torch.full((module.weight.shape[0],), 3.0, dtype=torch.float64) if known is None else known

    def __repr__(self) -> str:
        return "PFPKeptChannels()"


def _build_plan(
    model: nn.Module,
    network: PFPNetwork,
    allocation: PFPAllocation,
    variant: Variant,
    seed: int,
    mode: ApplyMode,
    example_input: torch.Tensor,
    ignored_layers: Sequence[str | nn.Module] | None,
    mask_roots: set[str] | None,
) -> PruningPlan:
    generator = rank_identical_generator(seed)  # the same draws on every rank under torchrun
    kept, factors = {}, {}
    for layer in network.layers:
        if layer.units:
            kept[layer.name], factors[layer.name] = select_channels(
                layer.sensitivity, allocation.inputs[layer.name], variant, generator
            )
    decisions = network.group_keep(kept)
    rescale = {}
    for layer in network.layers:
        if not layer.units:
            continue
        # An input feature always stays: the model's input keeps its size.
        stays = torch.tensor(
            [root is None or bool(decisions[root][0][channel]) for root, channel in layer.sources]
        )
        # Removal takes a dropped channel's columns away anyway; a rescale is needed where a kept column is
        # reweighted, or zeroed because another reader keeps its channel or it is an input feature (and for every
        # dropped one when masking).
        touched = (factors[layer.name] != 1) & (stays | (mode == "mask"))
        if touched.any():
            columns = torch.ones(layer.in_columns, dtype=torch.float64)
            for unit, cols in enumerate(layer.columns):
                columns[cols] = factors[layer.name][unit]
            # (1, C_in) for a Linear, (1, C_in, 1, 1) for a Conv2d: broadcasts against the weight.
            dims = model.get_submodule(layer.name).weight.dim()
            rescale[layer.name] = columns.reshape(1, -1, *([1] * (dims - 2)))
    scores, amounts = {}, {}
    for group in network.groups:
        keep, group_scores = decisions[group.root]
        removed = int((~keep).sum())
        for writer, own, roots in group.writers:
            size = int(model.get_submodule(writer).weight.shape[0])
            writer_scores = torch.full((size,), 3.0, dtype=torch.float64)
            writer_scores[own] = group_scores[roots]
            scores[writer] = writer_scores
            if mask_roots is not None and writer in mask_roots:
                gone = int((~keep[roots]).sum())
                if gone:
                    amounts[writer] = gone / size
        if mask_roots is None and removed:
            amounts[group.root] = removed / group.size
    options = {"ignored_layers": ignored_layers} if ignored_layers is not None else {}
    plan = plan_structured(
        model,
        amounts,
        example_input if mode == "remove" else None,
        criterion=_KeptChannels(scores),
        group_reduction="first",
        mode=mode,
        method=f"pfp_{variant}" if variant != "det" else "pfp",
        attention="skip",  # PFP scores input channels of dense layers, not heads
        **options,
    )
    plan.rescale = rescale
    if mode == "mask":
        plan.input_shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else None
        measure_plan(plan, model, example_input)
    return plan


def _dependency_groups(work: nn.Module, graph: tp.DependencyGraph, ignored: list[str]) -> list[PFPGroup]:
    names = {module: name for name, module in work.named_modules()}
    groups = []
    # The groups plan_structured prunes by channel: attention projections (heads, which PFP does not score), and
    # groups tied to a grouped convolution or to an HF config's hidden_size stay whole.
    unsupported: dict[str, str] = {}
    blocked = [*ignored, *projection_names(find_units(work, unsupported)), *unsupported]
    for group in prunable_groups(work, graph, [work.get_submodule(n) for n in dict.fromkeys(blocked)])[0]:
        entries: dict[str, dict[str, tuple[str, torch.Tensor, torch.Tensor]]] = {"out": {}, "in": {}}
        for item in group:
            module = item.dep.target.module
            # Torch-Pruning's handlers are bound methods named prune_out_channels / prune_in_channels.
            side = getattr(item.dep.handler, "__name__", "").removeprefix("prune_").removesuffix("_channels")
            if isinstance(module, PRUNABLE_TYPES) and side in entries:
                entries[side].setdefault(
                    names[module],
                    (
                        names[module],
                        torch.as_tensor(list(item.idxs), dtype=torch.long),
                        torch.as_tensor(list(item.root_idxs), dtype=torch.long),
                    ),
                )
        root = group[0].dep.target.module
        groups.append(
            PFPGroup(
                names[root],
                int(root.weight.shape[0]),
                tuple(entries["out"].values()),
                tuple(entries["in"].values()),
            )
        )
    return groups


# Torch-Pruning node types that carry a feature through (normalised, reshaped, concatenated, combined element-wise)
# without mixing features into new ones: a layer reached from the model's input through these alone reads it.
_PASS_THROUGH = frozenset(
    {
        tp.ops.OPTYPE.BN,
        tp.ops.OPTYPE.LN,
        tp.ops.OPTYPE.GN,
        tp.ops.OPTYPE.IN,
        tp.ops.OPTYPE.PRELU,
        tp.ops.OPTYPE.ELEMENTWISE,
        tp.ops.OPTYPE.RESHAPE,
        tp.ops.OPTYPE.CONCAT,
        tp.ops.OPTYPE.SPLIT,
        tp.ops.OPTYPE.SLICE,
        tp.ops.OPTYPE.EXPAND,
        tp.ops.OPTYPE.UNBIND,
    }
)


def _input_readers(model: nn.Module, graph: tp.DependencyGraph) -> set[str]:
    """Names of the Linear/ConvNd layers of ``model`` that read its input directly: going back from them in
    ``graph`` (Torch-Pruning's trace of ``model``) meets only normalisation, reshapes, concatenations, splits and
    element-wise ops, no Linear, convolution, embedding, attention or bare ``nn.Parameter``. Their input columns
    are the model's input features (image channels, pixels), which no dependency group produces. The trace
    follows autograd, so a parameter-free transform of the input (which it does not record) counts as input."""
    names = {module: name for name, module in model.named_modules()}
    readers = set()
    for module, node in graph.module2node.items():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        stack, seen = list(node.inputs), set()
        while stack:
            ancestor = stack.pop()
            if id(ancestor) in seen:
                continue
            seen.add(id(ancestor))
            if ancestor.type not in _PASS_THROUGH:
                break
            stack.extend(ancestor.inputs)
        else:
            readers.add(names[module])
    return readers


def _has_statistics(tracker: SensitivityTracker, name: str) -> bool:
    try:
        tracker.shape(name)
    except ValueError:
        return False
    return True
