"""pyprune.measure: hand-computed parameter and FLOP counts, per-module attribution, pruned layers, latency
(fields, threads, warm-up, the slow-model budget, timed with a fake clock where exact numbers are needed),
the before/after report and ``format_count``.

Every expected number here is derived by hand from the architecture, e.g. ``Linear(i, o)`` on a batch ``b``
has ``i*o + o`` parameters and ``2*b*i*o`` FLOPs, and ``Conv2d`` has
``2 * b * Cout * Hout * Wout * (Cin / groups) * k * k`` FLOPs (bias additions count 0).
"""

from __future__ import annotations

import json
import math
import re
import time
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

import pyprune.measure as measure
from pyprune.measure import (
    Latency,
    ModelCount,
    Report,
    ReportRow,
    count,
    format_count,
    latency,
    report,
)

# ---------------------------------------------------------------------------------------------------------------
# models


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def cnn(c1: int = 8) -> nn.Sequential:
    """On a (2, 3, 8, 8) input: 8x8 -> conv (stride 1) 8x8 -> conv (stride 2) 4x4 -> grouped conv 4x4."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, c1, 3, padding=1),
        nn.BatchNorm2d(c1),
        nn.ReLU(),
        nn.Conv2d(c1, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def cnn_flops(c1: int, batch: int = 2) -> dict[str, int]:
    return {
        "0": 2 * batch * c1 * 8 * 8 * 3 * 3 * 3,
        "3": 2 * batch * 16 * 4 * 4 * c1 * 3 * 3,
        "5": 2 * batch * 16 * 4 * 4 * (16 // 4) * 3 * 3,
        "8": 2 * batch * 10 * 16,
    }


def cnn_params(c1: int) -> int:
    return (
        (3 * c1 * 9 + c1)  # conv 0
        + 2 * c1  # batch norm weight and bias (running stats are buffers)
        + (c1 * 16 * 9 + 16)  # conv 3
        + 16 * 4 * 9  # grouped conv 5, no bias
        + (16 * 10 + 10)  # linear 8
    )


class OwnMatmul(nn.Module):
    """A linear submodule followed by a matmul with a raw parameter in this module's own forward."""

    def __init__(self, features: int = 6) -> None:
        super().__init__()
        self.lin = nn.Linear(features, features)
        self.w = nn.Parameter(torch.randn(features, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) @ self.w


class Recorder(nn.Module):
    """Records the mode it was called in; optionally raises."""

    def __init__(self, raise_error: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.raise_error = raise_error
        self.seen: list[dict[str, object]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(
            {
                "training": [m.training for m in self.modules()],
                "grad": torch.is_grad_enabled(),
                "inference": torch.is_inference_mode_enabled(),
                "threads": torch.get_num_threads(),
            }
        )
        if self.raise_error:
            raise RuntimeError("boom")
        return self.lin(x)


def mixed_training(raise_error: bool = False) -> tuple[nn.Module, list[bool]]:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), Recorder(raise_error), nn.BatchNorm1d(4))
    model.train()
    model[1].eval()
    model[2].lin.eval()
    return model, [m.training for m in model.modules()]


# ---------------------------------------------------------------------------------------------------------------
# count: hand-computed totals


def test_count_mlp_by_hand():
    batch = 4
    c = count(mlp(), torch.randn(batch, 784))
    assert c.params == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 266_610
    assert c.nonzero_params == c.params  # random init: no zeros
    assert c.flops == 2 * batch * (784 * 300 + 300 * 100 + 100 * 10)
    assert c.macs == batch * (784 * 300 + 300 * 100 + 100 * 10)
    assert c.per_module_flops == {
        "0": 2 * batch * 784 * 300,
        "2": 2 * batch * 300 * 100,
        "4": 2 * batch * 100 * 10,
    }
    assert sum(c.per_module_flops.values()) == c.flops
    assert c.sparsity == 0.0


def test_count_cnn_by_hand():
    c = count(cnn(), torch.randn(2, 3, 8, 8))
    assert c.params == cnn_params(8) == 2154
    # BatchNorm's bias starts at zero: 8 zero parameters.
    assert c.nonzero_params == 2154 - 8
    assert c.sparsity == pytest.approx(8 / 2154)
    expected = cnn_flops(8)
    assert c.per_module_flops == expected
    assert c.flops == sum(expected.values()) == 166_528
    assert c.macs == 166_528 // 2


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "padding", "dilation", "groups", "size"),
    [
        (3, 5, 3, 1, 0, 1, 1, 7),
        (4, 6, 3, 2, 1, 1, 2, 9),
        (6, 6, 5, 1, 2, 2, 3, 10),
        (2, 4, 1, 3, 0, 1, 1, 8),
    ],
)
def test_conv_flops_formula(cin, cout, k, stride, padding, dilation, groups, size):
    batch = 3
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, groups=groups)
    out = (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    c = count(conv, torch.randn(batch, cin, size, size))
    assert c.flops == 2 * batch * cout * out * out * (cin // groups) * k * k
    assert c.params == cout * (cin // groups) * k * k + cout
    assert c.per_module_flops == {"": c.flops}


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 5),
    fan_in=st.integers(1, 40),
    fan_out=st.integers(1, 40),
    bias=st.booleans(),
)
def test_linear_formula(batch, fan_in, fan_out, bias):
    layer = nn.Linear(fan_in, fan_out, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(fan_out, fan_in) + 0.5)  # strictly nonzero
        if bias:
            layer.bias.copy_(torch.rand(fan_out) + 0.5)
    c = count(layer, torch.randn(batch, fan_in))
    assert c.params == fan_in * fan_out + (fan_out if bias else 0)
    assert c.nonzero_params == c.params
    assert c.flops == 2 * batch * fan_in * fan_out
    assert c.macs == batch * fan_in * fan_out
    assert c.per_module_flops == {"": 2 * batch * fan_in * fan_out}


def test_linear_on_extra_leading_dims():
    c = count(nn.Linear(5, 7), torch.randn(2, 3, 5))
    assert c.flops == 2 * (2 * 3) * 5 * 7


def test_model_without_parameters():
    c = count(nn.Sequential(nn.ReLU(), nn.Flatten()), torch.randn(2, 3))
    assert c == ModelCount(params=0, nonzero_params=0, flops=0, macs=0, per_module_flops={})
    assert c.sparsity == 0.0


# ---------------------------------------------------------------------------------------------------------------
# count: per-module attribution


def test_nested_sequential_keys():
    batch = 3
    model = nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.ReLU()), nn.Linear(5, 3))
    c = count(model, torch.randn(batch, 6))
    assert c.per_module_flops == {"0.0": 2 * batch * 6 * 5, "1": 2 * batch * 5 * 3}
    assert sum(c.per_module_flops.values()) == c.flops


def test_root_own_matmul_is_attributed_to_root():
    batch = 2
    c = count(OwnMatmul(6), torch.randn(batch, 6))
    assert c.per_module_flops == {"lin": 2 * batch * 6 * 6, "": 2 * batch * 6 * 6}
    assert c.flops == 4 * batch * 6 * 6
    assert c.params == 6 * 6 + 6 + 6 * 6


def test_parent_own_matmul_is_attributed_to_parent():
    batch = 5
    model = nn.Sequential(OwnMatmul(6), nn.Linear(6, 2))
    c = count(model, torch.randn(batch, 6))
    assert c.per_module_flops == {
        "0.lin": 2 * batch * 6 * 6,
        "0": 2 * batch * 6 * 6,
        "1": 2 * batch * 6 * 2,
    }
    assert sum(c.per_module_flops.values()) == c.flops == 2 * batch * (36 + 36 + 12)


def test_deeply_nested_custom_modules():
    batch = 2
    model = nn.Sequential(
        nn.Sequential(OwnMatmul(4), nn.ReLU()), nn.Sequential(nn.Sequential(nn.Linear(4, 3)))
    )
    c = count(model, torch.randn(batch, 4))
    assert c.per_module_flops == {
        "0.0.lin": 2 * batch * 16,
        "0.0": 2 * batch * 16,
        "1.0.0": 2 * batch * 4 * 3,
    }
    assert sum(c.per_module_flops.values()) == c.flops


class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class _CallsGrandchild(nn.Module):
    """Calls ``self.block.lin`` directly, never ``self.block``: only ``block.lin`` runs any FLOPs."""

    def __init__(self) -> None:
        super().__init__()
        self.block = _Inner()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.lin(x)


def test_grandchild_called_directly_is_innermost():
    # The docstring: each FLOP goes to the innermost module that ran it; modules without FLOPs are left out.
    # ``block`` never ran and the root computed nothing itself, so only ``block.lin`` may appear, and no
    # module may get a negative count.
    batch = 2
    c = count(_CallsGrandchild(), torch.randn(batch, 4))
    assert c.flops == 2 * batch * 4 * 4
    assert all(v > 0 for v in c.per_module_flops.values()), c.per_module_flops
    assert c.per_module_flops == {"block.lin": 2 * batch * 4 * 4}


class _Unregistered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.helpers = [nn.Linear(4, 3)]  # a plain list: not a registered submodule
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.helpers[0](x))


def test_unregistered_module_flops_stay_in_caller():
    batch = 3
    c = count(_Unregistered(), torch.randn(batch, 4))
    assert c.params == 3 * 2 + 2  # the helper's parameters are not the model's
    assert c.per_module_flops == {"": 2 * batch * 4 * 3, "head": 2 * batch * 3 * 2}
    assert c.flops == 2 * batch * (12 + 6)


class _SharedUnderTwoParents(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        shared = nn.Linear(4, 4)
        self.a = nn.Sequential(shared)
        self.b = nn.Sequential(shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x)  # called from the parent under its first name only


def test_shared_module_called_from_first_parent_is_exact():
    batch = 2
    model = _SharedUnderTwoParents()
    c = count(model, torch.randn(batch, 4))
    assert c.params == 4 * 4 + 4
    assert c.per_module_flops == {"a.0": 2 * batch * 16}
    assert c.flops == 2 * batch * 16


# ---------------------------------------------------------------------------------------------------------------
# count: shared parameters and modules


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(5, 5, bias=False)
        self.dec = nn.Linear(5, 5, bias=False)
        self.dec.weight = self.enc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x))


def test_tied_parameters_counted_once():
    batch = 2
    model = _Tied()
    with torch.no_grad():
        model.enc.weight.copy_(torch.rand(5, 5) + 0.5)
        model.enc.weight[0, :3] = 0.0
    c = count(model, torch.randn(batch, 5))
    assert c.params == 25
    assert c.nonzero_params == 25 - 3  # not 2 * 25 - 2 * 3
    assert c.flops == 2 * (2 * batch * 5 * 5)  # both layers run
    assert c.per_module_flops == {"enc": 2 * batch * 25, "dec": 2 * batch * 25}


def test_module_called_twice():
    batch = 3
    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    c = count(model, torch.randn(batch, 4))
    assert c.params == 4 * 4 + 4
    assert c.flops == 2 * (2 * batch * 16)
    assert c.per_module_flops == {"0": 2 * (2 * batch * 16)}


# ---------------------------------------------------------------------------------------------------------------
# count: pruning


def _strictly_nonzero(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    return model


def test_unstructured_mask_changes_only_nonzero():
    batch = 4
    model = _strictly_nonzero(mlp())
    x = torch.randn(batch, 784)
    before = count(model, x)
    prune.l1_unstructured(model[2], "weight", amount=37)
    after = count(model, x)
    assert after.params == before.params == 266_610  # weight_orig counted once, the mask is a buffer
    assert after.nonzero_params == before.nonzero_params - 37
    assert after.flops == before.flops
    assert after.per_module_flops == before.per_module_flops
    assert after.sparsity == pytest.approx(37 / 266_610)

    # Pruning the same tensor again (a PruningContainer) zeroes 10 more of the remaining entries.
    prune.random_unstructured(model[2], "weight", amount=10)
    again = count(model, x)
    assert again.nonzero_params == before.nonzero_params - 47
    assert again.params == before.params


def test_custom_mask_counts_exactly():
    layer = _strictly_nonzero(nn.Linear(6, 4))
    mask = torch.ones(4, 6)
    mask[1, :] = 0
    mask[3, 2] = 0
    prune.custom_from_mask(layer, "weight", mask)
    prune.custom_from_mask(layer, "bias", torch.tensor([1.0, 0.0, 1.0, 1.0]))
    c = count(layer, torch.randn(2, 6))
    assert c.params == 6 * 4 + 4
    assert c.nonzero_params == (24 - 7) + 3
    assert c.flops == 2 * 2 * 6 * 4


def test_mask_changed_after_forward():
    layer = _strictly_nonzero(nn.Linear(6, 4, bias=False))
    x = torch.randn(3, 6)
    prune.custom_from_mask(layer, "weight", torch.ones(4, 6))
    layer(x)
    with torch.no_grad():
        layer.weight_mask[0, :] = 0
    assert count(layer, x).nonzero_params == 24 - 6


class _Branch(nn.Module):
    """Only ``used`` runs in forward, so ``unused.weight`` is never refreshed by a count."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 4, bias=False)
        self.unused = nn.Linear(4, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_stale_weight_of_layer_not_run():
    model = _strictly_nonzero(_Branch())
    x = torch.randn(2, 4)
    prune.custom_from_mask(model.unused, "weight", torch.ones(4, 4))
    model.unused(x)  # computes unused.weight with the all-ones mask
    with torch.no_grad():
        model.unused.weight_mask[:, 0] = 0  # 4 entries masked
        model.unused.weight_orig[3, 3] = 0.0  # 1 more zero in orig
    # The scenario really is stale: the derived tensor still has no zeros.
    assert int(torch.count_nonzero(model.unused.weight)) == 16
    c = count(model, x)
    assert c.params == 32
    assert c.nonzero_params == 32 - 4 - 1
    assert c.flops == 2 * 2 * 16  # only `used` runs


def test_structured_shrink_reduces_flops():
    x = torch.randn(2, 3, 8, 8)
    big = cnn(8)
    small = cnn(5)
    with torch.no_grad():  # keep 5 of the 8 channels of the first conv, and the matching inputs of conv 3
        keep = torch.tensor([0, 2, 3, 5, 7])
        small[0].weight.copy_(big[0].weight[keep])
        small[0].bias.copy_(big[0].bias[keep])
        small[3].weight.copy_(big[3].weight[:, keep])
    c_big, c_small = count(big, x), count(small, x)
    assert c_small.per_module_flops == cnn_flops(5)
    assert c_small.flops == sum(cnn_flops(5).values())
    assert c_small.flops < c_big.flops
    assert c_big.flops - c_small.flops == 2 * 2 * 3 * (8 * 8 * 3 * 9 + 16 * 4 * 4 * 9)
    assert c_small.params == cnn_params(5)
    assert c_big.params - c_small.params == 3 * (3 * 9 + 1 + 2 + 16 * 9)


# ---------------------------------------------------------------------------------------------------------------
# count: modes, inputs and errors


def test_count_runs_in_eval_no_grad_and_restores_flags():
    model, flags = mixed_training()
    count(model, torch.randn(3, 4))
    recorder = model[2]
    assert len(recorder.seen) == 1
    assert recorder.seen[0]["training"] == [False, False]
    assert recorder.seen[0]["grad"] is False
    assert [m.training for m in model.modules()] == flags
    assert torch.is_grad_enabled()


def test_count_restores_flags_when_forward_raises():
    model, flags = mixed_training(raise_error=True)
    with pytest.raises(RuntimeError, match="boom"):
        count(model, torch.randn(3, 4))
    assert [m.training for m in model.modules()] == flags
    assert torch.is_grad_enabled()
    # The flop counter's module hooks are gone: a later count is still exact.
    assert count(nn.Linear(3, 2), torch.randn(1, 3)).flops == 2 * 3 * 2


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fc(x) @ y


def test_tuple_input():
    batch = 5
    x, y = torch.randn(batch, 4), torch.randn(3, 7)
    c = count(_TwoInputs(), (x, y))
    assert c.per_module_flops == {"fc": 2 * batch * 4 * 3, "": 2 * batch * 3 * 7}
    assert c.flops == 2 * batch * (12 + 21)
    assert count(nn.Linear(4, 3), (x,)).flops == 2 * batch * 12


@pytest.mark.parametrize("func", [count, latency])
def test_type_errors(func):
    x = torch.randn(2, 4)
    with pytest.raises(TypeError, match=r"^model: .*got function"):
        func(lambda t: t, x)
    with pytest.raises(TypeError, match=r"^model: .*got str"):
        func("model", x)
    with pytest.raises(TypeError, match=r"^example_input: .*got list"):
        func(nn.Linear(4, 2), [x])
    with pytest.raises(TypeError, match=r"^example_input: .*got ndarray"):
        func(nn.Linear(4, 2), x.numpy())
    with pytest.raises(TypeError, match=r"^example_input: .*got a tuple of \(\)"):
        func(nn.Linear(4, 2), ())
    with pytest.raises(TypeError, match=r"^example_input: .*got a tuple of \(Tensor, int\)"):
        func(nn.Linear(4, 2), (x, 3))


# ---------------------------------------------------------------------------------------------------------------
# latency: real timings


@pytest.fixture
def two_threads():
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(original)


class _Sleeper(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.seconds)
        return x


def test_latency_fields():
    lat = latency(mlp(), torch.randn(6, 784), warmup=1, repeats=5)
    assert isinstance(lat, Latency)
    assert lat.repeats == 5
    assert lat.device == "cpu"
    assert lat.batch_size == 6
    assert lat.threads == torch.get_num_threads()
    assert lat.p10_ms > 0
    assert lat.p10_ms <= lat.median_ms
    assert lat.median_ms <= lat.p90_ms
    assert all(isinstance(v, float) for v in (lat.p10_ms, lat.median_ms, lat.p90_ms))


def test_latency_is_in_milliseconds():
    model = _Sleeper(0.002)
    lat = latency(model, torch.randn(3, 2), warmup=0, repeats=3)
    assert model.calls == 3
    assert lat.p10_ms >= 2.0  # each call sleeps 2 ms
    assert lat.median_ms < 1000.0


def test_latency_batch_size_from_first_input():
    assert latency(_TwoInputs(), (torch.randn(7, 4), torch.randn(3, 2)), warmup=0, repeats=1).batch_size == 7
    # No parameters or buffers: the device comes from the input.
    lat = latency(nn.Identity(), torch.tensor(1.0), warmup=0, repeats=1)
    assert lat.batch_size is None
    assert lat.device == "cpu"


@pytest.mark.usefixtures("two_threads")
def test_latency_threads_honoured_and_restored():
    model, _ = mixed_training()
    lat = latency(model, torch.randn(3, 4), warmup=1, repeats=2, threads=1)
    assert lat.threads == 1
    assert [s["threads"] for s in model[2].seen] == [1, 1, 1]
    assert torch.get_num_threads() == 2

    lat = latency(model, torch.randn(3, 4), warmup=0, repeats=1)
    assert lat.threads == 2
    assert model[2].seen[-1]["threads"] == 2


@pytest.mark.usefixtures("two_threads")
def test_latency_restores_threads_and_flags_when_forward_raises():
    model, flags = mixed_training(raise_error=True)
    with pytest.raises(RuntimeError, match="boom"):
        latency(model, torch.randn(3, 4), warmup=2, repeats=2, threads=1)
    assert torch.get_num_threads() == 2
    assert [m.training for m in model.modules()] == flags


def test_latency_eval_inference_mode_and_restores_flags():
    model, flags = mixed_training()
    latency(model, torch.randn(3, 4), warmup=1, repeats=2)
    seen = model[2].seen
    assert len(seen) == 3  # 1 warm-up + 2 timed
    assert all(s["training"] == [False, False] for s in seen)
    assert all(s["inference"] for s in seen)
    assert [m.training for m in model.modules()] == flags
    assert not torch.is_inference_mode_enabled()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"warmup": -1}, "warmup"),
        ({"warmup": 1.5}, "warmup"),
        ({"repeats": 0}, "repeats"),
        ({"repeats": -3}, "repeats"),
        ({"repeats": 2.0}, "repeats"),
        ({"threads": 0}, "threads"),
        ({"threads": -1}, "threads"),
        ({"threads": 1.0}, "threads"),
    ],
)
def test_latency_value_errors(kwargs, name):
    model = _Sleeper(0.0)
    with pytest.raises(ValueError, match=rf"^{name}: "):
        latency(model, torch.randn(2, 2), **kwargs)
    assert model.calls == 0


def test_latency_on_pruned_model_then_training_forward():
    model = mlp()
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    x = torch.randn(2, 784)
    latency(model, x, warmup=0, repeats=1)
    # count still sees the mask; a training forward afterwards builds a graph back to weight_orig.
    assert count(model, x).nonzero_params == 266_610 - (784 * 300) // 2
    model(x).sum().backward()
    assert model[0].weight_orig.grad is not None


def test_slow_model_budget_with_real_sleep(monkeypatch):
    monkeypatch.setattr(measure, "SLOW_FORWARD_S", 0.005)
    monkeypatch.setattr(measure, "TIME_BUDGET_S", 0.06)
    model = _Sleeper(0.01)
    start = time.perf_counter()
    lat = latency(model, torch.randn(2, 2), warmup=3, repeats=100)
    elapsed = time.perf_counter() - start
    # Every call takes >= 10 ms and all calls stay within 60 ms: at most 6 calls, the first untimed.
    assert 1 <= lat.repeats <= 5
    assert model.calls == lat.repeats + 1  # the remaining warm-up was skipped
    assert elapsed < 0.5  # 100 repeats would take > 1 s


def test_slow_model_budget_keeps_one_call(monkeypatch):
    monkeypatch.setattr(measure, "SLOW_FORWARD_S", 0.001)
    monkeypatch.setattr(measure, "TIME_BUDGET_S", 0.002)
    model = _Sleeper(0.01)  # one call alone exceeds the budget
    lat = latency(model, torch.randn(2, 2), warmup=4, repeats=50)
    assert lat.repeats == 1
    assert model.calls == 2


# ---------------------------------------------------------------------------------------------------------------
# latency: exact numbers with a fake clock


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Timed(nn.Module):
    """Each call advances the fake clock by the next duration (the last one repeats)."""

    def __init__(self, clock: _Clock, durations: list[float]) -> None:
        super().__init__()
        self.clock = clock
        self.durations = durations
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1
        return x


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(measure, "time", types.SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def test_percentiles_exact(clock):
    timed_ms = [7, 3, 10, 1, 5, 9, 2, 8, 4, 6]
    model = _Timed(clock, [0.5] + [ms / 1e3 for ms in timed_ms])  # one warm-up of 500 ms, not timed
    lat = latency(model, torch.zeros(1, 1), warmup=1, repeats=10)
    assert model.calls == 11
    assert lat.repeats == 10
    # Sorted 1..10 ms; linear interpolation: rank 0.1 * 9 = 0.9, 0.5 * 9 = 4.5, 0.9 * 9 = 8.1.
    assert lat.p10_ms == pytest.approx(1.9)
    assert lat.median_ms == pytest.approx(5.5)
    assert lat.p90_ms == pytest.approx(9.1)


def test_without_warmup_first_call_is_timed(clock):
    model = _Timed(clock, [0.002, 0.004, 0.009])
    lat = latency(model, torch.zeros(1, 1), warmup=0, repeats=3)
    assert model.calls == 3
    assert lat.repeats == 3
    assert lat.median_ms == pytest.approx(4.0)


def test_warmup_calls_made(clock):
    model = _Timed(clock, [0.001])
    lat = latency(model, torch.zeros(1, 1), warmup=4, repeats=6)
    assert model.calls == 10
    assert lat.repeats == 6


@pytest.mark.parametrize(
    ("first", "warmup", "repeats", "expected_repeats", "expected_calls"),
    [
        # 4 s a call, budget 30 s: 7 calls in all; with warm-up the first is untimed and the rest skipped.
        (4.0, 5, 30, 6, 7),
        (4.0, 0, 30, 7, 7),
        # Fewer requested than affordable: as requested, still without the remaining warm-up.
        (4.0, 5, 2, 2, 3),
        # One call over the budget: one timed call is kept.
        (40.0, 5, 30, 1, 2),
        (40.0, 0, 30, 1, 1),
        # Exactly the threshold is not slow: warm-up and repeats as requested.
        (1.0, 2, 3, 3, 5),
    ],
)
def test_slow_model_budget_exact(clock, first, warmup, repeats, expected_repeats, expected_calls):
    assert measure.SLOW_FORWARD_S == 1.0
    assert measure.TIME_BUDGET_S == 30.0
    model = _Timed(clock, [first])
    lat = latency(model, torch.zeros(1, 1), warmup=warmup, repeats=repeats)
    assert lat.repeats == expected_repeats
    assert model.calls == expected_calls
    assert lat.median_ms == pytest.approx(first * 1e3)


def test_slow_budget_uses_current_constants(clock, monkeypatch):
    monkeypatch.setattr(measure, "SLOW_FORWARD_S", 0.5)
    monkeypatch.setattr(measure, "TIME_BUDGET_S", 3.0)
    model = _Timed(clock, [1.0, 0.001])  # slow first call, fast afterwards: the cut follows the first
    lat = latency(model, torch.zeros(1, 1), warmup=3, repeats=20)
    assert lat.repeats == 2  # (3 - 1) // 1
    assert model.calls == 3


# ---------------------------------------------------------------------------------------------------------------
# report


def _count(params: int, nonzero: int, flops: int) -> ModelCount:
    return ModelCount(
        params=params, nonzero_params=nonzero, flops=flops, macs=flops // 2, per_module_flops={}
    )


def _latency(median_ms: float) -> Latency:
    return Latency(
        median_ms=median_ms,
        p10_ms=median_ms,
        p90_ms=median_ms,
        repeats=3,
        threads=1,
        device="cpu",
        batch_size=1,
    )


BEFORE = _count(1_234_567, 1_234_567, 4_500_000_000)
AFTER = _count(1_234_567, 617_284, 4_500_000_000)


def test_report_rows_and_ratios():
    r = report(BEFORE, AFTER)
    assert isinstance(r, Report)
    assert [row.metric for row in r.rows] == ["params", "nonzero params", "FLOPs", "MACs"]
    assert r.rows[0] == ReportRow("params", 1_234_567, 1_234_567, 1.0)
    assert r.rows[1].before == 1_234_567
    assert r.rows[1].after == 617_284
    assert r.rows[1].ratio == pytest.approx(617_284 / 1_234_567)
    assert r.rows[2] == ReportRow("FLOPs", 4_500_000_000, 4_500_000_000, 1.0)
    assert r.rows[3] == ReportRow("MACs", 2_250_000_000, 2_250_000_000, 1.0)
    assert all(row.unit == "" for row in r.rows)
    assert r.speedup is None


def test_report_with_latencies():
    r = report(BEFORE, AFTER, _latency(12.5), _latency(5.0))
    assert len(r.rows) == 5
    assert r.rows[4] == ReportRow("latency (ms)", 12.5, 5.0, 0.4, "ms")
    assert r.speedup == pytest.approx(2.5)


def test_report_ratio_none_when_before_is_zero():
    empty = count(nn.Identity(), torch.randn(2, 3))
    r = report(empty, _count(10, 5, 40))
    assert all(row.ratio is None for row in r.rows)
    text = str(r)
    for line in text.splitlines()[2:]:
        assert line.endswith(" -")


def test_report_of_real_counts():
    x = torch.randn(2, 784)
    model = _strictly_nonzero(mlp())
    before = count(model, x)
    prune.l1_unstructured(model[0], "weight", amount=0.25)
    r = report(before, count(model, x))
    assert r.rows[0].ratio == 1.0
    assert r.rows[1].after == 266_610 - 784 * 300 // 4
    assert r.rows[1].ratio == pytest.approx((266_610 - 58_800) / 266_610)
    assert r.rows[2].ratio == 1.0


def test_report_str_exact_table():
    text = str(report(BEFORE, AFTER, _latency(12.5), _latency(5.0)))
    expected = "\n".join(
        [
            "metric          before  after  after/before",
            "-------------------------------------------",
            "params           1.23M  1.23M             1",
            "nonzero params   1.23M   617K           0.5",
            "FLOPs             4.5G   4.5G             1",
            "MACs             2.25G  2.25G             1",
            "latency (ms)      12.5      5           0.4",
            "speed-up: 2.50x (median latency before / after)",
        ]
    )
    assert text == expected


def test_report_str_alignment_and_long_latency():
    r = report(_count(950, 950, 12_345), _count(950, 700, 999_999), _latency(250.0), _latency(125.04))
    lines = str(r).splitlines()
    table = lines[:-1]
    assert len({len(line) for line in table}) == 1  # every table line equally wide
    assert set(table[1]) == {"-"}
    # Right-aligned numeric columns: each column's cells end at the same offset as its header.
    header = table[0]
    ends = [m.end() for m in re.finditer(r"\S+", header)]
    assert len(ends) == 4  # "metric", "before", "after", "after/before"
    for line in table[2:]:
        cells = list(re.finditer(r"\S+", line))
        assert [m.end() for m in cells[-3:]] == ends[1:]
        assert line.startswith(("params", "nonzero params", "FLOPs", "MACs", "latency (ms)"))
    assert "250.0" in lines[-2]
    assert "125.0" in lines[-2]
    assert "12.3K" in table[4]
    assert "1M" in table[4]
    assert lines[-1] == "speed-up: 2.00x (median latency before / after)"


def test_report_str_without_latency_has_no_speedup_line():
    text = str(report(BEFORE, AFTER))
    assert "speed-up" not in text
    assert len(text.splitlines()) == 2 + 4


def test_report_to_dict_json():
    d = report(BEFORE, AFTER, _latency(12.5), _latency(5.0)).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["speedup"] == pytest.approx(2.5)
    assert d["rows"][1] == {
        "metric": "nonzero params",
        "before": 1_234_567,
        "after": 617_284,
        "ratio": pytest.approx(0.5, rel=1e-5),
        "unit": "",
    }
    assert d["rows"][4] == {
        "metric": "latency (ms)",
        "before": 12.5,
        "after": 5.0,
        "ratio": 0.4,
        "unit": "ms",
    }
    assert [row["metric"] for row in d["rows"]] == [
        "params",
        "nonzero params",
        "FLOPs",
        "MACs",
        "latency (ms)",
    ]


def test_report_to_dict_from_real_measurements():
    x = torch.randn(2, 4)
    model = nn.Linear(4, 3)
    c = count(model, x)
    lat = latency(model, x, warmup=0, repeats=2)
    d = report(c, c, lat, lat).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["speedup"] == 1.0
    for row in d["rows"]:
        for key in ("before", "after", "ratio"):
            assert type(row[key]) in (int, float)


def test_report_type_errors():
    lat = _latency(1.0)
    with pytest.raises(TypeError, match=r"^before: .*got dict"):
        report({"params": 1}, AFTER)
    with pytest.raises(TypeError, match=r"^after: .*got Latency"):
        report(BEFORE, lat)
    with pytest.raises(TypeError, match=r"^latency_before: .*got float"):
        report(BEFORE, AFTER, 1.0, lat)
    with pytest.raises(TypeError, match=r"^latency_after: .*got ModelCount"):
        report(BEFORE, AFTER, lat, AFTER)


def test_report_value_error_with_one_latency():
    with pytest.raises(ValueError, match=r"^latency_after: "):
        report(BEFORE, AFTER, _latency(1.0))
    with pytest.raises(ValueError, match=r"^latency_before: "):
        report(BEFORE, AFTER, latency_after=_latency(1.0))


# ---------------------------------------------------------------------------------------------------------------
# format_count


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0"),
        (7, "7"),
        (950, "950"),
        (999, "999"),
        (950.0, "950"),
        (0.25, "0.25"),
        (123.456, "123"),
        (999.7, "1K"),
        (1000, "1K"),
        (12_345, "12.3K"),
        (-12_345, "-12.3K"),
        (100_000, "100K"),
        (999_999, "1M"),
        (1_234_567, "1.23M"),
        (617_284, "617K"),
        (4.5e9, "4.5G"),
        (2_250_000_000, "2.25G"),
        (2.5e12, "2.5T"),
    ],
)
def test_format_count_cases(n, expected):
    assert format_count(n) == expected


_SCALES = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


@settings(max_examples=200, deadline=None)
@given(st.integers(1000, 10**14))
def test_format_count_property(n):
    text = format_count(n)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT])", text)
    assert match is not None, text
    mantissa, scale = float(match[1]), _SCALES[match[2]]
    assert 1 <= mantissa < 1000
    assert len(match[1].replace(".", "").lstrip("0")) <= 3  # three significant digits at most
    # Within half a unit of the third significant digit.
    assert abs(mantissa * scale - n) <= 0.5 * 10 ** (math.floor(math.log10(n)) - 2) * (1 + 1e-9)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 999))
def test_format_count_small_ints_in_full(n):
    assert format_count(n) == str(n)
