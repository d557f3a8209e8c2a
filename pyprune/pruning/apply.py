"""Applying a :class:`~pyprune.pruning.plan.PruningPlan`: the only step in pyprune that changes a model.

* ``mode="mask"``: ``torch.nn.utils.prune.custom_from_mask`` on ``weight`` (and, for channel plans, ``bias``), so
  the model gets the usual ``weight_orig`` / ``weight_mask`` pair, composes with masks already there and is undone
  or folded with ``prune.remove`` / :func:`make_permanent`.
* ``mode="remove"``: Torch-Pruning's dependency graph, traced on a zero input of the plan's ``input_shape``,
  removes each group's channels physically (BatchNorm, consumers' inputs, residual partners, flatten -> linear
  column blocks).

Everything that can be checked is checked before the first change (architecture fingerprint, index ranges). If
applying still fails part-way, every module's state is put back as it was: both Torch-Pruning and
``torch.nn.utils.prune`` *replace* parameters, buffers and attributes rather than writing into them, so restoring
each module's attribute dictionaries restores the model exactly, with the very same ``Parameter`` objects (an
optimizer holding them keeps working).

Every applied plan is appended to ``model.pyprune_history`` (plain dicts), which :func:`pyprune.save_pruned` stores
so that :func:`pyprune.load_pruned` can replay it on a fresh instance of the architecture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from pyprune.pruning.plan import LayerPlan, PruningPlan, check_fingerprint

HISTORY_ATTRIBUTE = "pyprune_history"


def apply_plan(plan: PruningPlan, model: nn.Module) -> nn.Module:
    """Apply ``plan`` to ``model`` in place; returns ``model``. See the module docstring."""
    if not isinstance(plan, PruningPlan):
        raise TypeError(f"plan: expected a PruningPlan, got {type(plan).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    check_fingerprint(plan, model)
    modules = dict(model.named_modules())
    for layer in plan.layers:
        _check_layer(layer, modules)
    scaled = _rescaled_tensors(plan, modules)
    saved = [tensor.detach().clone() for tensor, _ in scaled]
    try:
        with restore_on_error(model):
            _apply(plan, model, modules, scaled)
    except BaseException:
        # restore_on_error puts modules back but never sees in-place writes; undo the rescaling by hand.
        with torch.no_grad():
            for (tensor, _), value in zip(scaled, saved, strict=True):
                tensor.copy_(value)
        raise
    return model


def _rescaled_tensors(
    plan: PruningPlan, modules: dict[str, nn.Module]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight parameter, factors)`` for every entry of ``plan.rescale``, checked before anything changes."""
    pairs = []
    for name, factors in plan.rescale.items():
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise ValueError(f"plan.rescale: {name!r} is not a module with a weight in the model")
        # A masked weight is recomputed from weight_orig on every forward: scale the parameter behind it.
        weight = getattr(module, "weight_orig", module.weight)
        try:
            torch.broadcast_shapes(factors.shape, weight.shape)
        except RuntimeError:
            raise ValueError(
                f"plan.rescale[{name!r}]: factors of shape {tuple(factors.shape)} do not broadcast against the "
                f"weight's {tuple(weight.shape)}"
            ) from None
        pairs.append((weight, factors))
    return pairs


def _apply(
    plan: PruningPlan,
    model: nn.Module,
    modules: dict[str, nn.Module],
    scaled: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    with torch.no_grad():
        for weight, factors in scaled:
            weight.mul_(factors.to(weight.device, weight.dtype))
    if plan.mode == "mask":
        for layer in plan.layers:
            _apply_mask(layer, modules[layer.name])
    elif plan.mode == "remove":
        _remove_channels(plan, model, modules)
    else:
        raise ValueError(f"plan.mode: expected 'mask' or 'remove', got {plan.mode!r}")
    history = getattr(model, HISTORY_ATTRIBUTE, None)
    history = [] if history is None else list(history)
    history.append(plan.to_dict())
    # Set through object.__setattr__ so nn.Module does not try to register a list as a submodule.
    object.__setattr__(model, HISTORY_ATTRIBUTE, history)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every ``torch.nn.utils.prune`` mask of ``model`` into its tensor (``prune.remove``); returns ``model``.

    Pruned entries stay exactly zero, but nothing keeps them zero during later training any more.
    """
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return model


@contextmanager
def restore_on_error(model: nn.Module) -> Iterator[None]:
    """Run a block that mutates ``model``; if it raises, put every module's state back and re-raise."""
    snapshot = [(module, _shallow_state(module)) for module in model.modules()]
    history = getattr(model, HISTORY_ATTRIBUTE, None)
    try:
        yield
    except BaseException:
        for module, state in snapshot:
            module.__dict__.clear()
            module.__dict__.update(state)
        if history is None:
            model.__dict__.pop(HISTORY_ATTRIBUTE, None)
        else:
            object.__setattr__(model, HISTORY_ATTRIBUTE, history)
        raise


def _shallow_state(module: nn.Module) -> dict[str, Any]:
    # One level deeper than a plain dict copy: the registries (_parameters, _buffers, hook dicts, ...) are
    # themselves replaced-into, so they must be copies; the tensors in them are never written in place.
    return {key: value.copy() if isinstance(value, dict) else value for key, value in module.__dict__.items()}


def _check_layer(layer: LayerPlan, modules: dict[str, nn.Module]) -> None:
    module = modules.get(layer.name)
    if module is None:
        raise ValueError(f"plan: layer {layer.name!r} does not exist in the model")
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"plan: layer {layer.name!r} ({type(module).__name__}) has no weight tensor")
    size = weight.numel() if layer.granularity == "weights" else weight.shape[0]
    if size != layer.size:
        raise ValueError(
            f"plan: layer {layer.name!r} has {size} {layer.granularity}, the plan expects {layer.size}"
        )
    if layer.num_removed and (int(layer.removed.min()) < 0 or int(layer.removed.max()) >= size):
        raise ValueError(f"plan: layer {layer.name!r} has removed indices outside [0, {size})")
    if layer.num_removed >= size:
        raise ValueError(f"plan: layer {layer.name!r} would lose all of its {size} {layer.granularity}")


def _apply_mask(layer: LayerPlan, module: nn.Module) -> None:
    weight = module.weight
    prune.custom_from_mask(module, "weight", layer.keep_mask(weight.shape).to(weight.device))
    bias = getattr(module, "bias", None)
    if layer.granularity == "channels" and isinstance(bias, torch.Tensor):
        # A masked unit with a surviving bias still emits the constant act(b): zero the bias too (SPEC §4.3).
        prune.custom_from_mask(module, "bias", layer.keep_mask(bias.shape).to(bias.device))


def _remove_channels(plan: PruningPlan, model: nn.Module, modules: dict[str, nn.Module]) -> None:
    from pyprune.pruning.groups import build_dependency_graph

    if plan.input_shape is None:
        raise ValueError("plan: a plan that removes channels needs input_shape to trace the model")
    graph = build_dependency_graph(model, example_input_from_shape(model, plan.input_shape))
    for layer in plan.layers:
        if layer.granularity != "channels":
            raise ValueError(
                f"plan: layer {layer.name!r} has weight granularity but the plan removes channels"
            )
        module = modules[layer.name]
        prune_out = graph.get_pruner_of_module(module).prune_out_channels
        group = graph.get_pruning_group(module, prune_out, idxs=layer.removed.tolist())
        if not graph.check_pruning_group(group):
            raise ValueError(
                f"plan: removing channels {layer.removed.tolist()} of {layer.name!r} is not valid"
            )
        group.prune()


def example_input_from_shape(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """A zero tensor of ``shape`` with the dtype and device of ``model``'s first floating parameter."""
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = torch.float32 if reference is None else reference.dtype
    device = None if reference is None else reference.device
    return torch.zeros(shape, dtype=dtype, device=device)
