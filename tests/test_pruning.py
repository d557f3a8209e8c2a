"""Planning and applying: exact counts, mask composition, physical removal vs the equivalent zeroed dense model,
JSON and checkpoint round trips, atomicity, bad input, and the Torch-Pruning importance adapter."""

from __future__ import annotations

import copy
import math
import pathlib

import pytest
import torch
import torch_pruning as tp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

import pyprune
from pyprune import models
from pyprune.pruning import (
    FilterNorm,
    Magnitude,
    PruningPlan,
    RandomChannels,
    TorchPruningImportance,
    load_pruned,
    make_permanent,
    plan_structured,
    plan_unstructured,
    save_pruned,
)
from pyprune.pruning.groups import build_dependency_graph
from pyprune.pruning.plan import LayerPlan


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1, stride=2),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so that BN handling is really exercised."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
    return model.eval()


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert list(now) == list(snapshot)
    for key, value in snapshot.items():
        assert now[key].shape == value.shape, key
        assert torch.equal(now[key], value), key


# ----------------------------------------------------------------------------------------------- unstructured


@pytest.mark.parametrize("amount", [0.0, 0.25, 0.5, 0.9, 0.97])
def test_layer_magnitude_removes_exactly_round_k_numel_per_layer_and_skips_output_layer(amount):
    model = models.mlp([20, 30, 17, 10])
    plan = plan_unstructured(model, amount)
    assert [layer.name for layer in plan.layers] == ["fc1", "fc2"]  # the output Linear "fc3" is excluded
    plan.apply(model)
    for name in ("fc1", "fc2"):
        weight = model.get_submodule(name).weight
        assert int((weight == 0).sum()) == math.floor(amount * weight.numel() + 0.5)
    assert not hasattr(model.get_submodule("fc3"), "weight_mask")


def test_layer_magnitude_removes_the_smallest_weights():
    model = models.mlp([6, 5, 3])
    weights = model.fc1.weight.detach().abs().flatten()
    plan = plan_unstructured(model, 0.4, layers=["fc1"])
    removed = set(plan.layer("fc1").removed.tolist())
    threshold = weights.sort().values[len(removed) - 1]
    assert all(weights[i] <= threshold for i in removed)
    assert all(weights[i] >= threshold for i in range(weights.numel()) if i not in removed)


def test_ties_are_broken_by_index():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    model = nn.Sequential(layer, nn.Linear(3, 2))
    plan = plan_unstructured(model, 0.5)
    assert plan.layer("0").removed.tolist() == list(range(6))


@settings(max_examples=20, deadline=None)
@given(amount=st.floats(0.0, 0.95), seed=st.integers(0, 10_000))
def test_global_magnitude_exact_total_and_single_threshold(amount, seed):
    torch.manual_seed(seed)
    model = models.mlp([7, 13, 9, 4])
    weights = [model.get_submodule(n).weight.detach().abs().flatten() for n in ("fc1", "fc2")]
    total = sum(w.numel() for w in weights)
    # Independently of the planner: the globally smallest floor(amount * total + 0.5) magnitudes. If they cover
    # a whole layer, the plan must refuse rather than empty it.
    smallest = torch.cat(weights).argsort(stable=True)[: math.floor(amount * total + 0.5)]
    if (smallest < weights[0].numel()).sum() == weights[0].numel() or (
        smallest >= weights[0].numel()
    ).sum() == weights[1].numel():
        with pytest.raises(ValueError, match="would remove every weight"):
            plan_unstructured(model, amount, scope="global")
        return
    plan = plan_unstructured(model, amount, scope="global")
    assert plan.num_removed == math.floor(amount * total + 0.5)
    kept_min = min(
        model.get_submodule(layer.name)
        .weight.detach()
        .abs()
        .flatten()[layer.keep_mask((layer.size,))]
        .min()
        .item()
        for layer in plan.layers
        if layer.num_kept
    )
    removed_max = max(
        (
            model.get_submodule(layer.name).weight.detach().abs().flatten()[layer.removed].max().item()
            for layer in plan.layers
            if layer.num_removed
        ),
        default=-1.0,
    )
    assert removed_max <= kept_min


def test_masks_compose_with_existing_torch_prune_masks_and_count_toward_the_target():
    model = models.mlp([10, 20, 5])
    layer = model.fc1
    torch_prune.random_unstructured(layer, "weight", amount=0.3)
    user_mask = layer.weight_mask.clone()
    pyprune.prune(model, "magnitude", 0.6)
    assert hasattr(layer, "weight_orig")
    assert hasattr(layer, "weight_mask")
    # Every weight the user masked stays masked, and the total reaches 60% exactly.
    assert torch.all(layer.weight_mask[user_mask == 0] == 0)
    assert int((layer.weight_mask == 0).sum()) == math.floor(0.6 * layer.weight.numel() + 0.5)
    # prune.remove still works on the composed mask.
    torch_prune.remove(layer, "weight")
    assert int((layer.weight == 0).sum()) == math.floor(0.6 * layer.weight.numel() + 0.5)


def test_make_permanent_folds_masks_and_keeps_zeros():
    model = models.mlp([10, 20, 5])
    pyprune.prune(model, "magnitude_global", 0.5)
    expected = model.fc1.weight.detach().clone()
    make_permanent(model)
    layer = model.fc1
    assert not hasattr(layer, "weight_mask")
    assert isinstance(layer.weight, nn.Parameter)
    assert torch.equal(layer.weight.detach(), expected)


def test_random_baseline_is_reproducible_from_seed():
    first = pyprune.plan(models.mlp([10, 20, 5]), "random", 0.5, seed=3)
    again = pyprune.plan(models.mlp([10, 20, 5]), "random", 0.5, seed=3)
    other = pyprune.plan(models.mlp([10, 20, 5]), "random", 0.5, seed=4)
    assert torch.equal(first.layer("fc1").removed, again.layer("fc1").removed)
    assert not torch.equal(first.layer("fc1").removed, other.layer("fc1").removed)


def test_unit_l2_masks_whole_rows_and_their_biases():
    model = models.mlp([8, 12, 6, 3])
    norms = model.fc1.weight.detach().norm(dim=1)
    plan = pyprune.prune(model, "unit_l2", 0.5)
    layer = model.fc1
    removed = plan.layer("fc1").removed
    assert set(removed.tolist()) == set(norms.argsort()[:6].tolist())
    assert torch.all(layer.weight[removed] == 0)
    assert torch.all(layer.bias[removed] == 0)
    # The masked units output exactly zero after ReLU for any input.
    hidden = model[:3](torch.randn(5, 8))
    assert torch.all(hidden[:, removed] == 0)


# ------------------------------------------------------------------------------------------------- structured


def zeroed_equivalent(model: nn.Module, plan: PruningPlan, example_input: torch.Tensor) -> nn.Module:
    """The dense model in which every removed channel is silenced at its source: weights, biases and BN affine
    parameters of every output-pruned member of its group set to zero. In eval mode its outputs must equal the
    physically pruned model's."""
    dense = copy.deepcopy(model)
    graph = build_dependency_graph(dense, example_input)
    for layer in plan.layers:
        module = dense.get_submodule(layer.name)
        group = graph.get_pruning_group(
            module, graph.get_pruner_of_module(module).prune_out_channels, layer.removed.tolist()
        )
        with torch.no_grad():
            for item in group:
                target = item.dep.target.module
                if getattr(item.dep.handler, "__name__", "") != "prune_out_channels":
                    continue
                for name in ("weight", "bias"):
                    tensor = getattr(target, name, None)
                    if isinstance(tensor, torch.Tensor) and tensor.ndim >= 1:
                        tensor[torch.as_tensor(item.idxs)] = 0
    return dense.eval()


@pytest.mark.parametrize(
    ("factory", "shape"),
    [
        (lambda: models.mlp([20, 32, 24, 10]), (4, 20)),
        (small_cnn, (4, 3, 8, 8)),
        (lambda: models.vgg_bn("vgg_small", in_channels=1, image_size=8), (4, 1, 8, 8)),
        (lambda: models.resnet20(num_classes=10), (2, 3, 16, 16)),
    ],
    ids=["mlp", "cnn", "vgg_bn", "resnet20"],
)
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_structured_removal_equals_zeroed_dense_model(factory, shape, scope):
    torch.manual_seed(1)
    model = randomise_bn(factory())
    x = torch.randn(shape)
    criterion = FilterNorm(2) if scope == "layer" else RandomChannels(seed=5)
    plan = plan_structured(model, 0.4, x, criterion=criterion, scope=scope)
    assert plan.num_removed > 0
    pruned = copy.deepcopy(model)
    plan.apply(pruned)
    pruned.eval()
    dense_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < dense_params
    assert plan.totals["params"] == [dense_params, sum(p.numel() for p in pruned.parameters())]
    expected = zeroed_equivalent(model, plan, x)(x)
    got = pruned(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_kept_channels_carry_the_original_weights():
    model = randomise_bn(small_cnn())
    x = torch.randn(2, 3, 8, 8)
    plan = plan_structured(model, 0.5, x)
    pruned = copy.deepcopy(model)
    plan.apply(pruned)
    removed = plan.layer("0").removed
    kept = [i for i in range(8) if i not in set(removed.tolist())]
    torch.testing.assert_close(pruned[0].weight, model[0].weight[kept], rtol=0, atol=0)
    torch.testing.assert_close(pruned[1].running_var, model[1].running_var[kept], rtol=0, atol=0)
    # The consumer lost exactly the matching input channels.
    kept3 = [i for i in range(12) if i not in set(plan.layer("3").removed.tolist())]
    torch.testing.assert_close(pruned[3].weight, model[3].weight[kept3][:, kept], rtol=0, atol=0)


def test_resnet_residual_groups_are_pruned_together():
    model = models.resnet20()
    x = torch.randn(1, 3, 16, 16)
    plan = plan_structured(model, 0.5, x)
    # The stem conv writes the first stage's residual stream: its group must couple it with the blocks' second
    # convs of that stage.
    stem = plan.layers[0]
    assert any(name.endswith("conv2") for name in stem.coupled)
    pruned = copy.deepcopy(model)
    plan.apply(pruned)
    assert pruned(x).shape == (1, 10)


def test_per_layer_amount_dict_min_channels_and_round_to():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    plan = plan_structured(model, {"0": 0.75, "3": 0.5}, x, min_channels=3)
    assert plan.layer("0").num_kept == 3  # 8 - round(6) = 2 would go below min_channels
    assert plan.layer("3").num_kept == 6
    rounded = plan_structured(model, 0.5, x, round_to=5)
    assert rounded.layer("0").num_kept == 5
    assert rounded.layer("3").num_kept == 10


def test_greedy_mode_ignores_kernels_of_removed_inputs():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    # Make the consumer's filter norms depend almost entirely on input channel 0, which the first layer loses.
    with torch.no_grad():
        model[0].weight[0].zero_()
        model[3].weight.mul_(0.01)
        model[3].weight[:6, 0] = 10.0
    independent = plan_structured(model, 0.5, x, criterion=FilterNorm(1))
    greedy = plan_structured(model, 0.5, x, criterion=FilterNorm(1), greedy=True)
    assert 0 in independent.layer("0").removed.tolist()
    assert set(independent.layer("3").removed.tolist()).isdisjoint(range(6))
    assert not set(greedy.layer("3").removed.tolist()).isdisjoint(range(6))


def test_global_structured_respects_min_channels_and_rejects_impossible_targets():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    # Three groups of 8, 12 and 16 channels: 0.8 asks for 29 of 36.
    plan = plan_structured(model, 0.8, x, scope="global", min_channels=2)
    assert plan.num_removed == 29
    assert all(layer.num_kept >= 2 for layer in plan.layers)
    with pytest.raises(ValueError, match="min_channels"):
        plan_structured(model, 0.8, x, scope="global", min_channels=4)


def test_torch_pruning_importance_matches_pyprune_plan():
    x = torch.randn(2, 3, 8, 8)
    model = small_cnn()
    ours = copy.deepcopy(model)
    plan_structured(ours, 0.5, x, criterion=FilterNorm(2)).apply(ours)
    theirs = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(
        theirs,
        x,
        importance=TorchPruningImportance(FilterNorm(2), theirs),
        pruning_ratio=0.5,
        ignored_layers=[theirs[9]],
    )
    pruner.step()
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("structured", [True, False])
def test_plan_json_round_trip(structured, tmp_path):
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    plan = plan_structured(model, 0.5, x) if structured else plan_unstructured(model, 0.7, scope="global")
    path = tmp_path / "plan.json"
    plan.to_json(str(path))
    again = PruningPlan.from_json(str(path))
    assert again.to_dict() == plan.to_dict()
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    plan.apply(a)
    again.apply(b)
    for u, v in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(u, v)


def test_plan_prints_a_table():
    model = small_cnn()
    text = str(plan_structured(model, 0.5, torch.randn(2, 3, 8, 8)))
    assert "layer" in text
    assert "FLOPs" in text
    assert "50.0%" in text
    # title, header, rule, three layers (the output layer is kept), model, the untouched line
    assert text.count("\n") == 2 + 3 + 1 + 1
    assert text.splitlines()[-1] == "untouched: 9 (output layer, left out by default)"


def test_save_load_round_trip_resnet_after_two_rounds(tmp_path):
    torch.manual_seed(0)
    model = randomise_bn(models.resnet20())
    x = torch.randn(2, 3, 16, 16)
    pyprune.prune(model, "l1_filter", 0.3, example_input=x)
    pyprune.prune(model, "magnitude", 0.5)  # masks on top of the smaller architecture
    with torch.no_grad():  # "fine-tuning" changed the surviving weights
        for p in model.parameters():
            p.add_(0.01)
    model.eval()
    expected = model(x)
    save_pruned(model, tmp_path / "pruned.pt", accuracy=0.9)
    fresh = models.resnet20()
    load_pruned(tmp_path / "pruned.pt", fresh)
    fresh.eval()
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    assert fresh.pyprune_extra == {"accuracy": 0.9}


def test_save_load_after_make_permanent(tmp_path):
    model = models.mlp([10, 20, 5])
    pyprune.prune(model, "magnitude", 0.5)
    make_permanent(model)
    x = torch.randn(3, 10)
    save_pruned(model, tmp_path / "m.pt")
    fresh = load_pruned(tmp_path / "m.pt", models.mlp([10, 20, 5]))
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5, math.nan])
def test_amount_outside_unit_interval_is_rejected(amount):
    model = models.mlp([10, 20, 5])
    with pytest.raises((ValueError, TypeError), match="amount"):
        pyprune.plan(model, "magnitude", amount)


def test_per_layer_amount_of_one_and_unknown_names_are_rejected():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"amount\['0'\]"):
        plan_structured(model, {"0": 1.0}, x)
    with pytest.raises(ValueError, match="no prunable layer named"):
        plan_structured(model, {"conv9": 0.5}, x)
    with pytest.raises(ValueError, match="did you mean"):
        plan_unstructured(model, 0.5, layers=["03"])


def test_layers_without_float_weights_are_rejected():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no weight"):
        plan_unstructured(model, 0.5, layers=["1"])
    model[0].weight = nn.Parameter(torch.ones(4, 4, dtype=torch.int32), requires_grad=False)
    with pytest.raises(TypeError, match="floating-point"):
        plan_unstructured(model, 0.5, layers=["0"])


def test_plan_on_a_different_architecture_fails_without_changing_it():
    plan = plan_structured(small_cnn(), 0.5, torch.randn(2, 3, 8, 8))
    other = models.mlp([20, 30, 10])
    snapshot = state_snapshot(other)
    with pytest.raises(ValueError, match="different architecture"):
        plan.apply(other)
    assert_unchanged(other, snapshot)


def test_untraceable_model_gives_a_clear_error_and_is_untouched():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 1e9:  # data-dependent control flow is fine; a non-tensor output is not
                return None
            return {"y": self.fc(self.conv(x).mean(dim=(2, 3)))}["y"].tolist()

    model = Untraceable()
    snapshot = state_snapshot(model)
    with pytest.raises(ValueError, match="Torch-Pruning could not trace"):
        plan_structured(model, 0.5, torch.randn(1, 3, 4, 4))
    assert_unchanged(model, snapshot)


def test_planning_never_modifies_the_model():
    model = randomise_bn(small_cnn()).train()
    snapshot = state_snapshot(model)
    plan_structured(model, 0.5, torch.randn(2, 3, 8, 8))
    plan_unstructured(model, 0.5, example_input=torch.randn(2, 3, 8, 8))
    assert_unchanged(model, snapshot)
    assert model.training
    assert not hasattr(model, "pyprune_history")


def test_failure_part_way_through_apply_restores_the_model(monkeypatch):
    model = models.mlp([10, 20, 15, 5])
    parameters = dict(model.named_parameters())
    snapshot = state_snapshot(model)
    plan = plan_unstructured(model, 0.5)
    calls = {"n": 0}
    original = torch_prune.custom_from_mask

    def flaky(module, name, mask):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return original(module, name, mask)

    monkeypatch.setattr(torch_prune, "custom_from_mask", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        plan.apply(model)
    assert calls["n"] == 2  # the first layer had been masked when the failure hit
    assert_unchanged(model, snapshot)
    assert dict(model.named_parameters()) == parameters  # the very same Parameter objects
    assert not model.fc1._forward_pre_hooks
    assert not hasattr(model, "pyprune_history")


def test_failure_part_way_through_structured_removal_restores_the_model(monkeypatch):
    model = randomise_bn(small_cnn())
    x = torch.randn(2, 3, 8, 8)
    plan = plan_structured(model, 0.5, x)
    snapshot = state_snapshot(model)
    original = torch.index_select
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "index_select", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        plan.apply(model)
    assert_unchanged(model, snapshot)
    assert model[0].out_channels == 8
    assert model[3].in_channels == 8
    torch.testing.assert_close(model(x), copy.deepcopy(model)(x))


def test_unknown_method_suggests_close_names():
    with pytest.raises(ValueError, match="l1_filter"):
        pyprune.plan(models.mlp([4, 4, 2]), "l1_filtr", 0.5)


def test_structured_method_without_example_input_is_rejected():
    with pytest.raises(ValueError, match="example_input"):
        pyprune.plan(small_cnn(), "l1_filter", 0.5)


def test_magnitude_criterion_is_usable_alone():
    layer = nn.Linear(3, 2)
    assert torch.equal(Magnitude().scores(layer, "x"), layer.weight.detach().abs())


def test_rescale_multiplies_weights_round_trips_and_is_undone_on_failure(monkeypatch):
    from pyprune.pruning import apply as apply_module

    torch.manual_seed(0)
    model = models.mlp([6, 5, 3])
    dense = copy.deepcopy(model)
    plan = plan_unstructured(model, 0.4)
    factors = torch.arange(1, 6, dtype=torch.float64)[:, None]  # one factor per output row of fc1
    plan.rescale = {"fc1": factors}
    restored = PruningPlan.from_json(plan.to_json())
    torch.testing.assert_close(restored.rescale["fc1"], factors, rtol=0, atol=0)

    restored.apply(model)
    mask = model.fc1.weight_mask
    torch.testing.assert_close(model.fc1.weight, dense.fc1.weight * factors.float() * mask)

    broken = copy.deepcopy(dense)

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(apply_module, "_apply_mask", fail)
    with pytest.raises(RuntimeError, match="boom"):
        restored.apply(broken)
    torch.testing.assert_close(broken.fc1.weight, dense.fc1.weight, rtol=0, atol=0)


def test_rescale_with_a_wrong_shape_is_refused_before_anything_changes():
    model = models.mlp([6, 5, 3])
    snapshot = state_snapshot(model)
    plan = plan_unstructured(model, 0.4)
    plan.rescale = {"fc1": torch.ones(7, dtype=torch.float64)}
    with pytest.raises(ValueError, match=r"rescale\['fc1'\]"):
        plan.apply(model)
    assert_unchanged(model, snapshot)


def test_measure_false_skips_the_counts_but_plans_the_same_channels():
    model = models.mlp([6, 8, 3])
    x = torch.randn(2, 6)
    measured = plan_structured(model, 0.5, x)
    quick = plan_structured(model, 0.5, x, measure=False)
    assert measured.totals["params"][1] < measured.totals["params"][0]
    assert quick.totals == {}
    assert [layer.removed.tolist() for layer in quick.layers] == [
        layer.removed.tolist() for layer in measured.layers
    ]


def test_a_method_whose_planner_has_the_wrong_signature_is_refused():
    from pyprune.pruning.methods import Method

    with pytest.raises(TypeError, match=r"planner must accept planner\(model, amount, \*, example_input"):
        Method("bad", lambda model: None, "takes no amount", structured=False)
    with pytest.raises(TypeError, match="planner must be callable"):
        Method("bad", "not a function", "a string", structured=False)


def test_built_in_methods_load_on_first_lookup():
    import subprocess
    import sys

    script = (
        "import sys, pyprune\n"
        "from pyprune.pruning import METHODS\n"
        "sipp = 'pyprune.pruning.criteria.provable.sipp'\n"
        "assert 'sipp_det' in METHODS and 'sipp_det' in list(METHODS) and sipp not in sys.modules\n"
        "assert METHODS['sipp_det'].needs_data and sipp in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=pathlib.Path(__file__).parents[1])


# ------------------------------------------------------------------------------------- the output layer is kept


@pytest.mark.parametrize("method", ["l1_filter", "random_channels", "taylor", "oracle", "cka_single"])
def test_explicit_ignored_layers_without_the_output_layer_is_refused_at_planning(method):
    # ignored_layers replaces the default (the output layer "9"): every structured method goes through plan(),
    # which refuses the plan before anything is applied, naming the argument and the layer.
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 8, 8)
    extra = {"data": [(x, torch.randint(0, 10, (4,)))]} if pyprune.METHODS[method].needs_data else {}
    if method in ("taylor", "oracle"):
        extra["progress"] = False
    with pytest.raises(ValueError, match=r"^ignored_layers: .* output channels of '9'.*add '9' to it"):
        pyprune.prune(model, method, 0.5, example_input=x, ignored_layers=["0"], **extra)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # Listing the output layer as well plans and applies.
    plan = pyprune.prune(model, method, 0.5, example_input=x, ignored_layers=["0", "9"], **extra)
    assert "9" not in [layer.name for layer in plan.layers]
    assert model(x).shape == (4, 10)


def test_a_direct_structured_plan_that_cuts_the_output_layer_is_refused_at_planning_and_at_apply():
    model = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"^ignored_layers: .* 5 of the 10 output channels of '9'"):
        plan_structured(model, 0.5, x, ignored_layers=["0"])
    # A plan edited (or loaded) to cut it is still refused when applied, before anything changes.
    plan = plan_structured(model, 0.5, x, ignored_layers=["0", "9"])
    plan.layers.append(LayerPlan("9", "channels", 10, torch.arange(5)))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="output channels of '9'"):
        plan.apply(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_mask_mode_keeps_the_output_layer_out_even_with_explicit_ignored_layers():
    # Mask mode selects its layers as unstructured planning does: the output layer is never among them.
    plan = pyprune.plan(small_cnn(), "unit_l2", 0.5, ignored_layers=["0"])
    assert [layer.name for layer in plan.layers] == ["3", "7"]
    assert set(plan.options["untouched"]) == {"0", "9"}


def test_structured_counts_head_and_unit_plans():
    weights = pyprune.plan(small_cnn(), "magnitude", 0.5)
    assert not weights.structured
    heads = PruningPlan.from_dict({**weights.to_dict(), "mode": "remove", "layers": []})
    assert not heads.structured
    heads.layers = [LayerPlan("attn", "heads", 4, torch.tensor([1]))]
    assert heads.structured
