"""One retraining inside a schedule: a fresh optimiser (and scheduler) from the user's factories, then :func:`fit`.

Every retraining starts a fresh optimiser, so no momentum is carried across a pruning step (structured pruning also
replaces the parameters an old optimiser would hold).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pyprune.training.fit import Callback, default_optimizer, fit
from pyprune.training.schedules.config import OptimizerFactory, ScheduleOptions, is_real


@dataclass
class Trainer:
    """Retrains with the schedule's ``options``.

    Attributes:
        options: the shared keywords (loader, loss, factories, ``scheduler_step``, ``fit_options``, ``progress``).
        default_optimizer: the optimiser factory when ``options.optimizer_factory`` is None.
    """

    options: ScheduleOptions
    default_optimizer: OptimizerFactory = default_optimizer

    def run(
        self,
        model: nn.Module,
        epochs: int,
        *,
        max_steps: int | None = None,
        lrs: float | Sequence[float] | None = None,
        use_scheduler: bool = True,
        skip: int = 0,
        callbacks: Sequence[Callback] = (),
    ) -> tuple[dict[str, Any], float, torch.optim.Optimizer]:
        """Train; returns the history dict, the wall time in seconds and the optimiser.

        Args:
            epochs: passes over the loader (an upper bound when ``max_steps`` is given).
            max_steps: optimiser steps to stop after.
            lrs: constant learning rate(s) to set on the optimiser's groups (one number for all, or one each).
            use_scheduler: build the scheduler from its factory.
            skip: scheduler steps to take before training (the rewind point of weight rewinding).
            callbacks: :class:`~pyprune.train.Callback` objects, after those of ``fit_options``.
        """
        options = self.options
        start = time.perf_counter()
        optimizer = (options.optimizer_factory or self.default_optimizer)(model)
        if lrs is not None:
            groups = optimizer.param_groups
            values = [float(lrs)] * len(groups) if is_real(lrs) else list(lrs)
            for group, lr in zip(groups, values, strict=True):
                group["lr"] = lr
        scheduler = None
        if use_scheduler and options.scheduler_factory is not None:
            scheduler = options.scheduler_factory(optimizer)
            _advance(scheduler, skip)
        fit_options = dict(options.fit_options or {})
        history = fit(
            model,
            options.train_loader,
            epochs,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_fn=options.loss_fn,
            max_steps=max_steps,
            scheduler_step=options.scheduler_step,
            progress=options.progress,
            callbacks=[*fit_options.pop("callbacks", ()), *callbacks],
            **fit_options,
        )
        return history.to_dict(), time.perf_counter() - start, optimizer


def _advance(scheduler: Any, steps: int) -> None:
    """Step ``scheduler`` ``steps`` times without training, to start a schedule part-way."""
    if not steps:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ValueError(
            "scheduler_factory: a ReduceLROnPlateau schedule depends on past losses and cannot be replayed from "
            "a rewind point; use rewind_step=0 or a fixed schedule"
        )
    with warnings.catch_warnings():
        # Stepping before any optimizer.step() is the point here, not the mistake PyTorch warns about.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        for _ in range(steps):
            scheduler.step()
