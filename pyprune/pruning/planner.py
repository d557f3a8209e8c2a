"""Planners: turn a criterion's scores into a :class:`~pyprune.pruning.plan.PruningPlan` without touching the model.

* :func:`plan_unstructured`: individual weights, per layer (seed 003: exactly ``round(amount * numel)`` per layer)
  or globally over all selected layers (iterative magnitude pruning).
* :func:`plan_structured`: output channels (conv filters, Linear rows), per dependency group or globally, with
  ``min_channels``, ``round_to`` and Li et al.'s greedy mode; removed physically (``mode="remove"``) or masked
  (``mode="mask"``, seed 003's unit pruning).

Counts round half up (``floor(amount * n + 0.5)``). Ranking is by ascending score with ties broken by position
(layer order, then index), so plans are deterministic. ``amount`` is the fraction of weights (channels) that are
gone *after* the plan, counting weights already masked by an earlier ``torch.nn.utils.prune`` mask: those are
always kept masked and ranked first.

The model is never modified: structured planning traces and measures a deep copy.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from pyprune.pruning.criteria import PRUNABLE_TYPES, ChannelCriterion, FilterNorm, Magnitude, WeightCriterion
from pyprune.pruning.groups import GroupReduction, build_dependency_graph, consumer_inputs, group_scores
from pyprune.pruning.plan import ApplyMode, LayerPlan, PruningPlan, model_fingerprint

Scope = Literal["layer", "global"]
Amount = float | Mapping[str, float]
LayerRefs = Sequence[str | nn.Module] | None


def plan_unstructured(
    model: nn.Module,
    amount: Amount,
    *,
    criterion: WeightCriterion | None = None,
    scope: Scope = "layer",
    layers: LayerRefs = None,
    ignored_layers: LayerRefs = None,
    example_input: torch.Tensor | None = None,
    method: str | None = None,
    measure: bool = True,
) -> PruningPlan:
    """Plan weight (unstructured) pruning; applied as ``torch.nn.utils.prune`` masks.

    Args:
        model: the model; not modified.
        amount: target sparsity in [0, 1) of each layer (``scope="layer"``) or of all selected layers together
            (``scope="global"``); or a ``{layer name: amount}`` dict for per-layer targets.
        criterion: a :class:`WeightCriterion`; default :class:`Magnitude`.
        scope: ``"layer"`` or ``"global"``.
        layers: names (or modules) of the Linear/ConvNd layers to prune; default all of them except the output
            layer (the last one in ``model.named_modules()`` order).
        ignored_layers: names or modules to leave out of the default selection.
        example_input: optional input batch; when given, the plan records parameter, nonzero and FLOP counts.
        method: name recorded in the plan (default from the criterion and scope).
        measure: with ``example_input``, count parameters and FLOPs before and after on a copy for the plan's
            table; ``False`` skips that (most of the planning time of a cheap criterion).

    Returns:
        a plan with ``mode="mask"`` and one weight-granularity :class:`LayerPlan` per layer.
    """
    criterion = Magnitude() if criterion is None else criterion
    if not isinstance(criterion, WeightCriterion):
        raise TypeError(
            f"criterion: expected a WeightCriterion (e.g. Magnitude()), got {type(criterion).__name__}"
        )
    _check_scope(scope)
    selected = select_layers(model, layers, ignored_layers)
    amounts = _layer_amounts(amount, [name for name, _ in selected], scope)
    scores = []
    for name, module in selected:
        s = criterion.scores(module, name).detach().double().flatten().cpu()
        if s.numel() != module.weight.numel():
            raise ValueError(
                f"criterion {criterion!r} returned {s.numel()} scores for {module.weight.numel()} weights"
            )
        if torch.isnan(s).any():
            raise ValueError(f"criterion {criterion!r} returned NaN scores for layer {name!r}")
        scores.append(_rank_masked_first(s, module, "weight"))
    if scope == "layer":
        removed = [
            _lowest(s, max(_count(amounts[name], s.numel()), _already_masked(s)))
            for (name, _), s in zip(selected, scores, strict=True)
        ]
    else:
        flat = torch.cat(scores)
        chosen = _lowest(flat, max(_count(amounts[None], flat.numel()), _already_masked(flat)))
        offsets = torch.tensor([0, *[s.numel() for s in scores]]).cumsum(0)
        removed = [chosen[(chosen >= lo) & (chosen < hi)] - lo for lo, hi in itertools.pairwise(offsets)]
    for (name, module), r in zip(selected, removed, strict=True):
        if r.numel() >= module.weight.numel():
            raise ValueError(f"amount: would remove every weight of layer {name!r}; use a smaller amount")
    plan = PruningPlan(
        method=method or f"{criterion.name}/{scope}",
        mode="mask",
        layers=[
            LayerPlan(name, "weights", module.weight.numel(), r)
            for (name, module), r in zip(selected, removed, strict=True)
        ],
        fingerprint=model_fingerprint(model),
        options={"amount": _jsonable_amount(amount), "scope": scope, "criterion": repr(criterion)},
    )
    if example_input is not None and measure:
        measure_plan(plan, model, example_input)
    return plan


def plan_structured(
    model: nn.Module,
    amount: Amount,
    example_input: torch.Tensor | None = None,
    *,
    criterion: ChannelCriterion | None = None,
    scope: Scope = "layer",
    ignored_layers: LayerRefs = None,
    min_channels: int = 1,
    round_to: int | None = None,
    group_reduction: GroupReduction = "mean",
    greedy: bool = False,
    mode: ApplyMode = "remove",
    method: str | None = None,
    measure: bool = True,
) -> PruningPlan:
    """Plan channel (structured) pruning.

    With ``mode="remove"`` (default) the model is traced by Torch-Pruning on ``example_input`` and each
    dependency group (a root Linear/ConvNd layer plus everything coupled to its output channels) is scored
    with :func:`~pyprune.pruning.groups.group_scores` and pruned as one. With ``mode="mask"`` every layer is its
    own group and the plan masks rows of ``weight`` and entries of ``bias`` (seed 003's unit pruning; exact only
    where a zero pre-activation stays zero, e.g. Linear -> ReLU).

    Args:
        model: the model; not modified.
        amount: fraction in [0, 1) of channels to remove: per group (``scope="layer"``; a ``{root name: amount}``
            dict gives per-layer ratios, e.g. from :func:`pyprune.sensitivity_analysis`) or of all channels of all
            groups ranked together (``scope="global"``; pair it with a normalised criterion such as Taylor).
        example_input: one input batch (any batch size); required for ``mode="remove"``; when given, the plan
            also records parameters and FLOPs before and after.
        criterion: a :class:`ChannelCriterion`; default :class:`FilterNorm` with ``p=1`` (Li et al.).
        scope: ``"layer"`` or ``"global"``.
        ignored_layers: names or modules whose output channels are kept; default the output layer.
        min_channels: every group keeps at least this many channels.
        round_to: round every group's kept count *up* to a multiple of this (hardware-friendly widths).
        group_reduction: how coupled layers' scores combine (see :mod:`pyprune.pruning.groups`).
        greedy: Li et al.'s greedy multi-layer mode: when scoring a layer, ignore its input kernels whose source
            channels earlier groups already remove (``scope="layer"`` only).
        mode: ``"remove"`` or ``"mask"``.
        method: name recorded in the plan.
        measure: with ``example_input``, count parameters and FLOPs before and after on a copy for the plan's
            table; ``False`` skips that (most of the planning time of a cheap criterion).
    """
    criterion = FilterNorm(1) if criterion is None else criterion
    if not isinstance(criterion, ChannelCriterion):
        raise TypeError(
            f"criterion: expected a ChannelCriterion (e.g. FilterNorm(1)), got {type(criterion).__name__}"
        )
    _check_scope(scope)
    if mode not in ("remove", "mask"):
        raise ValueError(f"mode: expected 'remove' or 'mask', got {mode!r}")
    if not (isinstance(min_channels, int) and min_channels >= 1):
        raise ValueError(f"min_channels: expected an int >= 1, got {min_channels!r}")
    if round_to is not None and not (isinstance(round_to, int) and round_to >= 1):
        raise ValueError(f"round_to: expected None or an int >= 1, got {round_to!r}")
    if greedy and scope == "global":
        raise ValueError("greedy: Li et al.'s greedy mode ranks layer by layer; use it with scope='layer'")
    if example_input is not None and not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input: expected one tensor batch, got {type(example_input).__name__}")
    if mode == "remove" and example_input is None:
        raise ValueError("example_input: required with mode='remove' (Torch-Pruning traces the model on it)")

    work = copy.deepcopy(model)
    names = {module: name for name, module in work.named_modules()}
    ignored = _resolve_refs(work, ignored_layers, "ignored_layers") if ignored_layers is not None else None
    if ignored is None:
        ignored = [output_layer_name(work)]
    if mode == "remove":
        graph = build_dependency_graph(work, example_input)
        groups = list(
            graph.get_all_groups(
                ignored_layers=[work.get_submodule(n) for n in ignored], root_module_types=PRUNABLE_TYPES
            )
        )
        # Definition order, not Torch-Pruning's: the greedy mode and the tables read layers front to back.
        position = {name: i for i, name in enumerate(dict(work.named_modules()))}
        groups.sort(key=lambda group: position[names[group[0].dep.target.module]])
        roots = [names[group[0].dep.target.module] for group in groups]
    else:
        groups = None
        roots = [name for name, _ in select_layers(work, None, ignored)]
    if not roots:
        raise ValueError("model: no prunable Linear/ConvNd layer is left after ignored_layers")
    amounts = _layer_amounts(amount, roots, scope)
    sizes = [int(work.get_submodule(name).weight.shape[0]) for name in roots]

    dropped: dict[str, torch.Tensor] = {}
    scores: list[torch.Tensor] = []
    removed: list[torch.Tensor] = []
    for i, name in enumerate(roots):
        if groups is not None:
            s = group_scores(groups[i], criterion, names, group_reduction, dropped if greedy else None)
        else:
            s = criterion.scores(work.get_submodule(name), name).detach().double().cpu()
        if torch.isnan(s).any():
            raise ValueError(f"criterion {criterion!r} returned NaN scores for layer {name!r}")
        scores.append(s)
        if scope == "layer":
            count = min(_count(amounts[name], sizes[i]), sizes[i] - min(min_channels, sizes[i]))
            removed.append(_lowest(s, count))
            if greedy and groups is not None:
                for consumer, lost in consumer_inputs(groups[i], removed[-1], names).items():
                    dropped[consumer] = torch.cat([dropped.get(consumer, lost[:0]), lost]).unique()
    if scope == "global":
        removed = _select_global(scores, sizes, amounts[None], min_channels)
    if round_to is not None:
        removed = [_round_kept(s, r, round_to) for s, r in zip(scores, removed, strict=True)]

    coupled = [
        _coupled_names(groups[i], names, roots[i]) if groups is not None else () for i in range(len(roots))
    ]
    plan = PruningPlan(
        method=method or f"{criterion.name}/{scope}",
        mode=mode,
        layers=[
            LayerPlan(name, "channels", size, r, coupled=c)
            for name, size, r, c in zip(roots, sizes, removed, coupled, strict=True)
        ],
        fingerprint=model_fingerprint(model),
        input_shape=None if example_input is None else tuple(example_input.shape),
        options={
            "amount": _jsonable_amount(amount),
            "scope": scope,
            "criterion": repr(criterion),
            "min_channels": min_channels,
            "round_to": round_to,
            "group_reduction": group_reduction,
            "greedy": greedy,
            "ignored_layers": list(ignored),
        },
    )
    if example_input is not None and measure:
        measure_plan(plan, model, example_input)
    return plan


def output_layer_name(model: nn.Module) -> str:
    """Name of the last Linear/ConvNd module in ``model.named_modules()`` order: the output layer of most models."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES):
            last = name
    if last is None:
        raise ValueError(f"model: {type(model).__name__} has no Linear or ConvNd layer to prune")
    return last


def select_layers(
    model: nn.Module, layers: LayerRefs, ignored_layers: LayerRefs
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the layers to prune: ``layers`` if given, else every Linear/ConvNd except the output
    layer; minus ``ignored_layers``. Validates names and weights."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if layers is not None:
        names = _resolve_refs(model, layers, "layers")
        if not names:
            raise ValueError("layers: expected at least one layer name, got none")
    else:
        output = output_layer_name(model)
        names = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and n != output]
    if ignored_layers is not None:
        skip = set(_resolve_refs(model, ignored_layers, "ignored_layers"))
        names = [n for n in names if n not in skip]
    if not names:
        raise ValueError(
            "layers: no layer left to prune (all are ignored, or the model has only its output layer)"
        )
    selected = []
    for name in names:
        module = model.get_submodule(name)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"layers: {name!r} ({type(module).__name__}) has no weight to prune")
        if not weight.is_floating_point():
            raise TypeError(
                f"layers: {name!r} has a {weight.dtype} weight; only floating-point weights can be pruned"
            )
        if weight.numel() == 0:
            raise ValueError(f"layers: {name!r} has an empty weight")
        selected.append((name, module))
    return selected


def _resolve_refs(model: nn.Module, refs: Sequence[str | nn.Module], argument: str) -> list[str]:
    if isinstance(refs, (str, nn.Module)):
        refs = [refs]
    modules = dict(model.named_modules())
    by_identity = {module: name for name, module in modules.items()}
    names = []
    for ref in refs:
        if isinstance(ref, nn.Module):
            if ref not in by_identity:
                raise ValueError(f"{argument}: module {type(ref).__name__} is not part of the model")
            names.append(by_identity[ref])
        elif isinstance(ref, str):
            if ref not in modules:
                close = difflib.get_close_matches(ref, [n for n in modules if n], n=3)
                hint = f"; did you mean {close}?" if close else ""
                raise ValueError(f"{argument}: the model has no module named {ref!r}{hint}")
            names.append(ref)
        else:
            raise TypeError(f"{argument}: expected module names or modules, got {type(ref).__name__}")
    return names


def _check_scope(scope: str) -> None:
    if scope not in ("layer", "global"):
        raise ValueError(f"scope: expected 'layer' or 'global', got {scope!r}")


def check_amount(value: Any, argument: str = "amount") -> float:
    """Validate one pruning fraction: a real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{argument}: expected a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"{argument}: expected a fraction in [0, 1), got {value!r} (1 would remove whole layers)"
        )
    return float(value)


def _layer_amounts(amount: Amount, names: list[str], scope: Scope) -> dict[str | None, float]:
    if isinstance(amount, Mapping):
        if scope == "global":
            raise ValueError("amount: a per-layer dict needs scope='layer'")
        unknown = [k for k in amount if k not in names]
        if unknown:
            raise ValueError(f"amount: no prunable layer named {unknown}; prunable layers are {names}")
        return {name: check_amount(amount.get(name, 0.0), f"amount[{name!r}]") for name in names}
    value = check_amount(amount)
    return {None: value, **dict.fromkeys(names, value)}


def _jsonable_amount(amount: Amount) -> float | dict[str, float]:
    return dict(amount) if isinstance(amount, Mapping) else float(amount)


def _count(amount: float, n: int) -> int:
    return math.floor(amount * n + 0.5)


def _rank_masked_first(scores: torch.Tensor, module: nn.Module, tensor_name: str) -> torch.Tensor:
    mask = getattr(module, f"{tensor_name}_mask", None)
    if isinstance(mask, torch.Tensor):
        scores = scores.masked_fill(mask.detach().flatten().cpu() == 0, -math.inf)
    return scores


def _already_masked(scores: torch.Tensor) -> int:
    return int(torch.isneginf(scores).sum())


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted indices of the ``count`` lowest scores; ties go to the lower index."""
    order = torch.sort(scores, stable=True).indices
    return order[:count].sort().values


def _select_global(
    scores: list[torch.Tensor], sizes: list[int], amount: float, min_channels: int
) -> list[torch.Tensor]:
    total = sum(sizes)
    target = _count(amount, total)
    capacity = [size - min(min_channels, size) for size in sizes]
    if target > sum(capacity):
        raise ValueError(
            f"amount: {amount} asks to remove {target} of {total} channels, but min_channels={min_channels} "
            f"allows at most {sum(capacity)}"
        )
    flat = torch.cat(scores)
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    local = torch.cat([torch.arange(size) for size in sizes])
    taken = [0] * len(sizes)
    chosen: list[list[int]] = [[] for _ in sizes]
    remaining = target
    for index in torch.sort(flat, stable=True).indices.tolist():
        if remaining == 0:
            break
        g = int(owner[index])
        if taken[g] < capacity[g]:
            taken[g] += 1
            chosen[g].append(int(local[index]))
            remaining -= 1
    return [torch.tensor(sorted(c), dtype=torch.long) for c in chosen]


def _round_kept(scores: torch.Tensor, removed: torch.Tensor, round_to: int) -> torch.Tensor:
    size = scores.numel()
    kept = min(size, -(-(size - removed.numel()) // round_to) * round_to)
    # Give back the best-scored of the removed channels until the kept count is a multiple of round_to.
    order = removed[torch.sort(scores[removed], stable=True).indices]
    return order[: size - kept].sort().values


def _coupled_names(group: Any, names: Mapping[nn.Module, str], root: str) -> tuple[str, ...]:
    found = []
    for item in group:
        name = names.get(item.dep.target.module)
        if name is not None and name != root and name not in found:
            found.append(name)
    return tuple(found)


def measure_plan(plan: PruningPlan, model: nn.Module, example_input: torch.Tensor) -> None:
    """Fill the plan's parameter and FLOP counts by applying it to a copy of ``model``."""
    from pyprune.measure import count

    pruned = copy.deepcopy(model)
    plan.apply(pruned)
    before, after = count(model, example_input), count(pruned, example_input)
    plan.totals = {
        "params": [before.params, after.params],
        "nonzero_params": [before.nonzero_params, after.nonzero_params],
        "flops": [before.flops, after.flops],
    }
    for layer in plan.layers:
        layer.params_before = _own_params(model.get_submodule(layer.name))
        layer.params_after = _own_params(pruned.get_submodule(layer.name))
        layer.flops_before = before.per_module_flops.get(layer.name, 0)
        layer.flops_after = after.per_module_flops.get(layer.name, 0)


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))
