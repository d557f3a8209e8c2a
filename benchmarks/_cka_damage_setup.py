"""The CKA-damage benchmark's setup, shared by ``bench_cka_damage.py`` and ``gpu_suite.py``: the seeded conv layer
and batch, the ResNet plan's inputs, and a timer of the criterion's phases."""

from __future__ import annotations

import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch
from torch import nn

from pyprune.pruning import selection
from pyprune.pruning.criteria import cka_damage as cka_module

CKADamage = cka_module.CKADamage

MAP_SIZE = 8
INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
LAYER_SEED = 0
INPUT_SEED = 1
MODEL_SEED = 0
RBF_THRESHOLD = 0.5
PLAN_AMOUNT = 0.5
LAYER_NAME = "conv"


# --------------------------------------------------------------------------------------------- inputs


def make_layer(channels: int, seed: int = LAYER_SEED) -> nn.Sequential:
    """``Conv2d(C, C, 3, padding=1)``, He init times a per-filter scale ``exp(U(-1, 1))``, bias ``0.1 N(0, 1)``."""
    generator = torch.Generator().manual_seed(seed + channels)
    conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
    with torch.no_grad():
        fan_in = channels * 9
        weight = torch.randn(conv.weight.shape, generator=generator) * math.sqrt(2.0 / fan_in)
        scale = torch.exp(torch.rand(channels, generator=generator) * 2 - 1)
        conv.weight.copy_(weight * scale[:, None, None, None])
        conv.bias.copy_(0.1 * torch.randn(channels, generator=generator))
    return nn.Sequential(OrderedDict([(LAYER_NAME, conv)])).eval()


def make_batch(batch: int, channels: int, seed: int = INPUT_SEED) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed + channels)
    return torch.relu(torch.randn(batch, channels, MAP_SIZE, MAP_SIZE, generator=generator))


# ------------------------------------------------------------------------------------- pyprune timers


class PhaseTimer:
    """Wall time spent inside chosen functions, by wrapping them (``mock.patch.object``) for a block."""

    TARGETS: tuple[tuple[Any, str, str], ...] = (
        (CKADamage, "accumulate_over", "statistics"),
        (CKADamage, "interaction", "M"),
        (cka_module, "greedy_removal_order", "greedy"),
        (cka_module, "gram_hsic_terms", "hsic"),  # inside M (flatten, sample space); not added to the rest
        (cka_module, "_single_order", "single"),
        (cka_module, "_rbf_order", "rbf"),
        (selection, "build_dependency_graph", "trace"),
        (selection, "measure_plan", "table"),
    )

    NESTED = frozenset({"hsic"})

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def _wrap(self, fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

        return wrapper

    @contextlib.contextmanager
    def active(self) -> Iterator[PhaseTimer]:
        self.seconds = {}
        with contextlib.ExitStack() as stack:
            for owner, attr, phase in self.TARGETS:
                stack.enter_context(mock.patch.object(owner, attr, self._wrap(getattr(owner, attr), phase)))
            yield self


def batch_sizes(samples: int, batch: int) -> list[int]:
    return [min(batch, samples - start) for start in range(0, samples, batch)]
