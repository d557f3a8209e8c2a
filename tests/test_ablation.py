"""ablation_damage: batched ablation equals a Python loop of full forwards with the unit's weights zeroed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import pyprune
from pyprune.models import resnet20
from pyprune.pruning.attention import expose_unit_inputs, find_units
from pyprune.pruning.criteria import ablation
from pyprune.pruning.criteria.ablation import unit_ablation_damage
from tests.test_taylor import HeadClassifier, gated_forward


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 5, 3),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.Conv2d(5, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 3),
    ).double()
    with torch.no_grad():  # non-trivial running statistics, so eval-mode BatchNorm is not the identity
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 1.5)
    return model.eval()


def data(n: int = 14) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=generator), torch.randint(
        0, 3, (n,), generator=generator
    )


def ablated(model: nn.Module, layer: str, channel: int) -> nn.Module:
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        copy_.get_submodule(layer).weight[channel] = 0
    return copy_


def output_at(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0].reshape(len(x), -1)


def brute_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    n = len(x)
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((k * l_).sum() / (k.norm() * l_.norm()))


@pytest.mark.parametrize("layer", ["0", "3"])
def test_loss_damage_equals_a_loop_of_full_forwards(layer):
    model, (x, y) = cnn(), data()
    damage = pyprune.ablation_damage(model, layer, [(x[:5], y[:5]), (x[5:], y[5:])], metric="loss")
    with torch.no_grad():
        base = nn.functional.cross_entropy(model(x), y)
        expected = [
            float(nn.functional.cross_entropy(ablated(model, layer, c)(x), y) - base)
            for c in range(model.get_submodule(layer).weight.shape[0])
        ]
    torch.testing.assert_close(damage, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_mse_damage_equals_a_loop_of_full_forwards():
    model, (x, y) = cnn(), data()
    damage = pyprune.ablation_damage(model, "0", [(x, y)], metric="mse")
    with torch.no_grad():
        expected = [float((ablated(model, "0", c)(x) - model(x)).square().mean()) for c in range(5)]
    torch.testing.assert_close(damage, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("at", ["4", "0"])
def test_cka_damage_at_a_later_module_and_at_the_layer_itself(at):
    model, (x, y) = cnn(), data()
    damage = pyprune.ablation_damage(model, "0", [(x[:7], y[:7]), (x[7:], y[7:])], metric="cka", at=at)
    reference = output_at(model, at, x)
    expected = [1 - brute_cka(reference, output_at(ablated(model, "0", c), at, x)) for c in range(5)]
    torch.testing.assert_close(damage, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_small_stacking_budget_gives_the_same_scores(monkeypatch):
    model, (x, y) = cnn(), data()
    full = pyprune.ablation_damage(model, "3", [(x, y)])
    monkeypatch.setattr(ablation, "MAX_STACKED_ROWS", 1)  # one candidate per stacked forward
    torch.testing.assert_close(pyprune.ablation_damage(model, "3", [(x, y)]), full)


def test_model_left_as_it_was():
    model, (x, y) = cnn(), data()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pyprune.ablation_damage(model, "0", [(x, y)])
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model[0]._forward_hooks


def test_oracle_method_removes_the_least_damaging_channels():
    model, (x, y) = cnn(), data()
    damage = pyprune.ablation_damage(model, "0", [(x, y)])
    plan = pyprune.plan(model, "oracle", 0.4, example_input=x[:1], data=[(x, y)])
    layer = next(layer for layer in plan.layers if layer.name == "0")
    assert layer.removed.tolist() == sorted(torch.argsort(damage, stable=True)[:2].tolist())


def test_oracle_metric_chooses_the_damage_and_measure_the_table():
    model, (x, y) = cnn(), data()
    # metric="mse": channels ranked by the mean squared output change, a loop of full forwards as reference.
    with torch.no_grad():
        out = model(x)
        mse = torch.tensor([float(((ablated(model, "0", c)(x) - out) ** 2).mean()) for c in range(5)])
    plan = pyprune.plan(model, "oracle", 0.4, example_input=x[:1], data=[(x, y)], metric="mse")
    assert plan.layer("0").removed.tolist() == sorted(torch.argsort(mse, stable=True)[:2].tolist())
    assert plan.totals["params"][0] == sum(p.numel() for p in model.parameters())
    # measure=False is the planner's switch: the same channels, no parameter/FLOP table.
    quiet = pyprune.plan(
        model, "oracle", 0.4, example_input=x[:1], data=[(x, y)], metric="mse", measure=False
    )
    assert not quiet.totals
    assert [layer.removed.tolist() for layer in quiet.layers] == [
        layer.removed.tolist() for layer in plan.layers
    ]
    with pytest.raises(TypeError, match=r"measure: expected True or False .* metric='cka'"):
        pyprune.plan(model, "oracle", 0.4, example_input=x[:1], data=[(x, y)], measure="cka")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer": "2"}, "layer"),
        ({"layer": "nope"}, "layer"),
        ({"metric": "kl"}, "metric"),
        ({"at": "nope", "metric": "cka"}, "at"),
        ({"max_batches": 0}, "max_batches"),
    ],
)
def test_bad_input(kwargs, message):
    model, (x, y) = cnn(), data()
    arguments = {"layer": "0", **kwargs}
    with pytest.raises(ValueError, match=message):
        pyprune.ablation_damage(model, arguments.pop("layer"), [(x, y)], **arguments)


def test_loss_needs_targets_and_data_needs_a_batch():
    model, (x, _) = cnn(), data()
    with pytest.raises(ValueError, match="targets"):
        pyprune.ablation_damage(model, "0", x, metric="loss")
    with pytest.raises(ValueError, match="no"):
        pyprune.ablation_damage(model, "0", [], metric="mse")


def test_cka_damage_without_at_compares_the_model_output():
    torch.manual_seed(0)
    model = resnet20().eval()
    data = [(torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,)))]
    at_output = pyprune.ablation_damage(model, "layer2.0.conv1", data, metric="cka", at="fc")
    default = pyprune.ablation_damage(model, "layer2.0.conv1", data, metric="cka")
    torch.testing.assert_close(default, at_output, rtol=0, atol=0)


def test_head_ablation_damage_is_the_loss_increase_of_a_zeroed_head_gate():
    # Michel et al. (2019): a head is ablated by masking its output; the reference masks it in a plain-torch forward.
    model = HeadClassifier().eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 5, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6,), generator=g)
    ones = torch.ones(2, dtype=torch.float64)
    with torch.no_grad():
        base = F.cross_entropy(gated_forward(model, x, ones), y)
        expected = torch.stack(
            [
                F.cross_entropy(gated_forward(model, x, ones.index_fill(0, torch.tensor([h]), 0)), y) - base
                for h in range(2)
            ]
        )
    (spec,) = find_units(model)
    with pytest.raises(ValueError, match=r"'parts\.layer\.self_attn\.out_proj' never ran as a module"):
        unit_ablation_damage(model, spec, [(x, y)])
    expose_unit_inputs(model)
    damage = unit_ablation_damage(model, spec, [(x[:4], y[:4]), (x[4:], y[4:])])
    torch.testing.assert_close(damage, expected, rtol=1e-10, atol=1e-12)


class _CountingLoader:
    """A re-iterable loader that counts the batches it has handed out."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches, self.drawn = batches, 0

    def __iter__(self):
        for x, y in self.batches:
            self.drawn += 1
            yield x.clone(), y


def test_oracle_reads_a_loader_again_instead_of_holding_every_batch():
    model, (x, y) = cnn(), data()
    loader = _CountingLoader([(x[:7], y[:7]), (x[7:], y[7:])])
    criterion = ablation.AblationDamage(model, loader)
    assert criterion.data is loader
    assert loader.drawn == 0
    torch.testing.assert_close(
        criterion.scores(model[0], "0"), pyprune.ablation_damage(model, "0", [(x[:7], y[:7]), (x[7:], y[7:])])
    )
    assert loader.drawn == 2
    # A one-shot iterator is drawn once, only up to max_batches, and serves every layer.
    batches = iter([(x[:7], y[:7]), (x[7:], y[7:]), (x, y)])
    once = ablation.AblationDamage(model, batches, max_batches=2)
    assert len(once.data) == 2
    assert next(batches)[0].shape[0] == 14
    torch.testing.assert_close(once.scores(model[3], "3"), pyprune.ablation_damage(model, "3", once.data))
