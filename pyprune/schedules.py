"""Prune–retrain schedules: one-shot, iterative channel pruning, IMP with rewinding, and cascade.

Each schedule is one function that composes the method registry (:func:`pyprune.plan`), the engine
(``plan.apply``) and :func:`pyprune.train.fit`, measures the model after every round and returns a
:class:`ScheduleResult`:

* :func:`one_shot`: prune once to ``amount``, fine-tune.
* :func:`iterative`: Molchanov et al. (2017): remove a few channels, fine-tune a few steps,
  repeat until a FLOPs or channel target; with ``method="taylor"`` the scores of the next round are accumulated
  by hooks during the fine-tuning batches, so scoring costs no extra pass.
* :func:`imp`: iterative magnitude pruning (Renda, Frankle & Carbin 2020): prune exactly
  ``floor(rate · remaining)`` weights globally per round, then retrain with learning-rate rewinding, weight
  rewinding or fine-tuning.
* :func:`cascade`: the SiPP/PFP protocol: a list of absolute keep ratios, scores recomputed on the
  current weights before each step, retraining with the full schedule at chosen steps; works with any
  registered method.

Rounds. Round 0 is the dense model right before the first pruning step, after whatever training the schedule
gives it first (IMP's initial training, the Taylor warm-up of :func:`iterative`); round ``k >= 1`` is the model
after the k-th pruning step and its retraining. Each :class:`RoundRecord` holds parameter and FLOP counts
(:func:`pyprune.count` on one example) and the loss and accuracy on ``eval_loader`` (:func:`pyprune.train.evaluate`).

Seeding. With ``seed`` (default 0), the global torch RNG and the ``torch.Generator`` of every loader the schedule
iterates (``train_loader``, and ``data`` when given) are reseeded at the start of every round from
``(seed, round)``. A run therefore does not depend on what ran before it, and a resumed run repeats the
uninterrupted one exactly (on the same machine and library versions). ``seed=None`` leaves every RNG alone.

Checkpoints. With ``checkpoint_dir``, each finished round ``k`` writes ``round_{k:03d}.pt``
(:func:`pyprune.save_pruned`: weights and the plans applied so far, so structurally pruned models load into a
fresh instance), ``round_{k:03d}_state.pt`` (what the schedule carries between rounds: IMP's rewind weights,
Taylor accumulators) and ``result.json`` (the :class:`ScheduleResult` so far), each written to a temporary file
and moved into place with ``os.replace``. ``resume=True`` with a freshly built model of the same architecture
continues after the last round that ``result.json`` records.

Failures. Planning never modifies the model and applying a plan is all-or-nothing (the engine restores the model
if it fails), so an error while pruning round ``k`` leaves the model as round ``k - 1`` left it. An error during
training leaves the model pruned and partly retrained. Either way the checkpoint directory still holds round
``k - 1`` complete, and ``resume=True`` redoes round ``k`` from there.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pyprune.distributed import unwrap_model
from pyprune.measure import count, format_count
from pyprune.pruning import selection
from pyprune.pruning.apply import HISTORY_ATTRIBUTE
from pyprune.pruning.criteria.taylor import Taylor
from pyprune.pruning.io import checksum, load_checked, load_pruned, save_checked, save_pruned
from pyprune.pruning.layers import check_materialised, select_layers
from pyprune.pruning.methods import get_method
from pyprune.pruning.methods import plan as plan_method
from pyprune.pruning.plan import PruningPlan
from pyprune.pruning.selection import check_amount, plan_structured
from pyprune.train import (
    Callback,
    default_optimizer,
    enforce_masks,
    evaluate,
    fit,
    is_main_process,
    model_device,
    snapshot,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SCHEDULE_FORMAT = "pyprune-schedule/1"
RESULT_FILE = "result.json"
REWIND_MODES = ("lr", "weights", "finetune")

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
RoundCallback = Callable[["RoundRecord", nn.Module], Any]

# Taylor options go to the criterion; every other method option goes to the planner.
_TAYLOR_OPTIONS = (
    "layers",
    "point",
    "reduction",
    "normalize",
    "flops_lambda",
    "flops_unit",
    "loss_reduction",
)
# fit() arguments a schedule sets itself, so fit_options may not.
_SCHEDULE_FIT_ARGUMENTS = frozenset(
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
class RoundRecord:
    """The model after one round of a schedule.

    Attributes:
        round: 0 for the dense model before the first pruning step, k for the model after the k-th.
        density: ``nonzero_params`` over the parameters of the round-0 model (all parameters: biases, BatchNorm
            and the output layer included).
        keep: surviving prunable units over those of the round-0 model, in the method's units (weights of the
            layers it prunes, or output channels of its dependency groups); 1.0 in round 0.
        params: parameters (a masked tensor counts whole).
        nonzero_params: nonzero entries of the effective parameters.
        flops: FLOPs of one forward pass on one example (the first example of ``example_input``).
        accuracy: fraction of ``eval_loader`` classified correctly, ``None`` if targets are not class indices.
        loss: mean loss per example on ``eval_loader``.
        train_seconds: wall time of the round's training (0.0 without training).
        prune_seconds: wall time of scoring, planning and applying.
        amount: the ``amount`` passed to the planner (``None`` in round 0).
        kept: surviving prunable units (``None`` when not known yet).
        prunable: prunable units of the round-0 model (``None`` when not known yet).
        history: :meth:`pyprune.train.History.to_dict` of the round's training (per-epoch losses and learning
            rates), ``None`` without training.
        notes: schedule-specific values, JSON-ready.
    """

    round: int
    density: float
    keep: float | None
    params: int
    nonzero_params: int
    flops: int
    accuracy: float | None
    loss: float
    train_seconds: float
    prune_seconds: float
    amount: float | None = None
    kept: int | None = None
    prunable: int | None = None
    history: dict[str, Any] | None = None
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScheduleResult:
    """What a schedule did, round by round.

    Attributes:
        schedule: ``"one_shot"``, ``"iterative"``, ``"imp"`` or ``"cascade"``.
        method: the registered pruning method's name.
        config: the schedule's JSON-ready arguments (a resumed run must have the same).
        rounds: one :class:`RoundRecord` per round, round 0 first.
        notes: schedule-wide values, e.g. ``stop_reason`` (``"completed"``, ``"callback"``, ``"flops_target"``,
            ``"channels_target"``, ``"max_rounds"`` or ``"no_channels_left"``).
        final_model: the pruned model (the one passed in, modified in place); not serialised.
    """

    schedule: str
    method: str
    config: dict[str, Any] = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    final_model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def final(self) -> RoundRecord:
        """The last round's record."""
        if not self.rounds:
            raise ValueError("ScheduleResult: no round recorded")
        return self.rounds[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without ``final_model``)."""
        return {
            "format": SCHEDULE_FORMAT,
            "schedule": self.schedule,
            "method": self.method,
            "config": self.config,
            "notes": self.notes,
            "rounds": [asdict(record) for record in self.rounds],
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int | None = 1) -> str:
        """The result as JSON text, with a ``checksum`` of its content that :meth:`from_json` verifies; also
        written to ``path`` when given."""
        data = json.loads(json.dumps(self.to_dict()))  # the form from_json will see (tuples become lists)
        text = json.dumps({**data, "checksum": checksum(data)}, indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        return text

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScheduleResult:
        """Read :meth:`to_dict`'s form; a ``checksum`` entry (written by :meth:`to_json`) must match the rest."""
        if isinstance(data, Mapping) and "checksum" in data:
            data = dict(data)
            if data.pop("checksum") != checksum(data):
                raise ValueError("corrupt schedule result: its content does not match its checksum")
        if not isinstance(data, Mapping) or data.get("format") != SCHEDULE_FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(
                f"not a pyprune schedule result: expected format {SCHEDULE_FORMAT!r}, got {found!r}"
            )
        return cls(
            schedule=data["schedule"],
            method=data["method"],
            config=dict(data.get("config", {})),
            rounds=[RoundRecord(**record) for record in data["rounds"]],
            notes=dict(data.get("notes", {})),
        )

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike[str]) -> ScheduleResult:
        """Read a result from JSON text or from a file path."""
        text = os.fspath(text_or_path)
        if not text.lstrip().startswith("{"):
            with open(text, encoding="utf-8") as handle:
                text = handle.read()
        return cls.from_dict(json.loads(text))

    def plot(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        axes: Sequence[Axes] | None = None,
        label: str | None = None,
    ) -> Figure:
        """Accuracy against density (log scale) and against FLOPs, one point per round.

        Loss is plotted instead when no round has an accuracy. Both x axes run from dense (left) to sparse.

        Args:
            path: save the figure there (150 dpi) when given.
            axes: two axes to draw into, e.g. ``other.plot().axes`` to compare schedules on one figure.
            label: legend entry; default ``"<schedule>: <method>"``.

        Returns:
            The ``matplotlib.figure.Figure``.

        Raises:
            ImportError: matplotlib is missing.
        """
        from pyprune.plot import _matplotlib

        _matplotlib()
        from matplotlib.figure import Figure

        if axes is None:
            fig = Figure(figsize=(9.0, 3.6), layout="constrained")
            by_density, by_flops = fig.subplots(1, 2)
        else:
            by_density, by_flops = axes
            fig = by_density.figure
        with_accuracy = any(record.accuracy is not None for record in self.rounds)
        if with_accuracy:
            values = [np.nan if r.accuracy is None else 100.0 * r.accuracy for r in self.rounds]
            ylabel = "accuracy (%)"
        else:
            values = [r.loss for r in self.rounds]
            ylabel = "loss"
        label = label or f"{self.schedule}: {self.method}"
        for ax, xs, xlabel in (
            (by_density, [r.density for r in self.rounds], "density (nonzero / dense parameters)"),
            (by_flops, [r.flops for r in self.rounds], "FLOPs per example"),
        ):
            ax.plot(xs, values, marker="o", label=label)
            ax.set_xscale("log")
            if not ax.xaxis_inverted():  # axes passed in may be inverted already
                ax.invert_xaxis()
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        by_density.legend(fontsize="small")
        if path is not None:
            fig.savefig(path, dpi=150)
        return fig


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
        train_loader: ``(inputs, targets)`` batches for fine-tuning (and for data-driven methods when ``data``
            is not given).
        eval_loader: batches measured after every round; ``example_input`` defaults to its first example.
        epochs: fine-tuning epochs, >= 0 (0: prune only).
        example_input: one input batch for tracing and FLOP counting; FLOPs are counted on its first example, so
            they are per example whatever the batch size.
        data: batches for data-driven methods (e.g. ``"taylor"``); default ``train_loader``.
        loss_fn: ``loss_fn(output, targets)``, mean over the batch; default cross-entropy.
        optimizer_factory: ``factory(model) -> optimizer``, called after pruning (structured pruning replaces
            parameters); default :func:`pyprune.train.default_optimizer`.
        scheduler_factory: ``factory(optimizer) -> scheduler``, or None for a constant learning rate.
        scheduler_step: ``"epoch"`` or ``"step"``, when :func:`~pyprune.train.fit` steps the scheduler.
        method_options: passed to the planner (``scope``, ``ignored_layers``, ...).
        fit_options: more :func:`~pyprune.train.fit` arguments (``device``, ``amp``, ``grad_clip``,
            ``callbacks``, ...); not those the schedule sets.
        seed: see the module docstring; None leaves the RNGs alone.
        checkpoint_dir, resume: see the module docstring.
        callback: ``callback(record, model)`` after every round (after its checkpoint); True stops the schedule.
        progress: print one line per round (rank 0 only) and show :func:`~pyprune.train.fit`'s bars.

    Raises:
        ValueError: an unknown method, a bad ``amount``, ``epochs``, ``seed``, ``scheduler_step`` or
            ``fit_options``, or a ``checkpoint_dir`` that holds another run.
    """
    get_method(method)
    check_amount(amount)
    _check_int(epochs, "epochs", 0)
    trainer = _Trainer(
        train_loader, loss_fn, optimizer_factory, scheduler_factory, scheduler_step, fit_options, progress
    )
    session = _Session(
        "one_shot",
        method,
        {"amount": amount, "epochs": epochs, "method_options": method_options, "seed": seed},
        model,
        eval_loader=eval_loader,
        example_input=example_input,
        loss_fn=loss_fn,
        seed=seed,
        loaders=(train_loader, data),
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        callback=callback,
        progress=progress,
        total=1,
    )
    if session.next_round == 0:
        session.reseed(0)
        if session.record(model, train_seconds=0.0, prune_seconds=0.0):
            return session.finish(model, "callback")
    if session.next_round == 1:
        session.reseed(1)
        start = time.perf_counter()
        pruning = _plan(
            model, method, amount, session, data if data is not None else train_loader, method_options
        )
        pruning.apply(model)
        prune_seconds = time.perf_counter() - start
        kept, prunable = _units(model, pruning, None)
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
        example_input, data, loss_fn, scheduler_factory, scheduler_step, fit_options, seed, checkpoint_dir,
        resume, callback, progress: as in :func:`one_shot`.

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
            _check_fraction(value, name)
    if channels_per_round is not None and step_amount is not None:
        raise ValueError("channels_per_round: give channels_per_round or step_amount, not both")
    if step_amount is not None:
        _check_fraction(step_amount, "step_amount")
    elif channels_per_round is None:
        channels_per_round = 1
    else:
        _check_int(channels_per_round, "channels_per_round", 1)
    _check_int(fine_tune_steps, "fine_tune_steps", 1)
    _check_int(max_rounds, "max_rounds", 1)
    options = dict(method_options or {})
    if options.get("mode") == "mask":
        raise ValueError(
            "method_options: iterative removes channels; mode='mask' would leave the FLOPs unchanged"
        )
    taylor_options = (
        {k: options.pop(k) for k in _TAYLOR_OPTIONS if k in options} if method == "taylor" else {}
    )
    options.setdefault("scope", "global")
    trainer = _Trainer(
        train_loader,
        loss_fn,
        optimizer_factory or _molchanov_optimizer,
        scheduler_factory,
        scheduler_step,
        fit_options,
        progress,
    )
    session = _Session(
        "iterative",
        method,
        {
            "flops_target": flops_target,
            "channels_target": channels_target,
            "channels_per_round": channels_per_round,
            "step_amount": step_amount,
            "fine_tune_steps": fine_tune_steps,
            "max_rounds": max_rounds,
            "method_options": method_options,
            "seed": seed,
        },
        model,
        eval_loader=eval_loader,
        example_input=example_input,
        loss_fn=loss_fn,
        seed=seed,
        loaders=(train_loader, data),
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        callback=callback,
        progress=progress,
        total=None,
    )
    data = data if data is not None else train_loader
    taylor: Taylor | None = None
    if flops_target is not None:
        _check_flops_target_reachable(model, session.example(model), flops_target, options)

    def fine_tune() -> tuple[dict[str, Any], float]:
        # fit() stops at max_steps; epochs only bounds the passes over a loader shorter than that.
        nonlocal taylor
        if method != "taylor":
            history, seconds, _ = trainer.run(model, fine_tune_steps, max_steps=fine_tune_steps)
            return history, seconds
        taylor = Taylor(model, **taylor_options)
        with taylor.accumulate():
            history, seconds, _ = trainer.run(model, fine_tune_steps, max_steps=fine_tune_steps)
        return history, seconds

    def make_plan(amount: float) -> PruningPlan:
        if taylor is not None:
            return plan_structured(
                model, amount, session.example(model), criterion=taylor, method="taylor", **options
            )
        return _plan(model, method, amount, session, data, options)

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
        taylor = Taylor(model, **taylor_options)
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
        sizes = [int(model.get_submodule(name).weight.shape[0]) for name in roots]
        channels = sum(sizes)
        k = (
            channels_per_round
            if channels_per_round is not None
            else max(1, _round_half_up(step_amount * channels))
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
        pruning.apply(model)
        prune_seconds = time.perf_counter() - start
        history, train_seconds = fine_tune()
        kept = sum(int(model.get_submodule(name).weight.shape[0]) for name in roots)
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
       when ``rate · M < 1`` nothing is pruned (the seed pruned *everything* there);
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
        checkpoint_dir, resume, callback, progress: as in :func:`one_shot`.

    Raises:
        ValueError: ``rate`` outside (0, 1), ``rounds`` < 1, an unknown ``rewind``, a structured method, a
            rewind point beyond round 0's training or not at an epoch boundary with an epoch-stepped scheduler,
            rewind arguments without ``rewind="weights"``, other bad arguments.
    """
    _check_fraction(rate, "rate")
    _check_int(rounds, "rounds", 1)
    _check_int(epochs_per_round, "epochs_per_round", 1)
    if rewind not in REWIND_MODES:
        raise ValueError(f"rewind: expected one of {REWIND_MODES}, got {rewind!r}")
    if get_method(method).structured:
        raise ValueError(f"method: imp prunes individual weights; {method!r} is a structured method")
    if rewind != "weights":
        for value, name in ((rewind_epoch, "rewind_epoch"), (rewind_step, "rewind_step")):
            if value is not None:
                raise ValueError(f"{name}: only used with rewind='weights', got rewind={rewind!r}")
    if finetune_lr is not None and not (
        _is_real(finetune_lr) and math.isfinite(finetune_lr) and finetune_lr > 0
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
    options = dict(method_options or {})
    options.setdefault("scope", "global")
    names = [name for name, _ in select_layers(model, options.get("layers"), options.get("ignored_layers"))]
    trainer = _Trainer(
        train_loader, loss_fn, optimizer_factory, scheduler_factory, scheduler_step, fit_options, progress
    )
    session = _Session(
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
            "method_options": method_options,
            "seed": seed,
        },
        model,
        eval_loader=eval_loader,
        example_input=example_input,
        loss_fn=loss_fn,
        seed=seed,
        loaders=(train_loader,),
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        callback=callback,
        progress=progress,
        total=rounds,
    )
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
        pruning = _plan(model, method, amount, session, train_loader, options)
        pruning.apply(model)
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
        retrain_at: 0-based indices into ``keep_ratios`` after which to retrain; default all. The seed splits
            its ratios into chunks and retrains at the last of each.
        train_loader, eval_loader, example_input, data, loss_fn, optimizer_factory, scheduler_factory,
        scheduler_step, method_options, fit_options, seed, checkpoint_dir, resume, callback, progress: as in
        :func:`one_shot`.

    Raises:
        ValueError: ``keep_ratios`` empty, not strictly decreasing or outside (0, 1], ``retrain_at`` indices out
            of range, other bad arguments.
    """
    unit = get_method(method).amount_unit
    # PFP measures its amount on all parameters, nonzero ones when it masks.
    params_metric = "nonzero_params" if (method_options or {}).get("mode") == "mask" else "params"
    ratios = _check_keep_ratios(keep_ratios)
    _check_int(epochs, "epochs", 1)
    if retrain_at is None:
        retrain = set(range(len(ratios)))
    else:
        retrain = set()
        for index in retrain_at:
            if not (_is_int(index) and 0 <= index < len(ratios)):
                raise ValueError(
                    f"retrain_at: expected indices into keep_ratios (0..{len(ratios) - 1}), got {index!r}"
                )
            retrain.add(int(index))
    trainer = _Trainer(
        train_loader, loss_fn, optimizer_factory, scheduler_factory, scheduler_step, fit_options, progress
    )
    session = _Session(
        "cascade",
        method,
        {
            "keep_ratios": ratios,
            "epochs": epochs,
            "retrain_at": sorted(retrain),
            "method_options": method_options,
            "seed": seed,
        },
        model,
        eval_loader=eval_loader,
        example_input=example_input,
        loss_fn=loss_fn,
        seed=seed,
        loaders=(train_loader, data),
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        callback=callback,
        progress=progress,
        total=len(ratios),
    )
    data = data if data is not None else train_loader
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
        pruning = _plan(model, method, amount, session, data, method_options)
        pruning.apply(model)
        prune_seconds = time.perf_counter() - start
        session.result.notes["mode"] = pruning.mode
        if unit == "params":
            kept = getattr(count(model, session.example(model)[:1]), params_metric)
            prunable = getattr(session.result.rounds[0], params_metric)
        else:
            kept, prunable = _units(model, pruning, previous.prunable)
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


class _Session:
    """Around every schedule's rounds: resuming, seeding, measuring, recording, checkpoints and progress."""

    def __init__(
        self,
        schedule: str,
        method: str,
        config: dict[str, Any],
        model: nn.Module,
        *,
        eval_loader: Iterable[Any],
        example_input: torch.Tensor | None,
        loss_fn: Callable[..., torch.Tensor] | None,
        seed: int | None,
        loaders: Sequence[Iterable[Any] | None],
        checkpoint_dir: str | os.PathLike[str] | None,
        resume: bool,
        callback: RoundCallback | None,
        progress: bool,
        total: int | None,
    ) -> None:
        if seed is not None and not (_is_int(seed) and seed >= 0):
            raise ValueError(f"seed: expected None or an int >= 0, got {seed!r}")
        if resume and checkpoint_dir is None:
            raise ValueError("resume: needs checkpoint_dir, the directory of the run to continue")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        check_materialised(model)
        self.result = ScheduleResult(schedule, method, _jsonable(config))
        self.eval_loader = eval_loader
        self.loss_fn = loss_fn
        self.seed = seed
        self.generators = _generators([*loaders, eval_loader])
        self.directory = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.callback = callback
        self.progress = progress
        self.total = total
        # Taken before any reseeding, so a resumed run takes the same example.
        self.example_input = example_input if example_input is not None else _first_example(eval_loader)
        try:
            count(model, self.example(model)[:1])
        except (RuntimeError, TypeError, ValueError, IndexError) as error:
            source = "example_input" if example_input is not None else "eval_loader"
            raise ValueError(f"{source}: the model fails on its first example: {error}") from error
        if self.directory is not None:
            self._start(model, resume)

    @property
    def next_round(self) -> int:
        return len(self.result.rounds)

    def example(self, model: nn.Module) -> torch.Tensor:
        """``example_input`` on the model's current device."""
        return self.example_input.to(model_device(model))

    def reseed(self, round_index: int) -> None:
        if self.seed is None:
            return
        # SeedSequence mixes (seed, round) into well-separated streams; consecutive integers would not be.
        value = int(np.random.SeedSequence([self.seed, round_index]).generate_state(1, dtype=np.uint64)[0])
        torch.manual_seed(value)
        for generator in self.generators:
            generator.manual_seed(value)

    def record(
        self,
        model: nn.Module,
        *,
        train_seconds: float,
        prune_seconds: float,
        amount: float | None = None,
        kept: int | None = None,
        prunable: int | None = None,
        history: dict[str, Any] | None = None,
        notes: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
    ) -> bool:
        """Measure and append the next round, checkpoint it, print it, call the callback; True to stop."""
        # FLOPs per example, as the records and plots say: count on one example, not the whole batch.
        counts = count(model, self.example(model)[:1])
        metrics = evaluate(model, self.eval_loader, loss_fn=self.loss_fn)
        dense_params = self.result.rounds[0].params if self.result.rounds else counts.params
        record = RoundRecord(
            round=self.next_round,
            density=counts.nonzero_params / dense_params,
            keep=kept / prunable if kept is not None and prunable else 1.0,
            params=counts.params,
            nonzero_params=counts.nonzero_params,
            flops=counts.flops,
            accuracy=metrics["accuracy"],
            loss=metrics["loss"],
            train_seconds=train_seconds,
            prune_seconds=prune_seconds,
            amount=amount,
            kept=kept,
            prunable=prunable,
            history=history,
            notes=dict(notes or {}),
        )
        self.result.rounds.append(record)
        if self.directory is not None and is_main_process():
            stem = os.path.join(self.directory, f"round_{record.round:03d}")
            _atomic(f"{stem}.pt", lambda path: save_pruned(model, path, round=record.round))
            _atomic(f"{stem}_state.pt", lambda path: save_checked(state or {}, path))
            # Written last: a round is complete once result.json lists it.
            _atomic(os.path.join(self.directory, RESULT_FILE), self.result.to_json)
        if self.progress and is_main_process():
            print(_progress_line(record, self.total), file=sys.stderr, flush=True)
        return bool(self.callback(record, model)) if self.callback is not None else False

    def saved_state(self, round_index: int) -> dict[str, Any]:
        """The schedule state checkpointed with round ``round_index`` (resumed runs only)."""
        assert self.directory is not None  # only resumed runs, which have a directory, reach this
        path = os.path.join(self.directory, f"round_{round_index:03d}_state.pt")
        return load_checked(path, map_location="cpu")

    def finish(self, model: nn.Module, stop_reason: str) -> ScheduleResult:
        self.result.notes["stop_reason"] = stop_reason
        if self.directory is not None and is_main_process():
            _atomic(os.path.join(self.directory, RESULT_FILE), self.result.to_json)
        self.result.final_model = model
        return self.result

    def _start(self, model: nn.Module, resume: bool) -> None:
        assert self.directory is not None
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, RESULT_FILE)
        if not os.path.exists(path):
            return
        if not resume:
            raise ValueError(
                f"checkpoint_dir: {self.directory!r} already holds a schedule run ({RESULT_FILE}); pass "
                "resume=True to continue it, or choose another directory"
            )
        try:
            loaded = ScheduleResult.from_json(path)
            if not loaded.rounds:
                raise ValueError("it records no round")
        except (ValueError, TypeError, KeyError) as error:
            raise ValueError(f"resume: {path!r} is corrupt or not a schedule result ({error})") from error
        mine = self.result
        recorded = f"{loaded.schedule}({loaded.method!r})"
        if (loaded.schedule, loaded.method) != (mine.schedule, mine.method):
            raise ValueError(f"resume: {path} records a {recorded} run, not {mine.schedule}({mine.method!r})")
        if loaded.config != mine.config:
            differences = [
                f"{key}: {loaded.config.get(key)!r} there, {mine.config.get(key)!r} now"
                for key in sorted(set(loaded.config) | set(mine.config))
                if loaded.config.get(key) != mine.config.get(key)
            ]
            raise ValueError(
                f"resume: {path} records {recorded} with other arguments ({'; '.join(differences)})"
            )
        if getattr(model, HISTORY_ATTRIBUTE, None):
            raise ValueError(
                "model: resuming replays the checkpointed plans on a freshly built model; this one has been pruned"
            )
        last = loaded.rounds[-1].round
        checkpoint = os.path.join(self.directory, f"round_{last:03d}.pt")
        load_pruned(checkpoint, model, map_location=model_device(model))
        if getattr(model, "pyprune_extra", {}).get("round") != last:
            raise ValueError(
                f"resume: {checkpoint!r} does not hold round {last}, which {path!r} records last"
            )
        # A finished run resumed (e.g. with a callback that stopped it) decides anew where to stop.
        loaded.notes.pop("stop_reason", None)
        self.result = loaded


@dataclass
class _Trainer:
    """One retraining: a fresh optimiser (and scheduler) from the factories, then :func:`fit`."""

    train_loader: Iterable[Any]
    loss_fn: Callable[..., torch.Tensor] | None
    optimizer_factory: OptimizerFactory | None
    scheduler_factory: SchedulerFactory | None
    scheduler_step: str
    fit_options: Mapping[str, Any] | None
    progress: bool

    def __post_init__(self) -> None:
        if self.scheduler_step not in ("epoch", "step"):
            raise ValueError(f"scheduler_step: expected 'epoch' or 'step', got {self.scheduler_step!r}")
        options = dict(self.fit_options or {})
        clash = sorted(_SCHEDULE_FIT_ARGUMENTS & set(options))
        if clash:
            raise ValueError(f"fit_options: {clash} are set by the schedule (use its own arguments)")
        self.fit_options = options

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
            lrs: constant learning rate(s) to set on the optimiser's groups (one number for all, or one each).
            use_scheduler: build the scheduler from its factory.
            skip: scheduler steps to take before training (the rewind point of weight rewinding).
        """
        start = time.perf_counter()
        optimizer = (self.optimizer_factory or default_optimizer)(model)
        if lrs is not None:
            groups = optimizer.param_groups
            values = [float(lrs)] * len(groups) if _is_real(lrs) else list(lrs)
            for group, lr in zip(groups, values, strict=True):
                group["lr"] = lr
        scheduler = None
        if use_scheduler and self.scheduler_factory is not None:
            scheduler = self.scheduler_factory(optimizer)
            _advance(scheduler, skip)
        options = dict(self.fit_options or {})
        history = fit(
            model,
            self.train_loader,
            epochs,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_fn=self.loss_fn,
            max_steps=max_steps,
            scheduler_step=self.scheduler_step,
            progress=self.progress,
            callbacks=[*options.pop("callbacks", ()), *callbacks],
            **options,
        )
        return history.to_dict(), time.perf_counter() - start, optimizer


class _SnapshotAt(Callback):
    """Takes :func:`pyprune.train.snapshot` of the model after global step ``step`` of a :func:`fit` run."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.state: dict[str, torch.Tensor] | None = None

    def on_batch_end(self, model: nn.Module, step: int, loss: float) -> None:
        if step == self.step:
            self.state = snapshot(model)


def _plan(
    model: nn.Module,
    method: str,
    amount: float,
    session: _Session,
    data: Iterable[Any] | None,
    options: Mapping[str, Any] | None,
) -> PruningPlan:
    chosen = get_method(method)
    return plan_method(
        model,
        method,
        amount,
        # Unstructured plans need no trace; without an input they also skip measuring themselves on a copy.
        example_input=session.example(model) if chosen.needs_example_input else None,
        data=data if chosen.needs_data else None,
        loss_fn=session.loss_fn,
        **dict(options or {}),
    )


def _units(model: nn.Module, pruning: PruningPlan, prunable: int | None) -> tuple[int, int]:
    """Surviving prunable units of ``pruning``'s layers in ``model`` after it was applied, and the dense count.

    Weights: nonzero mask entries. Masked channels: rows of the mask with a nonzero. Removed channels: the
    roots' output channels; the plan saw only the survivors of earlier plans, so the dense count is
    ``prunable`` when known (from an earlier round).
    """
    kept = 0
    for layer in pruning.layers:
        module = unwrap_model(model).get_submodule(layer.name)  # plans name a DDP model's layers unwrapped
        mask = getattr(module, "weight_mask", None)
        if layer.granularity == "weights":
            kept += int(mask.count_nonzero()) if mask is not None else module.weight.numel()
        elif mask is not None:
            kept += int(mask.flatten(1).any(1).sum())
        else:
            kept += int(module.weight.shape[0])
    dense = prunable if pruning.mode == "remove" and prunable is not None else pruning.size
    return kept, dense


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
    _check_int(value, name, 0)
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


def _first_example(loader: Iterable[Any]) -> torch.Tensor:
    """The first input of ``loader``'s first batch, as a batch of one."""
    for batch in loader:
        if isinstance(batch, Sequence) and batch and isinstance(batch[0], torch.Tensor):
            return batch[0][:1]
        break
    raise ValueError(
        "eval_loader: expected (inputs, targets) batches of tensors; pass example_input otherwise"
    )


def _generators(loaders: Iterable[Iterable[Any] | None]) -> list[torch.Generator]:
    """The distinct ``torch.Generator`` objects that drive the shuffling of ``loaders`` (DataLoader, sampler)."""
    found: dict[int, torch.Generator] = {}
    for loader in loaders:
        sampler = getattr(loader, "sampler", None)
        batch_sampler = getattr(loader, "batch_sampler", None)
        for owner in (loader, sampler, getattr(batch_sampler, "sampler", None)):
            generator = getattr(owner, "generator", None)
            if isinstance(generator, torch.Generator):
                found[id(generator)] = generator
    return list(found.values())


def _atomic(path: str, write: Callable[[str], Any]) -> None:
    """``write(temporary path)``, then move it onto ``path``: readers see the old file or the new one, whole."""
    temporary = f"{path}.tmp"
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def _progress_line(record: RoundRecord, total: int | None) -> str:
    of = f"/{total}" if total is not None else ""
    dense = " (dense)" if record.round == 0 else ""
    metric = f"acc {100 * record.accuracy:.1f}%" if record.accuracy is not None else f"loss {record.loss:.4g}"
    seconds = record.train_seconds + record.prune_seconds
    return (
        f"round {record.round}{of}{dense}: density {100 * record.density:.1f}%, FLOPs {format_count(record.flops)}, "
        f"{metric} ({seconds:.1f} s)"
    )


def _jsonable(value: Any) -> Any:
    # Through JSON and back, so a config compares equal to the one read from a checkpoint (tuples become lists,
    # objects such as modules in ignored_layers their repr).
    return json.loads(json.dumps(value, default=repr))


def _check_keep_ratios(keep_ratios: Any) -> list[float]:
    if isinstance(keep_ratios, (str, bytes)) or not isinstance(keep_ratios, Iterable):
        raise ValueError(f"keep_ratios: expected a sequence of fractions, got {type(keep_ratios).__name__}")
    ratios = list(keep_ratios)
    if not ratios:
        raise ValueError("keep_ratios: expected at least one keep ratio, got none")
    for ratio in ratios:
        if not (_is_real(ratio) and 0 < ratio <= 1):
            raise ValueError(f"keep_ratios: expected fractions in (0, 1], got {ratio!r}")
    for before, after in itertools.pairwise(ratios):
        if not after < before:
            raise ValueError(
                f"keep_ratios: expected strictly decreasing ratios, got {before!r} then {after!r}"
            )
    return [float(ratio) for ratio in ratios]


def _check_fraction(value: Any, name: str) -> None:
    if not (_is_real(value) and 0 < value < 1):
        raise ValueError(f"{name}: expected a fraction in (0, 1), got {value!r}")


def _check_int(value: Any, name: str, minimum: int) -> None:
    if not (_is_int(value) and value >= minimum):
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


__all__ = ["REWIND_MODES", "RoundRecord", "ScheduleResult", "cascade", "imp", "iterative", "one_shot"]
