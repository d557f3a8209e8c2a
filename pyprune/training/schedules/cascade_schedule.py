"""The cascade protocol of SiPP (Baykal et al. 2019) and PFP (Liebenwein et al. 2020): prune step by step to
absolute keep ratios, rescoring the current weights before each step and retraining at chosen steps."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from pyprune.measure import count
from pyprune.pruning.methods import get_method
from pyprune.training.schedules.config import (
    OptimizerFactory,
    RoundCallback,
    ScheduleOptions,
    SchedulerFactory,
    check_int,
    is_int,
    is_real,
)
from pyprune.training.schedules.results import ScheduleResult
from pyprune.training.schedules.session import Session, surviving_units
from pyprune.training.schedules.trainer import Trainer


def cascade(
    model: nn.Module,
    method: str,
    keep_ratios: Sequence[float],
    *,
    train_loader: Iterable[Any],
    eval_loader: Iterable[Any],
    epochs: int,
    retrain_at: Iterable[int] | None = None,
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
    """The SiPP/PFP ``cascade`` protocol: prune step by step to absolute keep ratios.

    Round ``i + 1`` rescores the *current* (pruned, maybe retrained) model with ``method`` and prunes it to
    ``keep_ratios[i]`` of round 0's prunable units; if ``i`` is in ``retrain_at`` it then retrains for
    ``epochs`` epochs with a fresh optimiser and the full schedule (learning-rate rewinding with t = T).

    Keep ratio -> ``amount``, in the unit the method's ``amount`` has (:attr:`pyprune.pruning.Method.amount_unit`):
    for masks (weights or masked channels) the planner counts masked units as removed, so ``amount = 1 - keep``;
    for removed channels the next plan sees only the survivors, so ``amount = 1 - keep · prunable / kept`` over
    the current channels (exact with ``scope="global"``, per dependency group up to rounding with
    ``scope="layer"``); for a fraction of all parameters (PFP) ``keep`` is of round 0's parameters (nonzero
    ones with ``mode="mask"``) and ``amount = 1 - keep · params_0 / params_now``. Each record carries the
    achieved ``keep`` in that unit, and its notes the target next to it (``keep_target``, ``keep_achieved``).

    Args:
        model: the trained model; pruned in place.
        method: any registered method (SiPP and PFP plug in by name once registered).
        keep_ratios: strictly decreasing fractions in (0, 1].
        epochs: retraining epochs, >= 1.
        retrain_at: 0-based indices into ``keep_ratios`` after which to retrain; default all (e.g. the last
            index of each chunk of ratios, to retrain once per chunk).
        train_loader, eval_loader, example_input, data, loss_fn, optimizer_factory, scheduler_factory,
        scheduler_step, method_options, fit_options, seed, checkpoint_dir, resume, callback, progress: as in
        :class:`~pyprune.training.schedules.ScheduleOptions`.

    Raises:
        ValueError: ``keep_ratios`` empty, not strictly decreasing or outside (0, 1], ``retrain_at`` indices out
            of range, other bad arguments.
    """
    unit = get_method(method).amount_unit
    # PFP measures its amount on all parameters, nonzero ones when it masks.
    params_metric = "nonzero_params" if (method_options or {}).get("mode") == "mask" else "params"
    ratios = _check_keep_ratios(keep_ratios)
    check_int(epochs, "epochs", 1)
    if retrain_at is None:
        retrain = set(range(len(ratios)))
    else:
        retrain = set()
        for index in retrain_at:
            if not (is_int(index) and 0 <= index < len(ratios)):
                raise ValueError(
                    f"retrain_at: expected indices into keep_ratios (0..{len(ratios) - 1}), got {index!r}"
                )
            retrain.add(int(index))
    shared = ScheduleOptions.from_arguments(locals())
    session = Session(
        "cascade",
        method,
        {"keep_ratios": ratios, "epochs": epochs, "retrain_at": sorted(retrain)},
        model,
        shared,
        total=len(ratios),
    )
    trainer = Trainer(shared)
    if session.next_round == 0:
        session.reseed(0)
        if session.record(model, train_seconds=0.0, prune_seconds=0.0):
            return session.finish(model, "callback")
    for index in range(session.next_round - 1, len(ratios)):
        session.reseed(index + 1)
        keep = ratios[index]
        previous = session.result.final
        start = time.perf_counter()
        if unit == "params":
            dense = getattr(session.result.rounds[0], params_metric)
            amount = max(0.0, 1.0 - keep * dense / getattr(previous, params_metric))
        elif session.result.notes.get("mode") == "remove":
            # Recorded by the earlier round that set the mode.
            assert previous.kept is not None
            assert previous.prunable is not None
            amount = max(0.0, 1.0 - keep * previous.prunable / previous.kept)
        else:
            amount = 1.0 - keep
        pruning = session.plan(model, method, amount, method_options)
        model = session.apply(model, pruning)
        prune_seconds = time.perf_counter() - start
        session.result.notes["mode"] = pruning.mode
        if unit == "params":
            kept = getattr(count(model, session.example(model)[:1]), params_metric)
            prunable = getattr(session.result.rounds[0], params_metric)
        else:
            kept, prunable = surviving_units(model, pruning, previous.prunable)
        history, train_seconds = None, 0.0
        if index in retrain:
            history, train_seconds, _ = trainer.run(model, epochs)
        if session.record(
            model,
            train_seconds=train_seconds,
            prune_seconds=prune_seconds,
            amount=amount,
            kept=kept,
            prunable=prunable,
            history=history,
            notes={"keep_target": keep, "keep_achieved": kept / prunable, "retrained": index in retrain},
        ):
            return session.finish(model, "callback")
    return session.finish(model, "completed")


def _check_keep_ratios(keep_ratios: Any) -> list[float]:
    if isinstance(keep_ratios, (str, bytes)) or not isinstance(keep_ratios, Iterable):
        raise ValueError(f"keep_ratios: expected a sequence of fractions, got {type(keep_ratios).__name__}")
    ratios = list(keep_ratios)
    if not ratios:
        raise ValueError("keep_ratios: expected at least one keep ratio, got none")
    for ratio in ratios:
        if not (is_real(ratio) and 0 < ratio <= 1):
            raise ValueError(f"keep_ratios: expected fractions in (0, 1], got {ratio!r}")
    for before, after in itertools.pairwise(ratios):
        if not after < before:
            raise ValueError(
                f"keep_ratios: expected strictly decreasing ratios, got {before!r} then {after!r}"
            )
    return [float(ratio) for ratio in ratios]
