"""Dependency groups (Torch-Pruning) and how a channel criterion scores a whole group.

Removing output channel ``c`` of a conv also removes channel ``c`` of the BatchNorm after it, input channel ``c``
of every consumer, the matching column block of a linear layer after a flatten, and channel ``c`` of every other
layer added to the same residual stream. Torch-Pruning's dependency graph finds these *groups*; pyprune uses it
rather than a home-made graph.

Group score of root channel ``c``: the criterion's score of ``c`` in every layer of the group whose **output**
channels are pruned (the root, residual partners; not BatchNorm, not consumers), combined by ``reduction``:
``"mean"`` (default: a residual stream written by three convs is judged by all three equally), ``"sum"``,
``"max"`` or ``"first"`` (the root alone). Consumers' input weights are not scored, as in Li et al. 2017,
where a filter is judged by its own incoming weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from pyprune.pruning.attention import is_hf_model
from pyprune.pruning.criteria.base import PRUNABLE_TYPES, ChannelCriterion

if TYPE_CHECKING:
    import torch_pruning as tp

GroupReduction = Literal["mean", "sum", "max", "first"]
GROUP_REDUCERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": lambda scores: scores.mean(dim=0),
    "sum": lambda scores: scores.sum(dim=0),
    "max": lambda scores: scores.amax(dim=0),
    "first": lambda scores: scores[0],
}
"""How the scores of coupled layers (dim 0: one row per layer) or of a unit's rows combine into one score."""
GROUP_REDUCTIONS = tuple(GROUP_REDUCERS)


def group_reducer(reduction: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reducer named ``reduction``; ValueError naming ``group_reduction`` for any other name."""
    if reduction not in GROUP_REDUCERS:
        raise ValueError(f"group_reduction: expected one of {GROUP_REDUCTIONS}, got {reduction!r}")
    return GROUP_REDUCERS[reduction]


def build_dependency_graph(
    model: nn.Module, example_input: torch.Tensor, *, count: bool = False
) -> tp.DependencyGraph:
    """Trace ``model`` with Torch-Pruning on ``example_input``, in eval mode (BatchNorm statistics untouched).

    With ``count``, the traced forward pass is also counted: ``graph.pyprune_count`` is what
    :func:`pyprune.measure.count` would return for ``model`` and ``example_input``, which saves the planner's table
    a forward pass, and ``graph.pyprune_nonzeros`` its :func:`pyprune.measure.nonzero_counts`; both are None where
    the traced pass differs from ``count``'s (see :func:`_counted_forward`).

    Raises:
        ValueError: Torch-Pruning cannot trace the model; the message carries its error.
    """
    # Imported here: Torch-Pruning loads only when a model is first traced, not with pyprune.
    import torch_pruning as tp

    modes = [(m, m.training) for m in model.modules()]
    # Torch-Pruning's trace removes its forward hooks only when the forward pass returns: the model's own hooks are
    # put back exactly when it raises (the model is the user's, not a copy).
    hooks = [(m, dict(m._forward_hooks)) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad(), warnings.catch_warnings():  # Torch-Pruning traces through autograd
            # Torch-Pruning warns about every nn.Parameter used outside a module (ViT's cls_token and pos_embed):
            # they sit on the residual stream, which pyprune prunes only as a whole group, as it warns it will.
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected", category=UserWarning)
            # Torch-Pruning gives up on index mappings deeper than its recursion limit with only a warning, then
            # groups wrongly or for a very long time (torchvision's swin_t: still grouping after 5 minutes, out
            # of 24 GB): a bounded refusal instead.
            warnings.filterwarnings("error", message="Maximum recursive depth", category=UserWarning)
            # Traced from every tensor of the output: Hugging Face outputs also hold caches and nested tuples,
            # on which Torch-Pruning's own flattening fails ("'tuple' object has no attribute 'grad_fn'").
            shapes: list[tuple[int, ...]] = []

            def outputs(output: Any) -> list[torch.Tensor]:
                tensors = output_tensors(output)
                if not tensors:
                    raise TypeError(
                        f"the model's output ({type(output).__name__}) holds no tensor to trace from"
                    )
                shapes.extend(tuple(t.shape) for t in tensors)
                return tensors

            counts: list[Any] = []
            forward = _counted_forward(model, example_input, counts) if count else None
            unmapped: set[Any] = set()
            with _reshapes_left_unmapped(unmapped):
                graph = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_input, forward_fn=forward, output_transform=outputs
                )
            graph.pyprune_unmapped = unmapped
            graph.pyprune_count, graph.pyprune_nonzeros = counts[0] if len(counts) == 1 else (None, None)
            # The output shapes of the traced forward pass, which a pruned model must reproduce.
            graph.pyprune_output_shapes = shapes
            return graph
    except Exception as error:
        for module, registered in hooks:
            if len(module._forward_hooks) != len(registered):
                module._forward_hooks.clear()
                module._forward_hooks.update(registered)
        raise ValueError(
            f"model: Torch-Pruning could not trace it for structured pruning ({type(error).__name__}: {error}). "
            "Use unstructured or mask-mode pruning, or register a custom pruner with Torch-Pruning."
        ) from error
    finally:
        for module, training in modes:
            module.training = training


def _counted_forward(model: nn.Module, example_input: Any, counts: list[Any]) -> Callable[..., Any] | None:
    """A ``forward_fn`` for Torch-Pruning's trace that calls the model exactly as Torch-Pruning does and appends to
    ``counts`` a :class:`~pyprune.measure.ModelCount` of the pass that ran as :func:`pyprune.measure.count` runs
    it, with the model's :func:`~pyprune.measure.nonzero_counts`; None when no pass can be counted so.

    Torch-Pruning calls ``model(**inputs)`` for a dict, else ``model(*inputs)`` and, if that raises,
    ``model(inputs)``: so a tensor's pass is its second attempt (the first unpacks the batch), a tuple's its first.
    The trace runs with gradients, where ``nn.MultiheadAttention`` skips its fused fast path only if its weights
    require gradients; ``count`` switches that path off, so the pass counts alike only when every parameter does.
    """
    from pyprune.measure import count_from, counting_flops, nonzero_counts

    if not all(p.requires_grad for p in model.parameters()):
        return None
    counted_attempt = None
    if isinstance(example_input, dict):
        counted_attempt = 0
    elif isinstance(example_input, torch.Tensor):
        counted_attempt = 1
    elif (
        isinstance(example_input, tuple)
        and example_input
        and all(isinstance(x, torch.Tensor) for x in example_input)
    ):
        counted_attempt = 0
    if counted_attempt is None:
        return None

    def attempt(index: int, call: Callable[[], Any]) -> Any:
        if index != counted_attempt:
            return call()
        with counting_flops() as flop_counter:
            output = call()
        nonzeros = nonzero_counts(model)
        counts.append((count_from(model, flop_counter, sum(n for n, _ in nonzeros.values())), nonzeros))
        return output

    def forward(model: nn.Module, inputs: Any) -> Any:
        if isinstance(inputs, dict):
            return attempt(0, lambda: model(**inputs))
        try:
            return attempt(0, lambda: model(*inputs))
        except Exception:
            return attempt(1, lambda: model(inputs))

    return forward


@contextmanager
def index_mappings_fixed(graph: tp.DependencyGraph) -> Iterator[None]:
    """Within the block, ``graph``'s index mappings (channel offsets through concatenations, splits, reshapes) are
    computed once instead of at every ``get_pruning_group`` call; nothing may be pruned inside the block.

    Torch-Pruning recomputes every mapping of the whole graph before each group it builds, because pruning one group
    shifts the offsets seen by the next; when only groups are *listed*, they cannot shift. On densenet121 (58
    concatenations, 120 groups) that recomputation was 90% of listing the groups.
    """
    from torch_pruning.dependency import index_mapping

    update = index_mapping.update_index_mapping
    with _reshapes_left_unmapped(graph.pyprune_unmapped):
        update(graph)
    # Only this graph's updates are skipped: another graph traced meanwhile (another thread) still gets its own.
    index_mapping.update_index_mapping = lambda other: None if other is graph else update(other)
    try:
        yield
    finally:
        index_mapping.update_index_mapping = update


@contextmanager
def _reshapes_left_unmapped(unmapped: set[Any]) -> Iterator[None]:
    """Within the block, a reshape whose channel index mapping Torch-Pruning cannot compute keeps the identity
    mapping and is added to ``unmapped`` (:func:`prunable_groups` then leaves its groups whole), instead of failing
    the whole trace.

    Torch-Pruning infers a reshape's channel counts through the graph and divides one by the other; at a channel
    shuffle (torchvision's shufflenet_v2: a view into ``(N, groups, C / groups, H, W)``, a transpose, a view
    back) it infers 0 channels and raises ZeroDivisionError.
    """
    from torch_pruning.dependency import index_mapping

    update = index_mapping.update_reshape_index_mapping

    def update_or_leave(graph: Any, node: Any) -> None:
        try:
            update(graph, node)
        except ZeroDivisionError:
            unmapped.add(node)

    index_mapping.update_reshape_index_mapping = update_or_leave
    try:
        yield
    finally:
        index_mapping.update_reshape_index_mapping = update


def _channel_permutations(graph: Any) -> set[Any]:
    """The nodes of every reshape -> transpose/permute -> reshape chain in ``graph`` (a channel shuffle, a pixel
    shuffle): it reorders channels, which Torch-Pruning's index mappings (channel offsets and flatten strides)
    cannot express, so a group through it would cut unmatched channels on its two sides."""
    import torch_pruning as tp

    found = set()
    for node in graph.module2node.values():
        if node.type != tp.ops.OPTYPE.RESHAPE:
            continue
        for moved in node.outputs:
            if type(moved.grad_fn).__name__ not in ("TransposeBackward0", "PermuteBackward0"):
                continue
            chain, after = [node, moved], moved
            # .contiguous() between the transpose and the view back leaves a copy node.
            while len(after.outputs) == 1 and type(after.outputs[0].grad_fn).__name__ == "CloneBackward0":
                after = after.outputs[0]
                chain.append(after)
            for back in after.outputs:
                if back.type == tp.ops.OPTYPE.RESHAPE:
                    found.update([*chain, back])
    return found


def output_tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in a model output, depth-first through tuples, lists and dicts (Hugging Face outputs)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in output_tensors(item)]
    return []


def group_scores(
    group: tp.Group,
    criterion: ChannelCriterion,
    names: Mapping[nn.Module, str],
    reduction: GroupReduction = "mean",
    dropped_inputs: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """float64 ``(C_root,)`` scores of the root's output channels for a whole group; see the module docstring.

    Args:
        group: from Torch-Pruning; its first item is the root (a Linear or ConvNd) with all of its channels.
        criterion: scores each output-pruned layer of the group.
        names: module -> qualified name, as the criterion knows the layers.
        reduction: how the layers' scores of one channel combine.
        dropped_inputs: name -> input indices already removed upstream (Li et al.'s greedy mode).
    """
    reduce = group_reducer(reduction)
    size = int(group[0].dep.target.module.weight.shape[0])
    contributions = []
    for item in group:
        module = item.dep.target.module
        if not (isinstance(module, PRUNABLE_TYPES) and prunes(item, "out")):
            continue
        name = names[module]
        scores = criterion.scores(module, name, (dropped_inputs or {}).get(name))
        contribution = torch.zeros(size, dtype=torch.float64)
        contribution[torch.as_tensor(item.root_idxs, dtype=torch.long)] = (
            scores.detach().double().cpu()[torch.as_tensor(item.idxs, dtype=torch.long)]
        )
        contributions.append(contribution)
        if reduction == "first":
            break
    return reduce(torch.stack(contributions))


def consumer_inputs(
    group: tp.Group, removed: torch.Tensor, names: Mapping[nn.Module, str]
) -> dict[str, torch.Tensor]:
    """For each layer whose *inputs* the group prunes: the input indices lost when ``removed`` root channels go."""
    removed_set = set(removed.tolist())
    result: dict[str, torch.Tensor] = {}
    for item in group:
        module = item.dep.target.module
        if not (isinstance(module, PRUNABLE_TYPES) and prunes(item, "in")):
            continue
        lost = [i for i, r in zip(item.idxs, item.root_idxs, strict=True) if int(r) in removed_set]
        result[names[module]] = torch.tensor(sorted(int(i) for i in lost), dtype=torch.long)
    return result


def prunes(item: Any, side: Literal["in", "out"]) -> bool:
    # Torch-Pruning's handlers are bound methods named prune_out_channels / prune_in_channels of each layer's
    # pruner, for built-in and user-registered layer types alike.
    return getattr(item.dep.handler, "__name__", "") == f"prune_{side}_channels"


def prunable_groups(
    work: nn.Module, graph: Any, blocked: Sequence[nn.Module]
) -> tuple[list[Any], dict[str, str]]:
    """Torch-Pruning's groups of ``work`` that pyprune prunes by channel, and ``{layer: reason}`` for the rest.

    ``blocked`` modules keep their output channels (ignored layers and attention projections: a group that
    would cut them, such as a transformer's residual stream, is left whole). Also left whole: groups tied to a
    grouped (not depthwise) convolution, groups through a reshape that reorders channels (a channel shuffle), and,
    in a Hugging Face model, groups as wide as ``config.hidden_size``
    (one config field sets that width for every layer, so ``from_pretrained`` could not rebuild the model).
    """
    names = {module: name for name, module in work.named_modules()}
    hidden = work.config.hidden_size if is_hf_model(work) else None
    groups, untouched = [], {}
    if graph is None:
        return groups, untouched
    permutations = _channel_permutations(graph)
    with index_mappings_fixed(graph):
        all_groups, failures = _all_groups(graph, list(blocked))
    for module, error in failures.items():
        untouched[names[module]] = (
            f"Torch-Pruning could not group its channels ({type(error).__name__}: {error})"
            + (
                "; the model reorders channels by a reshape (a channel shuffle), which Torch-Pruning cannot map"
                if permutations
                else ""
            )
        )
    unmappable = graph.pyprune_unmapped | permutations
    for group in all_groups:
        reason = _grouped_conv(group, names)
        if reason is None and any(item.dep.target in unmappable for item in group):
            reason = (
                "its channels pass a reshape that reorders them (a channel shuffle), which Torch-Pruning cannot "
                "map from one side to the other"
            )
        if reason is None and hidden is not None and group[0].dep.target.module.weight.shape[0] == hidden:
            reason = (
                f"{hidden} wide like the model's hidden_size, which one Hugging Face config field sets for "
                "every layer"
            )
        if reason is None:
            groups.append(group)
        else:
            for member in out_members(group, names):
                untouched[member] = reason
    return groups, untouched


def _all_groups(graph: Any, ignored: list[nn.Module]) -> tuple[list[Any], dict[nn.Module, Exception]]:
    """Torch-Pruning's ``get_all_groups`` over pyprune's root types, except that a root whose group Torch-Pruning
    fails to build (an index mapping it inferred wrongly; torchvision's shufflenet_v2 ends in an IndexError at the
    split after its channel shuffle) is returned with its error instead of ending the listing."""
    ignored = [*ignored, *graph.IGNORED_LAYERS_IN_TRACING]
    visited: set[Any] = set()
    groups, failures = [], {}
    for module in list(graph.module2node):
        if module in visited or not isinstance(module, PRUNABLE_TYPES) or any(module is i for i in ignored):
            continue
        pruner = graph.get_pruner_of_module(module)
        channels = None if pruner is None else pruner.get_out_channels(module)
        if channels is None:
            continue
        try:
            group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(channels)))
        except (IndexError, ZeroDivisionError, ValueError) as error:
            failures[module] = error
            continue
        prunable = True
        for dep, _ in group:
            if graph.is_out_channel_pruning_fn(dep.handler):
                visited.add(dep.target.module)
                prunable = prunable and not any(dep.target.module is i for i in ignored)
        if prunable:
            groups.append(group)
    return groups, failures


def _grouped_conv(group: Any, names: Mapping[nn.Module, str]) -> str | None:
    """Why ``group`` cannot be pruned by channel when it touches a grouped (not depthwise) convolution, else None.

    Torch-Pruning removes arbitrary channels of a grouped conv, which leaves groups of unequal width and a
    failing forward (regnet_y_400mf: ``INDICES element is out of DATA bounds``).
    """
    for item in group:
        module = item.dep.target.module
        if (
            isinstance(module, nn.modules.conv._ConvNd)
            and module.groups > 1
            and not (module.groups == module.in_channels == module.out_channels)
        ):
            return (
                f"tied to grouped convolution {names[module]!r} (groups={module.groups}), whose groups would "
                "lose different numbers of channels"
            )
    return None


def out_members(group: Any, names: Mapping[nn.Module, str]) -> list[str]:
    """Names of the Linear/ConvNd layers of ``group`` whose output channels it removes."""
    return [
        names[item.dep.target.module]
        for item in group
        if isinstance(item.dep.target.module, PRUNABLE_TYPES) and prunes(item, "out")
    ]
