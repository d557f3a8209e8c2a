"""What a schedule did: one :class:`RoundRecord` per round in a :class:`ScheduleResult`, its JSON form with a
checksum, its plot (accuracy against density and FLOPs) and the one-line progress report of a round."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from pyprune.measure import format_count
from pyprune.pruning.io import checksum

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SCHEDULE_FORMAT = "pyprune-schedule/1"


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
        from pyprune.plot import require_matplotlib

        require_matplotlib()
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


def progress_line(record: RoundRecord, total: int | None) -> str:
    """One line on ``record``: round (of ``total`` when known), density, FLOPs, accuracy or loss, seconds."""
    of = f"/{total}" if total is not None else ""
    dense = " (dense)" if record.round == 0 else ""
    metric = f"acc {100 * record.accuracy:.1f}%" if record.accuracy is not None else f"loss {record.loss:.4g}"
    seconds = record.train_seconds + record.prune_seconds
    return (
        f"round {record.round}{of}{dense}: density {100 * record.density:.1f}%, FLOPs {format_count(record.flops)}, "
        f"{metric} ({seconds:.1f} s)"
    )
