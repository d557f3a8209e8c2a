"""PFP (Liebenwein et al. 2020, "Provable Filter Pruning for Efficient Neural Networks"): unit sensitivities
against a brute-force float64 computation, the eps allocation (monotone size, k_l at eps*, budget), top-k selection
and ties, the any-reader-keeps rule on a residual stream, sampling and reweighting (seeds, unbiasedness, JSON), the
outer keep-ratio search, pruning the model's input features (prune_inputs), and bad input."""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import pyprune.pruning as pruning
from pyprune import models
from pyprune.measure import count
from pyprune.ops.sensitivity import EPSILON
from pyprune.pruning import PruningPlan
from pyprune.pruning.criteria.provable import (
    PFPAllocator,
    PFPLayer,
    SensitivityTracker,
    SmallSensitivitySetWarning,
    alpha,
    expected_distinct,
    pfp_network,
    plan_pfp,
    sample_complexity,
    select_channels,
)
from pyprune.pruning.criteria.provable.pfp import EPSILON_RANGE, KEEP_RATIO_TOLERANCE, KeepRatioMissedWarning

# More samples than the |S| that Baykal et al.'s bound asks for (sensitivity_set_size) on the tiny nets below
# (c = 3, delta = 1e-16), so no warning fires.
SAMPLES = 200


def tiny_cnn() -> nn.Sequential:
    """Stride, padding, dilation, BatchNorm, a flatten into a Linear head; float64 so the tracker is exact."""
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, stride=2, padding=1),
            bn1=nn.BatchNorm2d(4),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, 5, 3, padding=2, dilation=2),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(5 * 4 * 4, 6),
            relu3=nn.ReLU(),
            fc2=nn.Linear(6, 3),
        )
    ).double()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.2, 0.2)
        model.bn1.running_var.uniform_(0.5, 1.5)
    return model


class Residual(nn.Module):
    """``stem`` writes a residual stream that ``a`` (through ``b``), ``c`` and ``fc`` all read; ``b`` and ``c``
    add to it, so stem, b and c share one dependency group with three readers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + self.b(torch.relu(self.a(h)))
        h = h + self.c(torch.relu(h))
        return self.fc(self.pool(torch.relu(h)).flatten(1))


def residual() -> Residual:
    torch.manual_seed(3)
    return Residual().double()


def images(n: int = SAMPLES, size: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def batches(x: torch.Tensor, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (x[i : i + size], torch.zeros(len(x[i : i + size]), dtype=torch.long)) for i in range(0, len(x), size)
    ]


def brute_force_channel_sensitivity(model: nn.Module, data: torch.Tensor) -> dict[str, torch.Tensor]:
    """``s_in_c`` of every Linear/Conv2d by materialising ``g_fj(x, p)`` for every output unit, input element,
    patch and example (batch doubled for signed inputs), then the max over f, taps, patches and data."""
    model = copy.deepcopy(model).double().eval()
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [
        module.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, []).append(args[0]))
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | nn.Conv2d)
    ]
    with torch.no_grad():
        for x, _ in batches(data, 37):  # an odd batch size: the maxima must not depend on batching
            model(x)
    for hook in hooks:
        hook.remove()
    result = {}
    for name, chunks in seen.items():
        module = model.get_submodule(name)
        weight = module.weight.detach().flatten(1)  # (F, J)
        s = torch.zeros(module.weight.shape[1], dtype=torch.float64)
        for a in chunks:
            if (a < 0).any():
                a = torch.cat([a.clamp_min(0), (-a).clamp_min(0)])
            if isinstance(module, nn.Conv2d):
                patches = nn.functional.unfold(
                    a, module.kernel_size, module.dilation, module.padding, module.stride
                )  # (b, J, P)
            else:
                patches = a[:, :, None]
            z_pos = torch.einsum("fj,bjp->bfp", weight.clamp_min(0), patches)
            z_neg = torch.einsum("fj,bjp->bfp", weight.clamp_max(0), patches)
            z_pos[z_pos.abs() <= EPSILON] = math.inf
            z_neg[z_neg.abs() <= EPSILON] = math.inf
            g = weight[None, :, :, None] * patches[:, None, :, :]  # (b, F, J, P)
            ratio = torch.where(
                g > 0, g / z_pos[:, :, None, :], torch.where(g < 0, g / z_neg[:, :, None, :], 0.0)
            )
            per_element = ratio.amax(dim=(0, 1, 3))  # (J,)
            s = torch.maximum(s, per_element.reshape(module.weight.shape[1], -1).amax(dim=1))
        result[name] = s
    return result


# ---------------------------------------------------------------------------------------------- sensitivities


def test_unit_sensitivities_match_brute_force():
    model = tiny_cnn()
    x = images()
    expected = brute_force_channel_sensitivity(model, x)
    tracker = SensitivityTracker(model).accumulate_over(batches(x), progress=False)
    for name, s in expected.items():
        torch.testing.assert_close(tracker.channel_sensitivity(name), s, rtol=1e-9, atol=1e-12)

    network = pfp_network(model, x[:1], tracker)
    assert [layer.name for layer in network.layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert network.layer("conv1").units == 0  # image channels are never pruned
    assert network.layer("conv1").fixed_columns == 3
    torch.testing.assert_close(network.layer("conv2").sensitivity, expected["conv2"])
    # After the flatten a unit (a conv2 channel) feeds a 4x4 block of fc1's columns: max over the block.
    fc1 = network.layer("fc1")
    torch.testing.assert_close(fc1.sensitivity, expected["fc1"].reshape(5, 16).amax(dim=1))
    assert fc1.sources == tuple(("conv2", c) for c in range(5))
    assert [cols.tolist() for cols in fc1.columns] == [list(range(16 * c, 16 * c + 16)) for c in range(5)]
    assert fc1.unit_width == 16
    torch.testing.assert_close(network.layer("fc2").sensitivity, expected["fc2"])
    assert [layer.sole_reader for layer in network.layers] == ["conv2", "fc1", "fc2", None]
    assert all(((layer.sensitivity >= 0) & (layer.sensitivity <= 1)).all() for layer in network.layers)


# ------------------------------------------------------------------------------------------------- allocation


def chain(seed: int = 0) -> list[PFPLayer]:
    """A synthetic 4-layer chain: an input layer (no units), two conv-like layers and a classifier; skewed
    saliencies with one dead unit."""
    generator = torch.Generator().manual_seed(seed)

    def units(n: int, source: str) -> dict:
        s = torch.rand(n, generator=generator, dtype=torch.float64) ** 3
        s[n // 2] = 0.0
        return {
            "sensitivity": s,
            "sources": tuple((source, c) for c in range(n)),
            "columns": tuple(torch.tensor([c]) for c in range(n)),
            "in_columns": n,
        }

    empty = {"sensitivity": torch.zeros(0, dtype=torch.float64), "sources": (), "columns": ()}
    return [
        PFPLayer("l0", **empty, in_columns=3, out_channels=40, kappa=9, patches=64, sole_reader="l1"),
        PFPLayer("l1", **units(40, "l0"), out_channels=60, kappa=9, patches=16, sole_reader="l2"),
        PFPLayer("l2", **units(60, "l1"), out_channels=30, kappa=1, patches=1, sole_reader="l3"),
        PFPLayer("l3", **units(30, "l2"), out_channels=10, kappa=1, patches=1),
    ]


def direct_inputs(layers: list[PFPLayer], epsilon: float, c: float = 3.0, delta: float = 1e-16) -> dict:
    result = {}
    for layer in layers:
        if layer.units:
            s = layer.sensitivity
            a = alpha(layer.patches, layer.kappa * layer.unit_width, c, delta) * float(s.sum())
            m = sample_complexity(epsilon, a)
            result[layer.name] = min(layer.units, max(1, expected_distinct(s / s.sum(), m)))
    return result


def direct_size(layers: list[PFPLayer], inputs: dict) -> float:
    by_name = {layer.name: layer for layer in layers}
    total = 0.0
    for layer in layers:
        out = layer.out_channels
        if layer.sole_reader is not None:
            out = min(out, inputs[layer.sole_reader])
        kept = layer.fixed_columns + inputs.get(layer.name, 0) * by_name[layer.name].unit_width
        total += kept * layer.kappa * out
    return total


def test_size_is_non_increasing_in_epsilon_and_matches_the_formula():
    layers = chain()
    allocator = PFPAllocator(layers)
    grid = torch.logspace(-150, 150, 301, dtype=torch.float64).tolist()
    sizes = [allocator.size(eps) for eps in grid]
    assert all(later <= earlier for earlier, later in itertools.pairwise(sizes))
    assert sizes[0] == direct_size(layers, {layer.name: layer.units - 1 for layer in layers if layer.units})
    assert sizes[-1] == direct_size(layers, {layer.name: 1 for layer in layers if layer.units})
    for eps in (0.5, 3.0, 40.0):
        assert allocator.inputs(eps) == direct_inputs(layers, eps)
        assert allocator.size(eps) == pytest.approx(direct_size(layers, direct_inputs(layers, eps)))


@pytest.mark.parametrize("fraction", [0.9, 0.6, 0.3, 0.1])
def test_solve_finds_the_smallest_epsilon_that_fits_and_k_matches_a_direct_evaluation(fraction):
    layers = chain()
    allocator = PFPAllocator(layers)
    budget = fraction * allocator.full_size()
    allocation = allocator.solve(budget)
    assert allocation.size <= budget
    assert allocation.size >= 0.9 * budget  # the units are fine enough to come close
    # A hair smaller eps (more draws) would break the budget: eps* is the smallest that fits.
    assert allocator.size(math.exp(math.log(allocation.epsilon) - 1e-11)) > budget
    assert allocation.inputs == direct_inputs(layers, allocation.epsilon)
    assert allocation.size == pytest.approx(direct_size(layers, allocation.inputs))


def test_solve_at_the_ends_of_the_epsilon_range():
    layers = chain()
    allocator = PFPAllocator(layers)
    everything = allocator.solve(allocator.full_size())
    assert everything.epsilon == pytest.approx(EPSILON_RANGE[0])
    # Every unit with a nonzero saliency; the dead one never (no number of draws picks it).
    assert everything.inputs == {"l1": 39, "l2": 59, "l3": 29}
    nothing = allocator.solve(0.0)
    assert nothing.epsilon == pytest.approx(EPSILON_RANGE[1])
    assert nothing.inputs == {"l1": 1, "l2": 1, "l3": 1}


def test_larger_sensitivity_mass_gets_more_units():
    layers = chain()
    heavy = PFPLayer(**{**layers[2].__dict__, "sensitivity": layers[2].sensitivity * 4})
    light = PFPAllocator(layers).inputs(10.0)["l2"]
    assert PFPAllocator([*layers[:2], heavy, layers[3]]).inputs(10.0)["l2"] > light


def test_dead_layer_keeps_one_unit():
    layers = chain()
    dead = PFPLayer(**{**layers[3].__dict__, "sensitivity": torch.zeros(30, dtype=torch.float64)})
    allocator = PFPAllocator([*layers[:3], dead])
    assert allocator.inputs(EPSILON_RANGE[0])["l3"] == 1
    kept, factors = select_channels(dead.sensitivity, 1, "rand", torch.Generator().manual_seed(0))
    assert kept.nonzero().flatten().tolist() == [0]
    assert factors[0] == 1.0


# -------------------------------------------------------------------------------------------------- selection


def test_det_keeps_the_top_k_with_ties_by_index():
    s = torch.tensor([0.5, 0.2, 0.5, 0.2, 0.9, 0.0])
    for k, expected in [(1, [4]), (2, [0, 4]), (3, [0, 2, 4]), (4, [0, 1, 2, 4]), (6, [0, 1, 2, 3, 4, 5])]:
        kept, factors = select_channels(s, k)
        assert kept.nonzero().flatten().tolist() == expected
        assert factors.tolist() == kept.double().tolist()


@pytest.mark.parametrize("variant", ["rand", "top"])
def test_sampling_is_reproducible_and_factors_vanish_exactly_off_the_kept_set(variant):
    s = torch.rand(30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    draws = [select_channels(s, 10, variant, torch.Generator().manual_seed(seed)) for seed in (5, 5, 6)]
    assert torch.equal(draws[0][0], draws[1][0])
    assert torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][1], draws[2][1])
    for kept, factors in draws:
        assert torch.equal(kept, factors > 0)


@pytest.mark.parametrize("variant", ["rand", "top"])
def test_reweighting_is_unbiased_on_average(variant):
    # Two dominant units ("top" keeps them as they are) and eight small ones that are sampled.
    s = torch.tensor([4.0, 3.0, *torch.linspace(0.5, 1.0, 8).tolist()], dtype=torch.float64)
    total = torch.zeros(10, dtype=torch.float64)
    runs = 3000
    for seed in range(runs):
        total += select_channels(s, 5, variant, torch.Generator().manual_seed(seed))[1]
    # E[gamma_c] = 1 for every unit; the standard error of these means is below 0.04 (0.15 is ~4 of them).
    torch.testing.assert_close(total / runs, torch.ones(10, dtype=torch.float64), rtol=0, atol=0.15)


def test_top_keeps_the_sure_units_deterministically():
    s = torch.tensor([10.0, 0.5, 0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    for seed in range(20):
        kept, factors = select_channels(s, 3, "top", torch.Generator().manual_seed(seed))
        assert bool(kept[0])
        assert factors[0] == 1.0  # p_0 >= 1 / m_hat: kept as is, not reweighted
        assert int(kept.sum()) >= 2


def test_keeping_every_live_unit_needs_no_sampling():
    s = torch.tensor([0.3, 0.0, 0.7])
    for variant in ("rand", "top"):
        kept, factors = select_channels(s, 2, variant, torch.Generator().manual_seed(0))
        assert kept.tolist() == [True, False, True]
        assert factors.tolist() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k:"),
        ({"k": 7}, "k:"),
        ({"k": 2.0}, "k:"),
        ({"k": 2, "variant": "hybrid"}, "variant:"),
        ({"k": 2, "sensitivity": torch.tensor([0.1, -0.2, 0.3, 0.1, 0.1, 0.1])}, "sensitivity:"),
    ],
)
def test_select_channels_rejects_bad_arguments(kwargs, match):
    kwargs = {"sensitivity": torch.rand(6), **kwargs}
    with pytest.raises(ValueError, match=match):
        select_channels(**kwargs)


# ------------------------------------------------------------------------------------------------------ plans


def test_det_plan_removes_what_the_readers_do_not_keep_and_the_pruned_model_runs():
    model = tiny_cnn()
    x = images()
    tracker = SensitivityTracker(model).accumulate_over(batches(x), progress=False)
    plan = plan_pfp(model, 0.6, x[:1], tracker)
    network = pfp_network(model, x[:1], tracker)
    kept_units = plan.options["kept_units"]
    # Sequential: group conv1 is read by conv2, conv2 by fc1, fc1 by fc2; each keeps its reader's top-k.
    for root, reader in [("conv1", "conv2"), ("conv2", "fc1"), ("fc1", "fc2")]:
        kept, _ = select_channels(network.layer(reader).sensitivity, kept_units[reader])
        removed = plan.layer(root).removed.tolist() if root in [layer.name for layer in plan.layers] else []
        assert removed == (~kept).nonzero().flatten().tolist(), root
    assert plan.rescale == {}  # det on a chain: dropped columns are removed with their channels
    pruned = copy.deepcopy(model)
    plan.apply(pruned)
    assert count(pruned, x[:1]).params < count(model, x[:1]).params
    assert pruned(x[:5]).shape == (5, 3)
    assert plan.options["keep_ratio_achieved"] == pytest.approx(
        count(pruned, x[:1]).params / count(model, x[:1]).params
    )


def test_a_residual_channel_stays_if_any_reader_keeps_it():
    model = residual()
    x = images(SAMPLES, 6)
    tracker = SensitivityTracker(model).accumulate_over(batches(x), progress=False)
    network = pfp_network(model, x[:1], tracker)
    stream = next(group for group in network.groups if {"stem", "b", "c"} <= {w for w, _, _ in group.writers})
    assert sorted(reader for reader, _, _ in stream.readers) == ["a", "c", "fc"]
    assert network.layer("b").sole_reader is None  # three readers: the estimate keeps its full width
    assert network.layer("a").sole_reader == "b"

    kept = {name: torch.zeros(network.layer(name).units, dtype=torch.bool) for name in ("a", "b", "c", "fc")}
    kept["a"][[0, 1]] = True
    kept["c"][[1, 5]] = True
    kept["fc"][[7]] = True
    kept["b"][[2]] = True
    keep, scores = network.group_keep(kept)[stream.root]
    assert keep.nonzero().flatten().tolist() == [0, 1, 5, 7]
    assert bool(scores[keep].min() > scores[~keep].max())

    plan = plan_pfp(model, 0.5, x[:1], tracker)
    chosen = {
        name: select_channels(network.layer(name).sensitivity, k)[0]
        for name, k in plan.options["kept_units"].items()
    }
    union = chosen["a"] | chosen["c"] | chosen["fc"]
    dropped = (~union).nonzero().flatten().tolist()
    assert plan.layer(stream.root).removed.tolist() == dropped
    # A reader that dropped a channel another reader keeps gets a zero column for it; kept columns stay 1.
    for name in ("a", "c", "fc"):
        factors = plan.rescale.get(name, torch.ones(1, 8)).flatten()
        assert factors[union & ~chosen[name]].eq(0).all(), name
        assert factors[chosen[name]].eq(1).all(), name
    pruned = copy.deepcopy(model)
    plan.apply(pruned)
    assert pruned(x[:3]).shape == (3, 4)


@pytest.mark.parametrize("variant", ["rand", "top"])
def test_sampled_plans_are_reproducible_and_round_trip_through_json(variant, tmp_path):
    model = residual()
    x = images(SAMPLES, 6)
    tracker = SensitivityTracker(model).accumulate_over(batches(x), progress=False)
    first = plan_pfp(model, 0.4, x[:1], tracker, variant=variant, seed=7)
    again = plan_pfp(model, 0.4, x[:1], tracker, variant=variant, seed=7)
    assert first.to_dict() == again.to_dict()
    assert first.method == f"pfp_{variant}"
    assert first.rescale  # reweighted columns
    for name, factors in first.rescale.items():
        weight = model.get_submodule(name).weight
        assert factors.dtype == torch.float64
        assert factors.shape == (1, weight.shape[1], *([1] * (weight.dim() - 2)))
    path = tmp_path / "plan.json"
    first.to_json(str(path))
    loaded = PruningPlan.from_json(str(path))
    for name, factors in first.rescale.items():
        assert torch.equal(loaded.rescale[name], factors)
    direct, replayed = copy.deepcopy(model), copy.deepcopy(model)
    first.apply(direct)
    loaded.apply(replayed)
    torch.testing.assert_close(direct(x[:4]), replayed(x[:4]), rtol=0, atol=0)


def test_seeds_change_the_sampled_plan():
    model = models.mlp([16, 40, 40, 5]).double()
    x = torch.rand(SAMPLES, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tracker = SensitivityTracker(model).accumulate_over(x, progress=False)
    plans = [plan_pfp(model, 0.5, x[:1], tracker, variant="rand", seed=seed) for seed in range(3)]
    assert len({str(plan.to_dict()["rescale"]) for plan in plans}) > 1


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.8])
def test_outer_search_reaches_the_parameter_ratio(amount):
    model = models.mlp([48, 150, 150, 10]).double()
    x = torch.rand(SAMPLES, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tracker = SensitivityTracker(model).accumulate_over(x, progress=False)
    plan = plan_pfp(model, amount, x[:1], tracker)
    pruned = copy.deepcopy(model)
    plan.apply(pruned)
    achieved = count(pruned, x[:1]).params / count(model, x[:1]).params
    assert achieved == pytest.approx(plan.options["keep_ratio_achieved"])
    assert abs(achieved - (1 - amount)) <= KEEP_RATIO_TOLERANCE * (1 - amount)
    assert plan.options["keep_ratio_within_tolerance"]
    assert plan.options["keep_ratio_note"] == ""
    assert plan.options["amount"] == amount
    assert 1 <= plan.options["trials"] <= 23


def test_a_tiny_model_reports_why_the_ratio_is_missed():
    model = models.mlp([4, 3, 2]).double()  # one hidden unit is 7 of 23 parameters
    x = torch.rand(SAMPLES, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plan = plan_pfp(model, 0.1, x[:1], [x], progress=False)
    assert not plan.options["keep_ratio_within_tolerance"]
    assert "no allocation along PFP's error path" in plan.options["keep_ratio_note"]
    achieved = plan.options["keep_ratio_achieved"]
    assert achieved in (1.0, 16 / 23)  # the closest of what can be had: every unit or one fewer


def test_amount_zero_keeps_everything_and_dead_units_go_first():
    model = models.mlp([6, 12, 12, 3]).double()
    with torch.no_grad():
        model.fc1.weight[:4] = -1.0  # units 0..3 of fc1 never fire on non-negative inputs: zero saliency
        model.fc1.bias[:4] = -1.0
    x = torch.rand(SAMPLES, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tracker = SensitivityTracker(model).accumulate_over(x, progress=False)
    nothing = plan_pfp(model, 0.0, x[:1], tracker)
    assert nothing.num_removed == 0
    assert nothing.rescale == {}
    assert nothing.options["keep_ratio_achieved"] == 1.0
    with pytest.warns(
        KeepRatioMissedWarning, match="keep 0.8000 of the params"
    ):  # the dead units alone are more
        some = plan_pfp(model, 0.2, x[:1], tracker)
    assert set(range(4)) <= set(some.layer("fc1").removed.tolist())


def test_an_entirely_dead_layer_keeps_one_channel():
    model = models.mlp([6, 12, 3]).double()
    with torch.no_grad():
        model.fc1.weight.fill_(-1.0)
        model.fc1.bias.fill_(-1.0)
    x = torch.rand(SAMPLES, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.warns(KeepRatioMissedWarning, match="keep 0.5000 of the params"):  # all of fc1 is dead
        plan = plan_pfp(model, 0.5, x[:1], [x], progress=False)
    assert plan.layer("fc1").removed.tolist() == list(range(1, 12))  # ties by index: unit 0 stays
    pruned = copy.deepcopy(model)
    plan.apply(pruned)
    assert torch.isfinite(pruned(x[:3])).all()


def test_mask_mode_computes_the_same_function_as_removal():
    model = models.mlp([10, 30, 20, 4]).double()
    x = torch.rand(SAMPLES, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tracker = SensitivityTracker(model).accumulate_over(x, progress=False)
    masked_plan = plan_pfp(model, 0.5, x[:1], tracker, mode="mask", variant="rand", seed=1)
    assert masked_plan.mode == "mask"
    assert masked_plan.options["keep_ratio_metric"] == "nonzero_params"
    removal = PruningPlan.from_dict({**masked_plan.to_dict(), "mode": "remove", "input_shape": [1, 10]})
    masked, removed = copy.deepcopy(model), copy.deepcopy(model)
    masked_plan.apply(masked)
    removal.apply(removed)
    torch.testing.assert_close(masked(x[:8]), removed(x[:8]))
    achieved = count(masked, x[:1]).nonzero_params / count(model, x[:1]).nonzero_params
    assert achieved == pytest.approx(masked_plan.options["keep_ratio_achieved"])


def test_planning_leaves_the_model_unchanged():
    model = tiny_cnn().train()
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    x = images()
    plan_pfp(model, 0.5, x[:1], batches(x), variant="rand", progress=False)
    assert model.training
    assert all(module.training for module in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key]), key


def test_registered_methods_plan_through_the_registry():
    model = tiny_cnn()
    x = images()
    for name in ("pfp", "pfp_rand", "pfp_top"):
        method = pruning.get_method(name)
        assert method.structured
        assert method.needs_example_input
        assert method.needs_data
        plan = pruning.plan(model, name, 0.5, example_input=x[:1], data=batches(x), seed=2, progress=False)
        assert plan.method == name
        assert plan.options["seed"] == 2
    with pytest.raises(ValueError, match="data:"):
        pruning.plan(model, "pfp", 0.5, example_input=x[:1])
    with pytest.raises(TypeError, match="unexpected keyword argument 'scope'"):
        pruning.plan(model, "pfp", 0.5, example_input=x[:1], data=batches(x), scope="global")


def test_lenet5_on_digit_sized_data_plans_quickly():
    torch.manual_seed(0)
    model = models.lenet5(image_size=28)
    x = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with pytest.warns(SmallSensitivitySetWarning, match=r"asks for 169 examples .* got 128, 41 short"):
        plan = plan_pfp(model, 0.9, x[:1], batches(x, 32), progress=False)
    assert plan.options["sensitivity_samples_needed"] == 169
    assert plan.totals["params"][1] < 0.2 * plan.totals["params"][0]
    assert set(plan.options["kept_units"]) == {"conv2", "fc1", "fc2", "fc3"}


# -------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"amount": 1.0}, ValueError, "amount:"),
        ({"amount": -0.1}, ValueError, "amount:"),
        ({"amount": "0.5"}, TypeError, "amount:"),
        ({"amount": {"fc1": 0.5}}, TypeError, "amount:"),
        ({"variant": "hybrid"}, ValueError, "variant:"),
        ({"mode": "zero"}, ValueError, "mode:"),
        ({"seed": 1.5}, TypeError, "seed:"),
        ({"c": 0.0}, ValueError, "c:"),
        ({"delta": 1.5}, ValueError, "delta:"),
        ({"example_input": None}, TypeError, "example_input:"),
        ({"data": None}, ValueError, "data:"),
        ({"data": []}, ValueError, "data:"),
        ({"max_batches": 0}, ValueError, "max_batches:"),
        ({"ignored_layers": ["nope"]}, ValueError, "ignored_layers:"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    model = models.mlp([6, 5, 3]).double()
    x = torch.rand(SAMPLES, 6, dtype=torch.float64)
    arguments = {"model": model, "amount": 0.5, "example_input": x[:1], "data": [x], "progress": False}
    with pytest.raises(error, match=match):
        plan_pfp(**{**arguments, **kwargs})


def test_a_tracker_of_another_model_is_refused():
    model = models.mlp([6, 5, 3]).double()
    x = torch.rand(SAMPLES, 6, dtype=torch.float64)
    other = SensitivityTracker(copy.deepcopy(model)).accumulate_over(x, progress=False)
    with pytest.raises(ValueError, match="data: expected a SensitivityTracker of this model"):
        plan_pfp(model, 0.5, x[:1], other)


def test_depthwise_convolutions_follow_the_channels_of_their_dense_neighbours():
    # conv -> depthwise -> 1x1: PFP rates the channels by the 1x1's input sensitivities; the depthwise conv (not
    # tracked: sensitivities are defined for dense kernels) loses the same channels as the conv before it.
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(4, 8, 3), relu=nn.ReLU(), depthwise=nn.Conv2d(8, 8, 3, groups=8), point=nn.Conv2d(8, 6, 1),
            flat=nn.Flatten(), fc=nn.Linear(6 * 3 * 3, 2),
        )
    )  # fmt: skip
    x = torch.rand(16, 4, 7, 7, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 16 samples are far below the bound's sensitivity-set size
        plan = plan_pfp(model, 0.3, x[:1], [x], progress=False)
    pruned = plan.apply(copy.deepcopy(model))
    assert pruned.depthwise.groups == pruned.depthwise.in_channels == pruned.conv.out_channels < 8
    assert pruned(x).shape == (16, 2)


def test_untraceable_models_are_refused():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x).tolist()

    with pytest.raises(ValueError, match="Torch-Pruning could not trace"):
        plan_pfp(Untraceable(), 0.5, torch.rand(1, 4), [torch.rand(8, 4)], progress=False)


# ------------------------------------------------------------------------------------------- input features


def digits_mlp(hidden: int = 64) -> nn.Sequential:
    torch.manual_seed(0)
    return models.mlp([64, hidden, hidden, 10]).double()


def digit_pixels(n: int = SAMPLES) -> torch.Tensor:
    """``(n, 64)`` non-negative 8x8 images flattened as in scikit-learn's digits, brighter to the right so the
    pixels differ in saliency, with a left column that is always blank (dead pixels, like the digits' border)."""
    x = torch.rand(n, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x * torch.linspace(0.05, 1.0, 8, dtype=torch.float64) ** 2
    x[:, :, 0] = 0.0
    return x.flatten(1)


def input_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(4, 6, 3), relu1=nn.ReLU(), conv2=nn.Conv2d(6, 6, 3, stride=2), relu2=nn.ReLU(),
            flatten=nn.Flatten(), fc=nn.Linear(6 * 2 * 2, 10),
        )
    ).double()  # fmt: skip


def channel_images(n: int = SAMPLES) -> torch.Tensor:
    """``(n, 4, 8, 8)`` non-negative images whose channels are ever fainter (their saliencies differ)."""
    x = torch.rand(n, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return x * torch.tensor([1.0, 0.5, 0.1, 0.02], dtype=torch.float64)[:, None, None]


INPUT_CASES = {
    "mlp": (digits_mlp, digit_pixels, "fc1", 0.6),
    "cnn": (input_cnn, channel_images, "conv1", 0.7),
}


def zero_input_columns(weight: torch.Tensor) -> torch.Tensor:
    """``(C_in,)`` bool: the input columns of a Linear/Conv2d weight that are zero for every output and tap."""
    return weight.detach().transpose(0, 1).flatten(1).eq(0).all(dim=1)


@pytest.mark.parametrize("case", INPUT_CASES)
def test_pruned_input_features_are_zero_columns_of_the_least_salient_ones(case):
    build, inputs, first, amount = INPUT_CASES[case]
    model, x = build(), inputs()
    expected = brute_force_channel_sensitivity(model, x)[first]  # one saliency per pixel / image channel
    tracker = SensitivityTracker(model).accumulate_over(batches(x), progress=False)
    layer = pfp_network(model, x[:1], tracker, prune_inputs=True).layer(first)
    assert layer.sources == tuple((None, c) for c in range(len(expected)))
    assert layer.fixed_columns == 0
    torch.testing.assert_close(layer.sensitivity, expected, rtol=1e-9, atol=1e-12)

    plan = plan_pfp(model, amount, x[:1], tracker, prune_inputs=True)
    k = plan.options["kept_units"][first]
    assert 1 <= k < len(expected)
    kept = torch.zeros(len(expected), dtype=torch.bool)
    kept[torch.sort(-expected, stable=True).indices[:k]] = True
    pruned = plan.apply(copy.deepcopy(model))
    weight = pruned.get_submodule(first).weight
    assert weight.shape[1] == len(expected)  # the model's input keeps its size
    assert torch.equal(zero_input_columns(weight), ~kept)
    if case == "mlp":
        assert zero_input_columns(weight)[::8].all()  # the blank column's pixels are dead: they go first
    assert torch.isfinite(pruned(x[:4])).all()
    assert plan.options["keep_ratio_achieved"] == pytest.approx(
        count(pruned, x[:1]).params / count(model, x[:1]).params
    )


@pytest.mark.parametrize("mode", ["remove", "mask"])
def test_pruned_input_features_keep_the_parameter_budget(mode):
    model, x = digits_mlp(150), digit_pixels()
    tracker = SensitivityTracker(model).accumulate_over(x, progress=False)
    plan = plan_pfp(model, 0.5, x[:1], tracker, mode=mode, prune_inputs=True)
    assert not plan.rescale["fc1"].flatten().all()  # some pixels dropped
    pruned = plan.apply(copy.deepcopy(model))
    # Zeroed input columns stay stored: "params" (remove) counts them, "nonzero_params" (mask) does not.
    metric = "params" if mode == "remove" else "nonzero_params"
    achieved = getattr(count(pruned, x[:1]), metric) / getattr(count(model, x[:1]), metric)
    assert achieved == pytest.approx(plan.options["keep_ratio_achieved"])
    assert abs(achieved - 0.5) <= KEEP_RATIO_TOLERANCE * 0.5
    assert plan.options["keep_ratio_within_tolerance"]


@pytest.mark.parametrize("case", INPUT_CASES)
def test_input_features_are_kept_by_default(case):
    build, inputs, first, amount = INPUT_CASES[case]
    model, x = build(), inputs()
    tracker = SensitivityTracker(model).accumulate_over(batches(x), progress=False)
    default = plan_pfp(model, amount, x[:1], tracker)
    assert plan_pfp(model, amount, x[:1], tracker, prune_inputs=False).to_dict() == default.to_dict()
    assert "prune_inputs" not in default.options
    assert first not in default.options["kept_units"]
    assert not zero_input_columns(default.apply(copy.deepcopy(model)).get_submodule(first).weight).any()
    assert pfp_network(model, x[:1], tracker).layer(first).units == 0
    # Through the registry, sampled: the kept input columns are reweighted, the dropped ones zero.
    plan = pruning.plan(
        model,
        "pfp_rand",
        amount,
        example_input=x[:1],
        data=tracker,
        prune_inputs=True,
        seed=0,
        progress=False,
    )
    assert plan.options["prune_inputs"] is True
    assert first in plan.options["kept_units"]
    factors = plan.rescale[first].flatten()
    assert factors.eq(0).any()
    assert (factors.ne(0) & factors.ne(1)).any()


def test_only_the_layers_that_read_the_input_get_input_units():
    # The stem reads the image (through nothing); a, b, c and fc read the stem's residual stream.
    model = (
        nn.Sequential(nn.BatchNorm2d(3), residual()).double().eval()
    )  # a normalised input is still the input
    x = images(SAMPLES, 6)
    tracker = SensitivityTracker(model).accumulate_over(batches(x), progress=False)
    default = pfp_network(model, x[:1], tracker)
    network = pfp_network(model, x[:1], tracker, prune_inputs=True)
    assert network.layer("1.stem").sources == ((None, 0), (None, 1), (None, 2))
    torch.testing.assert_close(network.layer("1.stem").sensitivity, tracker.channel_sensitivity("1.stem"))
    for before, after in zip(default.layers[1:], network.layers[1:], strict=True):
        assert after.sources == before.sources
        assert torch.equal(after.sensitivity, before.sensitivity)
    assert [layer.sole_reader for layer in network.layers] == [layer.sole_reader for layer in default.layers]


@pytest.mark.parametrize("value", ["yes", 1, 0.0, None])
def test_a_bad_prune_inputs_is_named(value):
    model = models.mlp([6, 5, 3]).double()
    x = torch.rand(SAMPLES, 6, dtype=torch.float64)
    with pytest.raises(TypeError, match="prune_inputs: expected True or False"):
        plan_pfp(model, 0.5, x[:1], [x], progress=False, prune_inputs=value)
    with pytest.raises(TypeError, match="prune_inputs:"):
        pruning.plan(model, "pfp", 0.5, example_input=x[:1], data=[x], progress=False, prune_inputs=value)
