"""Training loops: pruning masks stay exactly zero in the stored ``*_orig`` parameters, fit/evaluate against
hand-written reference loops and hand-computed numbers, schedulers, early stopping, callbacks, bad input, CPU
autocast, and a two-process gloo DistributedDataParallel run checked against the equivalent single-process run."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader, Sampler, TensorDataset

import pyprune
from pyprune import train
from pyprune.distributed import exit_rank
from pyprune.models import mlp
from pyprune.training.fit import (
    Callback,
    EarlyStopping,
    EpochRecord,
    History,
    MaskEnforcer,
    default_optimizer,
    enforce_masks,
    evaluate,
    fit,
    is_main_process,
    model_device,
    snapshot,
)

# ----------------------------------------------------------------------------------------------------------
# helpers


def blobs(n: int, *, dim: int = 4, classes: int = 3, seed: int = 0, spread: float = 0.6):
    """Gaussian blobs around ``3 * e_c``: linearly separable with high probability."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centers = 3.0 * torch.eye(classes, dim)
    x = centers[y] + spread * torch.randn(n, dim, generator=g)
    perm = torch.randperm(n, generator=g)
    return x[perm], y[perm]


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A re-iterable list of ``(inputs, targets)`` batches in order; the last one may be short."""
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def seeded(module: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    """Overwrite every parameter with seeded normal values (no global RNG involved)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return module


def small_mlp(seed: int = 0, widths=(4, 16, 3)) -> nn.Sequential:
    return seeded(mlp(list(widths)), seed)


def small_cnn(seed: int = 0) -> nn.Sequential:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    return seeded(model, seed)


def image_data(n: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tol) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=lambda m, key=key: f"{key}: {m}", **tol)


def hand_loop(model, loader, optimizer, loss_fn=F.cross_entropy, steps=None) -> None:
    """The textbook loop: zero_grad, forward, loss, backward, step (no mask handling)."""
    model.train()
    for done, (inputs, targets) in enumerate(loader, start=1):
        optimizer.zero_grad()
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
        if steps is not None and done >= steps:
            return


def pruned_pairs(model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, *_orig parameter, mask) for every torch.nn.utils.prune mask in the model."""
    found = []
    for module_name, module in model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if name.endswith("_mask"):
                base = name[: -len("_mask")]
                found.append((f"{module_name}.{base}", getattr(module, f"{base}_orig"), buffer))
    return found


class Recorder(Callback):
    def __init__(self, stop_at: int | None = None) -> None:
        self.batch_calls: list[tuple[int, float]] = []
        self.records: list[EpochRecord] = []
        self.stop_at = stop_at

    def on_batch_end(self, model, step, loss):
        self.batch_calls.append((step, loss))

    def on_epoch_end(self, model, record):
        self.records.append(record)
        return self.stop_at is not None and record.epoch >= self.stop_at


def hand_cross_entropy(logits: list[list[float]], targets: list[int]) -> list[float]:
    """Per-sample cross-entropy with plain Python math."""
    out = []
    for row, t in zip(logits, targets, strict=True):
        m = max(row)
        out.append(m + math.log(sum(math.exp(v - m) for v in row)) - row[t])
    return out


# ----------------------------------------------------------------------------------------------------------
# masks


OPTIMIZERS = {
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "adam_wd": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=1e-3),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_fit_keeps_torch_prune_masks_exactly_zero(opt_name):
    model = small_cnn(seed=1)
    torch_prune.l1_unstructured(model[0], "weight", amount=0.5)
    torch_prune.l1_unstructured(model[3], "weight", amount=0.5)
    pairs = pruned_pairs(model)
    assert len(pairs) == 2
    masks = {name: mask.clone() for name, _, mask in pairs}
    before = {name: orig.detach().clone() for name, orig, _ in pairs}
    # precondition: l1_unstructured leaves the pruned values in *_orig (the smallest, but not zero)
    for name, orig, mask in pairs:
        assert (orig[mask == 0] != 0).all(), name

    x, y = image_data(48, seed=2)
    history = fit(
        model, batches(x, y, 8), 4, optimizer=OPTIMIZERS[opt_name](model.parameters()), progress=False
    )
    assert history.steps == 24

    for name, orig, mask in pruned_pairs(model):
        torch.testing.assert_close(mask, masks[name], rtol=0, atol=0)  # masks untouched
        assert (orig.detach()[mask == 0] == 0).all(), name
        module = model[0] if name.startswith("0.") else model[3]
        with torch.no_grad():
            model(x[:1])  # recompute the effective weight
        assert (module.weight[mask == 0] == 0).all(), name
        # the kept entries did train
        assert not torch.equal(orig.detach()[mask == 1], before[name][mask == 1]), name


def test_plain_loop_without_enforcer_lets_weight_orig_drift():
    """What fit prevents: weight decay (and momentum) move the stored pruned values of a hand-written loop."""
    model = small_cnn(seed=1)
    torch_prune.l1_unstructured(model[3], "weight", amount=0.5)
    mask = model[3].weight_mask.clone()
    before = model[3].weight_orig.detach().clone()[mask == 0]
    assert (before != 0).all()
    x, y = image_data(48, seed=2)
    optimizer = OPTIMIZERS["sgd_momentum_wd"](model.parameters())
    for _ in range(4):
        hand_loop(model, batches(x, y, 8), optimizer)
    after = model[3].weight_orig.detach()[mask == 0]
    assert (after != before).all()  # drifted ...
    assert (after != 0).all()  # ... and a prune.remove would bring these values back
    # the same start trained with fit ends with exact zeros
    model2 = small_cnn(seed=1)
    torch_prune.l1_unstructured(model2[3], "weight", amount=0.5)
    fit(
        model2,
        batches(x, y, 8),
        4,
        optimizer=OPTIMIZERS["sgd_momentum_wd"](model2.parameters()),
        progress=False,
    )
    assert (model2[3].weight_orig.detach()[mask == 0] == 0).all()


def momentum_then_prune(seed: int = 3):
    """A model trained with SGD momentum, then pruned: the optimizer's momentum buffer is carried over to
    ``weight_orig`` (the same Parameter object as the old ``weight``) and is non-zero where the mask is."""
    model = small_mlp(seed)
    x, y = blobs(64, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hand_loop(model, batches(x, y, 16), optimizer)
    weight = model.fc1.weight
    torch_prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    assert model.fc1.weight_orig is weight
    mask = model.fc1.weight_mask.clone()
    buf = optimizer.state[weight]["momentum_buffer"]
    assert (buf[mask == 0] != 0).all()
    return model, optimizer, mask, (x, y)


def test_fit_masks_parameters_after_every_step_even_with_carried_over_momentum():
    model, optimizer, mask, (x, y) = momentum_then_prune()
    fit(model, batches(x, y, 16), 3, optimizer=optimizer, progress=False)
    assert (model.fc1.weight_orig.detach()[mask == 0] == 0).all()


def test_zeroing_once_is_not_enough_with_carried_over_momentum():
    """Contrast for the test above: zeroing *_orig before a plain loop still lets momentum move it."""
    model, optimizer, mask, (x, y) = momentum_then_prune()
    enforce_masks(model)
    assert (model.fc1.weight_orig.detach()[mask == 0] == 0).all()
    for _ in range(3):
        hand_loop(model, batches(x, y, 16), optimizer)
    assert (model.fc1.weight_orig.detach()[mask == 0] != 0).all()


def test_fit_masks_gradients_of_weight_orig():
    """A loss term on weight_orig itself gives it gradients where the mask is zero; fit masks them."""
    model = small_mlp(4)
    torch_prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    mask = model.fc1.weight_mask.clone()
    orig = model.fc1.weight_orig

    def loss_fn(output, targets):
        return F.cross_entropy(output, targets) + 0.1 * ((orig - 1.0) ** 2).sum()

    x, y = blobs(32, seed=4)
    fit(
        model,
        batches(x, y, 8),
        2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        loss_fn=loss_fn,
        progress=False,
    )
    assert orig.grad is not None
    assert (orig.grad[mask == 0] == 0).all()
    assert (orig.grad[mask == 1] != 0).any()
    assert (orig.detach()[mask == 0] == 0).all()


def test_fit_keeps_pyprune_plan_masks_exactly_zero():
    model = small_mlp(5, widths=(4, 16, 8, 3))
    pyprune.prune(model, "magnitude", 0.5)
    pairs = pruned_pairs(model)
    assert pairs, "pyprune.prune should have installed torch.nn.utils.prune masks"
    masks = {name: mask.clone() for name, _, mask in pairs}
    total = sum(m.numel() for m in masks.values())
    assert sum(int((m == 0).sum()) for m in masks.values()) == total // 2
    x, y = blobs(64, seed=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    history = fit(model, batches(x, y, 16), 5, optimizer=optimizer, progress=False)
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss
    for name, orig, mask in pruned_pairs(model):
        assert torch.equal(mask, masks[name])
        assert (orig.detach()[mask == 0] == 0).all(), name


def test_enforce_masks_zeroes_existing_drift_immediately():
    model = small_cnn(seed=6)
    torch_prune.l1_unstructured(model[0], "weight", amount=0.4)
    torch_prune.random_unstructured(model[3], "bias", amount=0.5)
    torch_prune.l1_unstructured(model[3], "weight", amount=0.3)
    torch_prune.l1_unstructured(model[3], "weight", amount=0.3)  # a PruningContainer: one combined mask
    before = {name: orig.detach().clone() for name, orig, _ in pruned_pairs(model)}
    for name, orig, mask in pruned_pairs(model):
        assert (orig[mask == 0] != 0).any(), name
    untouched = model[3].bias_orig  # parameters without masks are left alone
    enforcer = enforce_masks(model)
    assert isinstance(enforcer, MaskEnforcer)
    assert len(enforcer.pairs) == 3
    for name, orig, mask in pruned_pairs(model):
        assert (orig.detach()[mask == 0] == 0).all(), name
        assert torch.equal(orig.detach()[mask == 1], before[name][mask == 1]), name
    assert untouched is model[3].bias_orig

    # mask_gradients multiplies the gradients by the mask
    for _, orig, _ in pruned_pairs(model):
        orig.grad = torch.full_like(orig, 2.0)
    model[0].bias.grad = torch.ones_like(model[0].bias)
    enforcer.mask_gradients()
    for name, orig, mask in pruned_pairs(model):
        torch.testing.assert_close(orig.grad, 2.0 * mask, rtol=0, atol=0, msg=name)
    assert (model[0].bias.grad == 1).all()


def test_enforcer_without_masks_is_empty():
    model = small_mlp(0)
    before = params(model)
    assert enforce_masks(model).pairs == []
    assert_state_equal(params(model), before, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------
# fit trains, history, steps, schedulers


def test_fit_learns_a_separable_problem():
    x, y = blobs(120, seed=7)
    model = small_mlp(7)
    with torch.no_grad():
        loss_before = F.cross_entropy(model(x), y).item()
    loader = DataLoader(
        TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    history = fit(model, loader, 10, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
    assert len(history.epochs) == 10
    losses = [r.train_loss for r in history.epochs]
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        logits = model(x)
    assert F.cross_entropy(logits, y).item() < 0.5 * loss_before
    assert (logits.argmax(1) == y).float().mean().item() > 0.95
    assert history.epochs[-1].train_accuracy > 0.9
    assert model.training


def test_history_records_are_hand_computable_with_a_frozen_model():
    """lr = 0: the model does not move, so each epoch's loss/accuracy is that of the fixed model on all data."""
    x, y = blobs(50, seed=8)
    xv, yv = blobs(30, seed=9)
    model = small_mlp(8)
    with torch.no_grad():
        logits, val_logits = model(x), model(xv)
    hand = hand_cross_entropy(logits.tolist(), y.tolist())
    train_loss = sum(hand) / 50
    train_acc = (
        sum(
            int(max(range(3), key=row.__getitem__) == t)
            for row, t in zip(logits.tolist(), y.tolist(), strict=True)
        )
        / 50
    )
    val_loss = sum(hand_cross_entropy(val_logits.tolist(), yv.tolist())) / 30
    val_acc = (val_logits.argmax(1) == yv).sum().item() / 30

    recorder = Recorder()
    history = fit(
        model,
        batches(x, y, 16),  # 16, 16, 16, 2
        3,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        val_loader=batches(xv, yv, 7),
        callbacks=[recorder],
        progress=False,
    )
    assert isinstance(history, History)
    assert history.steps == 12
    assert history.stopped_early is False
    assert history.best_epoch is None
    assert [r.epoch for r in history.epochs] == [1, 2, 3]
    assert history.last is history.epochs[-1]
    for record in history.epochs:
        assert record.steps == 4
        assert record.train_loss == pytest.approx(train_loss, rel=1e-5)
        assert record.train_accuracy == pytest.approx(train_acc)
        assert record.val_loss == pytest.approx(val_loss, rel=1e-5)
        assert record.val_accuracy == pytest.approx(val_acc)
        assert record.lr == 0.0
        assert record.seconds > 0
    assert recorder.records == history.epochs
    # per-batch losses of the callback, weighted by batch size, give the epoch mean too
    sizes = [16, 16, 16, 2]
    first_epoch = [loss for _, loss in recorder.batch_calls[:4]]
    assert sum(s * l for s, l in zip(sizes, first_epoch, strict=True)) / 50 == pytest.approx(
        train_loss, rel=1e-5
    )

    as_dict = history.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["steps"] == 12
    assert len(as_dict["epochs"]) == 3
    assert set(as_dict["epochs"][0]) == {
        "epoch",
        "steps",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
    }
    assert as_dict["stopped_early"] is False
    assert as_dict["best_epoch"] is None
    assert History().last is None


def test_train_loss_is_the_sample_weighted_mean_of_batch_losses_while_training():
    x, y = blobs(50, seed=10)
    model = small_mlp(10)
    recorder = Recorder()
    history = fit(
        model,
        batches(x, y, 16),
        2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.2),
        callbacks=[recorder],
        progress=False,
    )
    sizes = [16, 16, 16, 2]
    for epoch in range(2):
        losses = [loss for _, loss in recorder.batch_calls[4 * epoch : 4 * epoch + 4]]
        expected = sum(s * l for s, l in zip(sizes, losses, strict=True)) / 50
        assert history.epochs[epoch].train_loss == pytest.approx(expected, rel=1e-6)


def test_val_loss_is_that_of_the_model_at_the_end_of_the_epoch():
    x, y = blobs(48, seed=11)
    xv, yv = blobs(20, seed=12)
    seen = []

    class Check(Callback):
        def on_epoch_end(self, model, record):
            assert model.training  # fit puts the model back in train mode after validating
            with torch.no_grad():
                seen.append((record.val_loss, F.cross_entropy(model(xv), yv).item()))

    model = small_mlp(11)
    fit(
        model,
        batches(x, y, 12),
        3,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        val_loader=batches(xv, yv, 6),
        callbacks=[Check()],
        progress=False,
    )
    assert len(seen) == 3
    for reported, expected in seen:
        assert reported == pytest.approx(expected, rel=1e-5)
    assert seen[0][0] != seen[-1][0]


def test_float_targets_give_no_training_accuracy():
    g = torch.Generator().manual_seed(13)
    x = torch.randn(32, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    model = seeded(nn.Linear(3, 1), 13)
    history = fit(
        model,
        batches(x, y, 8),
        20,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=F.mse_loss,
        progress=False,
    )
    assert all(r.train_accuracy is None for r in history.epochs)
    assert history.epochs[-1].train_loss < 0.01 * history.epochs[0].train_loss


@pytest.mark.parametrize(
    ("max_steps", "n_epochs", "last_steps"), [(7, 2, 2), (5, 1, 5), (10, 2, 5), (100, 3, 5)]
)
def test_max_steps_stops_exactly(max_steps, n_epochs, last_steps):
    x, y = blobs(50, seed=14)
    loader = batches(x, y, 10)  # 5 steps per epoch
    model = small_mlp(14)
    reference = copy.deepcopy(model)
    recorder = Recorder()
    history = fit(
        model,
        loader,
        3,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        max_steps=max_steps,
        callbacks=[recorder],
        progress=False,
    )
    total = min(max_steps, 15)
    assert history.steps == total
    assert len(history.epochs) == n_epochs
    assert history.epochs[-1].steps == last_steps
    assert [step for step, _ in recorder.batch_calls] == list(range(1, total + 1))
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    remaining = total
    while remaining:
        hand_loop(reference, loader, optimizer, steps=min(remaining, 5))
        remaining -= min(remaining, 5)
    assert_state_equal(params(model), params(reference))


def test_scheduler_stepped_per_epoch():
    x, y = blobs(30, seed=15)
    model = small_mlp(15)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    lrs_at_steps = []

    class LrAtStep(Callback):
        def on_batch_end(self, model, step, loss):
            lrs_at_steps.append(optimizer.param_groups[0]["lr"])

    history = fit(
        model,
        batches(x, y, 6),
        5,
        optimizer=optimizer,
        scheduler=scheduler,
        callbacks=[LrAtStep()],
        progress=False,
    )
    # after epoch e the schedule has been stepped e times: lr = 0.1 * 0.5 ** (e // 2)
    expected = [0.1, 0.05, 0.05, 0.025, 0.025]
    assert [r.lr for r in history.epochs] == pytest.approx(expected)
    # within epoch e (5 steps each) the lr is the one after e - 1 scheduler steps
    during = [0.1 * 0.5 ** ((e - 1) // 2) for e in range(1, 6) for _ in range(5)]
    assert lrs_at_steps == pytest.approx(during)


def test_scheduler_stepped_per_step():
    x, y = blobs(30, seed=16)
    model = small_mlp(16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    lrs_after_steps = []

    class LrAtStep(Callback):
        def on_batch_end(self, model, step, loss):
            lrs_after_steps.append(optimizer.param_groups[0]["lr"])

    history = fit(
        model,
        batches(x, y, 6),
        3,
        optimizer=optimizer,
        scheduler=scheduler,
        scheduler_step="step",
        callbacks=[LrAtStep()],
        progress=False,
    )
    # after global step k the schedule has been stepped k times: lr = 0.1 * 0.5 ** (k // 3)
    assert lrs_after_steps == pytest.approx([0.1 * 0.5 ** (k // 3) for k in range(1, 16)])
    assert [r.lr for r in history.epochs] == pytest.approx([0.05, 0.0125, 0.003125])


class RecordingPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.metrics: list[float] = []

    def step(self, metrics, *args, **kwargs):
        self.metrics.append(float(metrics))
        return super().step(metrics, *args, **kwargs)


@pytest.mark.parametrize("with_val", [True, False])
@pytest.mark.parametrize("scheduler_step", ["epoch", "step"])
def test_reduce_lr_on_plateau_gets_the_epoch_metric(with_val, scheduler_step):
    """A constant loss (no gradient) never improves: with patience 0 the lr halves every epoch after the first."""
    x, y = blobs(24, seed=17)
    model = small_mlp(17)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = RecordingPlateau(optimizer, mode="min", factor=0.5, patience=0)

    def constant_loss(output, targets):  # 2 in training, 3 in evaluate (no grad), so the two are told apart
        return (output * 0).sum() + (2.0 if output.requires_grad else 3.0)

    history = fit(
        model,
        batches(x, y, 8),
        4,
        optimizer=optimizer,
        scheduler=scheduler,
        scheduler_step=scheduler_step,
        loss_fn=constant_loss,
        val_loader=batches(x, y, 8) if with_val else None,
        progress=False,
    )
    assert len(scheduler.metrics) == 4  # once per epoch, never per step
    expected_metric = [r.val_loss if with_val else r.train_loss for r in history.epochs]
    assert scheduler.metrics == pytest.approx(expected_metric)
    assert scheduler.metrics == pytest.approx([3.0 if with_val else 2.0] * 4)
    assert [r.lr for r in history.epochs] == pytest.approx([0.1, 0.05, 0.025, 0.0125])


# ----------------------------------------------------------------------------------------------------------
# equivalence with hand-written loops


def test_one_epoch_of_fit_equals_a_hand_written_sgd_loop():
    x, y = blobs(40, seed=18)
    loader = batches(x, y, 8)
    model = small_mlp(18, widths=(4, 8, 8, 3))
    reference = copy.deepcopy(model)
    fit(model, loader, 1, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), progress=False)
    hand_loop(reference, loader, torch.optim.SGD(reference.parameters(), lr=0.05))
    assert_state_equal(params(model), params(reference))
    assert not torch.equal(
        params(model)["fc1.weight"], params(small_mlp(18, widths=(4, 8, 8, 3)))["fc1.weight"]
    )


def test_fit_default_optimizer_is_sgd_momentum():
    x, y = blobs(40, seed=19)
    loader = batches(x, y, 8)
    model = small_mlp(19)
    reference = copy.deepcopy(model)
    fit(model, loader, 2, progress=False)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=0.9)
    hand_loop(reference, loader, optimizer)
    hand_loop(reference, loader, optimizer)
    assert_state_equal(params(model), params(reference))

    opt = default_optimizer(model)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.01
    assert opt.param_groups[0]["momentum"] == 0.9
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert default_optimizer(model, lr=0.3).param_groups[0]["lr"] == 0.3


def test_pruned_fit_equals_a_plain_loop_started_from_zeroed_weight_orig():
    """Once the pruned *_orig entries are zero (and the optimizer is fresh) their gradient, decay and momentum
    are all zero, so fit must equal the plain loop started from the zeroed model."""
    x, y = blobs(48, seed=20)
    loader = batches(x, y, 12)

    def pruned():  # deepcopy cannot copy a pruned module (its weight is a non-leaf tensor)
        m = small_mlp(20, widths=(4, 12, 3))
        torch_prune.l1_unstructured(m.fc1, "weight", amount=0.5)
        torch_prune.l1_unstructured(m.fc2, "weight", amount=0.5)
        return m

    model, reference = pruned(), pruned()
    assert (model.fc1.weight_orig[model.fc1.weight_mask == 0] != 0).all()
    with torch.no_grad():
        for layer in (reference.fc1, reference.fc2):
            layer.weight_orig.mul_(layer.weight_mask)

    def make(m):
        return torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)

    fit(model, loader, 3, optimizer=make(model), progress=False)
    optimizer = make(reference)
    for _ in range(3):
        hand_loop(reference, loader, optimizer)
    assert_state_equal(params(model), params(reference))


def test_grad_clip_clips_the_global_norm():
    g = torch.Generator().manual_seed(21)
    x, y = torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)
    model = seeded(nn.Linear(3, 2), 21, scale=3.0)
    reference = copy.deepcopy(model)
    reference.zero_grad()
    F.cross_entropy(reference(x), y).backward()
    grads = [p.grad.clone() for p in reference.parameters()]
    norm = math.sqrt(sum(float((gr**2).sum()) for gr in grads))
    clip = 0.25 * norm
    coef = clip / (norm + 1e-6)
    expected = [p.detach() - 1.0 * coef * gr for p, gr in zip(reference.parameters(), grads, strict=True)]

    fit(
        model,
        [(x, y)],
        1,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        grad_clip=clip,
        progress=False,
    )
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e)
    # a limit above the norm changes nothing
    model2 = copy.deepcopy(reference)
    fit(
        model2,
        [(x, y)],
        1,
        optimizer=torch.optim.SGD(model2.parameters(), lr=1.0),
        grad_clip=2 * norm,
        progress=False,
    )
    for p, q, gr in zip(model2.parameters(), reference.parameters(), grads, strict=True):
        torch.testing.assert_close(p.detach(), q.detach() - gr)


class EpochSampler(Sampler[int]):
    def __init__(self, n: int) -> None:
        self.n = n
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n


def test_fit_sets_the_sampler_epoch():
    x, y = blobs(20, seed=22)
    sampler = EpochSampler(20)
    loader = DataLoader(TensorDataset(x, y), batch_size=5, sampler=sampler)
    fit(
        small_mlp(22),
        loader,
        3,
        optimizer=torch.optim.SGD(small_mlp(22).parameters(), lr=0.0),
        progress=False,
    )
    assert sampler.epochs == [0, 1, 2]


def test_fit_with_progress_bar_and_device_argument():
    x, y = blobs(20, seed=23)
    model = small_mlp(23)
    history = fit(model, batches(x, y, 5), 1, device="cpu", progress=True)
    assert history.steps == 4
    assert model_device(model) == torch.device("cpu")


# ----------------------------------------------------------------------------------------------------------
# evaluate


def fixed_classifier() -> tuple[nn.Linear, list[list[float]], list[int]]:
    model = nn.Linear(2, 3)
    weight = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    bias = [0.0, 0.2, -1.0]
    with torch.no_grad():
        model.weight.copy_(torch.tensor(weight))
        model.bias.copy_(torch.tensor(bias))
    xs = [[2.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 0.5], [0.5, -1.0]]
    logits = [
        [sum(w * v for w, v in zip(row, x, strict=True)) + b for row, b in zip(weight, bias, strict=True)]
        for x in xs
    ]
    return model, xs, logits


def test_evaluate_matches_hand_computed_loss_and_accuracy():
    model, xs, logits = fixed_classifier()
    targets = [0, 1, 1, 1, 0]
    predictions = []
    for row in logits:
        best = max(row)
        assert row.count(best) == 1  # no ties
        predictions.append(row.index(best))
    assert predictions == [0, 1, 2, 1, 0]  # sample 3 is wrong on purpose
    losses = hand_cross_entropy(logits, targets)
    x, y = torch.tensor(xs), torch.tensor(targets)
    loader = batches(x, y, 2)  # 2, 2, 1: the mean must be per sample, not per batch

    result = evaluate(model, loader)
    assert result["n"] == 5
    assert result["loss"] == pytest.approx(sum(losses) / 5, rel=1e-6)
    assert result["accuracy"] == pytest.approx(4 / 5)

    result = evaluate(model, loader, max_batches=2)
    assert result["n"] == 4
    assert result["loss"] == pytest.approx(sum(losses[:4]) / 4, rel=1e-6)
    assert result["accuracy"] == pytest.approx(3 / 4)

    # a DataLoader and an explicit device give the same
    same = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=3), device="cpu")
    assert same["loss"] == pytest.approx(sum(losses) / 5, rel=1e-6)


def test_evaluate_regression_targets_have_no_accuracy():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
        model.bias.fill_(0.5)
    xs = [[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]]
    ts = [0.0, 1.0, 2.0]
    predictions = [a - b + 0.5 for a, b in xs]  # -0.5, 0.5, 2.5
    mse = sum((p - t) ** 2 for p, t in zip(predictions, ts, strict=True)) / 3
    loader = batches(torch.tensor(xs), torch.tensor(ts).unsqueeze(1), 2)
    result = evaluate(model, loader, loss_fn=F.mse_loss)
    assert result["accuracy"] is None
    assert result["n"] == 3
    assert result["loss"] == pytest.approx(mse, rel=1e-6)


class Probe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return x


def test_evaluate_runs_in_eval_mode_without_grad_and_restores_flags():
    probe = Probe()
    model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.9), probe, nn.BatchNorm1d(3))
    model.train()
    model[1].eval()  # a mixed state that model.train() at the end would not restore
    flags = [m.training for m in model.modules()]
    running_mean = model[3].running_mean.clone()
    x, y = blobs(12, dim=2, seed=24)
    first = evaluate(model, batches(x, y, 4))
    second = evaluate(model, batches(x, y, 4))
    assert first == second  # dropout off, BN statistics not updated
    assert probe.seen == [(False, False)] * 6
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(model[3].running_mean, running_mean)
    # flags restored even when evaluate raises
    with pytest.raises(ValueError, match="loader"):
        evaluate(model, [x])
    assert [m.training for m in model.modules()] == flags


def test_evaluate_bad_input():
    model, xs, _ = fixed_classifier()
    with pytest.raises(ValueError, match="loader"):
        evaluate(model, [])
    loader = batches(torch.tensor(xs), torch.zeros(5, dtype=torch.long), 2)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="max_batches"):
            evaluate(model, loader, max_batches=bad)


# ----------------------------------------------------------------------------------------------------------
# early stopping


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    x, y = blobs(24, seed=25)
    model = small_mlp(25)
    stopper = EarlyStopping(patience=2)
    history = fit(
        model,
        batches(x, y, 8),
        10,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),  # nothing can improve
        val_loader=batches(x, y, 8),
        early_stopping=stopper,
        progress=False,
    )
    assert len(history.epochs) == 3
    assert history.stopped_early is True
    assert history.best_epoch == 1
    assert stopper.best_epoch == 1


def scripted_evaluate(monkeypatch, losses=None, accuracies=None):
    """Replace the evaluate that fit calls with one returning scripted validation metrics."""
    calls = {"n": 0}

    def fake(model, loader, *, loss_fn=None, device=None, **_):
        i = calls["n"]
        calls["n"] += 1
        return {
            "loss": losses[i] if losses else 1.0,
            "accuracy": accuracies[i] if accuracies else 0.5,
            "n": 1,
        }

    monkeypatch.setattr(train, "evaluate", fake)
    return calls


class Snapshots(Callback):
    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch_end(self, model, record):
        self.states[record.epoch] = params(model)


@pytest.mark.parametrize("restore_best", [True, False])
def test_early_stopping_restores_the_best_epoch(monkeypatch, restore_best):
    scripted_evaluate(monkeypatch, losses=[3.0, 1.0, 2.0, 1.5, 0.1, 0.1])
    x, y = blobs(24, seed=26)
    model = small_mlp(26)
    snaps = Snapshots()
    history = fit(
        model,
        batches(x, y, 8),
        10,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        val_loader=[("unused", "unused")],
        early_stopping=EarlyStopping(patience=2, restore_best=restore_best),
        callbacks=[snaps],
        progress=False,
    )
    assert len(history.epochs) == 4
    assert [r.val_loss for r in history.epochs] == [3.0, 1.0, 2.0, 1.5]
    assert history.stopped_early is True
    assert history.best_epoch == 2
    assert not torch.equal(snaps.states[2]["fc1.weight"], snaps.states[4]["fc1.weight"])
    assert_state_equal(params(model), snaps.states[2 if restore_best else 4], rtol=0, atol=0)


def test_early_stopping_on_accuracy_uses_max_mode(monkeypatch):
    scripted_evaluate(monkeypatch, accuracies=[0.5, 0.7, 0.6, 0.7, 0.9])
    x, y = blobs(24, seed=27)
    model = small_mlp(27)
    stopper = EarlyStopping(monitor="val_accuracy", patience=2)
    assert stopper.mode == "max"
    assert EarlyStopping().mode == "min"
    history = fit(model, batches(x, y, 8), 10, val_loader=[()], early_stopping=stopper, progress=False)
    assert len(history.epochs) == 4  # 0.7 again is no improvement
    assert history.best_epoch == 2


def test_early_stopping_min_delta(monkeypatch):
    scripted_evaluate(monkeypatch, losses=[1.0, 0.95, 0.85, 0.8, 0.78, 0.1])
    x, y = blobs(24, seed=28)
    model = small_mlp(28)
    history = fit(
        model,
        batches(x, y, 8),
        10,
        val_loader=[()],
        early_stopping=EarlyStopping(patience=2, min_delta=0.1),
        progress=False,
    )
    assert len(history.epochs) == 5
    assert history.best_epoch == 3


def test_early_stopping_on_training_loss_needs_no_val_loader():
    x, y = blobs(24, seed=29)
    model = small_mlp(29)
    history = fit(
        model,
        batches(x, y, 8),
        10,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        early_stopping=EarlyStopping(monitor="train_loss", patience=3),
        progress=False,
    )
    assert len(history.epochs) == 4
    assert history.best_epoch == 1


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy"])
def test_early_stopping_on_a_val_metric_without_val_loader(monitor):
    x, y = blobs(24, seed=30)
    model = small_mlp(30)
    before = params(model)
    recorder = Recorder()
    with pytest.raises(ValueError, match=monitor) as info:
        fit(
            model,
            batches(x, y, 8),
            3,
            early_stopping=EarlyStopping(monitor=monitor),
            callbacks=[recorder],
            progress=False,
        )
    assert "val_loader" in str(info.value)
    # raised before any training: no step taken, the model unchanged
    assert recorder.batch_calls == []
    assert_state_equal(params(model), before, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"monitor": "accuracy"}, "monitor"),
        ({"monitor": "val_acc"}, "monitor"),
        ({"patience": 0}, "patience"),
        ({"patience": 1.5}, "patience"),
        ({"min_delta": -0.1}, "min_delta"),
        ({"min_delta": float("nan")}, "min_delta"),
        ({"min_delta": float("inf")}, "min_delta"),
        ({"mode": "avg"}, "mode"),
    ],
)
def test_early_stopping_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EarlyStopping(**kwargs)


# ----------------------------------------------------------------------------------------------------------
# callbacks


def test_callback_returning_true_stops_and_every_callback_sees_every_epoch():
    x, y = blobs(30, seed=31)
    model = small_mlp(31)
    stopper, watcher = Recorder(stop_at=2), Recorder()
    history = fit(model, batches(x, y, 7), 10, callbacks=[stopper, watcher], progress=False)  # 7,7,7,7,2
    assert len(history.epochs) == 2
    assert history.stopped_early is False  # a callback stop is not early stopping
    assert [r.epoch for r in watcher.records] == [1, 2]
    assert [r.epoch for r in stopper.records] == [1, 2]
    assert history.steps == 10
    assert [s for s, _ in watcher.batch_calls] == list(range(1, 11))
    assert [s for s, _ in stopper.batch_calls] == list(range(1, 11))


def test_on_batch_end_gets_each_batch_loss():
    x, y = blobs(30, seed=32)
    model = small_mlp(32)
    with torch.no_grad():
        logits = model(x)
    hand = hand_cross_entropy(logits.tolist(), y.tolist())
    expected = [sum(hand[i : i + 7]) / len(hand[i : i + 7]) for i in range(0, 30, 7)]
    recorder = Recorder()
    fit(
        model,
        batches(x, y, 7),
        1,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        callbacks=[recorder],
        progress=False,
    )
    assert [s for s, _ in recorder.batch_calls] == [1, 2, 3, 4, 5]
    assert [loss for _, loss in recorder.batch_calls] == pytest.approx(expected, rel=1e-5)
    # the default callback methods do nothing
    assert Callback().on_epoch_end(model, recorder.records[0]) is None
    assert Callback().on_batch_end(model, 1, 0.0) is None


# ----------------------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"epochs": 0}, "epochs"),
        ({"epochs": -1}, "epochs"),
        ({"epochs": 2.0}, "epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_steps": 1.5}, "max_steps"),
        ({"scheduler_step": "batch"}, "scheduler_step"),
        ({"grad_clip": -1.0}, "grad_clip"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"grad_clip": float("nan")}, "grad_clip"),
        ({"grad_clip": float("inf")}, "grad_clip"),
    ],
)
def test_fit_bad_arguments(kwargs, name):
    x, y = blobs(16, seed=33)
    model = small_mlp(33)
    before = params(model)
    arguments = {"epochs": 1, **kwargs}
    epochs = arguments.pop("epochs")
    with pytest.raises(ValueError, match=name):
        fit(model, batches(x, y, 4), epochs, progress=False, **arguments)
    assert_state_equal(params(model), before, rtol=0, atol=0)


@pytest.mark.parametrize(
    "loader",
    [
        [torch.zeros(4, 4)],  # a tensor, not (inputs, targets)
        [(torch.zeros(4, 4),)],  # a 1-tuple
        [{"x": torch.zeros(4, 4), "y": torch.zeros(4, dtype=torch.long)}],
    ],
)
def test_fit_batches_must_be_input_target_sequences(loader):
    with pytest.raises(ValueError, match="loader"):
        fit(small_mlp(34), loader, 1, progress=False)


def test_fit_empty_loader_and_non_module():
    with pytest.raises(ValueError, match="train_loader"):
        fit(small_mlp(35), [], 1, progress=False)
    with pytest.raises(TypeError, match="model"):
        fit(lambda t: t, [(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))], 1, progress=False)


def test_fit_extra_batch_elements_are_ignored():
    x, y = blobs(16, seed=36)
    model = small_mlp(36)
    reference = copy.deepcopy(model)
    loader = [(xb, yb, torch.arange(len(yb))) for xb, yb in batches(x, y, 4)]
    fit(model, loader, 1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
    hand_loop(reference, batches(x, y, 4), torch.optim.SGD(reference.parameters(), lr=0.1))
    assert_state_equal(params(model), params(reference))


@pytest.mark.parametrize("bad_batch", [0, 2])
def test_nan_loss_raises_before_updating(bad_batch):
    x, y = blobs(24, seed=37)
    x = x.clone()
    x[bad_batch * 8 + 3, 1] = float("nan")
    loader = batches(x, y, 8)
    model = small_mlp(37)
    reference = copy.deepcopy(model)
    with pytest.raises(ValueError, match="loss") as info:
        fit(
            model,
            loader,
            2,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
            progress=False,
        )
    assert "nan" in str(info.value).lower()
    # exactly the steps before the bad batch were applied
    if bad_batch:
        hand_loop(
            reference, loader, torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9), steps=bad_batch
        )
    assert_state_equal(params(model), params(reference))
    for p in model.parameters():
        assert torch.isfinite(p).all()


# ----------------------------------------------------------------------------------------------------------
# amp on CPU, small utilities


def test_amp_on_cpu_uses_bfloat16_autocast_and_learns():
    x, y = blobs(96, seed=38)
    model = small_mlp(38)
    dtypes = set()

    def loss_fn(output, targets):
        dtypes.add(output.dtype)
        return F.cross_entropy(output.float(), targets)

    history = fit(
        model,
        batches(x, y, 16),
        8,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss_fn=loss_fn,
        amp=True,
        progress=False,
    )
    assert dtypes == {torch.bfloat16}
    assert history.epochs[-1].train_loss < 0.5 * history.epochs[0].train_loss
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean().item() > 0.9


def test_is_main_process_without_a_process_group():
    assert not dist.is_initialized()
    assert is_main_process() is True


def test_model_device():
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(nn.ReLU()) == torch.device("cpu")
    with_buffer = nn.Module()
    with_buffer.register_buffer("b", torch.zeros(1, device="meta"))
    assert model_device(with_buffer) == torch.device("meta")


def test_snapshot_is_a_detached_copy():
    model = small_mlp(39)
    torch_prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    snap = snapshot(model)
    assert set(snap) == set(model.state_dict())
    assert {"fc1.weight_orig", "fc1.weight_mask"} <= set(snap)
    assert not any(t.requires_grad for t in snap.values())
    before = snap["fc1.weight_orig"].clone()
    with torch.no_grad():
        model.fc1.weight_orig.add_(1.0)
    assert torch.equal(snap["fc1.weight_orig"], before)
    model.load_state_dict(snap)
    assert torch.equal(model.fc1.weight_orig, before)


# ----------------------------------------------------------------------------------------------------------
# DistributedDataParallel over gloo, two processes

DDP_N, DDP_BATCH, DDP_EPOCHS, DDP_LR = 48, 6, 2, 0.2


def _ddp_data() -> TensorDataset:
    return TensorDataset(*blobs(DDP_N, seed=40))


def _ddp_model() -> nn.Sequential:
    model = small_mlp(40, widths=(4, 12, 3))
    torch_prune.l1_unstructured(model.fc1, "weight", amount=0.5)
    return model


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """One rank of the DDP test (top level so that the spawned child can import it)."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    dataset = _ddp_data()
    model = DistributedDataParallel(_ddp_model())
    train_loader = DataLoader(
        dataset, batch_size=DDP_BATCH, sampler=DistributedSampler(dataset, shuffle=False)
    )
    val_loader = DataLoader(dataset, batch_size=5, sampler=DistributedSampler(dataset, shuffle=False))
    history = fit(
        model,
        train_loader,
        DDP_EPOCHS,
        optimizer=torch.optim.SGD(model.parameters(), lr=DDP_LR),
        val_loader=val_loader,
        progress=False,
    )
    metrics = evaluate(model, val_loader)
    result = {
        "history": history.to_dict(),
        "metrics": metrics,
        "main": is_main_process(),
        "state": snapshot(model),
        "shard": list(iter(train_loader.sampler)),
    }
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    exit_rank()


ROOT = Path(__file__).resolve().parents[1]
needs_dist = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def run_ranks(worker: str, world_size: int, *args: str, timeout: float = 120.0) -> None:
    """Run ``tests.test_train.<worker>(rank, world_size, *args)`` in ``world_size`` fresh Python processes and
    fail (with each failing child's stderr) unless all of them exit 0 within ``timeout`` seconds."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "OMP_NUM_THREADS": "1",
    }
    code = f"import sys; from tests.test_train import {worker}; {worker}(int(sys.argv[1]), {world_size}, *sys.argv[2:])"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(rank), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world_size)
    ]
    failures = []
    try:
        for rank, process in enumerate(processes):
            try:
                _, stderr = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                failures.append(f"rank {rank}: no exit within {timeout} s")
                continue
            if process.returncode != 0:
                failures.append(f"rank {rank}: exit code {process.returncode}\n{stderr[-4000:]}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert not failures, "\n".join(failures)


@needs_dist
def test_ddp_two_processes_match_single_process_training(tmp_path):
    run_ranks("_ddp_worker", 2, str(tmp_path / "rendezvous"), str(tmp_path))
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["main"] for r in results] == [True, False]
    # DistributedSampler(shuffle=False): rank r sees r, r + 2, r + 4, ...
    assert results[0]["shard"] == list(range(0, DDP_N, 2))
    assert results[1]["shard"] == list(range(1, DDP_N, 2))

    # single process: global step k averages rank 0's batch k and rank 1's batch k, i.e. one batch of 2b
    dataset = _ddp_data()
    x, y = dataset.tensors
    steps_per_epoch = DDP_N // (2 * DDP_BATCH)
    reference_batches = []
    for k in range(steps_per_epoch):
        indices = [r + 2 * i for r in (0, 1) for i in range(k * DDP_BATCH, (k + 1) * DDP_BATCH)]
        reference_batches.append((x[indices], y[indices]))
    model = _ddp_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=DDP_LR)
    expected_history = fit(
        model, reference_batches, DDP_EPOCHS, optimizer=optimizer, val_loader=[(x, y)], progress=False
    )
    expected_state = params(model)

    for rank, result in enumerate(results):
        assert_state_equal(result["state"], expected_state, atol=1e-5, rtol=1e-5)
        assert (result["state"]["fc1.weight_orig"][result["state"]["fc1.weight_mask"] == 0] == 0).all(), rank
        epochs = result["history"]["epochs"]
        assert [e["steps"] for e in epochs] == [steps_per_epoch] * DDP_EPOCHS
        assert result["history"]["steps"] == steps_per_epoch * DDP_EPOCHS
        for got, want in zip(epochs, expected_history.epochs, strict=True):
            assert got["train_loss"] == pytest.approx(want.train_loss, rel=1e-5)
            assert got["train_accuracy"] == pytest.approx(want.train_accuracy)
            assert got["val_loss"] == pytest.approx(want.val_loss, rel=1e-5)
            assert got["val_accuracy"] == pytest.approx(want.val_accuracy)
        # evaluate all-reduces: every rank gets the metrics of the whole data set
        metrics = result["metrics"]
        assert metrics["n"] == len(dataset)
        with torch.no_grad():
            logits = model(x)
        assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
        assert metrics["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())

    # the two ranks agree with each other exactly on everything that was reduced or synchronised
    h0, h1 = (r["history"] for r in results)
    for e0, e1 in zip(h0["epochs"], h1["epochs"], strict=True):
        assert {k: v for k, v in e0.items() if k != "seconds"} == {
            k: v for k, v in e1.items() if k != "seconds"
        }
    assert results[0]["metrics"] == results[1]["metrics"]
    assert_state_equal(results[0]["state"], results[1]["state"], rtol=0, atol=0)


@needs_dist
def test_a_failing_rank_fails_the_test(tmp_path):
    """The harness above turns a rank's exception (or a hang) into a test failure that shows the child's error."""
    with pytest.raises(AssertionError, match="rank 1: exit code 1") as info:
        run_ranks("_failing_worker", 2, str(tmp_path))
    assert "ZeroDivisionError: rank 1 failed on purpose" in str(info.value)
    assert (tmp_path / "rank0.ok").exists()


def _failing_worker(rank: int, world_size: int, out_dir: str) -> None:
    if rank == 1:
        raise ZeroDivisionError("rank 1 failed on purpose")
    (Path(out_dir) / f"rank{rank}.ok").touch()
