"""Which layers of a model pyprune prunes, and how callers name them.

Layers are named as in ``model.named_modules()``; arguments such as ``layers`` and ``ignored_layers`` take names
or the modules themselves. By default every Linear/ConvNd (and Hugging Face Conv1D) is prunable except the output
layer, the last one in definition order.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Sequence

import torch
from torch import nn

from pyprune.pruning.attention import is_conv1d
from pyprune.pruning.criteria.base import PRUNABLE_TYPES

LayerRefs = Sequence[str | nn.Module] | None


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
    check_materialised(model)
    if layers is not None:
        names = resolve_layer_refs(model, layers, "layers")
        if not names:
            raise ValueError("layers: expected at least one layer name, got none")
    else:
        output = output_layer_name(model)
        names = [
            n
            for n, m in model.named_modules()
            if (isinstance(m, PRUNABLE_TYPES) or is_conv1d(m)) and n != output
        ]
    if ignored_layers is not None:
        skip = set(resolve_layer_refs(model, ignored_layers, "ignored_layers"))
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


def resolve_layer_refs(model: nn.Module, refs: Sequence[str | nn.Module], argument: str) -> list[str]:
    """Qualified names of ``refs`` (module names or the modules themselves; one alone is taken as a list of one).

    Raises ValueError naming ``argument`` (with close matches) for a name or module that is not part of ``model``.
    """
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


def weight_layers(model: nn.Module) -> list[str]:
    """Names of the modules that hold prunable weight matrices: Linear, ConvNd, Hugging Face Conv1D, and
    ``nn.MultiheadAttention`` (its ``in_proj_weight``)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (*PRUNABLE_TYPES, nn.MultiheadAttention)) or is_conv1d(module)
    ]


def check_materialised(model: nn.Module) -> None:
    """ValueError when ``model`` holds meta-device tensors (shapes without values): nothing can be scored."""
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise ValueError(
            "model: its tensors are on the meta device (shapes without values), so nothing can be scored; "
            "materialise it first (model.to_empty(device='cpu') and load its weights)"
        )
