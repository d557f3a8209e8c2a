"""Helpers shared by the MNIST quality benchmarks: seeded batches, subsets, mean/SE over seeds, formatting."""

from __future__ import annotations

import math
import statistics
import traceback
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset


def say(message: str) -> None:
    print(message, flush=True)


def fmt_acc(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def loader(dataset: Any, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    """Batches in an order fixed by ``seed``."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed)
    )


def subset(dataset: TensorDataset, indices: torch.Tensor | None) -> TensorDataset:
    return dataset if indices is None else TensorDataset(*(t[indices] for t in dataset.tensors))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    mean, std = mean_std(values)
    n = len([v for v in values if v is not None])
    return mean, (std / math.sqrt(n) if n > 1 else math.nan)


def fmt_ms(values: Sequence[float]) -> str:
    """Mean ± standard deviation (over seeds) of accuracies, in %."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "—"
    return f"{100 * mean:.1f}" if len(values) == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def fmt_diff(mean: float, se: float) -> str:
    if math.isnan(mean):
        return "—"
    return f"{100 * mean:+.2f}" + ("" if math.isnan(se) else f" ± {100 * se:.2f}")


def caught_warnings(caught: Iterable[warnings.WarningMessage]) -> list[str]:
    return sorted({f"{w.category.__name__}: {str(w.message)[:240]}" for w in caught})


def record_error(row: dict[str, Any], error: BaseException) -> None:
    """Keep a failed run in the results: its error and a short traceback go into its row, so the report shows
    the failure where the figure would be instead of the whole benchmark stopping."""
    row["error"] = f"{type(error).__name__}: {error}"[:300]
    row["traceback"] = traceback.format_exc(limit=4)
