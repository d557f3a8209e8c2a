"""The SiPP/PFP sensitivity benchmark's layers, shared by ``bench_sensitivity.py`` and ``gpu_suite.py``: ResNet-56's
distinct convolutions and a wide Linear with their inputs, and the compiled update kernel timed alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pyprune import models
from pyprune.ops.backend import cpu_kernels, num_threads
from pyprune.ops.sensitivity import Geometry, denominators

IMAGE_SEED = 0
MODEL_SEED = 0


# ------------------------------------------------------------------------------------------------- layers


def geometry_of(module: nn.Module) -> Geometry:
    if isinstance(module, nn.Linear):
        return Geometry()
    return Geometry(module.kernel_size, module.stride, module.padding, module.dilation)


def signature(module: nn.Module, inputs: torch.Tensor) -> tuple:
    return (type(module).__name__, tuple(module.weight.shape), tuple(inputs.shape[1:]), geometry_of(module))


def doubled(inputs: torch.Tensor) -> torch.Tensor:
    """The tracker's batch-doubling rule for inputs with negative entries."""
    if bool((inputs < 0).any()):
        return torch.cat([inputs.clamp_min(0), (-inputs).clamp_min(0)])
    return inputs


def linear_layer(width: int, samples: int) -> dict[str, Any]:
    torch.manual_seed(MODEL_SEED)
    layer = nn.Linear(width, width)
    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    inputs = torch.randn(samples, width, generator=torch.Generator().manual_seed(IMAGE_SEED)).clamp_min(0)
    return {
        "name": f"Linear {width} x {width}",
        "weight": layer.weight.detach().clone(),
        "inputs": inputs,
        "geometry": Geometry(),
        "count": 1,
        "memory_sweep": True,
    }


def resnet_layers(samples: int) -> list[dict[str, Any]]:
    """Each distinct Linear/Conv2d of ResNet-56 with the inputs it sees on seeded images, and its multiplicity."""
    torch.manual_seed(MODEL_SEED)
    model = models.resnet56().eval()
    images = torch.randn(samples, 3, 32, 32, generator=torch.Generator().manual_seed(IMAGE_SEED))
    seen: dict[tuple, dict[str, Any]] = {}
    handles = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue

        def hook(module: nn.Module, args: tuple, name: str = name) -> None:
            key = signature(module, args[0])
            if key in seen:
                seen[key]["count"] += 1
                return
            seen[key] = {
                "name": f"resnet56.{name}",
                "weight": module.weight.detach().flatten(1).clone(),
                "inputs": args[0].detach().clone(),
                "geometry": geometry_of(module),
                "count": 1,
                "memory_sweep": name == "layer1.0.conv1",
            }

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return list(seen.values())


def describe(layer: dict[str, Any], size: int) -> dict[str, Any]:
    """Shapes of the computation at |S| = size: (examples after doubling, F, J, P)."""
    weight, geometry = layer["weight"], layer["geometry"]
    inputs = doubled(layer["inputs"][:size])
    z = denominators(weight, inputs[:1], geometry)
    return {
        "examples": inputs.shape[0],
        "filters": weight.shape[0],
        "columns": weight.shape[1],
        "patches": z.shape[-1],
    }


def kernel_only(weight: torch.Tensor, inputs: torch.Tensor, geometry: Geometry, fresh: Callable) -> Callable:
    """The C++ kernel alone, with z for the whole set computed once beforehand."""
    z = denominators(weight, inputs, geometry)
    pairs = (geometry.kernel_size, geometry.stride, geometry.padding, geometry.dilation)
    kernels = cpu_kernels()

    def run() -> None:
        s_mean, s_max = fresh()
        kernels.sensitivity_update(
            weight.numpy(), inputs.numpy(), z.numpy(), s_mean.numpy(), s_max.numpy(), *pairs, num_threads()
        )

    return run
