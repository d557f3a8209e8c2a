"""Selection: turn a criterion's scores into a :class:`~pyprune.pruning.plan.PruningPlan` without touching the model.

* :func:`plan_unstructured`: individual weights, per layer (exactly ``round(amount * numel)`` per layer)
  or globally over all selected layers (iterative magnitude pruning).
* :func:`plan_structured`: output channels (conv filters, Linear rows), per dependency group or globally, with
  ``min_channels``, ``round_to`` and Li et al.'s greedy mode; removed physically (``mode="remove"``) or masked
  (``mode="mask"``, unit pruning).

Counts round half up (``floor(amount * n + 0.5)``). Ranking is by ascending score with ties broken by position
(layer order, then index), so plans are deterministic. ``amount`` is the fraction of weights (channels) that are
gone *after* the plan, counting weights already masked by an earlier ``torch.nn.utils.prune`` mask: those are
always kept masked and ranked first.

The model is never modified: structured planning traces it (Torch-Pruning's trace leaves no hook behind and every
training flag as it was), reads its weights, and measures the plan from the shapes the cuts leave or on a copy of
its module tree (sharing its tensors, which nothing there writes into). Which layers are candidates is :mod:`pyprune.pruning.layers`'s business;
which channels are tied together, :mod:`pyprune.pruning.groups`'s.
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from pyprune.activations import call_model, eval_mode
from pyprune.pruning.allocation import Budget, BudgetCounter, allocate, channel_costs, check_budget
from pyprune.pruning.apply import (
    CONFIG_NOTE_ATTRIBUTE,
    UNIT_GRANULARITIES,
    apply_traced,
    channel_cuts,
    describe_input,
    remember_cuts,
    removed_by_cuts,
)
from pyprune.pruning.attention import (
    UnitSpec,
    find_units,
    is_conv1d,
    is_hf_model,
    projection_names,
    unit_scores,
)
from pyprune.pruning.criteria.base import ChannelCriterion, WeightCriterion
from pyprune.pruning.criteria.magnitude import FilterNorm, Magnitude
from pyprune.pruning.fingerprint import model_fingerprint
from pyprune.pruning.groups import (
    GroupReduction,
    build_dependency_graph,
    consumer_inputs,
    group_reducer,
    group_scores,
    index_mappings_fixed,
    out_members,
    prunable_groups,
    prunes,
)
from pyprune.pruning.layers import (
    LayerRefs,
    check_materialised,
    output_layer_name,
    resolve_layer_refs,
    select_layers,
    weight_layers,
)
from pyprune.pruning.plan import ApplyMode, LayerPlan, PruningPlan, check_output_kept, check_untied

if TYPE_CHECKING:
    from pyprune.measure import ModelCount

Scope = Literal["layer", "global"]
Amount = float | Mapping[str, float]


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
        # chosen is sorted: split it at the layer offsets (one scan of it per layer was O(layers x chosen)).
        bounds = torch.searchsorted(chosen, offsets).tolist()
        removed = [
            chosen[a:b] - lo for (a, b), lo in zip(itertools.pairwise(bounds), offsets.tolist(), strict=False)
        ]
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
        options={
            "amount": _jsonable_amount(amount),
            "scope": scope,
            "criterion": repr(criterion),
            "untouched": _untouched_weights(model, [name for name, _ in selected], layers, ignored_layers),
        },
    )
    check_untied(plan, model)
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
    attention: Literal["heads", "skip"] = "heads",
    budget: Budget = "channels",
) -> PruningPlan:
    """Plan channel (structured) pruning.

    With ``mode="remove"`` (default) the model is traced by Torch-Pruning on ``example_input`` and each
    dependency group (a root Linear/ConvNd layer plus everything coupled to its output channels) is scored
    with :func:`~pyprune.pruning.groups.group_scores` and pruned as one. With ``mode="mask"`` every layer is its
    own group and the plan masks rows of ``weight`` and entries of ``bias`` (unit pruning; exact only
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
        attention: ``"heads"`` (default) removes whole units in the layers :mod:`pyprune.pruning.attention`
            recognises: attention heads (under grouped-query attention whole key/value groups with the query heads
            that share them) and the hidden units of GPT-2's Conv1D MLPs, by slicing their projections and
            rewriting the layer's attributes (``mode="remove"`` only). A unit is scored by the criterion's own
            ``unit_scores`` where it has one (Taylor: Michel et al. 2019's head importance), else by
            ``group_reduction`` over the criterion's scores of the unit's q/k/v (or input) rows; units take their
            layer's ``amount`` (``scope="layer"``, at least one kept) or are ranked with every channel
            (``scope="global"``). ``"skip"`` leaves those layers and their projections as they are, listed in
            ``plan.options["untouched"]``. Either way their projections are never cut as channels: that breaks
            the reshape into heads.
        budget: what ``amount`` is a fraction of: ``"channels"`` (default, as described above), or ``"flops"`` /
            ``"params"``: the whole model's FLOPs (2 per multiply-accumulate, counted on ``example_input``) or
            parameters, removed by score per cost (``scope="global"``) or one uniform channel fraction
            (``scope="layer"``), verified on exact counts; target and reached fraction in ``plan.options["budget"]``.
            See :mod:`pyprune.pruning.allocation`.

    Layers whose output width the plan leaves unchanged are listed with the reason in
    ``plan.options["untouched"]`` (the output layer, ``ignored_layers``, the residual stream of a transformer,
    groups tied to a grouped convolution, ...). ``example_input`` may be a tensor, a tuple of tensors (positional
    arguments) or a dict (keyword arguments, e.g. ``input_ids`` / ``attention_mask`` / ``pixel_values``).
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
    input_spec = describe_input(example_input) if example_input is not None else None
    check_budget(budget, amount=amount, example_input=example_input, mode=mode, greedy=greedy)
    if attention not in ("heads", "skip"):
        raise ValueError(f"attention: expected 'heads' or 'skip', got {attention!r}")
    if mode == "remove" and example_input is None:
        raise ValueError("example_input: required with mode='remove' (Torch-Pruning traces the model on it)")
    check_materialised(model)

    # Traced and scored where it stands: tracing leaves no hook and restores every training flag, even when it
    # fails, and scoring only reads; measuring cuts a copy, if anything (a deep copy of the module tree was a
    # tenth of planning mobilenet_v2).
    work = model
    names = {module: name for name, module in work.named_modules()}
    ignored = (
        resolve_layer_refs(work, ignored_layers, "ignored_layers") if ignored_layers is not None else None
    )
    default_ignored = ignored is None
    if ignored is None:
        ignored = [output_layer_name(work)]
    untouched: dict[str, str] = {}
    units: list[UnitSpec] = []
    graph = None
    if mode == "remove":
        unsupported: dict[str, str] = {}
        units = find_units(work, unsupported)
        projections = [*projection_names(units), *unsupported]
        untouched.update(unsupported)
        try:
            graph = trace(work, example_input, count=measure or budget != "channels")
        except ValueError as error:
            if not units or "example_input" in str(error).split(":")[0]:
                raise
            # GPT-2 (HF Conv1D everywhere) cannot be traced, but its heads and MLP units need no graph.
            graph = None
            trace_error = f"Torch-Pruning could not trace the model ({error.__cause__ or error})"
        blocked = [work.get_submodule(n) for n in dict.fromkeys([*ignored, *projections])]
        groups, refused = prunable_groups(work, graph, blocked)
        untouched.update(refused)
        # Definition order, not Torch-Pruning's: the greedy mode and the tables read layers front to back.
        position = {name: i for i, name in enumerate(dict(work.named_modules()))}
        groups.sort(key=lambda group: position[names[group[0].dep.target.module]])
        roots = [names[group[0].dep.target.module] for group in groups]
        if attention == "skip":
            for spec in units:
                for projection in [*spec.readers, spec.writer]:
                    untouched.setdefault(
                        projection, f"{spec.granularity} of {spec.name!r} left as is (attention='skip')"
                    )
            units = []
    else:
        groups = None
        roots = [name for name, _ in select_layers(work, None, ignored)]
    if not roots and not units:
        raise ValueError(
            "model: no prunable Linear/ConvNd layer or attention layer is left after ignored_layers"
            + (f" (untouched: {untouched})" if untouched else "")
        )
    unit_names = [spec.name for spec in units]
    amounts = _layer_amounts(amount, roots + unit_names, scope)
    sizes = [int(work.get_submodule(name).weight.shape[0]) for name in roots] + [s.num_units for s in units]
    reduce = group_reducer(group_reduction)

    dropped: dict[str, torch.Tensor] = {}
    scores: list[torch.Tensor] = []
    removed: list[torch.Tensor] = []
    for i, name in enumerate(roots + unit_names):
        if i >= len(roots):
            s = unit_scores(work, units[i - len(roots)], criterion, reduce)
        elif groups is not None:
            s = group_scores(groups[i], criterion, names, group_reduction, dropped if greedy else None)
        else:
            s = criterion.scores(work.get_submodule(name), name).detach().double().cpu()
        if torch.isnan(s).any():
            raise ValueError(f"criterion {criterion!r} returned NaN scores for layer {name!r}")
        scores.append(s)
        if scope == "layer":
            floor = 1 if i >= len(roots) else min_channels
            count = min(_count(amounts[name], sizes[i]), sizes[i] - min(floor, sizes[i]))
            removed.append(_lowest(s, count))
            if greedy and groups is not None and i < len(roots):
                for consumer, lost in consumer_inputs(groups[i], removed[-1], names).items():
                    dropped[consumer] = torch.cat([dropped.get(consumer, lost[:0]), lost]).unique()

    def rounded(removed: list[torch.Tensor]) -> list[torch.Tensor]:
        if round_to is None:
            return removed
        return [
            _round_kept(s, r, round_to) if i < len(roots) else r
            for i, (s, r) in enumerate(zip(scores, removed, strict=True))
        ]

    allocation = None
    if budget != "channels":
        before = graph.pyprune_count if graph is not None else None
        if before is None:
            from pyprune.measure import count

            before = count(work, example_input)
        removed, allocation = allocate(
            budget,
            amounts[None],
            scope=scope,
            scores=scores,
            floors=[min_channels if scope == "global" or i < len(roots) else 1 for i in range(len(sizes))],
            costs=channel_costs(work, groups or [], units, before.per_module_flops, budget),
            counter=BudgetCounter(work, groups or [], units, before, example_input),
            finish=rounded,
            limits=f"min_channels={min_channels}, round_to={round_to}, ignored_layers={ignored}",
        )
    else:
        if scope == "global":
            removed = _select_global(scores, sizes, amounts[None], min_channels)
        removed = rounded(removed)

    coupled = [
        _coupled_names(groups[i], names, roots[i]) if groups is not None else () for i in range(len(roots))
    ]
    coupled += [(*spec.readers, spec.writer) for spec in units]
    granularities = ["channels"] * len(roots) + [spec.granularity for spec in units]
    if mode == "remove" and graph is not None:
        # Layers whose output width changes; consumers that only lose inputs are listed as untouched.
        covered = {*roots, *(m for g in groups for m in out_members(g, names))}
        covered |= {n for spec in units for n in [*spec.readers, spec.writer]}
        with index_mappings_fixed(graph):
            untouched = _untouched(work, graph, names, covered, untouched, ignored, default_ignored, blocked)
    elif mode == "remove":
        covered = {n for c in coupled for n in c}
        for name in weight_layers(work):
            if name not in covered:
                untouched.setdefault(name, "in ignored_layers" if name in ignored else trace_error)
    else:
        untouched = _untouched_mask(work, roots, ignored, default_ignored)
    plan = PruningPlan(
        method=method or f"{criterion.name}/{scope}",
        mode=mode,
        layers=[
            LayerPlan(name, granularity, size, r, coupled=c)
            for name, granularity, size, r, c in zip(
                roots + unit_names, granularities, sizes, removed, coupled, strict=True
            )
        ],
        fingerprint=model_fingerprint(model),
        input_shape=tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else None,
        options={
            "amount": _jsonable_amount(amount),
            "scope": scope,
            "criterion": repr(criterion),
            "min_channels": min_channels,
            "round_to": round_to,
            "group_reduction": group_reduction,
            "greedy": greedy,
            "ignored_layers": list(ignored),
            "attention": attention,
            "input_spec": input_spec,
            "untouched": untouched,
        },
    )
    if allocation is not None:
        plan.options["budget"] = allocation
    if graph is not None and graph.pyprune_output_shapes is not None:
        plan.options["output_shapes"] = [list(shape) for shape in graph.pyprune_output_shapes]
    check_untied(plan, model)
    check_output_kept(plan, model)  # an explicit ignored_layers that leaves the output layer out: refused now
    measuring = example_input is not None and measure
    cuts = []
    if graph is not None and any(
        layer.num_removed for layer in plan.layers if layer.granularity == "channels"
    ):
        try:
            cuts = channel_cuts(plan, work, graph)
        except ValueError:
            if measuring:
                raise
            cuts = None  # measure=False plans are not checked here: applying the plan tells, as before
        if cuts is not None:
            # Applying the plan to the model (or another instance of its architecture) needs no second trace.
            remember_cuts(plan, work, cuts)
    if measuring:
        if mode == "remove":
            # The traced pass was the counting pass, and the cuts need no second trace.
            from pyprune.measure import flops_follow_weights

            before = None if graph is None else graph.pyprune_count
            nonzeros = None if graph is None else graph.pyprune_nonzeros
            # Measured without cutting (apply cuts the same tensors; cutting here too was a tenth of planning
            # resnet50) from the slices the cuts remove, where every FLOP is a plain layer's; else on a copy
            # sharing the model's tensors, pruned by the cuts.
            removed = None
            if (
                nonzeros is not None
                and flops_follow_weights(before, model)
                and all(layer.granularity == "channels" for layer in plan.layers)
                and not is_hf_model(model)  # its config is rewritten by applying the plan, and reported
            ):
                removed = removed_by_cuts(work, cuts)
            pruned = None
            if removed is None:
                shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
                pruned = copy.deepcopy(model, shared)
                apply_traced(plan, pruned, cuts)
            measure_plan(
                plan, model, example_input, pruned=pruned, before=before, nonzeros=nonzeros, removed=removed
            )
        else:
            measure_plan(plan, model, example_input)
    return plan


def _untouched(
    work: nn.Module,
    graph: Any,
    names: Mapping[nn.Module, str],
    covered: set[str],
    found: dict[str, str],
    ignored: list[str],
    default_ignored: bool,
    blocked: list[nn.Module],
) -> dict[str, str]:
    """``{layer: reason}`` for every weight layer whose output width the plan leaves as it is."""
    untouched = dict(found)
    blocked_names = {names[m] for m in blocked}
    for name in weight_layers(work):
        if name in covered or name in untouched:
            continue
        module = work.get_submodule(name)
        if name in ignored:
            untouched[name] = "output layer, left out by default" if default_ignored else "in ignored_layers"
        elif isinstance(module, nn.MultiheadAttention) or is_conv1d(module):
            untouched[name] = f"{type(module).__name__} outside a recognised attention layer or MLP"
        elif module not in graph.module2node:
            untouched[name] = "never ran in the forward pass on example_input"
        else:
            group = graph.get_pruning_group(
                module, graph.get_pruner_of_module(module).prune_out_channels, [0]
            )
            members = out_members(group, names)
            blockers = [
                names[item.dep.target.module]
                for item in group
                if names.get(item.dep.target.module) in blocked_names and prunes(item, "out")
            ]
            reason = (
                f"output channels tied to {blockers[:3]}{' ...' if len(blockers) > 3 else ''} (ignored or an "
                "attention projection: the residual stream / embedding width)"
                if blockers
                else "Torch-Pruning found no prunable group for it"
            )
            for member in [*members, name]:
                if member not in covered:
                    untouched.setdefault(member, reason)
    return untouched


def _untouched_weights(
    model: nn.Module, selected: list[str], layers: LayerRefs, ignored_layers: LayerRefs
) -> dict[str, str]:
    """``{layer: reason}`` for the weight layers an unstructured plan does not mask."""
    chosen = set(selected)
    skipped = (
        set(resolve_layer_refs(model, ignored_layers, "ignored_layers"))
        if ignored_layers is not None
        else set()
    )
    output = output_layer_name(model)
    untouched = {}
    for name in weight_layers(model):
        if name in chosen:
            continue
        module = model.get_submodule(name)
        if name in skipped:
            untouched[name] = "in ignored_layers"
        elif layers is not None:
            untouched[name] = "not in layers"
        elif name == output:
            untouched[name] = "output layer, left out by default"
        else:
            untouched[name] = (
                f"{type(module).__name__}: its in_proj_weight is not a module weight pyprune masks"
            )
    return untouched


def _untouched_mask(
    work: nn.Module, roots: list[str], ignored: list[str], default_ignored: bool
) -> dict[str, str]:
    untouched = {}
    for name in weight_layers(work):
        if name in roots:
            continue
        if name in ignored:
            untouched[name] = "output layer, left out by default" if default_ignored else "in ignored_layers"
        else:
            untouched[name] = f"{type(work.get_submodule(name)).__name__} is not a Linear/ConvNd layer"
    return untouched


def trace(work: nn.Module, example_input: Any, *, count: bool = False) -> Any:
    """Torch-Pruning's dependency graph of ``work`` (left as it was, also when tracing fails); with ``count``, also its parameter and FLOP counts (see :func:`~pyprune.pruning.groups.build_dependency_graph`).

    When tracing fails, a plain forward pass tells a wrong ``example_input`` (the model itself rejects it) from a
    model that Torch-Pruning cannot trace, and the error names the culprit.
    """
    try:
        return build_dependency_graph(work, example_input, count=count)
    except ValueError as error:
        try:
            with eval_mode(work), torch.no_grad():
                call_model(work, example_input)
        except Exception as forward_error:
            raise ValueError(
                f"example_input: the model fails on it ({describe_input(example_input)}): "
                f"{type(forward_error).__name__}: {forward_error}"
            ) from forward_error
        raise error


def _check_scope(scope: str) -> None:
    if scope not in ("layer", "global"):
        raise ValueError(f"scope: expected 'layer' or 'global', got {scope!r}")


def check_amount(value: Any, argument: str = "amount") -> float:
    """Validate one pruning fraction: a real number in [0, 1) (Python or NumPy scalar); returned as a float."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argument}: expected a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:  # NaN fails this too
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
    """Sorted indices of the ``count`` lowest scores; ties go to the lower index.

    Selection in linear time: the ``count``-th smallest value, everything below it, then the first of its ties
    by index. A stable float64 sort did the same in O(n log n) and was most of magnitude pruning's planning time
    (4.3 s of 6.5 s on a 1M-weight ViT on a loaded 2-core machine).
    """
    n = scores.numel()
    if count <= 0:
        return torch.zeros(0, dtype=torch.long)
    if count >= n:
        return torch.arange(n)
    threshold = torch.kthvalue(scores, count).values
    chosen = scores < threshold
    ties = scores == threshold
    # cumsum over the ties in index order keeps the first (count - below) of them.
    chosen |= ties & (ties.cumsum(0) <= count - int(chosen.sum()))
    return chosen.nonzero().flatten()


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


def measure_plan(
    plan: PruningPlan,
    model: nn.Module,
    example_input: torch.Tensor,
    pruned: nn.Module | None = None,
    before: ModelCount | None = None,
    nonzeros: Mapping[str, tuple[int, int]] | None = None,
    removed: Mapping[str, Mapping[int, Sequence[int]]] | None = None,
) -> None:
    """Fill the plan's parameter and FLOP counts by applying it to a copy of ``model``.

    ``pruned``: a copy of ``model`` with the plan already applied (the structured planner passes one pruned by the
    cuts it already computed, which saves a second trace). ``before``: ``count(model, example_input)`` when
    already known (the structured planner counts its trace). ``nonzeros`` and ``removed``, without ``pruned``:
    the model's :func:`pyprune.measure.nonzero_counts` and ``{parameter: {dim: removed indices}}``
    (:func:`~pyprune.pruning.apply.removed_by_cuts`), from which every count after follows without building the
    pruned model (:func:`pyprune.measure.count_cut`) where it can; else the plan is applied to a copy.
    """
    from pyprune.measure import count, count_cut, count_resized

    try:
        if before is None:
            before = count(model, example_input)
    except (RuntimeError, TypeError, ValueError, IndexError) as error:
        raise ValueError(
            f"example_input: the model fails on it ({describe_input(example_input)}): {type(error).__name__}: "
            f"{error}"
        ) from error
    after = None
    if nonzeros is not None and removed is not None and pruned is None:
        after = count_cut(before, model, nonzeros, removed)
        if after is not None:
            _fill_layers(plan, model, before, after, lambda name: _own_params_cut(model, name, removed))
            return
    if pruned is None:
        # Masks and cuts replace tensors rather than write into them, so the copy can share the model's; a plan
        # with new or rescaled weights writes them in place and gets a full copy.
        writes = bool(plan.weights or plan.rescale)
        shared = {} if writes else {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
        pruned = copy.deepcopy(model, shared)
        plan.apply(pruned)
    if is_hf_model(pruned):
        plan.options["hf_config"] = getattr(pruned, CONFIG_NOTE_ATTRIBUTE, None) or "rewritten"
    # Channel removal and masks scale a plain Linear/ConvNd's FLOPs with its weight, and head removal an attention
    # layer's with its heads: no forward pass needed then.
    units = {
        layer.name: (layer.size - layer.num_removed, layer.size, layer.coupled)
        for layer in plan.layers
        if layer.granularity in UNIT_GRANULARITIES
    }
    if after is None:
        after = count_resized(before, model, pruned, units) or count(pruned, example_input)
    _fill_layers(plan, model, before, after, lambda name: _own_params(pruned.get_submodule(name)), pruned)


def _fill_layers(
    plan: PruningPlan,
    model: nn.Module,
    before: ModelCount,
    after: ModelCount,
    own_params_after: Callable[[str], int],
    pruned: nn.Module | None = None,
) -> None:
    """The plan's totals and every layer's counts from the counts before and after; ``own_params_after(name)``:
    the parameters module ``name`` holds itself after pruning. ``pruned`` is needed for attention layers."""
    plan.totals = {
        "params": [before.params, after.params],
        "nonzero_params": [before.nonzero_params, after.nonzero_params],
        "flops": [before.flops, after.flops],
    }
    for layer in plan.layers:
        if layer.granularity in UNIT_GRANULARITIES:
            # An attention layer's (or MLP's) own counts are those of its projections.
            layer.params_before = sum(p.numel() for p in model.get_submodule(layer.name).parameters())
            layer.params_after = sum(p.numel() for p in pruned.get_submodule(layer.name).parameters())
            layer.flops_before = _flops_under(before.per_module_flops, layer.name)
            layer.flops_after = _flops_under(after.per_module_flops, layer.name)
            continue
        layer.params_before = _own_params(model.get_submodule(layer.name))
        layer.params_after = own_params_after(layer.name)
        layer.flops_before = before.per_module_flops.get(layer.name, 0)
        layer.flops_after = after.per_module_flops.get(layer.name, 0)


def _own_params_cut(model: nn.Module, name: str, removed: Mapping[str, Mapping[int, Sequence[int]]]) -> int:
    """The parameters module ``name`` holds itself once the ``removed`` slices are gone."""
    total = 0
    for tensor, param in model.get_submodule(name).named_parameters(recurse=False):
        dims = removed.get(f"{name}.{tensor}" if name else tensor, {})
        total += math.prod(size - len(dims.get(dim, ())) for dim, size in enumerate(param.shape))
    return total


def _flops_under(per_module: Mapping[str, int], name: str) -> int:
    return sum(
        flops for module, flops in per_module.items() if module == name or module.startswith(name + ".")
    )


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))
