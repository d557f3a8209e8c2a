"""SiPP (Baykal, Liebenwein et al., "SiPPing Neural Networks", 2022): SiPPDet against brute-force float64
sensitivities, the exact budget, the allocation against SciPy's SLSQP and integer enumeration, sampling and
reweighting (counts, unbiasedness, seeds), the hybrid rule, worked examples of the sensitivity-set size |S|, plans
that round-trip through JSON, and bad input."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn
from torch.nn.utils import prune as torch_prune

import pyprune.pruning as pruning
from pyprune.models import resnet20
from pyprune.ops.sensitivity import EPSILON
from pyprune.pruning import PruningPlan
from pyprune.pruning.criteria.provable import (
    SensitivityTracker,
    SmallSensitivitySetWarning,
    adapt_sample_size,
    alpha,
    continuous_allocation,
    error_bound,
    group_error,
    integer_allocation,
    sensitivity_set_size,
    sipp_allocation,
    sipp_det_plan,
    sipp_hybrid_plan,
    sipp_rand_plan,
)

# More samples than the |S| that Baykal et al.'s bound asks for (sensitivity_set_size) on the tiny nets below
# (c = 3, delta = 1e-16), so no warning fires.
SAMPLES = 160


def linear_net() -> nn.Sequential:
    """Tanh makes the second layer's inputs signed too: the batch-doubling rule runs twice."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()


def conv_net() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 2, padding=2, dilation=2),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    ).double()


def inputs(shape: tuple[int, ...], seed: int = 2) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def compressible(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    captured = {}
    handles = [
        module.register_forward_pre_hook(lambda _, args, name=name: captured.__setitem__(name, args[0]))
        for name, module in compressible(model)
    ]
    with torch.no_grad():
        model.eval()(x)
    for handle in handles:
        handle.remove()
    return {name: value.numpy() for name, value in captured.items()}


def brute_patches(module: nn.Module, a: np.ndarray) -> np.ndarray:
    """``A[n, j, p]`` by explicit index arithmetic (no unfold): ``j = (c, u, v)``, ``p = (row, col)``."""
    if isinstance(module, nn.Linear):
        return a[:, :, None]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
    )
    n, channels, height, width = a.shape
    rows = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    cols = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, channels, kh, kw, rows, cols))
    for u, v, row, col in itertools.product(range(kh), range(kw), range(rows), range(cols)):
        h, w = row * sh - ph + u * dh, col * sw - pw + v * dw
        if 0 <= h < height and 0 <= w < width:
            out[:, :, u, v, row, col] = a[:, :, h, w]
    return out.reshape(n, channels * kh * kw, rows * cols)


def brute_sensitivities(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``(mean over patches, max over patches)`` of ``g_fj(x, p)``, max over x, materialised for every
    ``(x, f, j, p)`` in float64 (the empirical sensitivity of Baykal et al.)."""
    result = {}
    for name, a in layer_inputs(model, x).items():
        module = dict(model.named_modules())[name]
        if (a < 0).any():
            a = np.concatenate([np.maximum(a, 0), np.maximum(-a, 0)])
        big_a = brute_patches(module, a)  # (n, J, P)
        w = module.weight.detach().numpy().reshape(module.weight.shape[0], -1)  # (F, J)
        contribution = w[None, :, :, None] * big_a[:, None]  # (n, F, J, P)
        z_pos = np.einsum("fj,njp->nfp", np.maximum(w, 0), big_a)
        z_neg = np.einsum("fj,njp->nfp", np.minimum(w, 0), big_a)
        z = np.where(w[None, :, :, None] > 0, z_pos[:, :, None], z_neg[:, :, None])
        g = np.zeros_like(contribution)
        usable = (w[None, :, :, None] != 0) & (np.abs(z) > EPSILON)
        g[usable] = contribution[usable] / z[usable]
        result[name] = (g.mean(3).max(0), g.max(3).max(0))
    return result


def brute_det_keep(model: nn.Module, s: dict[str, np.ndarray], amount: float) -> dict[str, np.ndarray]:
    """The SiPPDet rule from its statement: every layer's best weight, then the best of the rest over the net;
    keys ``s`` (zero weights last), ties by (layer order, flat index)."""
    layers = compressible(model)
    entries = []
    for order, (name, module) in enumerate(layers):
        w = module.weight.detach().numpy().flatten()
        key = np.where(w != 0, s[name].flatten(), -1.0)
        entries += [(-key[j], order, j) for j in range(w.size)]
    total = len(entries)
    budget = total - math.floor(amount * total + 0.5)
    entries.sort()
    reserve = {}
    for entry in entries:
        reserve.setdefault(entry[1], entry)
    rest = [e for e in entries if e not in reserve.values() and e[0] <= 0]
    chosen = list(reserve.values()) + rest[: budget - len(reserve)]
    keep = {name: np.zeros(module.weight.numel(), dtype=bool) for name, module in layers}
    for _, order, j in chosen:
        keep[layers[order][0]][j] = True
    return keep


def plan_keep(plan: PruningPlan, name: str) -> np.ndarray:
    layer = plan.layer(name)
    return layer.keep_mask((layer.size,)).numpy()


def objective(x: np.ndarray, a: np.ndarray, w: np.ndarray) -> float:
    return float((w * group_error(x, a)).sum())


def gradient(x: np.ndarray, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``w e'(x; a)``, from ``de/dt`` and ``t = a / 3x``."""
    t = a / (3 * x)
    return -w * t / (2 * x) * ((t + 3) / np.sqrt(t * t + 6 * t) + 1)


# ---- sensitivities and SiPPDet ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "shape"), [(linear_net, (SAMPLES, 5)), (conv_net, (SAMPLES, 2, 7, 7))], ids=["linear", "conv"]
)
def test_det_keeps_the_globally_most_sensitive_weights(factory, shape):
    model, x = factory(), inputs(shape)
    brute = brute_sensitivities(model, x)
    tracker = SensitivityTracker(model).accumulate_over(x, progress=False)
    for name, (mean, maximum) in brute.items():
        np.testing.assert_allclose(
            tracker.weight_sensitivity(name, "mean").flatten(1), mean, rtol=1e-12, atol=1e-15
        )
        np.testing.assert_allclose(
            tracker.weight_sensitivity(name, "max").flatten(1), maximum, rtol=1e-12, atol=1e-15
        )
    for amount in (0.0, 0.3, 0.6, 0.9):
        plan = sipp_det_plan(model, amount, tracker)
        expected = brute_det_keep(model, {n: m for n, (m, _) in brute.items()}, amount)
        for name in expected:
            np.testing.assert_array_equal(
                plan_keep(plan, name), expected[name], err_msg=f"{name} at {amount}"
            )
        assert plan.rescale == {}


def test_det_is_a_global_threshold_and_amount_is_exact():
    model, x = conv_net(), inputs((SAMPLES, 2, 7, 7))
    tracker = SensitivityTracker(model).accumulate_over(x, progress=False)
    total = sum(m.weight.numel() for _, m in compressible(model))
    for amount in (0.0, 0.05, 0.25, 0.5, 0.75, 0.95):
        plan = sipp_det_plan(model, amount, tracker)
        assert plan.num_removed == math.floor(amount * total + 0.5)
        assert plan.options["kept"] == total - plan.num_removed
        kept, dropped = [], []
        for name, _ in compressible(model):
            s = tracker.weight_sensitivity(name, "mean").flatten()
            keep = torch.from_numpy(plan_keep(plan, name))
            keep[s.argmax()] = False  # every layer's best is kept whatever the threshold
            kept.append(s[keep])
            dropped.append(s[~torch.from_numpy(plan_keep(plan, name))])
        if torch.cat(dropped).numel() and torch.cat(kept).numel():
            assert torch.cat(kept).min() >= torch.cat(dropped).max()  # W ⊙ [s >= tau]


def test_det_ties_go_to_earlier_layers_and_indices_and_every_layer_keeps_one():
    # All-ones weights and inputs: every relative contribution is exactly 1/4 in both layers.
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
    for module in model:
        nn.init.ones_(module.weight)
    x = torch.ones(SAMPLES, 4, dtype=torch.float64)
    tracker = SensitivityTracker(model).accumulate_over(x, progress=False)
    assert torch.all(tracker.weight_sensitivity("0") == 0.25)
    assert torch.all(tracker.weight_sensitivity("1") == 0.25)
    plan = sipp_det_plan(model, 14 / 24, tracker)  # B = 10
    # Pure top-10 would be layer 0's first 10 weights; layer 1 would be empty, so its first weight takes the 10th.
    np.testing.assert_array_equal(plan_keep(plan, "0"), np.arange(16) < 9)
    np.testing.assert_array_equal(plan_keep(plan, "1"), np.arange(8) < 1)
    plan = sipp_det_plan(model, 0.25, tracker)  # B = 18: layer 0 whole, layer 1's first two
    np.testing.assert_array_equal(plan_keep(plan, "1"), np.arange(8) < 2)
    with pytest.raises(ValueError, match="every layer keeps at least one"):
        sipp_det_plan(model, 23 / 24, tracker)  # B = 1 < 2 layers


def test_already_masked_weights_count_as_removed_first():
    model, x = linear_net(), inputs((SAMPLES, 5))
    total = sum(m.weight.numel() for _, m in compressible(model))
    for _, module in compressible(model):
        torch_prune.l1_unstructured(module, "weight", amount=0.5)
    masked = sum(int((m.weight == 0).sum()) for _, m in compressible(model))
    tracker = SensitivityTracker(model).accumulate_over(x, progress=False)
    low = sipp_det_plan(model, 0.2, tracker)
    assert low.num_removed == masked
    for name, module in compressible(model):
        assert not plan_keep(low, name)[(module.weight == 0).flatten().numpy()].any()
    high = sipp_det_plan(model, 0.8, tracker)
    assert high.num_removed == math.floor(0.8 * total + 0.5)
    rand = sipp_rand_plan(model, 0.0, tracker)
    assert rand.num_removed == masked  # amount 0: only what is already zero goes


def test_det_is_deterministic_and_applies_like_a_mask():
    model, x = conv_net(), inputs((SAMPLES, 2, 7, 7))
    first = sipp_det_plan(model, 0.7, x, progress=False)
    second = sipp_det_plan(model, 0.7, [(x[:80], None), (x[80:], None)], progress=False)
    for a, b in zip(first.layers, second.layers, strict=True):
        assert torch.equal(a.removed, b.removed)
    pruned = first.apply(copy.deepcopy(model))
    assert sum(int((m.weight != 0).sum()) for _, m in compressible(pruned)) == first.options["kept"]


# ---- allocation ----------------------------------------------------------------------------------------------


def test_group_error_matches_the_scalar_bound():
    x = np.array([0.0, 0.5, 1.0, 7.0, 1e6])
    values = group_error(x, np.full(5, 12.5))
    assert values[0] == math.inf
    np.testing.assert_allclose(values[1:], [error_bound(v, 12.5) for v in x[1:]], rtol=1e-15)


def random_problem(seed: int, groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.uniform(1.0, 500.0, groups)
    w = 1.0 / rng.choice([2, 3, 5], groups)
    upper = rng.integers(2, 30, groups).astype(float)
    return a, w, upper


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_continuous_allocation_is_optimal(seed):
    a, w, upper = random_problem(seed, 8)
    budget = 0.4 * upper.sum()
    x, multiplier = continuous_allocation(a, w, upper, budget)
    assert x.sum() == pytest.approx(budget, rel=1e-12)
    # KKT: w e'(x) = -lambda where 0 < x < upper, and -w e'(upper) >= lambda at the upper bound.
    slope = gradient(x, a, w)
    interior = x < upper - 1e-9
    assert interior.any()
    np.testing.assert_allclose(-slope[interior], multiplier, rtol=1e-9)
    assert np.all(-slope[~interior] >= multiplier * (1 - 1e-9))

    reference = minimize(
        objective,
        np.minimum(upper, budget / len(a)),
        args=(a, w),
        jac=gradient,
        method="SLSQP",
        bounds=[(1e-6, u) for u in upper],
        constraints=[{"type": "ineq", "fun": lambda v: budget - v.sum(), "jac": lambda v: -np.ones_like(v)}],
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    assert reference.success
    assert objective(x, a, w) <= reference.fun * (1 + 1e-9)
    assert objective(x, a, w) == pytest.approx(reference.fun, rel=1e-6)


def test_continuous_allocation_keeps_everything_that_fits():
    x, multiplier = continuous_allocation(np.ones(3), np.ones(3), np.array([2.0, 3.0, 4.0]), 9)
    np.testing.assert_array_equal(x, [2, 3, 4])
    assert multiplier == 0


@pytest.mark.parametrize("seed", range(6))
def test_integer_allocation_is_the_integer_optimum(seed):
    a, w, _ = random_problem(seed, 4)
    upper = np.random.default_rng(seed).integers(1, 7, 4)
    candidates = np.array(list(itertools.product(*(range(u + 1) for u in upper))), dtype=float)
    values = (w * group_error(candidates, a)).sum(1)
    for budget in range(4, int(upper.sum())):
        x = integer_allocation(a, w, upper, budget)
        assert x.sum() == budget
        assert np.all((x >= 1) & (x <= upper))
        best = values[candidates.sum(1) <= budget].min()
        assert objective(x.astype(float), a, w) == pytest.approx(best, rel=1e-12)
        # The authors' code (lucaslie/provable_pruning) rounds up with ceil(x), which overshoots by less than the
        # number of groups; the integer optimum never does.
        overshoot = np.ceil(continuous_allocation(a, w, upper, budget)[0] - 1e-9).sum() - budget
        assert 0 <= overshoot < len(a)


def test_integer_allocation_gives_every_group_a_weight_before_any_gets_two():
    # The continuous optimum starves the small groups (x < 1); rounding up would need 1 + 1 + 3 > 3.
    a, w, upper = np.array([0.01, 0.01, 1e4]), np.ones(3), np.array([5, 5, 50])
    continuous, _ = continuous_allocation(a, w, upper, 3)
    assert continuous[:2].max() < 1
    np.testing.assert_array_equal(integer_allocation(a, w, upper, 3), [1, 1, 1])


def test_adapt_sample_size_worked_examples():
    assert adapt_sample_size(torch.full((100,), 0.01), 50) == 69
    assert adapt_sample_size(torch.arange(1.0, 11.0), 5) == 6
    assert adapt_sample_size(torch.arange(1.0, 101.0) ** 2, 30) == 40  # the smallest m; the originals give 41


# ---- SiPPRand --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv_tracker() -> SensitivityTracker:
    return SensitivityTracker(conv_net()).accumulate_over(inputs((SAMPLES, 2, 7, 7)), progress=False)


def test_rand_draws_and_reweights_per_group(conv_tracker):
    model = conv_tracker.model
    allocation = sipp_allocation(conv_tracker, 0.8)
    assert allocation.kept.sum() == allocation.budget
    assert np.all(allocation.kept[allocation.coefficient > 0] >= 1)
    plan = sipp_rand_plan(model, 0.8, conv_tracker, seed=3)
    reweighted = 0
    for g in range(len(allocation.kept)):
        name = allocation.layers[allocation.layer[g]]
        weight = model.get_submodule(name).weight.detach().flatten(1)
        f, members = allocation.unit[g], (weight * int(allocation.sign[g]) > 0)[allocation.unit[g]]
        s = conv_tracker.weight_sensitivity(name, "max").flatten(1)[f] * members
        keep = torch.from_numpy(plan_keep(plan, name)).view(weight.shape)[f] & members
        gamma = plan.rescale.get(name, torch.ones(weight.shape, dtype=torch.float64)).reshape(weight.shape)[f]
        assert not (keep & (s == 0)).any()  # never a weight that contributed nothing on S
        if allocation.kept[g] >= allocation.sensitive[g]:
            assert torch.equal(keep, s > 0)
            assert torch.all(gamma[keep] == 1)
            continue
        if torch.equal(keep, members):  # the draws hit every weight: the group stays as it was
            assert torch.all(gamma[keep] == 1)
            continue
        # Sampled groups: gamma_j * m * p_j are the multinomial counts, positive integers summing to m.
        p = s / s.sum()
        draws = adapt_sample_size(p, int(allocation.kept[g]))
        counts = (gamma * draws * p)[keep]
        np.testing.assert_allclose(counts, counts.round(), atol=1e-9)
        assert counts.round().min() >= 1
        assert round(float(counts.sum())) == draws
        reweighted += 1
    assert reweighted > 0


def test_rand_is_reproducible_per_seed(conv_tracker):
    model = conv_tracker.model
    a, b, c = (sipp_rand_plan(model, 0.8, conv_tracker, seed=s) for s in (5, 5, 6))
    assert all(torch.equal(x.removed, y.removed) for x, y in zip(a.layers, b.layers, strict=True))
    assert a.rescale.keys() == b.rescale.keys()
    assert all(torch.equal(a.rescale[k], b.rescale[k]) for k in a.rescale)
    assert any(not torch.equal(x.removed, y.removed) for x, y in zip(a.layers, c.layers, strict=True))


def test_rand_reweighting_is_unbiased_on_average():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(60, 2, bias=False)).double()
    x = torch.rand(SAMPLES, 60, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    tracker = SensitivityTracker(model).accumulate_over(x, progress=False)
    weight = model[0].weight.detach()
    outputs = []
    for seed in range(200):
        plan = sipp_rand_plan(model, 0.9, tracker, seed=seed)
        keep = plan.layers[0].keep_mask(weight.shape)
        outputs.append(x[:8] @ (weight * plan.rescale["0"] * keep).T)
    outputs = torch.stack(outputs)  # (seeds, 8, 2)
    error = outputs.mean(0) - x[:8] @ weight.T
    standard_error = outputs.std(0) / math.sqrt(outputs.shape[0])
    assert torch.all(error.abs() <= 5 * standard_error + 1e-12)
    assert standard_error.max() > 0


def test_rand_plan_round_trips_through_json_and_applies_on_a_fresh_model(conv_tracker, tmp_path):
    model = conv_tracker.model
    plan = sipp_rand_plan(model, 0.8, conv_tracker, seed=1)
    assert plan.rescale
    path = tmp_path / "plan.json"
    plan.to_json(str(path))
    loaded = PruningPlan.from_json(str(path))
    assert loaded.options == plan.options
    for a, b in zip(plan.layers, loaded.layers, strict=True):
        assert torch.equal(a.removed, b.removed)
    assert all(torch.equal(plan.rescale[k], loaded.rescale[k]) for k in plan.rescale)
    first, second = plan.apply(copy.deepcopy(model)), loaded.apply(copy.deepcopy(model))
    for (name, a), (_, b) in zip(compressible(first), compressible(second), strict=True):
        assert torch.equal(a.weight, b.weight)
        original = model.get_submodule(name).weight.detach()
        gamma = plan.rescale.get(name, torch.ones_like(original))
        expected = original * gamma * plan.layer(name).keep_mask(original.shape)
        torch.testing.assert_close(a.weight.detach(), expected, rtol=1e-15, atol=0)


# ---- SiPPHybrid ----------------------------------------------------------------------------------------------


def test_hybrid_samples_where_its_bound_is_smaller():
    # Row 0: 400 equal weights, equal sensitivities 1/400; row 1: one dominant weight. Same total sensitivity, so
    # both get x = 200: leaving 200 equal weights out costs 3 * 0.5 > e(200; a) ~ 0.99, so row 0 is sampled;
    # row 1's left-out sensitivity is ~0.14, so it keeps its top 200.
    model = nn.Sequential(nn.Linear(400, 2, bias=False)).double()
    with torch.no_grad():
        model[0].weight[0] = 1.0
        model[0].weight[1] = 0.01
        model[0].weight[1, 0] = 10.0
    tracker = SensitivityTracker(model).accumulate_over(
        torch.ones(SAMPLES, 400, dtype=torch.float64), progress=False
    )
    allocation = sipp_allocation(tracker, 0.5)
    np.testing.assert_array_equal(allocation.kept, [200, 0, 200, 0])
    s = tracker.weight_sensitivity("0", "max")
    left_out = [float(row.sort(descending=True).values[200:].sum()) for row in s]
    errors = allocation.error()[[0, 2]]
    assert 3 * left_out[0] > errors[0]
    assert 3 * left_out[1] <= errors[1]
    plan = sipp_hybrid_plan(model, 0.5, tracker, seed=0)
    assert plan.options["randomized_groups"] == 1
    keep = plan.layers[0].keep_mask((2, 400))
    np.testing.assert_array_equal(keep[1].numpy(), np.arange(400) < 200)  # top 200, ties by index
    assert torch.all(plan.rescale["0"][1] == 1)
    assert torch.all(plan.rescale["0"][0][keep[0]] != 1)
    rand = sipp_rand_plan(model, 0.5, tracker, seed=0)
    assert (rand.rescale["0"][1] != 1).any()


# ---- |S|, registry, bad input -------------------------------------------------------------------------------


def test_sensitivity_set_size_worked_examples():
    assert sensitivity_set_size([300, 100, 10], 3, 1e-12) == 125
    assert sensitivity_set_size([300, 100, 10], 10, 1e-12) == 415
    # eta_l = C_out * H_out * W_out of every Conv2d/Linear of our CIFAR ResNet-20 (stem, 18 block convs, 2
    # downsample convs, fc), read from the outputs: the same F * P as LayerShape.neurons.
    model, neurons = resnet20(), []
    for _, module in compressible(model):
        module.register_forward_hook(lambda m, i, out: neurons.append(out[0].numel()))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    assert (sum(neurons), max(neurons), len(neurons)) == (200_714, 16_384, 22)
    assert sensitivity_set_size(neurons, 3, 1e-16) == 183
    assert sensitivity_set_size(neurons, 10, 1e-16) == 609


def test_tracker_neurons_are_output_elements_per_sample(conv_tracker):
    outputs = {}
    model = copy.deepcopy(conv_tracker.model)
    for name, module in compressible(model):
        module.register_forward_hook(lambda m, i, out, name=name: outputs.__setitem__(name, out[0].numel()))
    model(inputs((1, 2, 7, 7)))
    assert {name: conv_tracker.shape(name).neurons for name in outputs} == outputs


def test_warns_when_the_sensitivity_set_is_too_small():
    model = linear_net()
    needed = sensitivity_set_size([4, 3, 2], 3, 1e-16)
    with pytest.warns(
        SmallSensitivitySetWarning, match=rf"from 20 samples.* = {needed} .*{needed - 20} short"
    ):
        sipp_det_plan(model, 0.5, inputs((20, 5)), progress=False)
    needed = sensitivity_set_size([4, 3, 2], 1.0, 1e-4)
    with pytest.warns(SmallSensitivitySetWarning, match=rf"= {needed} for c=1.0, delta=0.0001"):
        sipp_rand_plan(model, 0.5, inputs((needed - 1, 5)), progress=False, c=1.0, delta=1e-4)


def test_registered_methods_plan_through_the_registry():
    model, x = linear_net(), inputs((SAMPLES, 5))
    for name in ("sipp_det", "sipp_rand", "sipp_hybrid"):
        method = pruning.get_method(name)
        assert method.needs_data
        assert not method.structured
        plan = pruning.plan(model, name, 0.5, data=[(x, None)], example_input=x[:2], seed=2, progress=False)
        assert plan.method == name
        assert plan.options["samples"] == SAMPLES
        nonzero = plan.totals["nonzero_params"]
        assert nonzero[0] - nonzero[1] == plan.num_removed
    with pytest.raises(ValueError, match="data"):
        pruning.plan(model, "sipp_det", 0.5)


def test_alpha_enters_the_coefficients(conv_tracker):
    allocation = sipp_allocation(conv_tracker, 0.5, c=10)
    name = allocation.layers[1]
    shape = conv_tracker.shape(name)
    rows = (allocation.layer == 1) & (allocation.coefficient > 0)
    np.testing.assert_allclose(
        allocation.coefficient[rows], alpha(shape.patches, shape.kappa, 10, 1e-16) * allocation.total[rows]
    )


@pytest.mark.parametrize("amount", [1.0, -0.1, 1.5])
def test_amount_outside_the_unit_interval(amount, conv_tracker):
    with pytest.raises(ValueError, match="amount"):
        sipp_det_plan(conv_tracker.model, amount, conv_tracker)


def test_rand_budget_below_one_weight_per_group(conv_tracker):
    with pytest.raises(ValueError, match="at least one weight in each"):
        sipp_rand_plan(conv_tracker.model, 0.995, conv_tracker)


def test_dead_layers_keep_one_weight():
    # A huge negative bias silences the first layer after ReLU: the second layer sees only zeros. The third layer
    # has all-zero weights.
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
        model[4].weight.zero_()
    tracker = SensitivityTracker(model).accumulate_over(inputs((SAMPLES, 3)), progress=False)
    assert torch.all(tracker.weight_sensitivity("2", "max") == 0)
    for planner in (sipp_det_plan, sipp_rand_plan, sipp_hybrid_plan):
        plan = planner(model, 0.5, tracker)
        assert plan.layer("2").num_kept >= 1
        assert plan.layer("4").num_kept == 1
        plan.apply(copy.deepcopy(model))


def test_grouped_convolutions_are_left_out_and_listed():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4, 2)).double()
    with pytest.warns(SmallSensitivitySetWarning):
        plan = sipp_det_plan(model, 0.5, inputs((4, 4, 3, 3)), progress=False)
    assert [layer.name for layer in plan.layers] == ["2"]
    assert "grouped/depthwise Conv2d (groups=2)" in plan.options["untouched"]["0"]


def test_tracker_of_another_model_is_refused(conv_tracker):
    with pytest.raises(ValueError, match="another model"):
        sipp_det_plan(conv_net(), 0.5, conv_tracker)
