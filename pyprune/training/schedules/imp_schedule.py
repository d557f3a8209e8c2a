"""Iterative magnitude pruning (IMP) with learning-rate rewinding, weight rewinding or fine-tuning.

Frankle & Carbin (2019), "The lottery ticket hypothesis", prune a fixed fraction of the surviving weights per round
and rewind the survivors to their early values; Renda, Frankle & Carbin (2020), "Comparing rewinding and
fine-tuning in neural network pruning", rewind the learning-rate schedule instead and compare both with
fine-tuning at the final rate.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pyprune.pruning.layers import select_layers
from pyprune.pruning.methods import get_method
from pyprune.training.fit import Callback, enforce_masks, snapshot
from pyprune.training.schedules.config import (
    OptimizerFactory,
    RoundCallback,
    ScheduleOptions,
    SchedulerFactory,
    check_fraction,
    check_int,
    is_real,
)
from pyprune.training.schedules.results import ScheduleResult
from pyprune.training.schedules.session import Session
from pyprune.training.schedules.trainer import Trainer

REWIND_MODES = ("lr", "weights", "finetune")


def imp(
    model: nn.Module,
    *,
    rounds: int,
    train_loader: Iterable[Any],
    eval_loader: Iterable[Any],
    epochs_per_round: int,
    rate: float = 0.2,
    rewind: str = "lr",
    rewind_epoch: int | None = None,
    rewind_step: int | None = None,
    train_dense: bool = True,
    finetune_lr: float | None = None,
    method: str = "magnitude_global",
    example_input: torch.Tensor | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    optimizer_factory: OptimizerFactory | None = None,
    scheduler_factory: SchedulerFactory | None = None,
    scheduler_step: str = "epoch",
    method_options: Mapping[str, Any] | None = None,
    fit_options: Mapping[str, Any] | None = None,
    seed: int | None = 0,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callback: RoundCallback | None = None,
    progress: bool = True,
) -> ScheduleResult:
    """Iterative magnitude pruning with learning-rate rewinding, weight rewinding or fine-tuning (Renda et al.).

    Round 0 trains the dense model for ``epochs_per_round`` epochs (T) with a fresh optimiser and the
    original schedule (skipped with ``train_dense=False``). Each round ``r >= 1`` then

    1. prunes exactly ``floor(rate · M)`` of the M surviving prunable weights, ranked globally by ``method``
       (already masked weights stay masked: the planner gets ``amount = (masked + floor(rate · M)) / total``);
       when ``rate · M < 1`` nothing is pruned (the floor is 0), never everything;
    2. retrains, always with a fresh optimiser from ``optimizer_factory`` (no momentum carried over), and
       :func:`~pyprune.train.fit` keeps pruned weights exactly zero:

       * ``"lr"``: from the current weights with the original schedule replayed in full (LRR with t = T);
       * ``"weights"``: surviving weights, biases and buffers (BatchNorm statistics) reset to the snapshot
         taken after ``rewind_step`` steps of round 0's training (masks kept), then the remaining
         ``T · S - rewind_step`` steps (S = ``len(train_loader)``) with the schedule advanced to the rewind
         point, as in the original training;
       * ``"finetune"``: from the current weights for T epochs at the constant final learning rate of round 0
         (the control of Renda et al.).

    So after round r, ``kept`` (surviving prunable weights) is ``M_r = M_{r-1} - floor(rate · M_{r-1})``,
    ``(1 - rate)^r`` of the total up to the flooring.

    Args:
        model: the model (untrained, or trained with ``train_dense=False``); pruned in place with masks.
        rounds: pruning rounds, >= 1.
        epochs_per_round: T, epochs of the initial training and of every retraining, >= 1.
        rate: fraction of the surviving weights pruned per round, in (0, 1); Renda et al.: 0.2.
        rewind: ``"lr"``, ``"weights"`` or ``"finetune"``.
        rewind_epoch: for ``"weights"``: rewind to the end of this epoch of round 0's training (0: the initial
            weights, the lottery-ticket setting), i.e. ``rewind_step = rewind_epoch · S``.
        rewind_step: the same in optimiser steps; default 0. With an epoch-stepped scheduler it must be a
            multiple of S.
        train_dense: train in round 0; False takes the model as trained (not with ``rewind="weights"``).
        finetune_lr: the learning rate of ``"finetune"``; default round 0's final one (required without it).
        method: an unstructured registered method, planned with ``scope="global"`` unless ``method_options``
            says otherwise; ``method_options`` also selects the layers (``layers``, ``ignored_layers``; default
            every Linear/ConvNd weight but the output layer's, never biases or BatchNorm).
        optimizer_factory: default :func:`pyprune.train.default_optimizer` (SGD, lr 0.01, momentum 0.9).
        train_loader, eval_loader, example_input, loss_fn, scheduler_factory, scheduler_step, fit_options, seed,
        checkpoint_dir, resume, callback, progress: as in :class:`~pyprune.training.schedules.ScheduleOptions`.

    Raises:
        ValueError: ``rate`` outside (0, 1), ``rounds`` < 1, an unknown ``rewind``, a structured method, a
            rewind point beyond round 0's training or not at an epoch boundary with an epoch-stepped scheduler,
            rewind arguments without ``rewind="weights"``, other bad arguments.
    """
    check_fraction(rate, "rate")
    check_int(rounds, "rounds", 1)
    check_int(epochs_per_round, "epochs_per_round", 1)
    if rewind not in REWIND_MODES:
        raise ValueError(f"rewind: expected one of {REWIND_MODES}, got {rewind!r}")
    if get_method(method).structured:
        raise ValueError(f"method: imp prunes individual weights; {method!r} is a structured method")
    if rewind != "weights":
        for value, name in ((rewind_epoch, "rewind_epoch"), (rewind_step, "rewind_step")):
            if value is not None:
                raise ValueError(f"{name}: only used with rewind='weights', got rewind={rewind!r}")
    if finetune_lr is not None and not (
        is_real(finetune_lr) and math.isfinite(finetune_lr) and finetune_lr > 0
    ):
        raise ValueError(f"finetune_lr: expected None or a finite number > 0, got {finetune_lr!r}")
    if rewind == "finetune" and not train_dense and finetune_lr is None:
        raise ValueError(
            "finetune_lr: needed with rewind='finetune' and train_dense=False (no final rate to reuse)"
        )
    steps_per_epoch = rewind_at = 0
    if rewind == "weights":
        if not train_dense:
            raise ValueError(
                "rewind: 'weights' rewinds to a snapshot of round 0's training; it needs train_dense=True"
            )
        steps_per_epoch = _steps_per_epoch(train_loader)
        rewind_at = _rewind_point(
            rewind_epoch, rewind_step, steps_per_epoch, epochs_per_round, scheduler_step, scheduler_factory
        )
    planner_options = dict(method_options or {})
    planner_options.setdefault("scope", "global")
    selected = select_layers(model, planner_options.get("layers"), planner_options.get("ignored_layers"))
    names = [name for name, _ in selected]
    # imp scores on train_loader: it has no data keyword.
    shared = ScheduleOptions.from_arguments({**locals(), "data": None})
    session = Session(
        "imp",
        method,
        {
            "rounds": rounds,
            "epochs_per_round": epochs_per_round,
            "rate": rate,
            "rewind": rewind,
            "rewind_step": rewind_at,
            "train_dense": train_dense,
            "finetune_lr": finetune_lr,
        },
        model,
        shared,
        total=rounds,
    )
    trainer = Trainer(shared)
    modules = [model.get_submodule(name) for name in names]
    total = sum(module.weight.numel() for module in modules)

    if session.next_round == 0:
        session.reseed(0)
        rewind_state: dict[str, torch.Tensor] = {}
        history, seconds = None, 0.0
        if train_dense:
            snap = _SnapshotAt(rewind_at)
            if rewind == "weights" and rewind_at == 0:
                snap.state = snapshot(model)
            history, seconds, optimizer = trainer.run(
                model, epochs_per_round, callbacks=[snap] if rewind == "weights" and rewind_at else []
            )
            rewind_state = snap.state or {}
            session.result.notes["final_lrs"] = [float(group["lr"]) for group in optimizer.param_groups]
        if session.record(
            model,
            train_seconds=seconds,
            prune_seconds=0.0,
            kept=_surviving(modules),
            prunable=total,
            history=history,
            state={"rewind": rewind_state},
        ):
            return session.finish(model, "callback")
    else:
        rewind_state = session.saved_state(0)["rewind"]

    for r in range(session.next_round, rounds + 1):
        session.reseed(r)
        start = time.perf_counter()
        remaining = _surviving(modules)
        removing = math.floor(rate * remaining)
        amount = (total - remaining + removing) / total
        pruning = session.plan(model, method, amount, planner_options)
        model = session.apply(model, pruning)
        prune_seconds = time.perf_counter() - start
        if rewind == "lr":
            history, train_seconds, _ = trainer.run(model, epochs_per_round)
        elif rewind == "weights":
            _rewind(model, rewind_state)
            steps = epochs_per_round * steps_per_epoch - rewind_at
            history, train_seconds, _ = trainer.run(
                model,
                math.ceil(steps / steps_per_epoch),
                max_steps=steps,
                skip=rewind_at // steps_per_epoch if scheduler_step == "epoch" else rewind_at,
            )
        else:
            lrs = session.result.notes.get("final_lrs") if finetune_lr is None else finetune_lr
            history, train_seconds, _ = trainer.run(model, epochs_per_round, lrs=lrs, use_scheduler=False)
        if session.record(
            model,
            train_seconds=train_seconds,
            prune_seconds=prune_seconds,
            amount=amount,
            kept=_surviving(modules),
            prunable=total,
            history=history,
            notes={"requested": removing},
        ):
            return session.finish(model, "callback")
    return session.finish(model, "completed")


class _SnapshotAt(Callback):
    """Takes :func:`pyprune.train.snapshot` of the model after global step ``step`` of a :func:`fit` run."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.state: dict[str, torch.Tensor] | None = None

    def on_batch_end(self, model: nn.Module, step: int, loss: float) -> None:
        if step == self.step:
            self.state = snapshot(model)


def _surviving(modules: Sequence[nn.Module]) -> int:
    """Weights of ``modules`` not masked by a ``torch.nn.utils.prune`` mask."""
    total = 0
    for module in modules:
        mask = getattr(module, "weight_mask", None)
        total += int(mask.count_nonzero()) if mask is not None else module.weight.numel()
    return total


def _rewind(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (a dense or masked ``state_dict`` snapshot) into ``model``, keeping its current masks.

    A masked tensor's snapshot goes into its ``*_orig`` parameter, which is then multiplied by the mask, so the
    surviving weights take their snapshot values and the pruned ones stay zero.
    """
    current = model.state_dict()
    masks = {
        name for name in current if name.endswith("_mask") and f"{name[: -len('_mask')]}_orig" in current
    }
    with torch.no_grad():
        for name, value in state.items():
            if name in masks:  # rewinding resets weights, not the pruning
                continue
            target = f"{name}_orig" if f"{name}_orig" in current else name
            current[target].copy_(value)
    enforce_masks(model)


def _rewind_point(
    rewind_epoch: int | None,
    rewind_step: int | None,
    steps_per_epoch: int,
    epochs: int,
    scheduler_step: str,
    scheduler_factory: SchedulerFactory | None,
) -> int:
    """The rewind point in optimiser steps, validated against round 0's ``epochs · steps_per_epoch`` steps."""
    if rewind_epoch is not None and rewind_step is not None:
        raise ValueError("rewind_step: give rewind_epoch or rewind_step, not both")
    name = "rewind_epoch" if rewind_epoch is not None else "rewind_step"
    value = rewind_epoch if rewind_epoch is not None else (rewind_step or 0)
    check_int(value, name, 0)
    step = value * steps_per_epoch if rewind_epoch is not None else value
    total = epochs * steps_per_epoch
    if step >= total:
        raise ValueError(
            f"{name}: {value} is beyond the initial training of {epochs} epochs x {steps_per_epoch} steps "
            f"({total} steps); the rewind point must leave at least one step to retrain"
        )
    if scheduler_factory is not None and scheduler_step == "epoch" and step % steps_per_epoch:
        raise ValueError(
            f"rewind_step: {step} is not at an epoch boundary ({steps_per_epoch} steps per epoch); an epoch-stepped "
            "schedule can only be rewound to whole epochs"
        )
    return step


def _steps_per_epoch(train_loader: Iterable[Any]) -> int:
    try:
        steps = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            "train_loader: weight rewinding needs a loader with len() to place the rewind point"
        ) from None
    if steps < 1:
        raise ValueError("train_loader: expected at least one batch, got none")
    return steps
