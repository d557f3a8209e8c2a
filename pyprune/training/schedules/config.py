"""What the four schedules share: their common keywords (:class:`ScheduleOptions`) and the argument checks.

Every schedule spells its keywords out in its own signature (so ``help()``, editors and ``inspect.signature`` show
them, and an unknown keyword is a plain ``TypeError``); the keywords they share are then bundled and validated once,
here, instead of once per schedule.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from pyprune.training.schedules.results import RoundRecord

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
RoundCallback = Callable[[RoundRecord, nn.Module], Any]

# fit() arguments a schedule sets itself, so fit_options may not.
SCHEDULE_FIT_ARGUMENTS = frozenset(
    {
        "model",
        "train_loader",
        "epochs",
        "optimizer",
        "scheduler",
        "loss_fn",
        "max_steps",
        "scheduler_step",
        "progress",
    }
)


@dataclass
class ScheduleOptions:
    """The keywords every schedule takes, validated: what to train and measure on, how to retrain, where to
    checkpoint. Each schedule has them in its signature with these defaults (:func:`~pyprune.training.schedules.imp`
    has no ``data``: it scores on ``train_loader``).

    Attributes:
        train_loader: ``(inputs, targets)`` batches for retraining (and for data-driven methods when ``data`` is not
            given).
        eval_loader: batches measured after every round; ``example_input`` defaults to its first example.
        example_input: one input batch for tracing and FLOP counting; FLOPs are counted on its first example, so
            they are per example whatever the batch size.
        data: batches for data-driven methods (e.g. ``"taylor"``); default ``train_loader``.
        loss_fn: ``loss_fn(output, targets)``, mean over the batch; default cross-entropy.
        optimizer_factory: ``factory(model) -> optimizer``, called after pruning (structured pruning replaces
            parameters); default :func:`pyprune.train.default_optimizer` unless the schedule says otherwise.
        scheduler_factory: ``factory(optimizer) -> scheduler``, or None for a constant learning rate.
        scheduler_step: ``"epoch"`` or ``"step"``, when :func:`~pyprune.train.fit` steps the scheduler.
        method_options: passed to the planner (``scope``, ``ignored_layers``, ...).
        fit_options: more :func:`~pyprune.train.fit` arguments (``device``, ``amp``, ``grad_clip``, ``callbacks``,
            ...); not those the schedule sets.
        seed: None, or an int >= 0 from which every round reseeds the RNGs (see :mod:`pyprune.training.schedules`).
        checkpoint_dir: where each finished round is checkpointed; ``resume=True`` continues the run there.
        resume: continue the run recorded in ``checkpoint_dir``.
        callback: ``callback(record, model)`` after every round (after its checkpoint); True stops the schedule.
        progress: print one line per round (rank 0 only) and show :func:`~pyprune.train.fit`'s bars.

    Raises:
        ValueError: a bad ``scheduler_step``, ``fit_options`` naming an argument the schedule sets, a bad ``seed``,
            or ``resume`` without ``checkpoint_dir``.
    """

    train_loader: Iterable[Any]
    eval_loader: Iterable[Any]
    example_input: torch.Tensor | None = None
    data: Iterable[Any] | None = None
    loss_fn: Callable[..., torch.Tensor] | None = None
    optimizer_factory: OptimizerFactory | None = None
    scheduler_factory: SchedulerFactory | None = None
    scheduler_step: str = "epoch"
    method_options: Mapping[str, Any] | None = None
    fit_options: Mapping[str, Any] | None = None
    seed: int | None = 0
    checkpoint_dir: str | os.PathLike[str] | None = None
    resume: bool = False
    callback: RoundCallback | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.scheduler_step not in ("epoch", "step"):
            raise ValueError(f"scheduler_step: expected 'epoch' or 'step', got {self.scheduler_step!r}")
        options = dict(self.fit_options or {})
        clash = sorted(SCHEDULE_FIT_ARGUMENTS & set(options))
        if clash:
            raise ValueError(f"fit_options: {clash} are set by the schedule (use its own arguments)")
        self.fit_options = options
        if self.seed is not None and not (is_int(self.seed) and self.seed >= 0):
            raise ValueError(f"seed: expected None or an int >= 0, got {self.seed!r}")
        if self.resume and self.checkpoint_dir is None:
            raise ValueError("resume: needs checkpoint_dir, the directory of the run to continue")

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> ScheduleOptions:
        """The options among a schedule's arguments (its ``locals()``), picked by name: the list of shared keywords
        is written once, as this class's fields."""
        return cls(**{field.name: arguments[field.name] for field in fields(cls)})

    @property
    def scoring_data(self) -> Iterable[Any]:
        """The batches data-driven methods score on: ``data``, else ``train_loader``."""
        return self.data if self.data is not None else self.train_loader


def check_fraction(value: Any, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a real number in the open interval (0, 1)."""
    if not (is_real(value) and 0 < value < 1):
        raise ValueError(f"{name}: expected a fraction in (0, 1), got {value!r}")


def check_int(value: Any, name: str, minimum: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int (not a bool) >= ``minimum``."""
    if not (is_int(value) and value >= minimum):
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def is_int(value: Any) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A Python or NumPy integer or float, not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
