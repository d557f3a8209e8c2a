"""Iterative channel pruning (Molchanov et al. 2017, "Pruning convolutional neural networks for resource
efficient inference"): remove a few channels, fine-tune a few steps, repeat until a FLOPs or channel target."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from pyprune.distributed import unwrap_model
from pyprune.measure import format_count
from pyprune.pruning import selection
from pyprune.pruning.criteria.taylor import TAYLOR_OPTIONS, Taylor
from pyprune.pruning.methods import get_method
from pyprune.pruning.plan import PruningPlan
from pyprune.pruning.selection import plan_structured
from pyprune.training.schedules.config import (
    OptimizerFactory,
    RoundCallback,
    ScheduleOptions,
    SchedulerFactory,
    check_fraction,
    check_int,
)
from pyprune.training.schedules.results import ScheduleResult
from pyprune.training.schedules.session import Session
from pyprune.training.schedules.trainer import Trainer

# Taylor options go to the criterion (which also takes the scored ``layers``); every other method option goes to
# the planner.
_CRITERION_OPTIONS = ("layers", *TAYLOR_OPTIONS)


def iterative(
    model: nn.Module,
    method: str = "taylor",
    *,
    train_loader: Iterable[Any],
    eval_loader: Iterable[Any],
    flops_target: float | None = None,
    channels_target: float | None = None,
    channels_per_round: int | None = None,
    step_amount: float | None = None,
    fine_tune_steps: int = 30,
    max_rounds: int = 1000,
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
    """Molchanov et al.'s iterative procedure: remove a few channels, fine-tune a few steps, until a target.

    Each round removes ``k`` output channels (ranked globally over all dependency groups unless
    ``method_options`` sets ``scope="layer"``), then fine-tunes ``fine_tune_steps`` optimiser steps with a
    fresh optimiser. ``k`` is ``channels_per_round``, or ``round(step_amount · current channels)`` (at least 1),
    capped so as not to go below ``channels_target`` and by what ``min_channels`` allows. Channels are removed
    physically, so the next round's model is smaller: the planner's ``amount`` is ``k / current channels``,
    which removes exactly ``k`` with global ranking; every record carries the actual counts.

    With ``method="taylor"`` (the default) the Taylor criterion accumulates during the
    fine-tuning batches of the previous round, as in the paper, so no batch is spent on scoring; the scores
    for round 1 come from a warm-up of ``fine_tune_steps`` steps on the dense model, which round 0 therefore
    includes. Other structured methods are planned through the registry (data-driven ones on ``data``).

    Stops after the first round where FLOPs <= ``flops_target`` x round-0 FLOPs or channels <=
    ``channels_target`` x round-0 channels (``stop_reason`` says which), after ``max_rounds`` rounds, or when no
    channel can go.

    Args:
        model: the trained model; pruned in place.
        method: a structured registered method that removes channels (``"taylor"``, ``"l1_filter"``, ...).
        flops_target: FLOPs fraction of round 0 to reach, in (0, 1).
        channels_target: fraction of round 0's prunable channels (of the method's dependency groups) to reach,
            in (0, 1). At least one target is needed.
        channels_per_round: ``k``, >= 1 (the paper: 1). Default 1 when ``step_amount`` is not given.
        step_amount: fraction in (0, 1) of the current channels to remove per round, instead of a fixed ``k``.
        fine_tune_steps: optimiser steps after each removal, >= 1 (the paper: 10 to 1000; 30 on Birds-200).
        max_rounds: stop after this many rounds, >= 1.
        optimizer_factory: default SGD with lr 1e-4, momentum 0.9, weight decay 1e-4, created
            fresh every round.
        method_options: for ``"taylor"``, the :class:`~pyprune.pruning.criteria.taylor.Taylor` options (``point``,
            ``reduction``, ``flops_lambda``, ...) go to the criterion, the rest to
            :func:`~pyprune.pruning.selection.plan_structured`.
        train_loader, eval_loader, example_input, data, loss_fn, scheduler_factory, scheduler_step, fit_options,
        seed, checkpoint_dir, resume, callback, progress: as in :class:`~pyprune.training.schedules.ScheduleOptions`.

    Raises:
        ValueError: an unstructured or unknown method, a method whose plans mask instead of removing (FLOPs
            would not change), no target, both or bad ``channels_per_round`` / ``step_amount``, other bad
            arguments.
    """
    chosen = get_method(method)
    if not chosen.structured:
        raise ValueError(
            f"method: iterative removes channels; {method!r} prunes individual weights (use imp or cascade)"
        )
    if flops_target is None and channels_target is None:
        raise ValueError(
            "flops_target: give flops_target and/or channels_target (fractions of round 0 to reach)"
        )
    for value, name in ((flops_target, "flops_target"), (channels_target, "channels_target")):
        if value is not None:
            check_fraction(value, name)
    if channels_per_round is not None and step_amount is not None:
        raise ValueError("channels_per_round: give channels_per_round or step_amount, not both")
    if step_amount is not None:
        check_fraction(step_amount, "step_amount")
    elif channels_per_round is None:
        channels_per_round = 1
    else:
        check_int(channels_per_round, "channels_per_round", 1)
    check_int(fine_tune_steps, "fine_tune_steps", 1)
    check_int(max_rounds, "max_rounds", 1)
    planner_options = dict(method_options or {})
    if planner_options.get("mode") == "mask":
        raise ValueError(
            "method_options: iterative removes channels; mode='mask' would leave the FLOPs unchanged"
        )
    taylor_options = (
        {k: planner_options.pop(k) for k in _CRITERION_OPTIONS if k in planner_options}
        if method == "taylor"
        else {}
    )
    planner_options.setdefault("scope", "global")
    shared = ScheduleOptions.from_arguments(locals())
    session = Session(
        "iterative",
        method,
        {
            "flops_target": flops_target,
            "channels_target": channels_target,
            "channels_per_round": channels_per_round,
            "step_amount": step_amount,
            "fine_tune_steps": fine_tune_steps,
            "max_rounds": max_rounds,
        },
        model,
        shared,
        total=None,
    )
    trainer = Trainer(shared, default_optimizer=_molchanov_optimizer)
    # Plans, Taylor's hooks and channel counts name layers as the bare model does; a DistributedDataParallel
    # wrapper around it is what trains. Removing channels changes the module in place, so it stays the same object.
    bare = unwrap_model(model)
    taylor: Taylor | None = None
    if flops_target is not None:
        _check_flops_target_reachable(bare, session.example(model), flops_target, planner_options)

    def fine_tune() -> tuple[dict[str, Any], float]:
        # fit() stops at max_steps; epochs only bounds the passes over a loader shorter than that.
        nonlocal taylor
        if method != "taylor":
            history, seconds, _ = trainer.run(model, fine_tune_steps, max_steps=fine_tune_steps)
            return history, seconds
        taylor = Taylor(bare, **taylor_options)
        with taylor.accumulate():
            history, seconds, _ = trainer.run(model, fine_tune_steps, max_steps=fine_tune_steps)
        return history, seconds

    def make_plan(amount: float) -> PruningPlan:
        if taylor is not None:
            return plan_structured(
                bare, amount, session.example(model), criterion=taylor, method="taylor", **planner_options
            )
        return session.plan(model, method, amount, planner_options)

    if session.next_round == 0:
        session.reseed(0)
        history, train_seconds = fine_tune() if method == "taylor" else (None, 0.0)
        start = time.perf_counter()
        # A plan of nothing names the dependency groups (roots) and their sizes before anything is removed.
        probe = make_plan(0.0)
        if probe.mode != "remove":
            raise ValueError(
                f"method: iterative needs plans that remove channels; {method!r} with these options masks them "
                "(mode='mask'), which leaves the FLOPs unchanged"
            )
        session.result.notes.update(
            roots=[layer.name for layer in probe.layers],
            min_channels=int(probe.options.get("min_channels", 1)),
        )
        if session.record(
            model,
            train_seconds=train_seconds,
            prune_seconds=time.perf_counter() - start,
            kept=probe.size,
            prunable=probe.size,
            history=history,
            state=_taylor_state(taylor),
        ):
            return session.finish(model, "callback")
    elif method == "taylor":
        taylor = Taylor(bare, **taylor_options)
        _restore_taylor(taylor, session.saved_state(session.next_round - 1))

    roots: list[str] = session.result.notes["roots"]
    min_channels: int = session.result.notes["min_channels"]
    dense = session.result.rounds[0]
    assert dense.prunable is not None  # set by round 0 above
    while True:
        last = session.result.final
        if flops_target is not None and last.flops <= flops_target * dense.flops:
            return session.finish(model, "flops_target")
        if channels_target is not None and last.kept <= channels_target * dense.prunable:
            return session.finish(model, "channels_target")
        if last.round >= max_rounds:
            return session.finish(model, "max_rounds")
        session.reseed(last.round + 1)
        start = time.perf_counter()
        sizes = [int(bare.get_submodule(name).weight.shape[0]) for name in roots]
        channels = sum(sizes)
        k = (
            channels_per_round
            if channels_per_round is not None
            else max(1, math.floor(step_amount * channels + 0.5))  # half up, not to even
        )
        if channels_target is not None:
            k = min(k, channels - math.floor(channels_target * dense.prunable))
        k = min(k, sum(size - min(min_channels, size) for size in sizes))
        if k <= 0:
            return session.finish(model, "no_channels_left")
        amount = k / channels
        pruning = make_plan(amount)
        if pruning.num_removed == 0:  # e.g. round_to gave every channel back: another round would do the same
            return session.finish(model, "no_channels_left")
        model = session.apply(model, pruning)
        prune_seconds = time.perf_counter() - start
        history, train_seconds = fine_tune()
        kept = sum(int(bare.get_submodule(name).weight.shape[0]) for name in roots)
        if session.record(
            model,
            train_seconds=train_seconds,
            prune_seconds=prune_seconds,
            amount=amount,
            kept=kept,
            prunable=dense.prunable,
            history=history,
            notes={"channels_requested": k, "channels_removed": channels - kept},
            state=_taylor_state(taylor),
        ):
            return session.finish(model, "callback")


def _check_flops_target_reachable(
    model: nn.Module, example: torch.Tensor, flops_target: float, options: Mapping[str, Any]
) -> None:
    """Raise before any training when even the narrowest model the planner allows misses ``flops_target``."""
    # Every group cut to its minimum width (the criterion is irrelevant when almost everything goes).
    limits = {k: options[k] for k in ("ignored_layers", "min_channels", "round_to") if k in options}
    narrowest = selection.plan_structured(
        model, 1 - 1e-9, example, scope="layer", method="flops floor", **limits
    )
    dense, least = narrowest.totals["flops"]
    if least > flops_target * dense:
        raise ValueError(
            f"flops_target: {flops_target} of the round-0 FLOPs cannot be reached: removing every prunable "
            f"channel the options allow still leaves {least / dense:.3f} of them ({format_count(least)} of "
            f"{format_count(dense)}); raise the target or prune more layers (ignored_layers, min_channels)"
        )


def _molchanov_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """SGD with lr 1e-4, momentum 0.9 and weight decay 1e-4, the fine-tuning of Molchanov et al. (2017)."""
    return torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)


def _taylor_state(taylor: Taylor | None) -> dict[str, Any]:
    # Taylor has no (de)serialisation of its own; its accumulators are exactly what the next round plans from,
    # so a resumed run needs them to prune the same channels.
    if taylor is None:
        return {}
    return {
        "sums": dict(taylor._sums),
        "examples": dict(taylor._examples),
        "batches": dict(taylor._batches),
        "positions": dict(taylor._positions),
    }


def _restore_taylor(taylor: Taylor, state: Mapping[str, Any]) -> None:
    taylor._sums.update(state["sums"])
    taylor._examples.update(state["examples"])
    taylor._batches.update(state["batches"])
    taylor._positions.update(state["positions"])
