"""Around every schedule's rounds: resuming, seeding, planning, measuring, recording, checkpoints and progress.

A schedule builds one :class:`Session`, asks it where to start (:attr:`Session.next_round`), reseeds each round,
plans and applies through it, and hands it each finished round (:meth:`Session.record`), which measures the model,
checkpoints the round and calls the user's callback. The file layout of a checkpoint directory and the seeding rule
are described in :mod:`pyprune.training.schedules`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pyprune.distributed import rewrap, unwrap_model
from pyprune.measure import count
from pyprune.pruning.apply import HISTORY_ATTRIBUTE
from pyprune.pruning.io import load_checked, load_pruned, save_checked, save_pruned
from pyprune.pruning.layers import check_materialised
from pyprune.pruning.methods import get_method
from pyprune.pruning.methods import plan as plan_method
from pyprune.pruning.plan import PruningPlan
from pyprune.training.fit import evaluate, is_main_process, model_device
from pyprune.training.schedules.config import ScheduleOptions
from pyprune.training.schedules.results import RoundRecord, ScheduleResult, progress_line

RESULT_FILE = "result.json"


class Session:
    """One run of a schedule: its :class:`ScheduleResult` so far and everything that writes to it.

    Args:
        schedule: the schedule's name (``"one_shot"``, ...), recorded and checked on resume.
        method: the registered method's name.
        config: the schedule's own arguments, JSON-ready after :func:`json.dumps` with ``repr`` for other
            objects; ``method_options`` and ``seed`` are added from ``options``. A resumed run must have the same.
        model: the model the schedule prunes (loaded from the last checkpoint when resuming).
        options: the shared keywords, validated.
        total: the number of pruning rounds when known in advance (for the progress lines).

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: ``model`` has meta tensors, fails on its first example, or ``checkpoint_dir`` holds another run
            (or a corrupt one, or ``model`` was already pruned) when resuming.
    """

    def __init__(
        self,
        schedule: str,
        method: str,
        config: dict[str, Any],
        model: nn.Module,
        options: ScheduleOptions,
        *,
        total: int | None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        check_materialised(model)
        config = {**config, "method_options": options.method_options, "seed": options.seed}
        self.result = ScheduleResult(schedule, method, _jsonable(config))
        self.options = options
        self.generators = _generators([options.train_loader, options.data, options.eval_loader])
        self.directory = None if options.checkpoint_dir is None else os.fspath(options.checkpoint_dir)
        self.total = total
        # Taken before any reseeding, so a resumed run takes the same example.
        example_input = options.example_input
        self.example_input = (
            example_input if example_input is not None else _first_example(options.eval_loader)
        )
        try:
            count(model, self.example(model)[:1])
        except (RuntimeError, TypeError, ValueError, IndexError) as error:
            source = "example_input" if example_input is not None else "eval_loader"
            raise ValueError(f"{source}: the model fails on its first example: {error}") from error
        if self.directory is not None:
            self._start(model, options.resume)

    @property
    def next_round(self) -> int:
        """The round to run next: the number of rounds recorded (by this run, or by the run resumed)."""
        return len(self.result.rounds)

    def example(self, model: nn.Module) -> torch.Tensor:
        """``example_input`` on the model's current device."""
        return self.example_input.to(model_device(model))

    def reseed(self, round_index: int) -> None:
        """Seed the global torch RNG and the loaders' generators from ``(seed, round_index)``; no-op without seed."""
        if self.options.seed is None:
            return
        # SeedSequence mixes (seed, round) into well-separated streams; consecutive integers would not be.
        state = np.random.SeedSequence([self.options.seed, round_index]).generate_state(1, dtype=np.uint64)
        value = int(state[0])
        torch.manual_seed(value)
        for generator in self.generators:
            generator.manual_seed(value)

    def plan(
        self, model: nn.Module, method: str, amount: float, method_options: Mapping[str, Any] | None
    ) -> PruningPlan:
        """Plan ``method`` at ``amount`` through the registry, with the example, data and loss the method needs."""
        chosen = get_method(method)
        return plan_method(
            model,
            method,
            amount,
            # Unstructured plans need no trace; without an input they also skip measuring themselves on a copy.
            example_input=self.example(model) if chosen.needs_example_input else None,
            data=self.options.scoring_data if chosen.needs_data else None,
            loss_fn=self.options.loss_fn,
            **dict(method_options or {}),
        )

    def apply(self, model: nn.Module, pruning: PruningPlan) -> nn.Module:
        """Apply ``pruning`` to ``model`` and return the model to carry on with: ``model`` itself, or, when the plan
        removed channels of a ``DistributedDataParallel`` model, a new wrapper around the same pruned module
        (:func:`pyprune.distributed.rewrap`: the old one would not synchronise the new parameters)."""
        pruning.apply(model)
        if pruning.mode == "remove" and isinstance(model, nn.parallel.DistributedDataParallel):
            return rewrap(model)
        return model

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
        """Measure and append the next round, checkpoint it, print it, call the callback; True to stop.

        ``state`` is what the schedule carries to the next round (saved as ``round_{k:03d}_state.pt``, read back
        by :meth:`saved_state`); the other arguments are :class:`RoundRecord` fields.
        """
        # FLOPs per example, as the records and plots say: count on one example, not the whole batch.
        counts = count(model, self.example(model)[:1])
        metrics = evaluate(model, self.options.eval_loader, loss_fn=self.options.loss_fn)
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
        if self.options.progress and is_main_process():
            print(progress_line(record, self.total), file=sys.stderr, flush=True)
        callback = self.options.callback
        return bool(callback(record, model)) if callback is not None else False

    def saved_state(self, round_index: int) -> dict[str, Any]:
        """The schedule state checkpointed with round ``round_index`` (resumed runs only)."""
        assert self.directory is not None  # only resumed runs, which have a directory, reach this
        path = os.path.join(self.directory, f"round_{round_index:03d}_state.pt")
        return load_checked(path, map_location="cpu")

    def finish(self, model: nn.Module, stop_reason: str) -> ScheduleResult:
        """Record why the schedule stopped, write the final ``result.json``, and return the result."""
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


def surviving_units(model: nn.Module, pruning: PruningPlan, prunable: int | None) -> tuple[int, int]:
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


def _jsonable(value: Any) -> Any:
    # Through JSON and back, so a config compares equal to the one read from a checkpoint (tuples become lists,
    # objects such as modules in ignored_layers their repr).
    return json.loads(json.dumps(value, default=repr))
