"""Prune–retrain schedules on tiny models: exact counts worked out by hand, spies on what the schedule trains with.

Expected numbers come from the model shapes and the rules (floor of the remaining weights, round half up of the
planner), never from the code under test; what the schedule records is checked against masks and shapes read
from the model independently.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import itertools
import json
import math
import os
import re
from collections import OrderedDict

import pytest
import torch
from torch import nn

from pyprune import data, models
from pyprune.measure import count
from pyprune.pruning.criteria.taylor import Taylor
from pyprune.pruning.selection import plan_structured
from pyprune.training.fit import Callback, snapshot
from pyprune.training.schedules import (
    ScheduleOptions,
    ScheduleResult,
    cascade,
    imp,
    iterative,
    iterative_schedule,
    one_shot,
)
from pyprune.training.schedules.trainer import Trainer

# mlp([64, 24, 16, 10]): IMP and unstructured cascade prune fc1 and fc2 (not the output layer).
PRUNABLE_MLP = 64 * 24 + 24 * 16  # 1920 weights
STEPS_PER_EPOCH = math.ceil(1347 / 128)  # digits train split (1,347 samples) in batches of 128: 11


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: threads buy nothing, and on a busy machine OpenMP's waiting makes each op far slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def flat_digits():
    return data.loaders("digits", batch_size=128, image=False)


@pytest.fixture(scope="module")
def image_digits():
    return data.loaders("digits", batch_size=64)


def small_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return models.mlp([64, 24, 16, 10])


def bn_mlp(seed: int = 0) -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU -> Linear: weight rewinding must reset the BN statistics too."""
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(64, 24),
            bn=nn.BatchNorm1d(24),
            relu=nn.ReLU(),
            fc2=nn.Linear(24, 10),
        )
    )


def small_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return models.lenet5(image_size=8)


def sgd(lr: float):
    return lambda model: torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def halving(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers() if name.endswith("weight_mask")}


def surviving(model: nn.Module) -> int:
    return sum(int(mask.count_nonzero()) for mask in masks(model).values())


def half_up(x: float) -> int:
    return math.floor(x + 0.5)


def test_imp_prunes_floor_of_remaining_each_round(flat_digits):
    train, test = flat_digits
    seen = {}

    def spy(record, model):
        seen[record.round] = {"surviving": surviving(model), "masks": masks(model), "state": snapshot(model)}

    result = imp(
        small_mlp(),
        rounds=4,
        rate=0.3,
        train_loader=train,
        eval_loader=test,
        epochs_per_round=1,
        optimizer_factory=sgd(0.05),
        callback=spy,
        progress=False,
    )
    expected = [PRUNABLE_MLP]
    for _ in range(4):
        expected.append(expected[-1] - (3 * expected[-1]) // 10)  # floor(0.3 * M) without float rounding
    assert expected == [1920, 1344, 941, 659, 462]
    assert [record.kept for record in result.rounds] == expected
    assert [record.keep for record in result.rounds] == [k / PRUNABLE_MLP for k in expected]
    assert [seen[r]["surviving"] for r in range(1, 5)] == expected[1:]
    assert result.notes["stop_reason"] == "completed"

    # Round 1 removes the 576 globally smallest |w| of the trained dense fc1 and fc2.
    dense = seen[0]["state"]
    magnitudes = torch.cat([dense["fc1.weight"].abs().flatten(), dense["fc2.weight"].abs().flatten()])
    pruned = torch.zeros_like(magnitudes, dtype=torch.bool)
    pruned[torch.argsort(magnitudes)[:576]] = True
    first = seen[1]["masks"]
    assert torch.equal(
        torch.cat([first["fc1.weight_mask"].flatten(), first["fc2.weight_mask"].flatten()]) == 0, pruned
    )

    for r in range(2, 5):
        for name, mask in seen[r]["masks"].items():
            assert torch.all(mask <= seen[r - 1]["masks"][name]), f"round {r} revived weights of {name}"
            orig = seen[r]["state"][name.replace("_mask", "_orig")]
            assert torch.all(orig[mask == 0] == 0), f"pruned entries of {name} drifted in round {r}"


def test_imp_prunes_nothing_when_rate_times_remaining_is_below_one():
    # fc1 of mlp([4, 2, 2]) has 8 weights: floor(0.1 * 8) = 0, so nothing goes (not everything).
    torch.manual_seed(0)
    model = models.mlp([4, 2, 2])
    train = torch.utils.data.DataLoader(data.synthetic_images(32, (4,), 2), batch_size=16)
    result = imp(
        model, rounds=2, rate=0.1, train_loader=train, eval_loader=train, epochs_per_round=1, progress=False
    )
    assert [record.kept for record in result.rounds] == [8, 8, 8]
    assert int(model.fc1.weight_mask.sum()) == 8


def test_imp_lr_rewinding_replays_the_schedule_with_a_fresh_optimizer(flat_digits):
    train, test = flat_digits
    created = []

    def factory(model):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        created.append((optimizer, {id(p) for p in model.parameters()}))
        return optimizer

    result = imp(
        small_mlp(),
        rounds=2,
        train_loader=train,
        eval_loader=test,
        epochs_per_round=3,
        rewind="lr",
        optimizer_factory=factory,
        scheduler_factory=halving,
        progress=False,
    )
    # StepLR halves after every epoch; the record holds the rate after the epoch's scheduler step.
    for record in result.rounds:
        assert [epoch["lr"] for epoch in record.history["epochs"]] == [0.05, 0.025, 0.0125]
        assert record.history["steps"] == 3 * STEPS_PER_EPOCH
    assert len(created) == 3
    assert len({id(optimizer) for optimizer, _ in created}) == 3
    for optimizer, params in created:
        assert {id(p) for group in optimizer.param_groups for p in group["params"]} == params


def test_imp_finetune_trains_at_the_final_constant_rate(flat_digits):
    train, test = flat_digits
    schedulers = []

    def scheduler_factory(optimizer):
        schedulers.append(optimizer)
        return halving(optimizer)

    result = imp(
        small_mlp(),
        rounds=2,
        train_loader=train,
        eval_loader=test,
        epochs_per_round=3,
        rewind="finetune",
        optimizer_factory=sgd(0.1),
        scheduler_factory=scheduler_factory,
        progress=False,
    )
    assert [epoch["lr"] for epoch in result.rounds[0].history["epochs"]] == [0.05, 0.025, 0.0125]
    for record in result.rounds[1:]:
        assert [epoch["lr"] for epoch in record.history["epochs"]] == [0.0125] * 3
    assert len(schedulers) == 1  # only the dense training has a schedule


class SnapshotAtStep(Callback):
    """Snapshot after global step ``step`` of the first fit() it sees (round 0's dense training)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.state = None

    def on_batch_end(self, model, step, loss):
        if self.state is None and step == self.step:
            self.state = snapshot(model)


def test_imp_weight_rewinding_resets_survivors_and_buffers(flat_digits):
    train, test = flat_digits
    rewind_step = 5
    watcher = SnapshotAtStep(rewind_step)
    at_retraining = []

    def factory(model):
        at_retraining.append(snapshot(model))
        return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    result = imp(
        bn_mlp(),
        rounds=3,
        train_loader=train,
        eval_loader=test,
        epochs_per_round=3,
        rewind="weights",
        rewind_step=rewind_step,
        optimizer_factory=factory,
        fit_options={"callbacks": [watcher]},
        progress=False,
    )
    assert watcher.state is not None
    assert len(at_retraining) == 4
    for r, state in enumerate(at_retraining[1:], start=1):
        mask = state["fc1.weight_mask"]
        assert int(mask.sum()) == result.rounds[r].kept
        assert torch.equal(state["fc1.weight_orig"], watcher.state["fc1.weight"] * mask)
        for name in ("fc1.bias", "bn.weight", "bn.running_mean", "bn.running_var", "fc2.weight"):
            assert torch.equal(state[name], watcher.state[name]), f"round {r}: {name} not rewound"
        assert result.rounds[r].history["steps"] == 3 * STEPS_PER_EPOCH - rewind_step


def test_imp_weight_rewinding_resumes_the_schedule_at_the_rewind_epoch(flat_digits):
    train, test = flat_digits
    result = imp(
        small_mlp(),
        rounds=1,
        train_loader=train,
        eval_loader=test,
        epochs_per_round=3,
        rewind="weights",
        rewind_epoch=1,
        optimizer_factory=sgd(0.1),
        scheduler_factory=halving,
        progress=False,
    )
    assert [epoch["lr"] for epoch in result.rounds[1].history["epochs"]] == [0.025, 0.0125]
    assert result.rounds[1].history["steps"] == 2 * STEPS_PER_EPOCH


def test_iterative_taylor_scores_come_from_the_fine_tuning_batches(image_digits, monkeypatch):
    train, test = image_digits
    model = small_cnn()
    roots = ("conv1", "conv2", "fc1", "fc2")
    dense_channels = sum(model.get_submodule(name).weight.shape[0] for name in roots)
    training_forwards = []
    model.register_forward_hook(
        lambda module, args, output: (
            training_forwards.append(1) if module.training and torch.is_grad_enabled() else None
        )
    )

    def no_extra_pass(*args, **kwargs):
        raise AssertionError("iterative must not score in a separate pass")

    monkeypatch.setattr(Taylor, "accumulate_over", no_extra_pass)
    batches_at_planning = []
    real_plan_structured = iterative_schedule.plan_structured

    def spy_plan(model, amount, example_input=None, *, criterion, **options):
        batches_at_planning.append(criterion.num_batches)
        return real_plan_structured(model, amount, example_input, criterion=criterion, **options)

    monkeypatch.setattr(iterative_schedule, "plan_structured", spy_plan)
    channels = []
    result = iterative(
        model,
        "taylor",
        train_loader=train,
        eval_loader=test,
        flops_target=0.6,
        channels_per_round=20,
        fine_tune_steps=3,
        optimizer_factory=sgd(0.01),
        callback=lambda record, m: channels.append(sum(m.get_submodule(n).weight.shape[0] for n in roots)),
        progress=False,
    )
    rounds = len(result.rounds)
    assert len(training_forwards) == 3 * rounds  # warm-up + one fine-tune per round, nothing else
    assert batches_at_planning == [3] * rounds  # the probe plan of round 0, then one plan per round
    assert channels == [dense_channels - 20 * r for r in range(rounds)]
    assert [record.kept for record in result.rounds] == channels
    flops = [record.flops for record in result.rounds]
    assert all(after < before for before, after in itertools.pairwise(flops))
    assert flops[-1] <= 0.6 * flops[0] < flops[-2]
    assert result.notes["stop_reason"] == "flops_target"


def test_iterative_step_amount_and_channel_target(image_digits):
    train, test = image_digits
    model = small_cnn()
    result = iterative(
        model,
        "l1_filter",
        train_loader=train,
        eval_loader=test,
        channels_target=0.5,
        step_amount=0.3,
        fine_tune_steps=1,
        progress=False,
    )
    # 226 channels; each round removes round(0.3 * current), the last one only down to floor(0.5 * 226) = 113.
    expected = [226]
    while expected[-1] > 113:
        expected.append(max(113, expected[-1] - half_up(0.3 * expected[-1])))
    assert expected == [226, 158, 113]
    assert [record.kept for record in result.rounds] == expected
    assert result.notes["stop_reason"] == "channels_target"


def test_cascade_masks_reach_each_keep_ratio(flat_digits):
    train, test = flat_digits
    kept = []
    result = cascade(
        small_mlp(),
        "magnitude_global",
        [0.7, 0.4, 0.2],
        train_loader=train,
        eval_loader=test,
        epochs=1,
        retrain_at=[1],
        optimizer_factory=sgd(0.05),
        callback=lambda record, model: kept.append(surviving(model)),
        progress=False,
    )
    # kept = 1920 - round_half_up((1 - keep) * 1920); round 0 has no mask yet.
    assert kept[1:] == [1344, 768, 384]
    assert [record.kept for record in result.rounds[1:]] == [1344, 768, 384]
    assert [record.history is not None for record in result.rounds] == [False, False, True, False]


def test_cascade_removed_channels_reach_absolute_keep_ratios(image_digits):
    train, test = image_digits
    model = small_cnn()
    roots = ("conv1", "conv2", "fc1", "fc2")
    result = cascade(
        model,
        "l1_filter",
        [0.75, 0.5],
        train_loader=train,
        eval_loader=test,
        epochs=1,
        method_options={"scope": "global"},
        progress=False,
    )
    # 226 channels: round_half_up(0.25 * 226) = 57 go, leaving 169; then 0.5 * 226 = 113 of them stay.
    assert [record.kept for record in result.rounds[1:]] == [169, 113]
    assert sum(model.get_submodule(name).weight.shape[0] for name in roots) == 113
    assert [record.prunable for record in result.rounds[1:]] == [226, 226]


def test_result_json_round_trip_and_plot(image_digits, tmp_path):
    train, test = image_digits
    result = one_shot(
        small_cnn(), "l1_filter", 0.5, train_loader=train, eval_loader=test, epochs=1, progress=False
    )
    assert result.final_model is not None
    assert result.rounds[1].flops < result.rounds[0].flops
    path = tmp_path / "result.json"
    text = result.to_json(path)
    again = ScheduleResult.from_json(path)
    assert again == result  # final_model is left out of the comparison
    assert again.final_model is None
    written = json.loads(text)
    assert written.pop("checksum")  # verified by from_json
    assert ScheduleResult.from_json(text).to_dict() == written
    with pytest.raises(ValueError, match="not a pyprune schedule result"):
        ScheduleResult.from_json('{"format": "pyprune-plan/1"}')

    fig = result.plot(path=tmp_path / "result.png")
    assert len(fig.axes) == 2
    assert (tmp_path / "result.png").stat().st_size > 0
    by_density, by_flops = fig.axes
    assert by_density.get_xscale() == "log"
    assert list(by_density.lines[0].get_xdata()) == [record.density for record in result.rounds]
    assert list(by_flops.lines[0].get_xdata()) == [record.flops for record in result.rounds]
    result.plot(axes=fig.axes, label="again")
    assert len(by_density.lines) == 2


def test_progress_prints_one_line_per_round(flat_digits, capsys):
    train, test = flat_digits
    one_shot(small_mlp(), "magnitude", 0.5, train_loader=train, eval_loader=test, epochs=0)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        r"round 0/1 \(dense\): density 9\d\.\d%, FLOPs [\d.]+K, acc \d+\.\d% \(\d+\.\d s\)", lines[0]
    )
    assert re.fullmatch(r"round 1/1: density \d+\.\d%, FLOPs [\d.]+K, acc \d+\.\d% \(\d+\.\d s\)", lines[1])


class Interrupt(Exception):
    pass


def interrupt_after(round_index: int):
    def callback(record, model):
        if record.round == round_index:
            raise Interrupt

    return callback


def without_seconds(history):
    """A fit history without its wall times, the one thing two identical runs do not share."""
    if history is None:
        return None
    return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in history["epochs"]]


def assert_same_run(resumed: ScheduleResult, reference: ScheduleResult) -> None:
    fields = (
        "round",
        "density",
        "keep",
        "params",
        "nonzero_params",
        "flops",
        "accuracy",
        "loss",
        "amount",
        "kept",
    )
    assert [[getattr(r, f) for f in fields] for r in resumed.rounds] == [
        [getattr(r, f) for f in fields] for r in reference.rounds
    ]
    assert [without_seconds(r.history) for r in resumed.rounds] == [
        without_seconds(r.history) for r in reference.rounds
    ]
    state, expected = resumed.final_model.state_dict(), reference.final_model.state_dict()
    assert state.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(state[name], value), name


def test_imp_resume_repeats_the_uninterrupted_run(flat_digits, tmp_path):
    train, test = flat_digits
    arguments = {
        "rounds": 4,
        "train_loader": train,
        "eval_loader": test,
        "epochs_per_round": 1,
        "rewind": "weights",
        "rewind_step": 3,
        "optimizer_factory": sgd(0.05),
        "seed": 7,
        "progress": False,
    }
    reference = imp(small_mlp(seed=1), **arguments)
    with pytest.raises(Interrupt):
        imp(small_mlp(seed=1), checkpoint_dir=tmp_path, callback=interrupt_after(2), **arguments)
    assert set(os.listdir(tmp_path)) == {
        "result.json",
        *[f"round_{k:03d}{suffix}" for k in range(3) for suffix in (".pt", "_state.pt")],
    }
    # Another initialisation on purpose: everything must come from the checkpoint.
    resumed = imp(small_mlp(seed=2), checkpoint_dir=tmp_path, resume=True, **arguments)
    assert_same_run(resumed, reference)
    assert ScheduleResult.from_json(tmp_path / "result.json") == resumed


def test_iterative_taylor_resume_repeats_the_uninterrupted_run(image_digits, tmp_path):
    train, test = image_digits
    arguments = {
        "train_loader": train,
        "eval_loader": test,
        "flops_target": 0.6,
        "channels_per_round": 25,
        "fine_tune_steps": 3,
        "optimizer_factory": sgd(0.01),
        "seed": 3,
        "progress": False,
    }
    reference = iterative(small_cnn(), "taylor", **arguments)
    assert len(reference.rounds) >= 4
    with pytest.raises(Interrupt):
        iterative(small_cnn(), "taylor", checkpoint_dir=tmp_path, callback=interrupt_after(1), **arguments)
    resumed = iterative(small_cnn(seed=5), "taylor", checkpoint_dir=tmp_path, resume=True, **arguments)
    assert_same_run(resumed, reference)
    assert resumed.notes["stop_reason"] == reference.notes["stop_reason"] == "flops_target"


def test_resume_checks(flat_digits, tmp_path):
    train, test = flat_digits
    arguments = {"train_loader": train, "eval_loader": test, "epochs": 0, "progress": False}
    one_shot(small_mlp(), "magnitude", 0.5, checkpoint_dir=tmp_path, **arguments)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        one_shot(small_mlp(), "magnitude", 0.5, checkpoint_dir=tmp_path, **arguments)
    with pytest.raises(ValueError, match=r"resume: .*amount: 0\.5 there, 0\.6 now"):
        one_shot(small_mlp(), "magnitude", 0.6, checkpoint_dir=tmp_path, resume=True, **arguments)
    with pytest.raises(ValueError, match=r"resume: .*one_shot\('magnitude'\) run, not cascade"):
        cascade(
            small_mlp(),
            "magnitude",
            [0.5],
            train_loader=train,
            eval_loader=test,
            epochs=1,
            checkpoint_dir=tmp_path,
            resume=True,
            progress=False,
        )
    pruned = small_mlp()
    one_shot(pruned, "magnitude", 0.5, **arguments)
    with pytest.raises(ValueError, match="model: resuming"):
        one_shot(pruned, "magnitude", 0.5, checkpoint_dir=tmp_path, resume=True, **arguments)
    finished = one_shot(
        small_mlp(seed=3), "magnitude", 0.5, checkpoint_dir=tmp_path, resume=True, **arguments
    )
    assert len(finished.rounds) == 2
    assert surviving(finished.final_model) == PRUNABLE_MLP // 2


def test_failed_planning_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = models.mlp([4, 2, 2])
    before = snapshot(model)
    loader = torch.utils.data.DataLoader(data.synthetic_images(8, (4,), 2), batch_size=8)
    # round(0.99 * 8) = 8: every weight of fc1 would go, which the planner refuses.
    with pytest.raises(ValueError, match="would remove every weight"):
        one_shot(model, "magnitude", 0.99, train_loader=loader, eval_loader=loader, epochs=1, progress=False)
    assert snapshot(model).keys() == before.keys()
    assert all(torch.equal(snapshot(model)[name], value) for name, value in before.items())
    assert not getattr(model, "pyprune_history", None)


@pytest.mark.parametrize(
    ("schedule", "arguments", "argument"),
    [
        (imp, {"rate": 0.0}, "rate"),
        (imp, {"rate": 1.0}, "rate"),
        (imp, {"rounds": 0}, "rounds"),
        (imp, {"rewind": "epochs"}, "rewind"),
        (imp, {"rewind": "weights", "rewind_step": STEPS_PER_EPOCH}, "rewind_step"),
        (imp, {"rewind": "weights", "rewind_epoch": 1}, "rewind_epoch"),
        (imp, {"rewind": "lr", "rewind_step": 1}, "rewind_step"),
        (imp, {"rewind": "weights", "train_dense": False}, "rewind"),
        (imp, {"rewind": "finetune", "train_dense": False}, "finetune_lr"),
        (
            imp,
            {"rewind": "weights", "epochs_per_round": 2, "rewind_step": 3, "scheduler_factory": halving},
            "rewind_step",
        ),
        (imp, {"method": "l1_filter"}, "method"),
        (imp, {"seed": -1}, "seed"),
        (imp, {"resume": True}, "resume"),
        (imp, {"fit_options": {"optimizer": None}}, "fit_options"),
        (iterative, {"method": "magnitude", "flops_target": 0.5}, "method"),
        (iterative, {"method": "l1_filter"}, "flops_target"),
        (iterative, {"method": "l1_filter", "flops_target": 1.0}, "flops_target"),
        (
            iterative,
            {"method": "l1_filter", "flops_target": 0.5, "step_amount": 0.1, "channels_per_round": 2},
            "channels_per_round",
        ),
        (iterative, {"method": "unit_l2", "flops_target": 0.5}, "method"),
        (
            iterative,
            {"method": "taylor", "flops_target": 0.5, "method_options": {"mode": "mask"}},
            "method_options",
        ),
        (cascade, {"keep_ratios": [0.5, 0.5]}, "keep_ratios"),
        (cascade, {"keep_ratios": [1.2, 0.5]}, "keep_ratios"),
        (cascade, {"keep_ratios": [0.5, 0.0]}, "keep_ratios"),
        (cascade, {"keep_ratios": []}, "keep_ratios"),
        (cascade, {"keep_ratios": [0.5], "retrain_at": [1]}, "retrain_at"),
        (one_shot, {"epochs": -1}, "epochs"),
        (one_shot, {"method": "no_such_method"}, "method"),
    ],
)
def test_bad_arguments_name_the_argument(flat_digits, image_digits, schedule, arguments, argument):
    train, test = image_digits if schedule is iterative else flat_digits
    common = {"train_loader": train, "eval_loader": test, "progress": False}
    if schedule is imp:
        call = {"rounds": 1, "epochs_per_round": 1, **common, **arguments}
        model = small_mlp()
    elif schedule is iterative:
        call = {**common, **arguments}
        model = small_cnn()
    elif schedule is cascade:
        call = {"method": "magnitude", "keep_ratios": [0.5], "epochs": 1, **common, **arguments}
        model = small_mlp()
    else:
        call = {"method": "magnitude", "amount": 0.5, "epochs": 1, **common, **arguments}
        model = small_mlp()
    with pytest.raises(ValueError, match=f"^{argument}: "):
        schedule(model, **call)


def test_iterative_refuses_an_unreachable_flops_target_before_training(image_digits, monkeypatch):
    train_loader, test_loader = image_digits
    model = small_cnn()
    x = next(iter(test_loader))[0][:1]
    # The narrowest model the planner allows: one channel per group, the output layer untouched.
    narrowest = copy.deepcopy(model)
    plan_structured(narrowest, 1 - 1e-9, x, scope="layer").apply(narrowest)
    floor = count(narrowest, x).flops / count(model, x).flops
    trained = []
    monkeypatch.setattr(Trainer, "run", lambda *a, **k: trained.append(1))
    with pytest.raises(ValueError, match="flops_target") as error:
        iterative(
            model,
            "l1_filter",
            flops_target=floor / 2,
            example_input=x,
            train_loader=train_loader,
            eval_loader=test_loader,
            progress=False,
        )
    assert f"{floor:.3f}" in str(error.value)
    assert not trained


@pytest.mark.parametrize("schedule", [one_shot, iterative, imp, cascade])
def test_every_schedule_takes_the_shared_keywords_with_the_options_defaults(schedule):
    """The signatures spell the shared keywords out; ScheduleOptions bundles them by name, so they must agree."""
    parameters = inspect.signature(schedule).parameters
    for option in dataclasses.fields(ScheduleOptions):
        if schedule is imp and option.name == "data":  # imp scores on train_loader
            assert "data" not in parameters
            continue
        parameter = parameters[option.name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, option.name
        default = inspect.Parameter.empty if option.default is dataclasses.MISSING else option.default
        assert parameter.default == default, option.name
