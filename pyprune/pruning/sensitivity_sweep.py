"""Per-layer sensitivity analysis (Li et al. 2017): prune one layer at a time and watch a metric.

Li et al. choose per-layer pruning ratios by pruning each layer *alone* at increasing ratios, evaluating without
retraining, and pruning sensitive layers less. :func:`sensitivity_analysis` does exactly that for any registered
structured method and returns the curves plus suggested ratios, ready to pass as ``amount={layer: ratio}``.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pyprune.distributed import check_rank_identical
from pyprune.pruning.layers import check_materialised
from pyprune.pruning.methods import get_method, plan
from pyprune.pruning.selection import check_amount


@dataclass
class Sensitivity:
    """Result of :func:`sensitivity_analysis`.

    Attributes:
        baseline: metric of the unpruned model.
        ratios: the ratios tried.
        curves: ``{layer: [metric at each ratio]}``.
        tolerance: the allowed drop used for :attr:`suggested`.
        suggested: ``{layer: largest ratio whose metric stays within tolerance of the baseline}`` (0.0 when even
            the smallest ratio costs too much); the dict to pass as ``amount``.
    """

    baseline: float
    ratios: list[float]
    curves: dict[str, list[float]]
    tolerance: float
    suggested: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "ratios": self.ratios,
            "curves": self.curves,
            "tolerance": self.tolerance,
            "suggested": self.suggested,
        }

    def plot(self, path: str | None = None, *, metric_name: str = "metric") -> Any:
        """Curves of metric vs ratio, one line per layer (matplotlib); saved to ``path`` when given."""
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6.4, 4.2))
        for layer, values in self.curves.items():
            axis.plot(self.ratios, values, marker="o", markersize=3, label=layer)
        axis.axhline(
            self.baseline - self.tolerance, color="grey", linestyle="--", linewidth=1, label="tolerance"
        )
        axis.set_xlabel("fraction of the layer's channels removed")
        axis.set_ylabel(metric_name)
        axis.set_title("Per-layer pruning sensitivity")
        axis.legend(fontsize=7, ncol=2)
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=150)
        return figure


def sensitivity_analysis(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    example_input: torch.Tensor,
    *,
    method: str = "l1_filter",
    ratios: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    tolerance: float = 0.01,
    progress: bool = True,
    **options: Any,
) -> Sensitivity:
    """Prune each layer (dependency group) alone at each ratio, evaluate, and suggest per-layer ratios.

    Args:
        model: the trained model; not modified (every trial prunes a deep copy).
        evaluate: ``model -> metric`` where higher is better (e.g. validation accuracy); no retraining. Under
            ``torchrun`` it must return the same value on every rank (the metric over all ranks' data, as
            :func:`pyprune.train.evaluate` over a DistributedSampler does); a difference raises on every rank.
        example_input: an input batch for tracing.
        method: a registered structured method (``"l1_filter"``, ``"l2_filter"``, ...).
        ratios: fractions in [0, 1) to try, ascending.
        tolerance: allowed drop (a finite number >= 0) of the metric from the baseline for a ratio to be
            suggested. A ratio whose metric is NaN counts as outside it (it and every larger ratio of that layer
            are not suggested); a NaN metric of the unpruned model raises, nothing can be compared to it.
        progress: show a progress bar.
        **options: passed to the planner (e.g. ``ignored_layers``).
    """
    if not get_method(method).structured:
        raise ValueError(
            f"method: sensitivity analysis prunes channels; {method!r} is not a structured method"
        )
    check_materialised(model)
    ratios = [check_amount(r, "ratios") for r in ratios]
    if isinstance(tolerance, bool | np.bool_) or not isinstance(tolerance, numbers.Real):
        raise TypeError(f"tolerance: expected a finite number >= 0, got {tolerance!r}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance: expected a finite number >= 0, got {tolerance!r}")
    tolerance = float(tolerance)
    if not ratios or ratios != sorted(ratios):
        raise ValueError(f"ratios: expected a non-empty ascending sequence, got {ratios}")
    baseline = _metric(evaluate(copy.deepcopy(model)), "the unpruned model")
    if math.isnan(baseline):
        raise ValueError("evaluate: returned NaN for the unpruned model; nothing can be compared to it")
    layers = [layer.name for layer in plan(model, method, 0.0, example_input=example_input, **options).layers]
    curves: dict[str, list[float]] = {layer: [] for layer in layers}
    trials = tqdm(total=len(layers) * len(ratios), desc="sensitivity", disable=not progress, leave=False)
    for layer in layers:
        for ratio in ratios:
            trial = copy.deepcopy(model)
            plan(trial, method, {layer: ratio}, example_input=example_input, **options).apply(trial)
            curves[layer].append(_metric(evaluate(trial), f"{layer!r} pruned by {ratio}"))
            trials.update()
    trials.close()
    # Under torchrun every rank plans the same trials; evaluate must return the metric over all ranks' data.
    check_rank_identical([baseline, *(v for values in curves.values() for v in values)], "evaluate")
    suggested = {}
    for layer, values in curves.items():
        # The largest ratio such that it and every smaller one stay within tolerance.
        ok = 0.0
        for r, v in zip(ratios, values, strict=True):
            if not v >= baseline - tolerance:  # NaN fails this too
                break
            ok = r
        suggested[layer] = ok
    return Sensitivity(baseline, ratios, curves, tolerance, suggested)


def _metric(value: Any, what: str) -> float:
    """``evaluate``'s result as a float (a one-element tensor or NumPy scalar is fine); TypeError otherwise."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"evaluate: expected a number (higher is better) for {what}, got {value!r}")
    return float(value)
