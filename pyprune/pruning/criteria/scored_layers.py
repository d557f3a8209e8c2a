"""The layers a data-driven criterion scores and where it reads their outputs (Taylor, CKA damage, ablation).

Shared by the criteria that hook activations: which Linear/ConvNd layers are scored, an optional
``{layer: module}`` map of the module whose output stands for a layer's (e.g. the activation after it), and which
dim of an observed output holds the channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pyprune.activations import LayerSelector, resolve_layers
from pyprune.arguments import close_matches_hint
from pyprune.pruning.criteria.base import PRUNABLE_TYPES


def resolve_scored_layers(model: nn.Module, layers: LayerSelector | None) -> dict[str, nn.Module]:
    """``{name: module}`` of the Linear/ConvNd layers a data-driven criterion scores (default: all of them)."""
    if layers is None:
        selected = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
        if not selected:
            raise ValueError(f"model: {type(model).__name__} has no Linear or ConvNd layer to score")
    else:
        selected = resolve_layers(model, layers)
    for name, module in selected:
        if not isinstance(module, PRUNABLE_TYPES):
            raise TypeError(
                f"layers: {name!r} is a {type(module).__name__}; expected a Linear, Conv1d, Conv2d or Conv3d"
            )
    return dict(selected)


def resolve_points(model: nn.Module, layers: Mapping[str, nn.Module], point: Any) -> dict[str, str]:
    """Check a ``{layer name: module name}`` measurement-point mapping against the model; ``{}`` for None."""
    if point is None:
        return {}
    if not isinstance(point, Mapping):
        raise TypeError(f"point: expected a dict {{layer name: module name}}, got {type(point).__name__}")
    modules = dict(model.named_modules(remove_duplicate=False))
    resolved = {}
    for layer_name, module_name in point.items():
        if layer_name not in layers:
            raise ValueError(
                f"point: key {layer_name!r} is not a scored layer{close_matches_hint(layer_name, list(layers))}"
            )
        if not isinstance(module_name, str):
            raise TypeError(
                f"point[{layer_name!r}]: expected a module name (str), got {type(module_name).__name__}"
            )
        if module_name not in modules:
            valid = [n for n in modules if n]
            raise ValueError(
                f"point[{layer_name!r}]: {module_name!r} is not a module of {type(model).__name__}"
                f"{close_matches_hint(module_name, valid)}"
            )
        if module_name != layer_name:
            resolved[layer_name] = module_name
    return resolved


def channel_dim(z: torch.Tensor, layer: nn.Module) -> int | None:
    """Channel dim of ``z`` read as an output of ``layer``: last for Linear; 1 (0 if unbatched) for ConvNd."""
    if isinstance(layer, nn.Linear):
        return z.ndim - 1 if z.ndim >= 1 else None
    spatial = len(layer.kernel_size)
    return {spatial + 2: 1, spatial + 1: 0}.get(z.ndim)
