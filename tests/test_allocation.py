"""FLOPs- and parameter-aware allocation (``budget="flops"`` / ``"params"``) of structured pruning.

The reference for what a plan achieved is independent of pyprune's counting: FLOPs from forward hooks on the
applied model (2 per multiply-accumulate of every Conv2d and Linear, written here from the layer shapes),
parameters as the applied model's tensor sizes; for attention models, ``pyprune.measure.count`` of the applied
model against the dense one.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pyprune
from pyprune.measure import count
from pyprune.pruning.allocation import channel_costs
from pyprune.pruning.criteria.base import ChannelCriterion
from pyprune.pruning.groups import build_dependency_graph, prunable_groups
from pyprune.pruning.plan import format_plan


class Block(nn.Module):
    """conv-bn-relu-conv-bn plus a shortcut: the two convs' outputs share one residual group."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyNet(nn.Module):
    """Stem at full resolution, a residual block, a strided conv, a flatten into a two-layer classifier: channels
    of very different FLOPs and parameter costs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = Block(16)
        self.down = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(24 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.down(self.block(self.stem(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet().eval()


def hooked_flops(model: nn.Module, x: torch.Tensor) -> int:
    """2 x multiply-accumulates of every Conv2d and Linear in one forward pass, from their shapes."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        else:
            per_output = module.in_features
        total += 2 * output.numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return total


def reduction(model: nn.Module, plan: pyprune.PruningPlan, budget: str) -> float:
    """Fraction of ``budget`` that ``plan`` removes from ``model``, measured on an applied copy."""
    pruned = plan.apply(copy.deepcopy(model))
    if budget == "flops":
        return 1 - hooked_flops(pruned, X) / hooked_flops(model, X)
    return 1 - sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("budget", ["flops", "params"])
@pytest.mark.parametrize("amount", [0.2, 0.5])
def test_budget_is_met_on_the_applied_model(scope, budget, amount):
    model = tiny_net()
    plan = pyprune.plan(model, "l1_filter", amount, example_input=X, scope=scope, budget=budget)
    achieved = reduction(model, plan, budget)
    record = plan.options["budget"]
    assert record["achieved"] == pytest.approx(achieved, abs=1e-12)
    assert (record["unit"], record["target"]) == (budget, amount)
    # Past the target by at most one channel (global; the costliest, of the residual group, saves 6.2% of the
    # FLOPs: 2 x 256 positions x (27 + 144 + 144) multiply-adds, plus 2 x 64 x 144 at the strided conv, of 6.07M)
    # or one step of the uniform fraction (layer).
    assert amount <= achieved < amount + (0.07 if scope == "global" else 0.12)


@settings(max_examples=12, deadline=None)
@given(
    amount=st.floats(0.0, 0.8),
    budget=st.sampled_from(["flops", "params"]),
    scope=st.sampled_from(["global", "layer"]),
)
def test_any_reachable_amount_is_met(amount, budget, scope):
    model = tiny_net()
    plan = pyprune.plan(
        model, "l2_filter", amount, example_input=X, scope=scope, budget=budget, measure=False
    )
    achieved = reduction(model, plan, budget)
    assert achieved >= amount
    assert plan.options["budget"]["achieved"] == pytest.approx(achieved, abs=1e-12)


class Equal(ChannelCriterion):
    """The same score for every channel: the ranking is by cost alone."""

    name = "equal"

    def scores(self, module, name, dropped_inputs=None):
        return torch.ones(module.weight.shape[0], dtype=torch.float64)


class Fixed(ChannelCriterion):
    """Given scores per layer."""

    name = "fixed"

    def __init__(self, scores: dict[str, list[float]]) -> None:
        self.table = scores

    def scores(self, module, name, dropped_inputs=None):
        return torch.tensor(self.table[name], dtype=torch.float64)


class Toy(nn.Module):
    """conv1 (1 -> 4) at 8x8, max-pool to 4x4, conv2 (4 -> 4) at 4x4, global average, fc (4 -> 2); no biases.

    FLOPs (2 per multiply-add): conv1 2*64*4 = 512, conv2 2*16*16 = 512, fc 2*8 = 16. Removing one conv1 channel
    saves its row (2*64 = 128) and its input slice of conv2 (2*16*4 = 128): 256. One conv2 channel: its row (128)
    and its column of fc (2*2 = 4): 132. Parameters: a conv1 channel 1 + 4 = 5, a conv2 channel 4 + 2 = 6.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 1, bias=False)
        self.conv2 = nn.Conv2d(4, 4, 1, bias=False)
        self.fc = nn.Linear(4, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(nn.functional.max_pool2d(self.conv1(x), 2))
        return self.fc(x.mean((2, 3)))


TOY_INPUT = torch.randn(1, 1, 8, 8)


def test_channel_costs_are_the_hand_counted_savings():
    model = Toy()
    graph = build_dependency_graph(model, TOY_INPUT, count=True)
    groups, _ = prunable_groups(model, graph, [model.fc])
    roots = [group[0].dep.target.module for group in groups]
    costs = {
        budget: dict(
            zip(
                roots,
                channel_costs(model, groups, [], graph.pyprune_count.per_module_flops, budget),
                strict=True,
            )
        )
        for budget in ("flops", "params")
    }
    assert costs["flops"][model.conv1].tolist() == [256.0] * 4
    assert costs["flops"][model.conv2].tolist() == [132.0] * 4
    assert costs["params"][model.conv1].tolist() == [5.0] * 4
    assert costs["params"][model.conv2].tolist() == [6.0] * 4


def test_lowest_score_per_cost_goes_first():
    # Score per FLOP: conv1 [1 2 3 4] / 256 = .0039 .0078 .0117 .0156; conv2 [1.5 2.5 3.5 4.5] / 132 = .0114 ...
    # By score alone conv2's 1.5 would go second; per cost conv1's channels 0 and 1 go first, and they save
    # 2 x 256 of 1040 FLOPs = 49.2% (one alone: 24.6%, short of 40%).
    criterion = Fixed({"conv1": [1, 2, 3, 4], "conv2": [1.5, 2.5, 3.5, 4.5]})
    plan = pyprune.plan_structured(Toy(), 0.4, TOY_INPUT, criterion=criterion, scope="global", budget="flops")
    assert plan.layer("conv1").removed.tolist() == [0, 1]
    assert plan.layer("conv2").removed.tolist() == []
    assert plan.options["budget"]["achieved"] == pytest.approx(512 / 1040)
    # The channel budget ranks by score alone.
    by_channels = pyprune.plan_structured(Toy(), 0.375, TOY_INPUT, criterion=criterion, scope="global")
    assert by_channels.layer("conv1").removed.tolist() == [0, 1]
    assert by_channels.layer("conv2").removed.tolist() == [0]


@pytest.mark.parametrize(("budget", "first"), [("flops", "conv1"), ("params", "conv2")])
def test_equal_scores_go_where_the_budget_unit_is(budget, first):
    # A conv1 channel costs 256 FLOPs and 5 parameters, a conv2 channel 132 FLOPs and 6 parameters: per unit of
    # each budget the other layer is cheaper to keep, so the first channel removed is the costly one.
    plan = pyprune.plan_structured(Toy(), 0.01, TOY_INPUT, criterion=Equal(), scope="global", budget=budget)
    assert {layer.name: layer.num_removed for layer in plan.layers} == {
        "conv1": int(first == "conv1"),
        "conv2": int(first == "conv2"),
    }


def test_min_channels_and_round_to_hold_under_a_budget():
    model = tiny_net()
    plan = pyprune.plan(
        model, "l1_filter", 0.4, example_input=X, scope="global", budget="flops", min_channels=4, round_to=4
    )
    for layer in plan.layers:
        assert layer.num_kept >= 4
        assert layer.num_kept % 4 == 0
    assert reduction(model, plan, "flops") >= 0.4


def test_attention_heads_count_in_the_budget():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    model = nn.Sequential(
        nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(32, 10)
    ).eval()
    x = torch.randn(2, 12, 32)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    for budget in ("flops", "params"):
        plan = pyprune.plan(model, "l1_filter", 0.3, example_input=x, scope="global", budget=budget)
        # The search prunes copies that share the model's tensors: the model stays as it was.
        assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
        pruned = plan.apply(copy.deepcopy(model))
        before, after = count(model, x), count(pruned, x)
        achieved = 1 - getattr(after, budget) / getattr(before, budget)
        assert achieved >= 0.3
        assert plan.options["budget"]["achieved"] == pytest.approx(achieved, abs=1e-12)
        assert any(layer.granularity == "heads" and layer.num_removed for layer in plan.layers)


def test_taylor_takes_the_budget_through_pyprune_plan():
    model = tiny_net()
    data = [(torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))) for _ in range(2)]
    plan = pyprune.plan(model, "taylor", 0.5, example_input=X, data=data, progress=False, budget="flops")
    assert plan.options["scope"] == "global"
    assert reduction(model, plan, "flops") >= 0.5


@pytest.mark.parametrize("method", ["l1_filter", "random_channels"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_the_default_budget_is_the_channel_plan(method, scope):
    model = tiny_net()
    default = pyprune.plan(model, method, 0.4, example_input=X, scope=scope)
    explicit = pyprune.plan(model, method, 0.4, example_input=X, scope=scope, budget="channels")
    assert default.to_json() == explicit.to_json()
    assert "budget" not in default.options


def test_the_plan_reports_target_and_reached_and_round_trips_json():
    model = tiny_net()
    plan = pyprune.plan(model, "l1_filter", 0.3, example_input=X, scope="global", budget="flops")
    record = plan.options["budget"]
    assert [record["before"], record["after"]] == plan.totals["flops"]
    assert f"budget: flops -30.00% asked, -{100 * record['achieved']:.2f}% reached" in format_plan(plan)
    assert pyprune.PruningPlan.from_json(plan.to_json()).options["budget"] == record


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"budget": "macs"}, "budget"),
        ({"budget": "flops", "mode": "mask"}, "budget"),
        ({"budget": "flops", "example_input": None}, "example_input"),
        ({"budget": "params", "greedy": True}, "greedy"),
        ({"budget": "flops", "amount": {"stem.0": 0.5}, "scope": "layer"}, "amount"),
        # Only the classifier is left to prune: at most its FLOPs (a sliver) can go.
        (
            {"budget": "flops", "ignored_layers": ["stem.0", "block.conv1", "block.conv2", "down.0", "fc2"]},
            "amount",
        ),
    ],
)
def test_bad_budgets_are_refused_naming_the_argument(options, argument):
    arguments = {"amount": 0.5, "example_input": X, "scope": "global", **options}
    amount = arguments.pop("amount")
    example_input = arguments.pop("example_input")
    with pytest.raises(ValueError, match=rf"^{argument}: ") as error:
        pyprune.plan_structured(tiny_net(), amount, example_input, **arguments)
    if "ignored_layers" in options:
        assert "at most" in str(error.value)
        assert "ignored_layers=" in str(error.value)


def test_readme_budget_snippet_runs():
    readme = Path(__file__).resolve().parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    snippet = next(block for block in blocks if 'budget="flops"' in block)
    namespace: dict = {}
    exec(compile(snippet, str(readme), "exec"), namespace)
    pruned = namespace["plan"].apply(namespace["model"])
    assert (
        1
        - hooked_flops(pruned, namespace["x"]) / hooked_flops(namespace["models"].resnet20(), namespace["x"])
        >= 0.5
    )
