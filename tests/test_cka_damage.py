"""CKA-damage pruning (cka-prune, ``SupurCalvinHiggins/cka-prune``) against brute force.

The brute force is cka-prune's procedure, written without pyprune's closed forms: zero the removed neurons'
weights (row of a Linear, filter of a Conv2d; the bias stays), re-run the model, read the representation, build
the full n x n Gram matrices (linear ``X X^T``, or Google's ``gram_rbf``), centre them with an explicit
``H = I - 11^T/n`` and take ``<HKH, HLH> / (|HKH| |HLH|)`` (kernel CKA, Kornblith et al. 2019). float64
throughout. The results must not depend on whether :mod:`pyprune.ops.cka_damage` dispatches to the torch reference or to C++/CUDA.
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pyprune
from pyprune import CKADamage
from pyprune.ops.cka_damage import greedy_removal_order
from pyprune.ops.reference import greedy_removal_order_reference
from pyprune.pruning.attention import expose_unit_inputs, find_units
from pyprune.pruning.criteria import cka_damage as cka_damage_module
from tests.test_taylor import HeadClassifier, head_outputs

ATOL = 1e-10
NEAR_TIE = 1e-9


# ------------------------------------------------------------------------------------------------ brute force


def representation(
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    zeroed=(),
    *,
    point: str | None = None,
    kind: str = "channels",
) -> torch.Tensor:
    """``layer``'s representation read at ``point`` (default its own output) with the weights of the ``zeroed``
    neurons set to 0, as an ``(n, features)`` matrix: conv maps as rows ``(N*H*W, C)`` (``"channels"``) or
    per example ``(N, C*H*W)`` (``"flatten"``)."""
    module = model.get_submodule(layer)
    watched = model.get_submodule(point or layer)
    outputs = []
    handle = watched.register_forward_hook(lambda m, args, out: outputs.append(out.detach().clone()))
    saved = module.weight.detach().clone()
    try:
        with torch.no_grad():
            module.weight[list(zeroed)] = 0.0
            model(x)
    finally:
        handle.remove()
        with torch.no_grad():
            module.weight.copy_(saved)
    assert len(outputs) == 1
    z = outputs[0]
    if z.ndim == 2:
        return z
    if kind == "channels":
        return z.movedim(1, -1).reshape(-1, z.shape[1])
    return z.reshape(z.shape[0], -1)


def brute_cka(k: torch.Tensor, l: torch.Tensor) -> float:
    """Biased linear CKA of two Gram matrices; 0 when either centred Gram is (numerically) zero."""
    n = k.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    kc, lc = h @ k @ h, h @ l @ h
    norm_k, norm_l = torch.linalg.norm(kc), torch.linalg.norm(lc)
    if norm_k <= 1e-9 * torch.linalg.norm(k) or norm_l <= 1e-9 * torch.linalg.norm(l):
        return 0.0  # a constant representation: 0/0, defined as 0
    return float((kc * lc).sum() / (norm_k * norm_l))


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    return (x[:, None, :] - x[None, :, :]).square().sum(dim=2)


def median(d: torch.Tensor) -> float:
    """numpy's median of all n^2 entries, zero diagonal included (Google's gram_rbf)."""
    return float(np.median(d.numpy()))


class Brute:
    """Brute-force CKA damage of one layer (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        x: torch.Tensor,
        *,
        point: str | None = None,
        kind: str = "channels",
        kernel: str = "linear",
        threshold: float = 0.5,
        bandwidth: str = "fixed",
    ) -> None:
        self.model, self.layer, self.x, self.point = model, layer, x, point
        self.kind = "flatten" if kernel == "rbf" else kind
        self.kernel, self.threshold, self.bandwidth = kernel, threshold, bandwidth
        weight = model.get_submodule(layer).weight.detach()
        self.active = [j for j in range(weight.shape[0]) if bool(weight[j].ne(0).any())]
        original = self.rep(())
        if kernel == "linear":
            self.target = original @ original.T
        else:
            d = squared_distances(original)
            self.median = median(d)
            self.target = torch.exp(-d / (2 * threshold**2 * self.median))

    def rep(self, removed) -> torch.Tensor:
        return representation(self.model, self.layer, self.x, removed, point=self.point, kind=self.kind)

    def cka(self, removed) -> float:
        """CKA between the original representation and the one with ``removed`` zeroed."""
        x = self.rep(removed)
        if self.kernel == "linear":
            return brute_cka(self.target, x @ x.T)
        d = squared_distances(x)
        m = self.median if self.bandwidth == "fixed" else median(d)
        if m == 0:
            return 0.0  # every distance (or most) zero: a constant kernel
        return brute_cka(self.target, torch.exp(-d / (2 * self.threshold**2 * m)))

    def single(self) -> tuple[list[int], list[float]]:
        """Active neurons by single-removal CKA, descending; ties by index."""
        values = {j: self.cka([j]) for j in self.active}
        order = sorted(self.active, key=lambda j: (-values[j], j))
        ranked = [values[j] for j in order]
        for a, b in itertools.pairwise(ranked):
            assert a == b or a - b > NEAR_TIE, f"test setup: near tie {a} vs {b}"
        return order, ranked

    def greedy(self) -> tuple[list[int], list[float]]:
        """README procedure: repeatedly remove the neuron whose removal (with those removed so far) leaves the
        highest CKA against the original; ties by index."""
        kept, removed, trajectory = list(self.active), [], []
        while kept:
            values = [self.cka([*removed, j]) for j in kept]
            best = max(range(len(kept)), key=lambda i: (values[i], -i))
            if len(kept) > 1:
                runner_up = max(v for i, v in enumerate(values) if i != best)
                assert runner_up == values[best] or values[best] - runner_up > NEAR_TIE, (
                    "test setup: near tie"
                )
            removed.append(kept.pop(best))
            trajectory.append(values[best])
        return removed, trajectory

    def sequence(self, greedy: bool) -> tuple[list[int], list[float]]:
        return self.greedy() if greedy else self.single()


def check_layer(criterion: CKADamage, name: str, brute: Brute, greedy: bool) -> None:
    """Order equal to the brute force, CKAs equal to ATOL; the all-removed greedy entry is exactly 0."""
    expected_order, expected_cka = brute.sequence(greedy)
    order, cka = criterion.removal_order(name), criterion.trajectory(name)
    assert order.dtype == torch.int64
    assert cka.dtype == torch.float64
    assert order.tolist() == expected_order
    assert torch.isfinite(cka).all()
    # The last greedy step leaves no active neuron (0/0 in the brute force; defined 0); likewise a lone neuron.
    checked = len(expected_order) - 1 if greedy or len(expected_order) == 1 else len(expected_order)
    torch.testing.assert_close(
        cka[:checked], torch.tensor(expected_cka[:checked], dtype=torch.float64), rtol=0, atol=ATOL
    )
    if checked < len(expected_order):
        assert float(cka[-1]) == 0.0


# ------------------------------------------------------------------------------------------------ models


def mlp(widths: tuple[int, ...], seed: int = 0) -> nn.Sequential:
    """Linear -> ReLU -> ... -> Linear; layer ``2i`` is the i-th Linear."""
    torch.manual_seed(seed)
    modules: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        modules.append(nn.Linear(fan_in, fan_out))
        if i < len(widths) - 2:
            modules.append(nn.ReLU())
    model = nn.Sequential(*modules).double().eval()
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                module.bias.uniform_(-0.5, 0.5)
    return model


def conv_net(channels: int, size: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return (
        nn.Sequential(
            nn.Conv2d(2, channels, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(channels * size * size, 2),
        )
        .double()
        .eval()
    )


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(c, generator=generator, dtype=torch.float64) * 0.3)
                module.running_var.copy_(torch.rand(c, generator=generator, dtype=torch.float64) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator, dtype=torch.float64) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator, dtype=torch.float64) * 0.3)
    return model


def bn_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 3),
    ).double()
    return randomise_bn(model, seed).eval()


def randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def fed(model: nn.Module, data, layers=None, **options) -> CKADamage:
    return CKADamage(model, layers, **options).accumulate_over(data, progress=False)


# ------------------------------------------------------------------------------------------------ orders


LINEAR_CASES = [
    pytest.param(3, "linear", 0.5, "fixed", id="p3-linear"),
    pytest.param(7, "linear", 0.5, "fixed", id="p7-linear"),
    pytest.param(12, "linear", 0.5, "fixed", id="p12-linear"),
    pytest.param(4, "rbf", 0.5, "fixed", id="p4-rbf-fixed"),
    pytest.param(9, "rbf", 0.8, "fixed", id="p9-rbf-fixed-t0.8"),
    pytest.param(5, "rbf", 0.5, "per_candidate", id="p5-rbf-per-candidate"),
    pytest.param(10, "rbf", 0.3, "per_candidate", id="p10-rbf-per-candidate-t0.3"),
]


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "single"])
@pytest.mark.parametrize(("p", "kernel", "threshold", "bandwidth"), LINEAR_CASES)
def test_linear_layer_matches_brute_force(p, kernel, threshold, bandwidth, greedy):
    model = mlp((6, p, 2), seed=p)
    x = randn(24, 6, seed=p)
    options = {"kernel": kernel, "threshold": threshold, "bandwidth": bandwidth}
    criterion = fed(model, x, ["0"], greedy=greedy, **options)
    assert criterion.num_samples("0") == 24
    check_layer(criterion, "0", Brute(model, "0", x, **options), greedy)
    if kernel == "linear":
        # A Linear layer's representation is the same either way.
        flat = fed(model, x, ["0"], representation="flatten", greedy=greedy)
        assert flat.removal_order("0").tolist() == criterion.removal_order("0").tolist()
        torch.testing.assert_close(flat.trajectory("0"), criterion.trajectory("0"), rtol=0, atol=1e-12)


CONV_CASES = [
    pytest.param(4, 6, 8, "channels", "linear", None, id="p4-channels"),
    pytest.param(7, 4, 6, "channels", "linear", None, id="p7-channels"),
    pytest.param(5, 2, 16, "flatten", "linear", None, id="p5-flatten-feature-space"),
    pytest.param(6, 6, 8, "flatten", "linear", 2, id="p6-flatten-sample-space-chunks-of-2"),
    pytest.param(4, 4, 10, "flatten", "rbf", None, id="p4-rbf"),
]


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "single"])
@pytest.mark.parametrize(("p", "size", "n", "representation", "kernel", "chunk"), CONV_CASES)
def test_conv_layer_matches_brute_force(p, size, n, representation, kernel, chunk, greedy, monkeypatch):
    if chunk is not None:
        # Force the sample-space evaluation of the flattened representation, several Gram chunks per side.
        monkeypatch.setattr(cka_damage_module, "FEATURE_SPACE_BYTES", 0)
        monkeypatch.setattr(cka_damage_module, "SAMPLE_SPACE_CHUNK_BYTES", chunk * 2 * n * n * 8)
    model = conv_net(p, size, seed=p)
    x = randn(n, 2, size, size, seed=p + 10)
    criterion = fed(model, x, ["0"], representation=representation, kernel=kernel, greedy=greedy)
    rows = n * size * size if representation == "channels" and kernel == "linear" else n
    assert criterion.num_samples("0") == rows
    check_layer(criterion, "0", Brute(model, "0", x, kind=representation, kernel=kernel), greedy)


def test_channels_and_flatten_differ_for_conv_maps():
    # The option matters: for conv maps the two representations are different statistics.
    model = conv_net(5, 4, seed=3)
    x = randn(12, 2, 4, 4, seed=4)
    channels = fed(model, x, ["0"]).trajectory("0")
    flatten = fed(model, x, ["0"], representation="flatten").trajectory("0")
    assert not torch.allclose(channels, flatten, atol=1e-6)


# ------------------------------------------------------------------------------------------------ measurement points


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "single"])
def test_post_point_measures_the_activation_of_the_zeroed_neuron(greedy):
    model = mlp((5, 8, 3), seed=4)
    x = randn(40, 5, seed=5)
    brute = Brute(model, "0", x, point="1")  # ReLU output; a zeroed unit outputs relu(bias)
    for point in ("post", {"0": "1"}):
        check_layer(fed(model, x, ["0"], point=point, greedy=greedy), "0", brute, greedy)
    own = fed(model, x, ["0"], greedy=greedy)
    check_layer(own, "0", Brute(model, "0", x), greedy)
    post = fed(model, x, ["0"], point="post", greedy=greedy)
    assert not torch.allclose(own.trajectory("0"), post.trajectory("0"), atol=1e-6)


def test_post_point_passes_over_batchnorm_and_a_dict_point_can_name_it():
    model = bn_cnn(seed=2)
    x = randn(6, 3, 6, 6, seed=3)
    post = fed(model, x, ["0"], point="post")
    check_layer(post, "0", Brute(model, "0", x, point="2"), True)
    at_bn = fed(model, x, ["3"], point={"3": "4"}, greedy=False)
    check_layer(at_bn, "3", Brute(model, "3", x, point="4"), False)


class SharedActivation(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


@pytest.mark.parametrize("point", ["post", {"fc1": "act", "fc2": "act"}], ids=["post", "dict"])
def test_shared_activation_module_raises(point):
    model = SharedActivation().double()
    criterion = CKADamage(model, ["fc1", "fc2"], point=point)
    with pytest.raises(RuntimeError, match=r"point: module 'act'.*shared"):
        criterion.accumulate_over(randn(8, 4), progress=False)
    assert no_hooks(model)


# ------------------------------------------------------------------------------------------------ statistics


def test_channel_statistics_over_batches_equal_one_batch():
    model = conv_net(5, 5, seed=6)
    x = randn(10, 2, 5, 5, seed=7)
    one = fed(model, x, ["0"])
    many = CKADamage(model, ["0"])
    with many.accumulate(), torch.no_grad():
        for chunk in x.split([3, 1, 6]):
            model(chunk)
    assert no_hooks(model)
    assert many.num_samples("0") == one.num_samples("0") == 10 * 25
    expected = one.interaction("0")
    torch.testing.assert_close(
        many.interaction("0"), expected, rtol=1e-12, atol=1e-12 * float(expected.max())
    )
    assert many.removal_order("0").tolist() == one.removal_order("0").tolist()
    torch.testing.assert_close(many.trajectory("0"), one.trajectory("0"), rtol=0, atol=1e-12)
    # (inputs, targets) batches, and max_batches stops early.
    loader = [(chunk, None) for chunk in x.split([3, 1, 6])]
    limited = CKADamage(model, ["0"]).accumulate_over(loader, max_batches=2, progress=False)
    assert limited.num_samples("0") == 4 * 25
    torch.testing.assert_close(
        limited.interaction("0"), fed(model, x[:4], ["0"]).interaction("0"), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize(
    ("representation", "kernel"), [("flatten", "linear"), ("channels", "rbf")], ids=["flatten", "rbf"]
)
def test_sample_statistics_over_batches_equal_one_batch_up_to_max_samples(representation, kernel):
    model = conv_net(4, 3, seed=8)
    x = randn(12, 2, 3, 3, seed=9)
    options = {"representation": representation, "kernel": kernel}
    one = fed(model, x, ["0"], **options)
    many = fed(model, [(chunk,) for chunk in x.split([5, 2, 5])], ["0"], **options)
    assert many.num_samples("0") == one.num_samples("0") == 12
    assert torch.equal(many.removal_order("0"), one.removal_order("0"))
    assert torch.equal(many.trajectory("0"), one.trajectory("0"))
    # Only the first max_samples examples are kept; later batches are ignored.
    capped = fed(model, list(x.split([4, 4, 4])), ["0"], max_samples=7, **options)
    assert capped.num_samples("0") == 7
    first = fed(model, x[:7], ["0"], **options)
    assert torch.equal(capped.removal_order("0"), first.removal_order("0"))
    assert torch.equal(capped.trajectory("0"), first.trajectory("0"))


# ------------------------------------------------------------------------------------------------ degenerate


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "single"])
def test_dead_unit_behind_a_relu_is_removed_first_with_cka_one(greedy):
    model = mlp((5, 7, 2), seed=11)
    with torch.no_grad():
        model[0].bias[3] = -1e3  # relu output 0 on every example
    x = randn(30, 5, seed=12)
    criterion = fed(model, x, ["0"], point="post", greedy=greedy)
    assert int(criterion.removal_order("0")[0]) == 3
    assert abs(float(criterion.trajectory("0")[0]) - 1.0) < 1e-12
    check_layer(criterion, "0", Brute(model, "0", x, point="1"), greedy)


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "single"])
def test_unit_reading_only_a_constant_input_is_removed_first_with_cka_one(greedy):
    model = mlp((5, 7, 2), seed=13)
    with torch.no_grad():
        model[0].weight[5] = torch.tensor([0.7, 0.0, 0.0, 0.0, 0.0])  # active (nonzero row) but constant
    x = randn(30, 5, seed=14)
    x[:, 0] = 0.0
    criterion = fed(model, x, ["0"], greedy=greedy)
    assert bool(criterion.active("0")[5])
    assert int(criterion.removal_order("0")[0]) == 5
    assert abs(float(criterion.trajectory("0")[0]) - 1.0) < 1e-12
    check_layer(criterion, "0", Brute(model, "0", x), greedy)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "single"])
def test_single_active_neuron(kernel, greedy):
    model = mlp((4, 5, 2), seed=15)
    with torch.no_grad():
        model[0].weight[[0, 1, 3, 4]] = 0.0
        model[0].bias.mul_(40)  # large constant columns: rounding noise in the distances must not leak
    x = randn(16, 4, seed=16)
    criterion = fed(model, x, ["0"], kernel=kernel, greedy=greedy)
    assert criterion.removal_order("0").tolist() == [2]
    assert criterion.trajectory("0").tolist() == [0.0]
    assert criterion.scores(model[0], "0").tolist() == [-1.0, -1.0, 0.0, -1.0, -1.0]


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "single"])
def test_all_zero_activations_give_zero_scores_in_index_order(greedy):
    model = mlp((4, 6, 2), seed=17)
    with torch.no_grad():
        model[0].bias.zero_()
    zeros = torch.zeros(10, 4, dtype=torch.float64)
    silent = mlp((4, 6, 2), seed=18)
    with torch.no_grad():
        silent[0].bias.fill_(-1e3)
    cases = [(model, zeros, None), (silent, randn(10, 4, seed=19), "post")]
    for net, x, point in cases:
        criterion = fed(net, x, ["0"], point=point, greedy=greedy)
        assert criterion.removal_order("0").tolist() == list(range(6))
        assert criterion.trajectory("0").tolist() == [0.0] * 6
        assert criterion.scores(net[0], "0").tolist() == [float(i) for i in range(6)]
    rbf = fed(model, zeros, ["0"], kernel="rbf", greedy=greedy)
    with pytest.raises(ValueError, match="median pairwise distance"):
        rbf.removal_order("0")


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "single"])
def test_already_pruned_neurons_are_excluded_and_ranked_first(kernel, greedy):
    model = mlp((5, 9, 2), seed=20)
    pruned = [1, 4, 6]
    with torch.no_grad():
        model[0].weight[pruned] = 0.0
    x = randn(25, 5, seed=21)
    criterion = fed(model, x, ["0"], kernel=kernel, greedy=greedy)
    assert criterion.active("0").tolist() == [i not in pruned for i in range(9)]
    check_layer(criterion, "0", Brute(model, "0", x, kernel=kernel), greedy)
    order = criterion.removal_order("0").tolist()
    scores = criterion.scores(model[0], "0")
    assert scores.dtype == torch.float64
    expected = torch.full((9,), -1.0, dtype=torch.float64)
    expected[order] = torch.arange(len(order), dtype=torch.float64)
    assert torch.equal(scores, expected)


# ------------------------------------------------------------------------------------------------ stop_cka


def test_stop_cka_is_a_cumulative_threshold():
    model = mlp((6, 8, 2), seed=22)
    x = randn(30, 6, seed=23)
    expected_order, expected_cka = Brute(model, "0", x).greedy()
    expected_cka[-1] = 0.0
    criterion = fed(model, x, ["0"])
    descending = sorted(set(expected_cka), reverse=True)
    stops = [1.0, 0.0] + [(a + b) / 2 for a, b in itertools.pairwise(descending)]
    for stop in stops:
        count = next(t for t, c in enumerate(expected_cka) if c <= stop)
        assert criterion.removals_above("0", stop) == count, stop
    assert criterion.removals_above("0", 0.0) == 7
    # Through the planner: exactly that many, the first of the greedy order.
    stop = (expected_cka[2] + expected_cka[3]) / 2
    plan = pyprune.plan(
        model, "cka_greedy", 0.0, example_input=x, data=[(x, None)], stop_cka=stop, progress=False
    )
    assert plan.layers[0].removed.tolist() == sorted(expected_order[:3])


def test_stop_cka_of_cka_single_compares_single_removal_scores():
    model = mlp((6, 8, 2), seed=24)
    x = randn(30, 6, seed=25)
    order, values = Brute(model, "0", x).single()
    criterion = fed(model, x, ["0"], greedy=False)
    for stop in [(values[i] + values[i + 1]) / 2 for i in range(len(values) - 1)]:
        assert criterion.removals_above("0", stop) == sum(v > stop for v in values)
    plan = pyprune.plan(
        model,
        "cka_single",
        0.0,
        example_input=x,
        data=[(x, None)],
        stop_cka=(values[1] + values[2]) / 2,
        progress=False,
    )
    assert plan.layers[0].removed.tolist() == sorted(order[:2])


def test_stop_cka_counts_new_removals_on_top_of_already_pruned_neurons():
    model = mlp((6, 9, 2), seed=26)
    with torch.no_grad():
        model[0].weight[[2, 7]] = 0.0
    x = randn(30, 6, seed=27)
    expected_order, expected_cka = Brute(model, "0", x).greedy()
    stop = (expected_cka[1] + expected_cka[2]) / 2
    assert fed(model, x, ["0"]).removals_above("0", stop) == 2
    plan = pyprune.plan(
        model, "cka_greedy", 0.0, example_input=x, data=[(x, None)], stop_cka=stop, progress=False
    )
    assert plan.layers[0].removed.tolist() == sorted([2, 7, *expected_order[:2]])


# ------------------------------------------------------------------------------------------------ global scope


def two_layer_model() -> tuple[nn.Sequential, torch.Tensor]:
    model = mlp((5, 4, 5, 2), seed=7)
    return model, randn(30, 5, seed=8)


def ranks_of(sequence: list[tuple[str, int]], sizes: dict[str, int]) -> dict[str, list[float]]:
    ranks = {name: [-1.0] * size for name, size in sizes.items()}
    for rank, (name, j) in enumerate(sequence):
        ranks[name][j] = float(rank)
    return ranks


def test_global_single_ranks_by_damage_across_layers():
    model, x = two_layer_model()
    items = []
    for position, name in enumerate(["0", "2"]):
        brute = Brute(model, name, x)
        items += [(1.0 - brute.cka([j]), position, j, name) for j in brute.active]
    items.sort()
    damages = [d for d, *_ in items]
    for a, b in itertools.pairwise(damages):
        assert b - a > NEAR_TIE, "test setup: near tie across layers"
    expected = ranks_of([(name, j) for *_, j, name in items], {"0": 4, "2": 5})
    criterion = fed(model, x, ["0", "2"], greedy=False, scope="global")
    for name in ("0", "2"):
        assert criterion.scores(model.get_submodule(name), name).tolist() == expected[name]


def joint_greedy(bruteforces: dict[str, Brute]) -> list[tuple[str, int]]:
    """At each step, over all layers, the removal with the smallest drop of that layer's CKA; ties by layer
    order, then index."""
    removed = {name: [] for name in bruteforces}
    current = dict.fromkeys(bruteforces, 1.0)
    sequence = []
    while True:
        options = []
        for position, (name, brute) in enumerate(bruteforces.items()):
            kept = [j for j in brute.active if j not in removed[name]]
            for j in kept:
                after = brute.cka([*removed[name], j]) if len(kept) > 1 else 0.0
                options.append((current[name] - after, position, j, name, after))
        if not options:
            return sequence
        options.sort()
        drop, _, j, name, after = options[0]
        if len(options) > 1 and options[1][0] != drop:
            assert options[1][0] - drop > NEAR_TIE, "test setup: near tie"
        removed[name].append(j)
        current[name] = after
        sequence.append((name, j))


def test_global_greedy_is_the_joint_greedy_over_layers():
    model, x = two_layer_model()
    bruteforces = {name: Brute(model, name, x) for name in ("0", "2")}
    sequence = joint_greedy(bruteforces)
    # Test setup: merging the layers' greedy sequences by cumulative damage 1 - CKA would give another order.
    cumulative = sorted(
        (1.0 - c, position, t, name)
        for position, (name, brute) in enumerate(bruteforces.items())
        for t, c in enumerate(brute.greedy()[1])
    )
    assert [(name, t) for *_, t, name in cumulative][:4] != [
        (name, [j for n, j in sequence if n == name].index(j)) for name, j in sequence
    ][:4]
    expected = ranks_of(sequence, {"0": 4, "2": 5})
    criterion = fed(model, x, ["0", "2"], scope="global")
    for name in ("0", "2"):
        assert criterion.scores(model.get_submodule(name), name).tolist() == expected[name]
    # The global plan removes the first round(0.45 * 9) = 4 of that sequence.
    plan = pyprune.plan(
        model, "cka_greedy", 0.45, example_input=x, data=[(x, None)], scope="global", progress=False
    )
    chosen: dict[str, list[int]] = {"0": [], "2": []}
    for name, j in sequence[:4]:
        chosen[name].append(j)
    assert {layer.name: layer.removed.tolist() for layer in plan.layers} == {
        name: sorted(js) for name, js in chosen.items()
    }


# ------------------------------------------------------------------------------------------------ planner


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert list(now) == list(snapshot)
    for key, value in snapshot.items():
        assert torch.equal(now[key], value), key


@pytest.mark.parametrize("method", ["cka_greedy", "cka_single"])
def test_plan_mlp_removes_the_first_of_the_brute_force_order(method):
    model = mlp((6, 8, 6, 3), seed=30)
    x = randn(40, 6, seed=31)
    y = torch.zeros(40, dtype=torch.long)
    greedy = method == "cka_greedy"
    expected = {name: Brute(model, name, x).sequence(greedy)[0] for name in ("0", "2")}
    model.train()
    snapshot = state_snapshot(model)
    plan = pyprune.plan(model, method, 0.5, example_input=x, data=[(x, y)], progress=False)
    assert_unchanged(model, snapshot)
    assert model.training
    assert no_hooks(model)
    model.eval()
    assert plan.method == method
    removed = {layer.name: layer.removed.tolist() for layer in plan.layers}
    assert removed == {"0": sorted(expected["0"][:4]), "2": sorted(expected["2"][:3])}

    # Removing a unit of Linear -> ReLU drops relu(w x + b): the dense model with its row and bias zeroed.
    pruned = copy.deepcopy(model)
    plan.apply(pruned)
    assert (pruned[0].out_features, pruned[2].in_features, pruned[2].out_features) == (4, 4, 3)
    dense = copy.deepcopy(model)
    with torch.no_grad():
        for name, rows in removed.items():
            dense.get_submodule(name).weight[rows] = 0.0
            dense.get_submodule(name).bias[rows] = 0.0
    torch.testing.assert_close(pruned(x), dense(x), rtol=1e-12, atol=1e-12)

    masked_plan = pyprune.plan(
        model, method, 0.5, example_input=x, data=[(x, y)], mode="mask", progress=False
    )
    assert masked_plan.mode == "mask"
    assert {layer.name: layer.removed.tolist() for layer in masked_plan.layers} == removed
    masked = copy.deepcopy(model)
    masked_plan.apply(masked)
    for name, rows in removed.items():
        layer = masked.get_submodule(name)
        keep = torch.ones(layer.out_features, dtype=torch.bool)
        keep[rows] = False
        assert torch.equal(layer.weight_mask.bool().all(dim=1), keep)
        assert torch.equal(layer.weight[~keep], torch.zeros_like(layer.weight[~keep]))
        assert torch.equal(layer.weight[keep], model.get_submodule(name).weight[keep])
    # pyprune's channel masks (apply.py) also mask the bias, so the masked and the removed model
    # compute the same function.
    torch.testing.assert_close(masked(x), dense(x), rtol=1e-12, atol=1e-12)


def test_plan_cnn_with_batchnorm_removes_the_first_of_the_brute_force_order():
    model = bn_cnn(seed=32)
    x = randn(6, 3, 6, 6, seed=33)
    expected = {name: Brute(model, name, x).greedy()[0] for name in ("0", "3")}
    model.train()
    snapshot = state_snapshot(model)
    plan = pyprune.plan(model, "cka_greedy", 0.5, example_input=x, data=[(x, None)], progress=False)
    assert_unchanged(model, snapshot)  # BatchNorm running statistics included
    assert model.training
    model.eval()
    removed = {layer.name: layer.removed.tolist() for layer in plan.layers}
    assert removed == {"0": sorted(expected["0"][:3]), "3": sorted(expected["3"][:4])}
    pruned = copy.deepcopy(model)
    plan.apply(pruned)
    assert (pruned[0].out_channels, pruned[1].num_features, pruned[3].in_channels) == (3, 3, 3)
    # Equivalent dense model: the removed channels' BN outputs forced to 0 (so their ReLU outputs are 0).
    dense = copy.deepcopy(model)
    with torch.no_grad():
        for conv, bn in (("0", "1"), ("3", "4")):
            rows = removed[conv]
            dense.get_submodule(conv).weight[rows] = 0.0
            dense.get_submodule(conv).bias[rows] = 0.0
            dense.get_submodule(bn).bias[rows] = 0.0
            dense.get_submodule(bn).running_mean[rows] = 0.0
    torch.testing.assert_close(pruned(x), dense(x), rtol=1e-12, atol=1e-12)


def test_plan_layers_option_limits_the_pruned_layers():
    model = mlp((6, 8, 6, 3), seed=34)
    x = randn(40, 6, seed=35)
    plan = pyprune.plan(
        model, "cka_greedy", 0.5, example_input=x, data=[(x, None)], layers=["2"], progress=False
    )
    assert [layer.name for layer in plan.layers] == ["2"]
    assert plan.layers[0].removed.tolist() == sorted(Brute(model, "2", x).greedy()[0][:3])


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_arguments_are_named():
    model = mlp((4, 5, 2), seed=36)
    x = randn(8, 4, seed=37)
    with pytest.raises(ValueError, match=r"layers.*'fc9'"):
        CKADamage(model, ["fc9"])
    bad = [
        ({"kernel": "poly"}, "kernel"),
        ({"representation": "x"}, "representation"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": -1.0}, "threshold"),
        ({"threshold": math.nan}, "threshold"),
        ({"bandwidth": "x"}, "bandwidth"),
        ({"max_samples": 3}, "max_samples"),
        ({"point": "pre"}, "point"),
        ({"scope": "x"}, "scope"),
    ]
    for options, argument in bad:
        with pytest.raises(ValueError, match=argument):
            CKADamage(model, **options)
    empty = CKADamage(model)
    with pytest.raises(ValueError, match=r"layer '0': 0 samples recorded"):
        empty.removal_order("0")
    with pytest.raises(ValueError, match="data"):
        empty.accumulate_over([], progress=False)
    with pytest.raises(ValueError, match="max_batches"):
        empty.accumulate_over(x, max_batches=0, progress=False)
    criterion = fed(model, x)
    with pytest.raises(ValueError, match=r"name: '1' is not a scored layer"):
        criterion.removal_order("1")
    for stop in (1.5, -0.1):
        with pytest.raises(ValueError, match="stop_cka"):
            criterion.removals_above("0", stop)
    nan = x.clone()
    nan[3, 1] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        fed(model, nan)
    assert no_hooks(model)


def test_planner_rejects_bad_input():
    model = mlp((4, 5, 2), seed=38)
    x = randn(8, 4, seed=39)
    data = [(x, None)]
    with pytest.raises(ValueError, match="data"):
        pyprune.plan(model, "cka_greedy", 0.5, example_input=x)
    with pytest.raises(ValueError, match="data"):
        pyprune.plan(model, "cka_greedy", 0.5, example_input=x, data=[], progress=False)
    with pytest.raises(ValueError, match="stop_cka"):
        pyprune.plan(model, "cka_greedy", 0.0, example_input=x, data=data, stop_cka=1.5, progress=False)
    with pytest.raises(ValueError, match="stop_cka"):
        pyprune.plan(
            model, "cka_single", 0.0, example_input=x, data=data, stop_cka=0.9, scope="global", progress=False
        )
    with pytest.raises(ValueError, match="layers"):
        pyprune.plan(model, "cka_greedy", 0.5, example_input=x, data=data, layers=["fc9"], progress=False)
    with pytest.raises(ValueError, match="kernel"):
        pyprune.plan(model, "cka_greedy", 0.5, example_input=x, data=data, kernel="poly", progress=False)
    assert no_hooks(model)


# ------------------------------------------------------------------------------------------------ closed form


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 20),
    p=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
    dead=st.integers(0, 2**9 - 1),
    inactive=st.integers(0, 2**9 - 1),
)
def test_property_greedy_prefixes_match_the_direct_formula(n, p, seed, dead, inactive):
    generator = torch.Generator().manual_seed(seed)
    scales = torch.rand(p, generator=generator, dtype=torch.float64) * 1.5 + 0.5
    a = torch.randn(n, p, generator=generator, dtype=torch.float64) * scales
    a[:, [j for j in range(p) if dead >> j & 1]] = 0.0  # dead neurons: constant columns
    active = torch.tensor([not (inactive >> j & 1) for j in range(p)])
    if not active.any():
        active[p - 1] = True
    centred = a - a.mean(dim=0)
    g = centred.T @ centred
    idx = active.nonzero().flatten().tolist()
    g_a = g[idx][:, idx]
    f = torch.linalg.norm(g_a)

    def direct(kept: list[int]) -> float:
        """||G[:, K]||_F^2 / (F ||G[K, K]||_F) over the active neurons; 0 for a zero denominator."""
        k = [idx.index(j) for j in kept]
        den = f * torch.linalg.norm(g_a[k][:, k])
        return float(torch.linalg.norm(g_a[:, k]) ** 2 / den) if kept and den > 1e-12 * f * f else 0.0

    dead_active = [j for j in idx if dead >> j & 1]
    for removal in (greedy_removal_order, greedy_removal_order_reference):
        order, cka = removal(g * g, active)
        assert sorted(order.tolist()) == idx
        # Dead neurons leave CKA 1: they go first, tied, so in index order.
        assert order.tolist()[: len(dead_active)] == dead_active
        kept = list(idx)
        for t, j in enumerate(order.tolist()):
            # Greedy: no other candidate leaves a higher CKA.
            best = max(direct([k for k in kept if k != c]) for c in kept)
            kept.remove(j)
            value = direct(kept)
            if kept:
                assert abs(float(cka[t]) - value) < 1e-9
            assert value > best - 1e-9


# ----------------------------------------------------------------------------------------- attention heads


def _centred_linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return float((x.T @ y).square().sum() / ((x.T @ x).square().sum() * (y.T @ y).square().sum()).sqrt())


@pytest.mark.parametrize("greedy", [False, True])
def test_head_damage_is_the_cka_of_the_heads_output_with_whole_heads_zeroed(greedy):
    # Brute force in float64: the four heads' outputs (written out in plain torch), whole heads zeroed, CKA
    # against the original over every (example, token) row; greedy removes the best head given those gone.
    model = HeadClassifier(heads=4).eval()
    x = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        original = head_outputs(model, x).transpose(1, 2).reshape(-1, 4, 2)  # (rows, heads, head_dim)

    def cka_without(gone: list[int]) -> float:
        kept = original.clone()
        kept[:, gone] = 0
        return _centred_linear_cka(original.flatten(1), kept.flatten(1))

    gone: list[int] = []
    expected = []
    if greedy:
        for _ in range(4):
            best = max((h for h in range(4) if h not in gone), key=lambda h: (cka_without([*gone, h]), -h))
            gone.append(best)
            expected.append(cka_without(gone))
    else:
        singles = [cka_without([h]) for h in range(4)]
        gone = sorted(range(4), key=lambda h: (-singles[h], h))
        expected = [singles[h] for h in gone]
    expose_unit_inputs(model)
    (spec,) = find_units(model)
    criterion = CKADamage(model, [], greedy=greedy).accumulate_over([(x[:4],), (x[4:],)], progress=False)
    assert criterion.unit_names == [spec.name]
    assert criterion.removal_order(spec.name).tolist() == gone
    expected[-1] = 0.0 if greedy else expected[-1]  # nothing left: CKA 0 by definition
    torch.testing.assert_close(criterion.trajectory(spec.name), torch.tensor(expected, dtype=torch.float64))
    ranks = criterion.unit_scores(spec)
    assert torch.argsort(ranks).tolist() == gone
    # The RBF scan removes single channels: heads are then left to their q/k/v rows.
    assert CKADamage(model, None, kernel="rbf").unit_scores(spec) is None
