"""FLOPs- and parameter-aware allocation for structured pruning: ``plan_structured(..., budget="flops")``.

With ``budget="channels"`` (the default) ``amount`` is a fraction of channels, and a criterion normalised per layer
(Taylor) happily removes the many cheap channels of the classifier: global Taylor on torchvision's vgg16_bn
removes 48% of the parameters but only 6% of the FLOPs. With ``budget="flops"`` (``"params"``) ``amount`` is the
fraction of the whole model's FLOPs (parameters) that must go, and:

* ``scope="global"`` ranks every prunable channel and attention head/unit by *score per unit of cost*, the cost
  being what removing it alone saves (:func:`channel_costs`: its rows in the layers whose outputs the group
  removes, plus its input slices in their consumers), lowest first, under the same ``min_channels`` capacity per
  group as the channel budget. How many of that order go is then found by bisection on the *exact* count of
  the pruned model (:class:`BudgetCounter`), because coupled removals (a layer losing rows and input columns at
  once) make the per-channel cost only approximate.
* ``scope="layer"`` removes one uniform fraction of every group's channels (each group's lowest scores, as with
  the channel budget), found by bisection on the same exact count.

The exact reduction reached is at least ``amount`` and exceeds it by at most the saving of one bisection step:
one channel (one ``round_to`` block) globally, one step of the uniform fraction per layer. The plan records
the target and what was reached in ``plan.options["budget"]``.

Units: parameters as :func:`pyprune.measure.count` counts them (every parameter of the model, shared ones
once); FLOPs as ``FlopCounterMode`` counts one forward pass on ``example_input``: 2 per multiply-accumulate in
matrix products and convolutions (so the fraction of MACs removed is the same), nothing for normalisation,
activations and pooling.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from pyprune.activations import call_model, eval_mode
from pyprune.pruning.apply import ChannelCut, apply_traced
from pyprune.pruning.attention import UnitSpec
from pyprune.pruning.criteria.base import PRUNABLE_TYPES
from pyprune.pruning.fingerprint import model_fingerprint
from pyprune.pruning.groups import prunes
from pyprune.pruning.plan import LayerPlan, PruningPlan

if TYPE_CHECKING:
    from pyprune.measure import ModelCount

Budget = Literal["channels", "params", "flops"]
BUDGETS = ("channels", "params", "flops")
"""What ``amount`` is a fraction of: each group's channels (the default), the model's parameters or its FLOPs."""


def check_budget(budget: Any, *, amount: Any, example_input: Any, mode: str, greedy: bool) -> None:
    """ValueError naming the argument when ``budget`` is unknown or cannot be combined with the other options."""
    if budget not in BUDGETS:
        raise ValueError(f"budget: expected one of {BUDGETS}, got {budget!r}")
    if budget == "channels":
        return
    if mode != "remove":
        raise ValueError(
            f"budget: {budget!r} counts what removing channels saves, but mode={mode!r} keeps every weight's "
            "shape (masks save no FLOPs); use mode='remove' or budget='channels'"
        )
    if example_input is None:
        raise ValueError(
            f"example_input: budget={budget!r} counts the model's {budget} on an example input batch; pass one"
        )
    if isinstance(amount, Mapping):
        raise ValueError(
            f"amount: a per-layer dict gives fractions of each layer's channels; budget={budget!r} takes one "
            f"fraction of the whole model's {budget}"
        )
    if greedy:
        raise ValueError(
            f"greedy: Li et al.'s greedy mode rescores each layer after the previous one's removals, which a "
            f"budget={budget!r} search cannot repeat at every step; use budget='channels'"
        )


class BudgetCounter:
    """Exact parameters and FLOPs of ``work`` with some channels and units removed, without touching ``work``.

    Each count prunes a copy of the module tree by the Torch-Pruning cuts that applying the plan makes (read off
    the groups of all channels, which list every root channel's indices in every tensor), then
    scales each plain Linear/ConvNd's FLOPs with its weight's size, as :func:`pyprune.measure.count_resized` does.
    When the model does only such FLOPs (CNNs, MLPs), the copy's tensors live on the ``meta`` device (shapes only:
    a count of vgg16_bn takes milliseconds and no memory); otherwise (attention) the copy shares the model's tensors
    and one forward pass on ``example_input`` is counted, as :func:`pyprune.measure.count` counts it.

    Args:
        work: the model being planned; never modified (each count prunes a copy of its module tree).
        groups: Torch-Pruning's groups of all channels of the roots, in plan order.
        units: the attention (MLP) structures, in plan order after the roots.
        before: ``pyprune.measure.count(work, example_input)``.
        example_input: the planner's example input (tensor, tuple or dict).
    """

    def __init__(
        self,
        work: nn.Module,
        groups: Sequence[Any],
        units: Sequence[UnitSpec],
        before: ModelCount,
        example_input: Any,
    ) -> None:
        import torch_pruning as tp

        from pyprune.measure import flops_follow_weights

        self.work = work
        self.units = list(units)
        self.before = before
        self._fingerprint = model_fingerprint(work)
        names = {module: name for name, module in work.named_modules()}
        parameters = {id(p): name for name, p in work.named_parameters()}
        # Per group: (target, is a bare parameter, handler, dim, indices in that tensor, root channel of each).
        self._cuts = []
        for group in groups:
            found = []
            for item in group:
                dep = item.dep
                parameter = dep.target.type == tp.ops.OPTYPE.PARAMETER
                # Stand-ins for functional operations (concatenations, additions) hold no tensor.
                if not (parameter or dep.target.module in names) or not item.idxs:
                    continue
                target = parameters[id(dep.target.module)] if parameter else names[dep.target.module]
                found.append(
                    (
                        (target, parameter, dep.handler, dep.target.pruning_dim),
                        torch.as_tensor(item.idxs, dtype=torch.long),
                        torch.as_tensor(item.root_idxs, dtype=torch.long),
                    )
                )
            self._cuts.append(found)
        self._roots = [names[group[0].dep.target.module] for group in groups]
        self._sizes = [int(group[0].dep.target.module.weight.shape[0]) for group in groups]
        self._proportional = flops_follow_weights(before, work)
        shared = itertools.chain(work.parameters(), work.buffers())
        if self._proportional:
            self._memo = {
                id(t): nn.Parameter(t.detach().to("meta"), t.requires_grad)
                if isinstance(t, nn.Parameter)
                else t.to("meta")
                for t in shared
            }
        else:
            # FLOPs need a forward pass, which must run where count() runs it: on the meta device, scaled dot-product
            # attention decomposes into matrix products that FlopCounterMode counts, while the fused CPU kernel
            # counts none. The copy shares the model's tensors (cuts replace tensors, never write into them).
            self._memo = {id(t): t for t in shared}
        self._example_input = example_input

    def count(self, removed: Sequence[torch.Tensor]) -> tuple[int, int]:
        """``(parameters, FLOPs)`` after removing ``removed[i]`` (sorted int64 indices) of root ``i`` or, after the
        roots, of unit structure ``i - len(roots)``."""
        unions: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        for found, size, r in zip(self._cuts, self._sizes, removed, strict=False):
            if r.numel():
                gone = torch.zeros(size, dtype=torch.bool)
                gone[r] = True
                for key, idxs, roots in found:
                    unions.setdefault(key, []).append(idxs[gone[roots]])
        cuts = [
            ChannelCut(*key, tuple(torch.cat(parts).unique().tolist()))
            for key, parts in unions.items()
            if sum(p.numel() for p in parts)
        ]
        # The cuts are given; the layers only tell apply_traced that there are channels to cut, and which units go.
        layers = [
            LayerPlan(name, "channels", size, r)
            for name, size, r in zip(self._roots, self._sizes, removed, strict=False)
        ]
        layers += [
            LayerPlan(spec.name, spec.granularity, spec.num_units, r)
            for spec, r in zip(self.units, removed[len(self._sizes) :], strict=True)
        ]
        pruned = copy.deepcopy(self.work, dict(self._memo))
        apply_traced(PruningPlan("budget", "remove", layers, self._fingerprint), pruned, cuts)
        params = sum(p.numel() for p in pruned.parameters())
        if self._proportional:
            modules = dict(self.work.named_modules())
            after = dict(pruned.named_modules())
            flops = sum(
                flops // modules[name].weight.numel() * after[name].weight.numel()
                for name, flops in self.before.per_module_flops.items()
            )
        else:
            from pyprune.measure import counting_flops

            with counting_flops() as counter, eval_mode(pruned), torch.no_grad():
                call_model(pruned, self._example_input)
            flops = counter.get_total_flops()
        return params, flops


def channel_costs(
    work: nn.Module,
    groups: Sequence[Any],
    units: Sequence[UnitSpec],
    per_module_flops: Mapping[str, int],
    budget: Budget,
) -> list[torch.Tensor]:
    """float64 ``(size,)`` per group (then per unit structure): the parameters or FLOPs that removing that one
    channel (head, unit) from the unpruned model saves.

    A channel of a group costs its share of every Linear/ConvNd whose output channels the group removes (one row:
    ``FLOPs / out_channels``, ``weight.numel() / out_channels`` parameters plus its bias), of every normalisation
    layer's affine parameters, and one input slice of every consumer (``FLOPs / in_channels`` per input index it
    takes there; several after a flatten). A depthwise convolution's input side is its output side, counted once.
    A head or MLP unit costs ``1 / num_units`` of its structure's parameters and FLOPs. Exact for one channel
    alone; removing channels on both sides of a layer saves less than the sum (the removed block is counted twice),
    which the exact count corrects (see :class:`BudgetCounter`).
    """
    names = {module: name for name, module in work.named_modules()}
    costs = []
    for group in groups:
        size = int(group[0].dep.target.module.weight.shape[0])
        cost = torch.zeros(size, dtype=torch.float64)
        for item in group:
            module = item.dep.target.module
            name = names.get(module) if isinstance(module, nn.Module) else None
            side = "out" if prunes(item, "out") else "in" if prunes(item, "in") else None
            if name is None or side is None or not item.idxs:
                continue
            each = _cost_per_index(module, side, per_module_flops.get(name, 0), budget)
            if each:
                roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
                cost += each * torch.bincount(roots, minlength=size).double()
        costs.append(cost)
    for spec in units:
        structure = work.get_submodule(spec.name)
        if budget == "flops":
            total = sum(
                flops
                for module, flops in per_module_flops.items()
                if module == spec.name or module.startswith(spec.name + ".")
            )
        else:
            total = sum(p.numel() for p in structure.parameters())
        costs.append(torch.full((spec.num_units,), total / spec.num_units, dtype=torch.float64))
    return costs


def _cost_per_index(module: nn.Module, side: str, flops: int, budget: Budget) -> float:
    """What one index of ``module``'s output (``side="out"``) or input (``"in"``) dimension costs."""
    if isinstance(module, PRUNABLE_TYPES):
        weight = module.weight
        groups = getattr(module, "groups", 1)
        depthwise = groups > 1 and groups == weight.shape[0]
        if side == "in" and depthwise:
            return 0.0
        width = weight.shape[0] if side == "out" else weight.shape[1] * groups
        if budget == "flops":
            return flops / width
        bias = 1 if side == "out" and getattr(module, "bias", None) is not None else 0
        return weight.numel() / width + bias
    if budget == "flops" or side != "out":
        return 0.0
    # Normalisation layers and the like: one entry per channel of each per-channel parameter.
    return float(
        sum(p.numel() // p.shape[0] for p in module.parameters(recurse=False) if p.ndim and p.shape[0] > 1)
    )


def allocate(
    budget: Budget,
    amount: float,
    *,
    scope: str,
    scores: Sequence[torch.Tensor],
    floors: Sequence[int],
    costs: Sequence[torch.Tensor],
    counter: BudgetCounter,
    finish: Callable[[list[torch.Tensor]], list[torch.Tensor]],
    limits: str,
) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """The channels (units) to remove so that the model's ``budget`` falls by at least ``amount``.

    Args:
        budget: ``"params"`` or ``"flops"``.
        amount: fraction in [0, 1) of the model's parameters (FLOPs) to remove.
        scope: ``"global"`` (rank by score per cost) or ``"layer"`` (one uniform fraction of channels).
        scores: float64 ``(size,)`` criterion scores per group (then per unit structure); lower goes first.
        floors: how many channels (units) each group keeps at least.
        costs: float64 ``(size,)`` per group, from :func:`channel_costs`.
        counter: counts the model after a removal.
        finish: the planner's last step on a selection (rounding kept counts up to ``round_to``).
        limits: the options that bound what can go, named in the refusal.

    Returns:
        the sorted int64 indices to remove per group, and the record for ``plan.options["budget"]``: ``unit``,
        ``target``, ``achieved`` (fractions), ``before`` and ``after`` (counts) and, for ``scope="layer"``,
        ``channel_fraction`` (the uniform fraction found).

    Raises:
        ValueError: the model's ``budget`` cannot fall by ``amount`` (names ``amount``, the largest reachable
            fraction and ``limits``).
    """
    index = 1 if budget == "flops" else 0
    total = counter.before.flops if budget == "flops" else counter.before.params
    sizes = [s.numel() for s in scores]
    capacity = [size - min(floor, size) for size, floor in zip(sizes, floors, strict=True)]

    if scope == "global":
        owner, local = _ranked(scores, costs, capacity)

        def select(step: float) -> list[torch.Tensor]:
            chosen_owner, chosen = owner[: int(step)], local[: int(step)]
            return [chosen[chosen_owner == g].sort().values for g in range(len(sizes))]

        high = float(owner.numel())
    else:

        def select(step: float) -> list[torch.Tensor]:
            return [
                torch.sort(s, stable=True)
                .indices[: min(math.floor(step * s.numel() + 0.5), cap)]
                .sort()
                .values
                for s, cap in zip(scores, capacity, strict=True)
            ]

        high = 1.0

    def reduction(step: float) -> tuple[float, int, list[torch.Tensor]]:
        removed = finish(select(step))
        after = counter.count(removed)[index]
        return 1.0 - after / total if total else 0.0, after, removed

    best, after, removed = reduction(high)
    if best < amount:
        raise ValueError(
            f"amount: budget={budget!r} asks to remove {100 * amount:.2f}% of the model's {budget}, but at most "
            f"{100 * best:.2f}% can go with {limits} (the untouched layers keep the rest)"
        )
    low = 0.0
    if amount == 0:
        high, (best, after, removed) = low, reduction(low)
    # Global: smallest count in the ranked order that meets the target. Layer: the uniform fraction, down to where
    # it no longer changes any group's count.
    resolution = 1.0 if scope == "global" else 1.0 / (4 * max(sizes, default=1))
    while high - low > resolution:
        middle = (low + high) / 2 if scope == "layer" else float((int(low) + int(high)) // 2)
        reached = reduction(middle)
        if reached[0] >= amount:
            high, (best, after, removed) = middle, reached
        else:
            low = middle
    record: dict[str, Any] = {
        "unit": budget,
        "target": amount,
        "achieved": best,
        "before": total,
        "after": after,
    }
    if scope == "layer":
        record["channel_fraction"] = high
    return removed, record


def _ranked(
    scores: Sequence[torch.Tensor], costs: Sequence[torch.Tensor], capacity: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(group, index)`` of every removable channel, lowest score per cost first (ties by group, then index);
    each group contributes its ``capacity`` lowest, as the channel budget's global ranking does."""
    owners, locals_, keys = [], [], []
    for g, (s, c, cap) in enumerate(zip(scores, costs, capacity, strict=True)):
        c = c.clamp_min(1e-12)
        # Score per cost for a harmless (>= 0) score; a negative one (removing it helps) goes first, the costlier
        # the sooner.
        key = torch.where(s >= 0, s / c, s * c)
        kept = torch.sort(key, stable=True).indices[:cap].sort().values
        owners.append(torch.full((kept.numel(),), g, dtype=torch.long))
        locals_.append(kept)
        keys.append(key[kept])
    owner, local, key = torch.cat(owners), torch.cat(locals_), torch.cat(keys)
    order = torch.sort(key, stable=True).indices  # concatenated in (group, index) order: ties keep it
    return owner[order], local[order]
