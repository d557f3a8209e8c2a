"""One-shot pruning: prune once to ``amount``, then fine-tune."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from pyprune.pruning.methods import get_method
from pyprune.pruning.selection import check_amount
from pyprune.training.schedules.config import (
    OptimizerFactory,
    RoundCallback,
    ScheduleOptions,
    SchedulerFactory,
    check_int,
)
from pyprune.training.schedules.results import ScheduleResult
from pyprune.training.schedules.session import Session, surviving_units
from pyprune.training.schedules.trainer import Trainer


def one_shot(
    model: nn.Module,
    method: str,
    amount: float,
    *,
    train_loader: Iterable[Any],
    eval_loader: Iterable[Any],
    epochs: int,
    example_input: torch.Tensor | None = None,
    data: Iterable[Any] | None = None,
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
    """Prune once with ``method`` to ``amount``, then fine-tune for ``epochs`` epochs.

    Round 0 measures the model as given; round 1 the pruned and fine-tuned one.

    Args:
        model: the trained model; pruned in place.
        method: a registered method name (:data:`pyprune.METHODS`).
        amount: fraction in [0, 1) to remove, in the method's units (see :func:`pyprune.plan`).
        epochs: fine-tuning epochs, >= 0 (0: prune only).
        train_loader, eval_loader, example_input, data, loss_fn, optimizer_factory, scheduler_factory,
        scheduler_step, method_options, fit_options, seed, checkpoint_dir, resume, callback, progress: the keywords
        every schedule shares, described in :class:`~pyprune.training.schedules.ScheduleOptions`; seeding,
        checkpoints and resuming in :mod:`pyprune.training.schedules`.

    Raises:
        ValueError: an unknown method, a bad ``amount``, ``epochs``, ``seed``, ``scheduler_step`` or
            ``fit_options``, or a ``checkpoint_dir`` that holds another run.
    """
    get_method(method)
    check_amount(amount)
    check_int(epochs, "epochs", 0)
    shared = ScheduleOptions.from_arguments(locals())
    session = Session("one_shot", method, {"amount": amount, "epochs": epochs}, model, shared, total=1)
    trainer = Trainer(shared)
    if session.next_round == 0:
        session.reseed(0)
        if session.record(model, train_seconds=0.0, prune_seconds=0.0):
            return session.finish(model, "callback")
    if session.next_round == 1:
        session.reseed(1)
        start = time.perf_counter()
        pruning = session.plan(model, method, amount, method_options)
        model = session.apply(model, pruning)
        prune_seconds = time.perf_counter() - start
        kept, prunable = surviving_units(model, pruning, None)
        history, train_seconds = None, 0.0
        if epochs:
            history, train_seconds, _ = trainer.run(model, epochs)
        if session.record(
            model,
            train_seconds=train_seconds,
            prune_seconds=prune_seconds,
            amount=amount,
            kept=kept,
            prunable=prunable,
            history=history,
        ):
            return session.finish(model, "callback")
    return session.finish(model, "completed")
