"""Measure what pruning bought: parameter counts, FLOPs and latency of a model, before and after.

:func:`count` counts parameters (all and nonzero) and FLOPs of one forward pass, :func:`latency` times it,
and :func:`report` sets two measurements side by side as a table::

    before = count(model, x)
    prune.l1_unstructured(model.fc, "weight", amount=0.5)
    print(report(before, count(model, x)))

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the *dense* work of the
operations it knows (matrix products, convolutions, attention): a ``torch.nn.utils.prune`` mask zeroes weights
but leaves the FLOPs unchanged, whereas removing channels (structured pruning) shrinks the shapes and so the
FLOPs. The nonzero parameter count is where unstructured pruning shows.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

from pyprune.activations import call_model, eval_mode

SLOW_FORWARD_S = 1.0
"""A first forward pass slower than this (seconds) makes :func:`latency` cut its repeats to fit the budget."""

TIME_BUDGET_S = 30.0
"""Seconds of forward passes :func:`latency` aims to stay under when the model is slow."""

_UNITS = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


@dataclass(frozen=True)
class ModelCount:
    """Size and cost of a model for one example input; see :func:`count`.

    Attributes:
        params: number of parameters (each shared parameter once; a pruned tensor counts its ``*_orig`` once).
        nonzero_params: nonzero entries of the effective parameters (``orig * mask`` for pruned tensors).
        flops: floating-point operations of one forward pass, as counted by ``FlopCounterMode``
            (2 per multiply-add).
        macs: multiply-accumulates of one forward pass, ``flops / 2``.
        per_module_flops: module name (as in ``model.named_modules()``) -> FLOPs done by that module itself,
            not by its submodules; sums to ``flops``.
    """

    params: int
    nonzero_params: int
    flops: int
    macs: int
    per_module_flops: dict[str, int]

    @property
    def sparsity(self) -> float:
        """Fraction of the parameters that are zero, ``1 - nonzero_params / params``; 0.0 without parameters."""
        return 1.0 - self.nonzero_params / self.params if self.params else 0.0


@dataclass(frozen=True)
class Latency:
    """Wall time of a model's forward pass; see :func:`latency`.

    Attributes:
        median_ms, p10_ms, p90_ms: median, 10th and 90th percentile of the timed calls, in milliseconds.
        repeats: number of timed calls (fewer than requested when the model is slow).
        threads: ``torch.get_num_threads()`` during the measurement.
        device: device the model ran on, e.g. ``"cpu"`` or ``"cuda:0"``.
        batch_size: leading dimension of the first input tensor (``None`` for a 0-d tensor).
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    threads: int
    device: str
    batch_size: int | None


@dataclass(frozen=True)
class ReportRow:
    """One metric before and after; ``ratio`` is ``after / before`` (``None`` when ``before`` is 0).

    ``unit`` is ``""`` for counts and ``"ms"`` for latencies.
    """

    metric: str
    before: float
    after: float
    ratio: float | None
    unit: str = ""


@dataclass(frozen=True)
class Report:
    """Two measurements side by side; ``str(report)`` renders an aligned table, :meth:`to_dict` a JSON-ready dict.

    Attributes:
        rows: the metrics, in table order.
        speedup: median latency before / after, ``None`` without latencies.
    """

    rows: tuple[ReportRow, ...]
    speedup: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The rows as plain dicts plus the speed-up; only ints, floats, strings and ``None``."""
        return {
            "rows": [
                {"metric": r.metric, "before": r.before, "after": r.after, "ratio": r.ratio, "unit": r.unit}
                for r in self.rows
            ],
            "speedup": self.speedup,
        }

    def __str__(self) -> str:
        table = [("metric", "before", "after", "after/before")]
        for row in self.rows:
            fmt = _format_ms if row.unit == "ms" else format_count
            ratio = "-" if row.ratio is None else f"{row.ratio:.3g}"
            table.append((row.metric, fmt(row.before), fmt(row.after), ratio))
        widths = [max(len(line[i]) for line in table) for i in range(4)]
        lines = [
            "  ".join(
                [line[0].ljust(widths[0])]
                + [cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True)]
            )
            for line in table
        ]
        lines.insert(1, "-" * len(lines[0]))
        if self.speedup is not None:
            lines.append(f"speed-up: {self.speedup:.2f}x (median latency before / after)")
        return "\n".join(lines)


def format_count(n: float) -> str:
    """``n`` to three significant digits with a K/M/G/T suffix: ``950``, ``12.3K``, ``1.23M``, ``4.5G``.

    Counts below 1000 are written in full (integers exactly).
    """
    # Round first, so that 999_999 becomes "1M" rather than "1e+03K".
    rounded = float(f"{n:.3g}")
    for scale, suffix in _UNITS:
        if abs(rounded) >= scale:
            return f"{rounded / scale:g}{suffix}"
    return str(n) if isinstance(n, int) else f"{n:.3g}"


def _format_ms(ms: float) -> str:
    # Three significant digits below 100 ms; above, whole tenths read better than an exponent.
    return f"{ms:.3g}" if ms < 100 else f"{ms:.1f}"


def count(
    model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...] | Mapping[str, Any]
) -> ModelCount:
    """Parameters, nonzero parameters and FLOPs of ``model`` for one forward pass on ``example_input``.

    The forward pass runs once, as ``model(*example_input)`` (or ``model(example_input)`` for a tensor), in eval
    mode under ``torch.no_grad()``; every submodule's ``training`` flag is restored afterwards, also when the
    forward pass raises.

    Parameters are counted once each even when shared. A tensor reparametrised by ``torch.nn.utils.prune``
    counts its ``*_orig`` parameter (the derived tensor is not a parameter and the mask is a buffer), and its
    nonzeros are those of the effective tensor ``orig * mask``.

    FLOPs follow ``FlopCounterMode``'s convention: 2 per multiply-add in matrix products and convolutions, and
    MACs are ``flops // 2``. Only the operations it knows are counted: bias additions, activations,
    normalisation and pooling count 0, and masked weights count as dense (see the module docstring).
    ``per_module_flops`` attributes each FLOP to the innermost module that ran it: the leaf modules, plus any
    module (the root is ``""``) whose own ``forward`` computes outside its submodules; modules without FLOPs
    are left out. A module registered under two different parents has its FLOPs split exactly only when it is
    called from the parent under its first name (``named_modules()`` order); the total is exact either way.

    Args:
        model: the model; its parameters and ``example_input`` must be on the same device.
        example_input: a tensor, e.g. ``(batch, channels, height, width)`` for a CNN, a tuple of tensors
            passed as positional arguments, or a dict passed as keyword arguments (``input_ids``, ...).

    Returns:
        A :class:`ModelCount`.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``example_input`` is not a tensor or tuple of tensors.
    """
    _check_model(model)
    inputs = example_input if isinstance(example_input, Mapping) else _as_inputs(example_input)
    with counting_flops() as flop_counter, eval_mode(model), torch.no_grad():
        call_model(model, inputs)
    return count_from(model, flop_counter)


class ForwardModuleTracker:
    """Which modules are running their forward pass, as ``FlopCounterMode`` reads it (``parents``: the names
    ``"<RootClass>.<path>"`` of every module entered and not yet left, plus ``"Global"``), for forward passes only.

    ``FlopCounterMode``'s own ``torch.utils.module_tracker.ModuleTracker`` also follows the backward pass: for every
    module call it flattens the inputs and outputs and registers an autograd hook on those that require gradients.
    Counting a pass that runs with gradients (Torch-Pruning's trace) paid 0.02-0.04 s per torchvision model for
    those hooks, about the cost of the pass itself; :func:`counting_flops` never counts a backward pass.
    """

    def __init__(self) -> None:
        self.parents = {"Global"}
        self._names: dict[int, str] = {}
        self._handles: list[Any] = []

    def _name(self, module: nn.Module) -> str:
        # The same names as ModuleTracker's: the first module seen is named by its class, and every module below it
        # by its parent's name and attribute (named_children, so a module registered twice keeps its first path).
        name = self._names.get(id(module))
        if name is None:
            name = self._names[id(module)] = type(module).__name__
            self._name_children(module, name)
        return name

    def _name_children(self, module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            if id(child) not in self._names:
                self._names[id(child)] = f"{prefix}.{child_name}"
                self._name_children(child, self._names[id(child)])

    def _enter(self, module: nn.Module, inputs: Any) -> None:
        self.parents.add(self._name(module))

    def _leave(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.parents.discard(self._name(module))

    def __enter__(self) -> ForwardModuleTracker:
        self._handles = [
            nn.modules.module.register_module_forward_pre_hook(self._enter),
            nn.modules.module.register_module_forward_hook(self._leave),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@contextmanager
def counting_flops() -> Iterator[FlopCounterMode]:
    """A ``FlopCounterMode`` counting every operation of the forward passes run in the block the way :func:`count`
    counts them (a backward pass in the block is not attributed to modules)."""
    flop_counter = FlopCounterMode(display=False)
    flop_counter.mod_tracker = ForwardModuleTracker()
    # nn.MultiheadAttention's (and nn.TransformerEncoderLayer's) inference fast path runs one fused native op
    # that FlopCounterMode does not know (it counted 0 FLOPs for torchvision's vit_b_16 attention): count the
    # same computation through its decomposed path.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with flop_counter:
            yield flop_counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def count_from(
    model: nn.Module, flop_counter: FlopCounterMode, nonzero_params: int | None = None
) -> ModelCount:
    """:func:`count`'s result for ``model`` from a counter that saw exactly one forward pass of it on the input
    (:func:`counting_flops`), e.g. the pass that traced it for structured pruning. ``nonzero_params``: the
    model's nonzero parameter count when already known (from :func:`nonzero_counts`)."""
    flops = flop_counter.get_total_flops()
    return ModelCount(
        params=sum(p.numel() for p in model.parameters()),
        nonzero_params=_count_nonzero_params(model) if nonzero_params is None else nonzero_params,
        flops=flops,
        macs=flops // 2,
        per_module_flops=_own_flops(model, flop_counter.get_flop_counts(), flops),
    )


PROPORTIONAL_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Modules whose FLOPs, as ``FlopCounterMode`` counts them, are ``2 x output positions x weight.numel()``."""


def flops_follow_weights(before: ModelCount, model: nn.Module) -> bool:
    """Whether every module that did FLOPs in ``before`` (``count(model, x)``) is a plain ``nn.Linear`` or
    ``nn.ConvNd`` (not a subclass, whose ``forward`` may do more) whose FLOPs are a multiple of its weight's size:
    then the FLOPs of ``model`` with channels removed follow from its weights' sizes (:func:`count_resized`)."""
    modules = dict(model.named_modules())
    for name, flops in before.per_module_flops.items():
        module = modules.get(name)
        if type(module) not in PROPORTIONAL_TYPES or flops % module.weight.numel():
            return False
    return True


def count_resized(
    before: ModelCount,
    model: nn.Module,
    resized: nn.Module,
    units: Mapping[str, tuple[int, int, Sequence[str]]] | None = None,
) -> ModelCount | None:
    """:func:`count` of ``resized`` without a forward pass, or None when it cannot be derived exactly.

    ``resized`` is ``model`` with channels removed or weights masked (same module names, same input, same
    spatial and sequence sizes) and ``before`` is ``count(model, x)``. A plain ``nn.Linear`` or ``nn.ConvNd``
    does ``2 x positions x weight.numel()`` FLOPs, where channel removal leaves ``positions`` (batch times output
    pixels or tokens) unchanged, so its FLOPs scale exactly with its weight's size. When every module that did
    FLOPs in ``before`` is one of those exact types (not a subclass, whose ``forward`` may do more), every count
    follows; otherwise (a model's own matmuls) None, and a forward pass is needed.

    ``units``: ``{layer name: (units kept, units before, its projections' names)}`` for attention layers whose
    whole heads (or MLPs whose whole hidden units) ``resized`` lost. Each head does the same work, in its q/k/v
    rows, its scores and its output columns, so the FLOPs of the layer and its projections together scale with
    the heads kept (``per_module_flops`` holds that total under the layer's name). Only where nothing else in the
    layer did FLOPs and the scaled count is whole.
    """
    units = units or {}
    modules = dict(model.named_modules())
    after_modules = dict(resized.named_modules())
    per_module = {}
    in_unit = {}
    for unit, (_, _, projections) in units.items():
        for name in before.per_module_flops:
            if name == unit or name.startswith(unit + "."):
                if name != unit and name not in projections:
                    return None
                in_unit[name] = unit
    for unit, (kept, total, _) in units.items():
        flops = sum(f for name, f in before.per_module_flops.items() if in_unit.get(name) == unit)
        if flops * kept % total:
            return None
        per_module[unit] = flops * kept // total
    for name, flops in before.per_module_flops.items():
        if name in in_unit:
            continue
        module, after = modules.get(name), after_modules.get(name)
        if (
            type(module) not in PROPORTIONAL_TYPES
            or flops % module.weight.numel()
            or type(after) is not type(module)
        ):
            return None
        per_module[name] = flops // module.weight.numel() * after.weight.numel()
    flops = sum(per_module.values())
    return ModelCount(
        params=sum(p.numel() for p in resized.parameters()),
        nonzero_params=_count_nonzero_params(resized),
        flops=flops,
        macs=flops // 2,
        per_module_flops={name: f for name, f in per_module.items() if f},
    )


def nonzero_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{parameter name: (nonzero entries, entries)}`` of every distinct parameter of ``model`` (its first name
    in ``named_parameters()``), counting the effective ``orig * mask`` of a pruned tensor like :func:`count`."""
    seen: set[int] = set()
    counts = {}
    with torch.no_grad():
        for prefix, module in model.named_modules():
            effective = _pruned_tensors(module)
            for name, param in module.named_parameters(recurse=False):
                if id(param) in seen:
                    continue
                seen.add(id(param))
                key = f"{prefix}.{name}" if prefix else name
                counts[key] = (int(torch.count_nonzero(effective.get(name, param))), param.numel())
    return counts


def count_cut(
    before: ModelCount,
    model: nn.Module,
    nonzeros: Mapping[str, tuple[int, int]],
    removed: Mapping[str, Mapping[int, Sequence[int]]],
) -> ModelCount | None:
    """:func:`count` of ``model`` with slices removed from its parameters, without building that model, or None.

    ``removed``: ``{parameter name: {dim: removed indices}}``; ``before``: ``count(model, x)``; ``nonzeros``: its
    :func:`nonzero_counts`. Exact when :func:`flops_follow_weights` (else None): the FLOPs scale with the weights'
    sizes as in :func:`count_resized`, and the nonzeros kept are those of the kept slices (the zeros of a parameter
    that has some are located and checked against the removed indices). None also for a masked or shared
    parameter in ``removed``.
    """
    if not flops_follow_weights(before, model):
        return None
    parameters = dict(model.named_parameters())
    numel_after = {}
    nonzero_after = 0
    for name, dims in removed.items():
        if name not in nonzeros or name.endswith("_orig"):
            return None
        param = parameters[name]
        numel_after[name] = math.prod(size - len(dims.get(dim, ())) for dim, size in enumerate(param.shape))
        nonzero, numel = nonzeros[name]
        if nonzero in (0, numel):
            nonzero_after += numel_after[name] if nonzero else 0
            continue
        zeros = (param.detach() == 0).nonzero()  # (zeros, ndim) coordinates
        kept = torch.ones(zeros.shape[0], dtype=torch.bool, device=zeros.device)
        for dim, idxs in dims.items():
            kept &= ~torch.isin(zeros[:, dim], torch.as_tensor(idxs, dtype=zeros.dtype, device=zeros.device))
        nonzero_after += numel_after[name] - int(kept.sum())
    nonzero_after += sum(nonzero for name, (nonzero, _) in nonzeros.items() if name not in removed)
    modules = dict(model.named_modules())
    per_module = {}
    for name, flops in before.per_module_flops.items():
        weight = modules[name].weight
        per_module[name] = (
            flops // weight.numel() * numel_after.get(f"{name}.weight" if name else "weight", weight.numel())
        )
    flops = sum(per_module.values())
    return ModelCount(
        params=before.params - sum(parameters[name].numel() - n for name, n in numel_after.items()),
        nonzero_params=nonzero_after,
        flops=flops,
        macs=flops // 2,
        per_module_flops={name: f for name, f in per_module.items() if f},
    )


def _count_nonzero_params(model: nn.Module) -> int:
    return sum(nonzero for nonzero, _ in nonzero_counts(model).values())


def _pruned_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """``{"weight_orig": orig * mask}`` for each tensor of ``module`` that carries a prune reparametrisation."""
    # Recomputed from orig and mask rather than read from module.weight, which is only refreshed by a forward
    # pass and so may be stale if orig or the mask changed since the last one.
    return {
        f"{hook._tensor_name}_orig": hook.apply_mask(module)
        for hook in module._forward_pre_hooks.values()
        if isinstance(hook, prune.BasePruningMethod)
    }


def _own_flops(model: nn.Module, counts: dict[str, dict[Any, int]], total: int) -> dict[str, int]:
    """Per-module FLOPs, each counted only in the innermost module, keyed by ``model.named_modules()`` names.

    ``counts`` is ``FlopCounterMode.get_flop_counts()``: FLOPs per operation for ``"Global"`` and for every
    module that ran any, keyed ``"<RootClass>"`` for the root and ``"<RootClass>.<path>"`` for submodules. An
    operation is added to every module running at the time, so a module's count includes its submodules';
    subtracting the children's counts leaves what the module computed itself.
    """
    canonical = {id(m): name for name, m in model.named_modules()}
    # FlopCounterMode names a module reachable by two paths by either one, so look up every path.
    by_path = {name: canonical[id(m)] for name, m in model.named_modules(remove_duplicate=False)}
    root_prefix = type(model).__name__ + "."
    inclusive = {"": total}
    for tracker_name, per_op in counts.items():
        path = tracker_name.removeprefix(root_prefix)
        # Modules called without being registered in the model keep their flops in the caller that ran them.
        if path != tracker_name and path in by_path:
            inclusive[by_path[path]] = sum(per_op.values())
    own = dict(inclusive)
    for name, flops in inclusive.items():
        if name:
            # The nearest ancestor that ran: a parent whose forward calls a grandchild directly never ran
            # itself, so its own ancestor holds the FLOPs. The root always has a count.
            ancestor = name.rpartition(".")[0]
            while ancestor not in inclusive:
                ancestor = ancestor.rpartition(".")[0]
            own[ancestor] -= flops
    return {name: flops for name, flops in own.items() if flops}


def latency(
    model: nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    warmup: int = 5,
    repeats: int = 30,
    threads: int | None = None,
) -> Latency:
    """Wall time of one forward pass of ``model`` on ``example_input``, in milliseconds.

    The model runs ``warmup`` untimed calls, then ``repeats`` timed ones, in eval mode under
    ``torch.inference_mode()``; every submodule's ``training`` flag is restored afterwards. On CUDA the device
    is synchronised before and after each timed call, so a time covers the kernels, not just their launch.

    Slow models: if the first call takes longer than :data:`SLOW_FORWARD_S` (1 s), the remaining warm-up is
    skipped (one-off start-up costs are small next to such a call) and the timed calls are cut so that all
    calls together stay within :data:`TIME_BUDGET_S` (30 s), keeping at least one timed call. The returned
    ``repeats`` says how many were timed.

    A pruned layer's ``weight`` is recomputed during the forward pass, so afterwards it is an inference tensor;
    the next forward outside inference mode replaces it.

    Args:
        model: the model; its parameters and ``example_input`` must be on the same device.
        example_input: a tensor, e.g. ``(batch, features)``, or a tuple of tensors passed as positional
            arguments.
        warmup: untimed calls before timing, >= 0.
        repeats: timed calls, >= 1.
        threads: torch intra-op threads to measure with (restored afterwards); ``None`` keeps the current
            setting.

    Returns:
        A :class:`Latency` with the median and the 10th / 90th percentiles in milliseconds.

    Raises:
        TypeError: ``model`` or ``example_input`` has the wrong type.
        ValueError: ``warmup`` < 0, ``repeats`` < 1 or ``threads`` < 1.
    """
    _check_model(model)
    inputs = _as_inputs(example_input)
    if not (isinstance(warmup, int) and warmup >= 0):
        raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    if threads is not None and not (isinstance(threads, int) and threads >= 1):
        raise ValueError(f"threads: expected None or an int >= 1, got {threads!r}")
    device = next(itertools.chain(model.parameters(), model.buffers(), inputs)).device
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with eval_mode(model), torch.inference_mode():
            seconds = _time_calls(lambda: model(*inputs), device, warmup, repeats)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)
    p10, median, p90 = np.percentile(np.asarray(seconds) * 1e3, [10, 50, 90])
    return Latency(
        median_ms=float(median),
        p10_ms=float(p10),
        p90_ms=float(p90),
        repeats=len(seconds),
        threads=used_threads,
        device=str(device),
        batch_size=inputs[0].shape[0] if inputs[0].ndim else None,
    )


def _time_calls(forward: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each timed call of ``forward``, after the warm-up, under the slow-model budget."""

    def timed() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        forward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    first = timed()
    # Without warm-up the first call is a timed one.
    seconds = [] if warmup else [first]
    warmup_left = max(warmup - 1, 0)
    if first > SLOW_FORWARD_S:
        warmup_left = 0
        affordable = len(seconds) + int((TIME_BUDGET_S - first) // first)
        repeats = max(1, min(repeats, affordable))
    for _ in range(warmup_left):
        forward()
    while len(seconds) < repeats:
        seconds.append(timed())
    return seconds


def report(
    before: ModelCount,
    after: ModelCount,
    latency_before: Latency | None = None,
    latency_after: Latency | None = None,
) -> Report:
    """Compare two :func:`count` results (and optionally two :func:`latency` results) of a model.

    Rows: params, nonzero params, FLOPs, MACs, and with latencies the median latency in ms; each with the
    ratio after / before. With latencies the report also carries the speed-up, median before / after.

    Raises:
        TypeError: ``before`` / ``after`` is not a :class:`ModelCount`, or a latency is not a :class:`Latency`.
        ValueError: only one of ``latency_before`` and ``latency_after`` is given.
    """
    for name, value in (("before", before), ("after", after)):
        if not isinstance(value, ModelCount):
            raise TypeError(
                f"{name}: expected a ModelCount from pyprune.measure.count, got {type(value).__name__}"
            )
    for name, value in (("latency_before", latency_before), ("latency_after", latency_after)):
        if value is not None and not isinstance(value, Latency):
            raise TypeError(
                f"{name}: expected a Latency from pyprune.measure.latency or None, got {type(value).__name__}"
            )
    if (latency_before is None) != (latency_after is None):
        missing = "latency_after" if latency_after is None else "latency_before"
        raise ValueError(f"{missing}: expected a Latency since the other latency is given, got None")

    def row(metric: str, b: float, a: float, unit: str = "") -> ReportRow:
        return ReportRow(metric, b, a, a / b if b else None, unit)

    rows = [
        row("params", before.params, after.params),
        row("nonzero params", before.nonzero_params, after.nonzero_params),
        row("FLOPs", before.flops, after.flops),
        row("MACs", before.macs, after.macs),
    ]
    speedup = None
    if latency_before is not None and latency_after is not None:
        rows.append(row("latency (ms)", latency_before.median_ms, latency_after.median_ms, "ms"))
        speedup = latency_before.median_ms / latency_after.median_ms
    return Report(rows=tuple(rows), speedup=speedup)


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")


def _as_inputs(example_input: Any) -> tuple[torch.Tensor, ...]:
    """``example_input`` as the tuple of positional arguments of the forward pass."""
    if isinstance(example_input, torch.Tensor):
        return (example_input,)
    if (
        isinstance(example_input, tuple)
        and example_input
        and all(isinstance(x, torch.Tensor) for x in example_input)
    ):
        return example_input
    if isinstance(example_input, tuple):
        got = f"a tuple of ({', '.join(type(x).__name__ for x in example_input)})"
    else:
        got = type(example_input).__name__
    raise TypeError(f"example_input: expected a tensor or a non-empty tuple of tensors, got {got}")
