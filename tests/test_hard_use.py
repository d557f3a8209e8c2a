"""Issue 11, pruning side: what a demanding user does to the pruning entry points, each failure fixed at its root.

Batched ablation through residual/concatenating/reused layers against a loop of full forwards with the unit's
weights zeroed; planning leaves every registered method's model bit-identical; planning works inside
``torch.no_grad()``.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pyprune
from pyprune import models, schedules
from pyprune.pruning import LayerPlan, PruningPlan
from pyprune.pruning.criteria import ablation
from pyprune.pruning.criteria.provable.bounds import adapt_sample_size, expected_distinct
from pyprune.pruning.criteria.provable.pfp import KeepRatioMissedWarning, plan_pfp
from pyprune.pruning.criteria.provable.sipp import SmallSensitivitySetWarning
from pyprune.pruning.criteria.provable.tracker import SensitivityTracker

# The one-shot LLM methods (wanda, sparsegpt) need transformer blocks; tests/test_oneshot*.py cover them.
ORIGINAL_METHODS = sorted(name for name in pyprune.METHODS if name not in ("wanda", "sparsegpt"))


def batches(n: int = 6, size: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return [(x[: n // 2], y[: n // 2]), (x[n // 2 :], y[n // 2 :])]


class ConcatNet(nn.Module):
    """A DenseNet-style block (input concatenated with a conv of it) and a conv applied twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.grow = nn.Conv2d(4, 3, 3, padding=1)
        self.twice = nn.Conv2d(7, 7, 3, padding=1)
        self.head = nn.Linear(7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.cat([x, torch.relu(self.grow(x))], dim=1)
        x = torch.relu(self.twice(x)) + x
        x = torch.relu(self.twice(x))
        return self.head(x.mean((2, 3)))


class TinyResNet(nn.Module):
    """Conv-BN stem and one residual block: BatchNorm statistics, a skip connection, small enough for 17 methods."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv3(torch.relu(self.bn2(self.conv2(x)))) + x)
        return self.fc(x.mean((2, 3)))


def brute_damage(model: nn.Module, layer: str, data, measure: str) -> torch.Tensor:
    """Loss increase (or output MSE) of zeroing each unit's weights, one full float64 forward per unit."""
    model = copy.deepcopy(model).double().eval()
    x = torch.cat([b[0] for b in data]).double()
    y = torch.cat([b[1] for b in data])
    with torch.no_grad():
        reference = model(x)
        damage = []
        for c in range(model.get_submodule(layer).weight.shape[0]):
            ablated = copy.deepcopy(model)
            ablated.get_submodule(layer).weight[c] = 0
            out = ablated(x)
            if measure == "loss":
                damage.append(
                    float(nn.functional.cross_entropy(out, y) - nn.functional.cross_entropy(reference, y))
                )
            else:
                damage.append(float((out - reference).square().mean()))
    return torch.tensor(damage, dtype=torch.float64)


@pytest.mark.parametrize(
    ("build", "layer", "measure"),
    [
        (
            lambda: models.resnet20(width=0.25),
            "layer2.0.conv1",
            "loss",
        ),  # the README's example: a skip connection
        (lambda: models.resnet20(width=0.25), "layer2.0.conv2", "mse"),  # writes into the residual sum
        (ConcatNet, "grow", "loss"),  # concatenated with its own input
        (ConcatNet, "grow", "mse"),
        (
            ConcatNet,
            "twice",
            "loss",
        ),  # called twice per forward: both calls are ablated, as zeroed weights are
        (ConcatNet, "twice", "mse"),
    ],
)
def test_ablation_damage_flows_through_skips_concats_and_reused_layers(build, layer, measure):
    torch.manual_seed(0)
    model = build().double().eval()
    data = [(x.double(), y) for x, y in batches()]
    expected = brute_damage(model, layer, data, measure)
    got = pyprune.ablation_damage(model, layer, data, metric=measure)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_ablation_damage_chunks_larger_than_one_candidate_split_the_stacked_batch(monkeypatch):
    # Three candidates per stacked pass over two batches: copy-major stacking must line up with the hook.
    monkeypatch.setattr(ablation, "MAX_STACKED_ROWS", 9)
    torch.manual_seed(0)
    model = ConcatNet().double().eval()
    data = [(x.double(), y) for x, y in batches()]
    got = pyprune.ablation_damage(model, "twice", data, metric="loss")
    torch.testing.assert_close(got, brute_damage(model, "twice", data, "loss"), rtol=1e-9, atol=1e-12)


def test_oracle_plans_a_residual_network():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    data = batches()
    plan = pyprune.plan(model, "oracle", 0.25, example_input=data[0][0], data=data, progress=False)
    assert plan.num_removed > 0
    pruned = plan.apply(copy.deepcopy(model))
    assert pruned(data[0][0]).shape == (3, 10)


# --- planning leaves the model alone, for every registered method -------------------------------------------------


def _model_state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": [m.training for m in model.modules()],
        "hooks": [
            (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
            for m in model.modules()
        ],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def _assert_same_state(before: dict, after: dict, method: str) -> None:
    for key, value in before["tensors"].items():
        assert torch.equal(value, after["tensors"][key]), f"{method} changed {key}"
    for key in ("training", "hooks", "requires_grad"):
        assert before[key] == after[key], f"{method} changed the model's {key}"
    for i, (a, b) in enumerate(zip(before["grads"], after["grads"], strict=True)):
        assert (a is None and b is None) or torch.equal(a, b), f"{method} changed the .grad of parameter {i}"


def _planning_model() -> nn.Module:
    """Train mode, BatchNorm statistics, a frozen parameter, a user hook and a stale .grad: all must survive."""
    torch.manual_seed(0)
    model = TinyResNet().train()
    model.bn2.train(False)  # mixed flags
    model.fc.bias.requires_grad_(False)
    model.conv1.weight.grad = torch.full_like(model.conv1.weight, 0.5)
    model.conv2.register_forward_hook(lambda module, args, out: None)
    return model


def _kwargs(name: str, data) -> dict:
    method = pyprune.METHODS[name]
    kwargs: dict = {"example_input": data[0][0]}
    if method.needs_data:
        kwargs["data"] = data
    if name in ("taylor", "oracle", "pfp", "pfp_rand", "pfp_top"):
        kwargs["progress"] = False
    return kwargs


@pytest.mark.slow
def test_planning_leaves_every_method_model_bit_identical_also_inside_no_grad():
    # Inside no_grad: every planner must enable autograd itself (tracing, Taylor's backward) and leave it off.
    data = batches()
    for name in ORIGINAL_METHODS:
        model = _planning_model()
        before = _model_state(model)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            plan = pyprune.plan(model, name, 0.3, **_kwargs(name, data))
            assert not torch.is_grad_enabled()
        assert plan.num_removed > 0, name
        _assert_same_state(before, _model_state(model), name)


def test_structured_planners_and_apply_work_inside_no_grad():
    model = TinyResNet().eval()
    x = batches()[0][0]
    with torch.no_grad():
        direct = pyprune.plan_structured(model, 0.5, x)
        named = pyprune.plan(model, "l1_filter", 0.5, example_input=x)
        direct.apply(copy.deepcopy(model))
    assert direct.num_removed == named.num_removed > 0


# --- sensitivity_analysis: NaN metrics and tolerance -----------------------------------------------------------------


def _small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(128, 4)
    )


def test_sensitivity_analysis_never_recommends_a_ratio_whose_metric_is_nan():
    model = _small_cnn()

    def evaluate(m: nn.Module) -> float:
        width = m[0].weight.shape[0]
        return 1.0 if width == 8 else (0.999 if width >= 6 else float("nan"))

    result = pyprune.sensitivity_analysis(
        model, evaluate, torch.randn(2, 3, 8, 8), ratios=[0.25, 0.5, 0.75], tolerance=0.01, progress=False
    )
    assert result.suggested["0"] == 0.25  # 0.5 leaves 4 channels: NaN, outside any tolerance


@pytest.mark.parametrize("tolerance", [float("nan"), float("inf"), -0.1, "0.1", True])
def test_sensitivity_analysis_rejects_a_tolerance_that_is_not_a_finite_number(tolerance):
    with pytest.raises((TypeError, ValueError), match="tolerance"):
        pyprune.sensitivity_analysis(
            _small_cnn(), lambda m: 1.0, torch.randn(2, 3, 8, 8), tolerance=tolerance
        )


def test_sensitivity_analysis_refuses_a_nan_baseline_and_takes_numpy_scalars():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="evaluate: returned NaN for the unpruned model"):
        pyprune.sensitivity_analysis(_small_cnn(), lambda m: float("nan"), x, progress=False)
    result = pyprune.sensitivity_analysis(
        _small_cnn(),
        lambda m: np.float32(1.0),
        x,
        ratios=[np.float32(0.25)],
        tolerance=np.float64(0.0),
        progress=False,
    )
    assert result.suggested == {"0": 0.25, "2": 0.25}


# --- files that lie: checksums, truncation, NaN weights ----------------------------------------------------------


def _saved(tmp_path) -> tuple[nn.Module, str]:
    model = _small_cnn()
    pyprune.prune(model, "l1_filter", 0.5, example_input=torch.randn(2, 3, 8, 8))
    path = str(tmp_path / "pruned.pt")
    pyprune.save_pruned(model, path, accuracy=0.5)
    return model, path


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _largest_tensor(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else []
    tensors = [_largest_tensor(item) for item in items]
    return max((t for t in tensors if t is not None), key=torch.numel, default=None)


def _tensor_offset(path: str, tensor: torch.Tensor) -> int:
    """Byte offset in the zip file of ``tensor``'s float32 data (found by its bytes, which are unique here)."""
    offset = _read(path).find(tensor.detach().numpy().tobytes())
    assert offset > 0
    return offset


def test_load_pruned_round_trip_is_bit_identical(tmp_path):
    model, path = _saved(tmp_path)
    loaded = pyprune.load_pruned(path, _small_cnn())
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.pyprune_extra == {"accuracy": 0.5}


def test_load_pruned_detects_a_flipped_byte_in_a_weight(tmp_path):
    model, path = _saved(tmp_path)
    offset = _tensor_offset(path, model[2].bias)
    data = bytearray(_read(path))
    data[offset + 3] ^= 0x40  # the exponent of one bias: a change of about 1e37, the case
    _write(path, bytes(data))
    fresh = _small_cnn()
    before = copy.deepcopy(fresh.state_dict())
    with pytest.raises(ValueError, match=r"pruned\.pt.*corrupt"):
        pyprune.load_pruned(path, fresh)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_load_pruned_names_a_truncated_file(tmp_path, keep):
    _, path = _saved(tmp_path)
    data = _read(path)
    cut = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) - 1)
    _write(path, data[:cut])
    with pytest.raises(ValueError, match=r"pruned\.pt.*(corrupt|truncated)"):
        pyprune.load_pruned(path, _small_cnn())


def test_load_pruned_refuses_nan_weights_and_a_missing_checksum(tmp_path):
    model, path = _saved(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint.pop("checksum")
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"pruned\.pt.*no checksum"):
        pyprune.load_pruned(path, _small_cnn())
    checkpoint["state_dict"]["2.weight"][0, 0, 0, 0] = float("nan")
    from pyprune.pruning.io import checksum

    torch.save({**checkpoint, "checksum": checksum(checkpoint)}, path)  # a consistent file of a NaN model
    with pytest.raises(ValueError, match=r"parameter '2\.weight' holds NaN"):
        pyprune.load_pruned(path, _small_cnn())
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"parameter '0\.weight' holds NaN or infinity"):
        pyprune.save_pruned(model, str(tmp_path / "other.pt"))


def test_load_pruned_still_refuses_a_pickle_that_runs_code(tmp_path):
    path = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "pyprune-pruned/1", "payload": Evil()}, path)
    with pytest.raises(ValueError, match=r"evil\.pt.*torch\.load refused it"):
        pyprune.load_pruned(path, _small_cnn())


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        pyprune.load_pruned(tmp_path / "nope.pt", _small_cnn())


# --- plan JSON validated completely on load ---------------------------------------------------------------------------


def _plan_dict(method: str = "l1_filter") -> dict:
    model = _small_cnn()
    x = torch.randn(2, 3, 8, 8)
    data = [(x, torch.tensor([0, 1]))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two samples are too few for SiPP's bound; irrelevant here
        quiet = {"progress": False} if pyprune.METHODS[method].needs_data else {}
        return pyprune.plan(model, method, 0.5, example_input=x, data=data, **quiet).to_dict()


def _mutate_channels(d: dict, removed) -> dict:
    d["layers"][0]["removed"] = removed
    return d


def _mutate_bits(d: dict, cut: int) -> dict:
    layer = d["layers"][0]
    layer["removed_bits"] = base64.b64encode(base64.b64decode(layer["removed_bits"])[:cut]).decode()
    return d


def _mutate_rescale(d: dict, value: float) -> dict:
    name, encoded = next(iter(d["rescale"].items()))
    array = np.frombuffer(base64.b64decode(encoded["float64"]), dtype="<f8").copy()
    array[0] = value
    d["rescale"][name]["float64"] = base64.b64encode(array.astype("<f8").tobytes()).decode()
    return d


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: _mutate_channels(d, [0, 0, 1, 1]), "more than once"),  # says 4 removed, would remove 2
        (lambda d: _mutate_channels(d, [0.0, 1.5]), r"expected ints in \[0, 8\)"),  # floats truncated before
        (lambda d: _mutate_channels(d, [0, 8]), r"expected ints in \[0, 8\)"),
        (lambda d: _mutate_channels(d, [-1]), r"expected ints in \[0, 8\)"),
        (lambda d: _mutate_channels(d, list(range(8))), "would lose all"),
        (lambda d: _mutate_channels(d, [True]), r"expected ints"),
        (lambda d: {**d, "mode": "shrink"}, "mode"),
        (lambda d: {**d, "layers": [{**d["layers"][0], "size": 8.0}]}, "size"),
        (lambda d: {**d, "layers": [d["layers"][0], d["layers"][0]]}, "each layer once"),
        (lambda d: {**d, "fingerprint": [["0.weight", [8, "3"]]]}, "fingerprint"),
        (lambda d: {**d, "input_shape": [2, -3]}, "input_shape"),
    ],
)
def test_plan_json_with_bad_channel_entries_is_rejected_before_anything_changes(mutate, match):
    text = json.dumps(mutate(_plan_dict()))
    with pytest.raises(ValueError, match=match):
        PruningPlan.from_json(text)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: _mutate_bits(d, 3), r"removed_bits holds 3 bytes; expected 27"),
        (lambda d: _mutate_rescale(d, float("nan")), "non-finite"),
        (lambda d: _mutate_rescale(d, 1e308), r"expected them in \[0, 1e\+09\]"),
        (lambda d: _mutate_rescale(d, -2.0), r"expected them in \[0, 1e\+09\]"),
    ],
)
def test_plan_json_with_bad_bits_or_rescale_factors_is_rejected(mutate, match):
    d = _plan_dict("sipp_rand")
    assert d["rescale"], "sipp_rand reweights what it keeps"
    with pytest.raises(ValueError, match=match):
        PruningPlan.from_json(json.dumps(mutate(d)))


def test_a_valid_plan_survives_the_json_round_trip_exactly():
    for method in ("l1_filter", "sipp_rand"):
        d = _plan_dict(method)
        again = PruningPlan.from_json(json.dumps(d)).to_dict()
        assert again == d


# --- PFP/SiPP sensitivities: relative denominator threshold; missed amounts warn ------------------------------------


@pytest.mark.parametrize("scale", [1e-8, 1e-30])
def test_sensitivities_and_pfp_do_not_depend_on_the_activation_scale(scale):
    # A bias-free ReLU network is positively homogeneous: relative contributions are the same at every input scale.
    torch.manual_seed(0)
    model = models.mlp([20, 40, 40, 5], bias=False)
    x = torch.rand(64, 20, generator=torch.Generator().manual_seed(0))
    plans, sensitivities = [], []
    for s in (1.0, scale):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallSensitivitySetWarning)
            tracker = SensitivityTracker(model).accumulate_over(x * s, progress=False)
            plans.append(plan_pfp(model, 0.5, x[:1] * s, tracker))
        sensitivities.append([tracker.channel_sensitivity(n) for n in tracker.layer_names])
    for a, b in zip(*sensitivities, strict=True):
        assert a.sum() > 1
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    assert plans[1].options["kept_units"] == plans[0].options["kept_units"]
    assert plans[1].options["keep_ratio_achieved"] == pytest.approx(0.5, abs=0.01)


def test_pfp_warns_when_no_allocation_reaches_the_amount():
    # Every unit of the hidden layers is dead on the data (zero inputs): PFP can only drop all of them.
    model = models.mlp([6, 30, 30, 4])
    x = torch.zeros(32, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSensitivitySetWarning)
        with pytest.warns(KeepRatioMissedWarning, match=r"asked to keep 0\.7000 of the params but keeps"):
            plan_pfp(model, 0.3, x[:1], [x], progress=False)


# --- schedules: one meaning of amount, FLOPs per example, checkpoints that cannot lie ------------------------------


def _digits(n: int = 64, batch: int = 32, features: int = 48):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, features, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


@pytest.mark.slow
def test_cascade_with_pfp_reaches_its_keep_ratios_of_all_parameters():
    torch.manual_seed(0)
    model = models.mlp([48, 60, 60, 10])
    loader = _digits()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSensitivitySetWarning)
        result = schedules.cascade(
            model,
            "pfp",
            [0.8, 0.5],
            train_loader=loader,
            eval_loader=loader,
            epochs=1,
            retrain_at=[],
            method_options={"progress": False},
            progress=False,
        )
    dense = result.rounds[0].params
    for record, target in zip(result.rounds[1:], [0.8, 0.5], strict=True):
        assert record.params / dense == pytest.approx(
            target, abs=0.01
        )  # was 0.70 / 0.51 / 0.27 for 0.8/0.6/0.4
        assert record.notes["keep_target"] == target
        assert record.notes["keep_achieved"] == pytest.approx(record.params / dense)
        assert record.keep == record.notes["keep_achieved"]


def test_schedule_flops_are_per_example_whatever_the_example_batch():
    loader = _digits()
    flops = []
    for batch in (1, 8):
        torch.manual_seed(0)
        model = models.mlp([48, 20, 10])
        result = schedules.one_shot(
            model,
            "magnitude",
            0.5,
            train_loader=loader,
            eval_loader=loader,
            epochs=0,
            example_input=loader[0][0][:batch],
            progress=False,
        )
        flops.append(result.rounds[0].flops)
    assert flops[0] == flops[1] == pyprune.count(models.mlp([48, 20, 10]), loader[0][0][:1]).flops


@pytest.mark.parametrize("damage", ["flip", "truncate"])
@pytest.mark.parametrize("victim", ["round_001.pt", "round_000_state.pt", "result.json"])
def test_resume_refuses_a_damaged_checkpoint_and_names_it(tmp_path, damage, victim):
    # IMP stopped after round 1; resuming reads round 1's weights, round 0's state (the rewind point), result.json.
    loader = _digits()
    arguments = {
        "rounds": 2,
        "train_loader": loader,
        "eval_loader": loader,
        "epochs_per_round": 1,
        "rewind": "weights",
    }
    torch.manual_seed(0)
    schedules.imp(
        models.mlp([48, 20, 10]),
        checkpoint_dir=tmp_path,
        progress=False,
        callback=lambda record, model: record.round == 1,
        **arguments,
    )
    path = str(tmp_path / victim)
    data = _read(path)
    if damage == "flip":
        data = bytearray(data)
        if victim.endswith(".pt"):  # the lowest mantissa bit of one stored weight (not alignment padding)
            data[_tensor_offset(path, _largest_tensor(torch.load(path, weights_only=True)))] ^= 0x01
        else:
            at = data.index(b'"accuracy": 0.') + 14
            assert chr(data[at]).isdigit()
            data[at] ^= 0x01  # one decimal of round 0's accuracy: the JSON stays valid
        data = bytes(data)
    else:
        data = data[: len(data) // 2]
    _write(path, data)
    with pytest.raises(ValueError, match=re.escape(victim)):
        schedules.imp(
            models.mlp([48, 20, 10]), checkpoint_dir=tmp_path, resume=True, progress=False, **arguments
        )


# --- tied parameters: refused clearly, never silently untied ---------------------------------------------------------


class TiedNet(nn.Module):
    """Two hidden layers sharing one weight, and an output layer tied to an embedding (Hugging Face style)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, 16)
        self.stem = nn.Linear(12, 16)
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)
        self.b.weight = self.a.weight
        self.head = nn.Linear(16, 4, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.slow
def test_every_method_refuses_to_untie_a_shared_parameter_and_leaves_the_model_alone():
    x, y = torch.randn(8, 12), torch.randint(0, 4, (8,))
    for name in ORIGINAL_METHODS:
        torch.manual_seed(0)
        model = TiedNet()
        before = _model_state(model)
        kwargs = {"example_input": x, **({"data": [(x, y)]} if pyprune.METHODS[name].needs_data else {})}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError, match=r"\['a\.weight', 'b\.weight'\].*tied"):
                pyprune.prune(model, name, 0.3, **kwargs)
        _assert_same_state(before, _model_state(model), name)
        assert model.a.weight is model.b.weight
        assert model.head.weight is model.embed.weight


def test_tied_layers_can_be_left_out_and_a_tied_output_layer_is_never_touched_by_default():
    torch.manual_seed(0)
    model = TiedNet()
    plan = pyprune.prune(model, "magnitude", 0.5, ignored_layers=["a", "b"])
    assert [layer.name for layer in plan.layers] == ["stem"]
    assert model.head.weight is model.embed.weight
    assert model.a.weight is model.b.weight
    with pytest.raises(ValueError, match=r"\['embed\.weight', 'head\.weight'\]"):
        pyprune.plan(TiedNet(), "magnitude", 0.5, layers=["head"]).apply(TiedNet())


# --- messages: name the argument, say what was expected ---------------------------------------------------------------


def test_sipp_methods_take_ignored_layers():
    model = models.mlp([12, 16, 16, 4])
    x = torch.rand(8, 12)
    for name in ("sipp_det", "sipp_rand", "sipp_hybrid"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SmallSensitivitySetWarning)
            plan = pyprune.plan(model, name, 0.3, data=[x], ignored_layers=["fc1"], progress=False)
        assert [layer.name for layer in plan.layers] == ["fc2", "fc3"]


@pytest.mark.parametrize("amount", [np.float32(0.5), np.float64(0.5), np.int64(0)])
def test_numpy_scalar_amounts_are_accepted(amount):
    x = torch.randn(2, 3, 8, 8)
    plan = pyprune.plan(_small_cnn(), "l1_filter", amount, example_input=x)
    assert plan.num_removed == (0 if amount == 0 else 8)


def test_a_meta_device_model_gets_a_clear_error():
    model = _small_cnn().to("meta")
    for name in ("magnitude", "l1_filter", "taylor"):
        with pytest.raises(ValueError, match="model: its tensors are on the meta device"):
            pyprune.plan(model, name, 0.5, example_input=torch.randn(2, 3, 8, 8), data=[])


def test_a_wrong_example_input_is_named_instead_of_blaming_tracing():
    with pytest.raises(ValueError, match=r"example_input: the model fails on it") as info:
        pyprune.plan(_small_cnn(), "l1_filter", 0.5, example_input=torch.randn(2, 3, 9, 9))
    assert "Torch-Pruning" not in str(info.value)


@pytest.mark.parametrize("name", ["taylor", "oracle", "cka_single", "sipp_det", "pfp"])
def test_integer_data_batches_name_data(name):
    x = torch.randint(0, 3, (4, 3, 8, 8))
    batches = [(x, torch.zeros(4).long())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSensitivitySetWarning)
        with pytest.raises(TypeError, match=r"data: its batches hold torch\.int64 inputs"):
            pyprune.plan(_small_cnn(), name, 0.5, example_input=torch.randn(2, 3, 8, 8), data=batches)


# --- torchprune conventions ---------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(3, 25),
    exponent=st.floats(0.0, 3.0),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_adapt_sample_size_is_the_smallest_m_reaching_the_expectation(n, exponent, seed, data):
    p = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) ** exponent + 1e-3
    p = p / p.sum()
    if bool((p == p[0]).all()):
        return  # uniform probabilities take the documented closed form
    x = data.draw(st.integers(2, n - 1))
    m = adapt_sample_size(p, x)
    assert expected_distinct(p, m) >= x
    assert m == 1 or expected_distinct(p, m - 1) < x


def test_adapt_sample_size_of_a_near_uniform_distribution():
    # The case: n = 11, x = 10 gave 25 where 22 suffices (a lower bound made for E >= x, not ceil(E) >= x).
    p = torch.full((11,), 1 / 11, dtype=torch.float64)
    p[0] *= 1.001
    brute = next(m for m in range(1, 1000) if expected_distinct(p, m) >= 10)
    assert adapt_sample_size(p, 10) == brute


def test_drop_zero_gradient_zeroes_the_sensitivities_of_weights_into_dead_units():
    torch.manual_seed(0)
    model = models.mlp([10, 12, 6])
    with torch.no_grad():
        model.fc1.bias[:3] = -100.0  # units 0-2 never activate: their incoming weights get no gradient
    x = torch.rand(32, 10, generator=torch.Generator().manual_seed(1))
    batches = [(x, torch.randint(0, 6, (32,), generator=torch.Generator().manual_seed(2)))]
    dead = ~(model.fc1(x) > 0).any(0)  # 0-2, and any unit the random initialisation left inactive on x
    assert dead[:3].all()
    tracker = SensitivityTracker(model).accumulate_over(x, progress=False)
    assert (tracker.weight_sensitivity("fc1")[dead] > 0).any()  # the paper's sensitivity keeps them
    before = copy.deepcopy(model.state_dict())
    dropped = tracker.drop_zero_gradient(batches)
    # fc1's rows into the dead units, and fc2's columns out of them (their inputs are 0, so is their gradient).
    assert dropped == {"fc1": 10 * int(dead.sum()), "fc2": 6 * int(dead.sum())}
    assert (tracker.weight_sensitivity("fc1")[dead] == 0).all()
    assert (tracker.weight_sensitivity("fc1")[~dead] > 0).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSensitivitySetWarning)
        plan = pyprune.plan(model, "sipp_det", 16 * int(dead.sum()) / 192, data=tracker)
    rows = plan.layer("fc1").removed // 10
    assert set(rows.tolist()) == set(dead.nonzero().flatten().tolist())


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 200), data=st.data())
def test_layer_plans_round_trip_exactly_and_any_duplicate_is_refused(size, data):
    removed = sorted(data.draw(st.sets(st.integers(0, size - 1), max_size=size - 1)))
    for granularity in ("weights", "channels"):
        layer = LayerPlan("fc", granularity, size, torch.tensor(removed, dtype=torch.long))
        encoded = json.loads(json.dumps(layer.to_dict()))
        again = LayerPlan.from_dict(encoded)
        assert again.removed.tolist() == removed
        assert again.to_dict() == encoded
    if removed:
        with pytest.raises(ValueError, match="more than once"):
            LayerPlan.from_dict(
                {"name": "fc", "granularity": "channels", "size": size, "removed": removed * 2}
            )
