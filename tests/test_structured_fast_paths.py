"""The shortcuts of structured planning and applying give exactly what the long way gives: the counted trace equals
``pyprune.count``, FLOPs derived from weight sizes equal a counted forward pass, tensor cuts equal Torch-Pruning's
group-by-group pruning, and remembered cuts equal a fresh trace."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

import pyprune
from pyprune.measure import count, count_resized
from pyprune.pruning import apply as apply_module
from pyprune.pruning.groups import build_dependency_graph


class DenseBlock(nn.Module):
    """Two layers whose outputs are concatenated with the input, as in a DenseNet: groups behind a concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1))
        self.b = nn.Sequential(nn.BatchNorm2d(14), nn.ReLU(), nn.Conv2d(14, 6, 3, padding=1))
        self.norm = nn.BatchNorm2d(20)
        self.head = nn.Linear(20, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.a(x)], 1)
        x = torch.cat([x, self.b(x)], 1)
        return self.head(torch.relu(self.norm(x)).mean((2, 3)))


class OwnMatmul(nn.Module):
    """A model whose root does FLOPs of its own: they cannot be derived from its layers' weights."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(torch.softmax(h @ h.T, -1) @ h)


def dense_block() -> nn.Module:
    torch.manual_seed(0)
    model = DenseBlock().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return model


X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("inputs", ["tensor", "tuple", "dict"])
def test_counted_trace_equals_count(inputs):
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = dense_block()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    model = Keyword().eval()
    example = {"tensor": X, "tuple": (X,), "dict": {"x": X}}[inputs]
    graph = build_dependency_graph(model, example, count=True)
    assert graph.pyprune_count == count(model, example)


def test_counted_trace_declines_a_model_with_frozen_parameters():
    model = dense_block()
    model.stem.weight.requires_grad_(False)
    assert build_dependency_graph(model, X, count=True).pyprune_count is None


@pytest.mark.parametrize("mode", ["remove", "mask"])
def test_flops_from_weight_sizes_equal_a_counted_forward(mode):
    model = dense_block()
    plan = pyprune.plan(model, "l1_filter", 0.5, example_input=X, mode=mode, measure=False)
    pruned = plan.apply(copy.deepcopy(model))
    derived = count_resized(count(model, X), model, pruned)
    assert derived == count(pruned, X)


def test_flops_are_not_derived_where_a_module_computes_on_its_own():
    model = OwnMatmul()
    x = torch.randn(3, 6)
    plan = pyprune.plan(model, "l1_filter", 0.5, example_input=x, measure=False)
    assert count_resized(count(model, x), model, plan.apply(copy.deepcopy(model))) is None
    # The plan's table then comes from a forward pass, and still matches one.
    plan = pyprune.plan(model, "l1_filter", 0.5, example_input=x)
    pruned = plan.apply(copy.deepcopy(model))
    assert plan.totals["flops"] == [count(model, x).flops, count(pruned, x).flops]


def test_cuts_equal_torch_prunings_group_by_group_pruning():
    model = dense_block()
    plan = pyprune.plan(model, "l1_filter", 0.5, example_input=X)
    reference = copy.deepcopy(model)
    graph = tp.DependencyGraph().build_dependency(reference, example_inputs=X)
    for layer in plan.layers:
        module = reference.get_submodule(layer.name)
        pruning_fn = graph.get_pruner_of_module(module).prune_out_channels
        graph.get_pruning_group(module, pruning_fn, layer.removed.tolist()).prune()
    plan.apply(model)
    assert model.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert repr(model) == repr(reference)


def test_applying_uses_the_remembered_cuts_and_traces_an_edited_plan(monkeypatch):
    model = dense_block()
    plan = pyprune.plan(model, "l1_filter", 0.5, example_input=X)
    expected = plan.apply(
        copy.deepcopy(dense_block())
    )  # another instance of the architecture: no trace either
    traces = []
    original = apply_module.build_dependency_graph
    monkeypatch.setattr(
        apply_module, "build_dependency_graph", lambda *a, **k: traces.append(1) or original(*a, **k)
    )
    plan.apply(model)
    assert traces == []
    for key, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    edited = copy.deepcopy(plan)
    edited.layers[0].removed = edited.layers[0].removed[:1]
    edited.apply(dense_block())
    assert traces == [1]


def test_planning_leaves_the_models_tensors_as_they_were():
    model = dense_block()
    before = {
        name: (t, t.clone())
        for name, t in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()
    }
    pyprune.plan(model, "l1_filter", 0.5, example_input=X)
    after = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    assert after.keys() == before.keys()
    for name, (tensor, values) in before.items():
        assert after[name] is tensor, name
        assert torch.equal(tensor, values), name


class Mixed(nn.Module):
    """Every layer kind the shape-only measuring knows: conv, depthwise conv, BatchNorm, LayerNorm over channels, a
    flatten into a Linear, and a bare parameter added to the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.offset = nn.Parameter(torch.randn(1, 6, 1, 1))
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6 * 4 * 4, 7)
        self.head = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pw(torch.relu(self.dw(torch.relu(self.bn(self.stem(x)))))) + self.offset
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(torch.relu(self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 4), 1))))


@pytest.mark.parametrize("zeros", ["none", "some", "whole"])
@pytest.mark.parametrize("make", [Mixed, dense_block])
def test_the_plans_table_equals_counting_the_applied_model(make, zeros):
    # Measured from the slices the cuts remove, nothing is cut while planning; the reference counts the model that
    # applying the plan really builds. Zeros decide how the nonzero count after is found: none, some (located),
    # or whole tensors (a BatchNorm's zero bias).
    torch.manual_seed(1)
    model = make().eval()
    with torch.no_grad():
        for i, param in enumerate(model.parameters()):
            if zeros == "some":
                param.view(-1)[i % 3 :: 4] = 0
            elif zeros == "whole" and i % 2:
                param.zero_()
    x = torch.randn(2, 3, 8, 8)
    plan = pyprune.plan(model, "l1_filter", 0.4, example_input=x)
    pruned = plan.apply(copy.deepcopy(model))
    before, after = count(model, x), count(pruned, x)
    assert plan.totals == {
        "params": [before.params, after.params],
        "nonzero_params": [before.nonzero_params, after.nonzero_params],
        "flops": [before.flops, after.flops],
    }
    for layer in plan.layers:
        module = pruned.get_submodule(layer.name)
        assert layer.params_after == sum(p.numel() for p in module.parameters(recurse=False)), layer.name
        assert layer.flops_after == after.per_module_flops.get(layer.name, 0), layer.name


def test_removed_slices_equal_torch_prunings_cuts():
    from pyprune.pruning.apply import channel_cuts, removed_by_cuts

    model = Mixed().eval()
    x = torch.randn(2, 3, 8, 8)
    plan = pyprune.plan(model, "l1_filter", 0.4, example_input=x, measure=False)
    removed = removed_by_cuts(model, channel_cuts(plan, model, build_dependency_graph(model, x)))
    pruned = plan.apply(copy.deepcopy(model))
    for name, param in model.named_parameters():
        kept = param.detach()
        for dim, idxs in removed.get(name, {}).items():
            keep = [i for i in range(param.shape[dim]) if i not in set(idxs)]
            kept = kept.index_select(dim, torch.tensor(keep))
        assert torch.equal(kept, pruned.get_parameter(name).detach()), name


def test_counting_a_pass_with_gradients_equals_flop_counter_modes_own_module_tracking():
    from torch.utils.flop_counter import FlopCounterMode

    from pyprune.measure import counting_flops

    model = dense_block()
    with FlopCounterMode(display=False) as reference:
        model(X)
    with counting_flops() as ours:
        model(X)
    assert ours.get_flop_counts() == reference.get_flop_counts()


def test_a_failed_trace_leaves_the_models_hooks_and_flags_as_they_were():
    class Fails(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).view(7, -1)  # fails for this input

    model = Fails().train()
    own = model.conv.register_forward_hook(lambda *args: None)
    with pytest.raises(ValueError, match="example_input"):
        pyprune.plan(model, "l1_filter", 0.5, example_input=torch.randn(1, 3, 5, 5))
    assert list(model.conv._forward_hooks) == [own.id]
    assert model.training
    assert model.conv.training
