"""Per-neuron ablation damage: what zeroing each unit or channel of a layer does further down the model.

:func:`ablation_damage` scores every output unit/channel ``c`` of one layer by the damage of *ablating* it, i.e.
zeroing its weights so that it outputs only its bias (the state pruning leaves it in), measured as

* ``"cka"``: ``1 - CKA`` (linear) between the representation at module ``at`` with and without the ablation;
* ``"loss"``: the increase of the mean loss over the data (Molchanov et al.'s oracle criterion);
* ``"mse"``: the mean squared change of the model's output.

All candidates of a layer run in a batched computation rather than a Python loop of full forward passes: the
model runs once on ``chunk`` stacked copies of the input batch, and a forward hook on the layer sets channel
``c_i`` of copy ``i`` to its bias. Stacking the *input* (not the layer's output) keeps every tensor of the
forward pass the same batch size, so skip connections, concatenations and a layer called several times per
forward (each call ablated, as zeroed weights would be) work unchanged; the model must treat examples
independently along dim 0, which eval mode guarantees for BatchNorm. When ``at`` is the layer itself and the
metric is CKA, the closed form of :class:`~pyprune.pruning.criteria.cka_damage.CKADamage` is used instead (the
representation is linear in the ablated unit there): no extra forward pass at all.

:class:`AblationDamage` wraps it as a channel criterion; the ``"oracle"`` method prunes by it.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from pyprune.activations import eval_mode, first_tensor, model_device
from pyprune.distributed import ablation_totals
from pyprune.pruning.attention import UnitSpec, expose_unit_inputs
from pyprune.pruning.criteria.base import PRUNABLE_TYPES, ChannelCriterion
from pyprune.pruning.criteria.cka_damage import CKADamage
from pyprune.pruning.criteria.scored_layers import channel_dim
from pyprune.pruning.layers import check_materialised, output_layer_name
from pyprune.pruning.plan import PruningPlan
from pyprune.pruning.selection import plan_structured

Metric = Literal["cka", "loss", "mse"]

MAX_STACKED_ROWS = 8192
"""Upper bound on ``chunk * batch`` rows pushed downstream at once; lower it to save memory."""


@torch.no_grad()
def ablation_damage(
    model: nn.Module,
    layer: str,
    data: Iterable[Any] | torch.Tensor,
    *,
    metric: Metric = "loss",
    at: str | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Damage of ablating each output unit/channel of ``layer``: float64 ``(C,)``, higher = more damage.

    Args:
        model: the model, run in eval mode without gradients (training flags restored afterwards).
        layer: name of a Linear/ConvNd module.
        data: a DataLoader or iterable of ``(inputs, targets, ...)`` batches (targets needed for ``"loss"``), or
            one input tensor.
        metric: ``"cka"``, ``"loss"`` or ``"mse"`` (module docstring).
        at: for ``"cka"``, the module whose output is compared (default the model output); ignored otherwise.
        loss_fn: ``loss_fn(output, targets)``, mean over the batch; default cross-entropy.
        max_batches: use at most this many batches. CKA compares all examples seen, so keep them to a few
            thousand.
        progress: show a progress bar over batches.

    Raises:
        ValueError: unknown ``layer``/``at``/``metric``, a layer that is not Linear/ConvNd, no data, a
            ``"loss"`` metric without targets.
    """
    check_materialised(model)
    modules = dict(model.named_modules())
    if layer not in modules or not isinstance(modules[layer], PRUNABLE_TYPES):
        raise ValueError(f"layer: expected the name of a Linear/ConvNd module of the model, got {layer!r}")
    if metric not in ("cka", "loss", "mse"):
        raise ValueError(f"metric: expected 'cka', 'loss' or 'mse', got {metric!r}")
    if at is not None and at not in modules:
        raise ValueError(f"at: {at!r} is not a module of {type(model).__name__}")
    if max_batches is not None and not (isinstance(max_batches, int) and max_batches >= 1):
        raise ValueError(f"max_batches: expected None or an int >= 1, got {max_batches!r}")
    module = modules[layer]
    if metric == "cka" and at == layer:
        criterion = CKADamage(model, [layer], greedy=False, representation="flatten", max_samples=1 << 30)
        criterion.accumulate_over(data, max_batches, progress=progress)
        damage = torch.zeros(module.weight.shape[0], dtype=torch.float64)
        damage[criterion.removal_order(layer)] = 1.0 - criterion.trajectory(layer)
        return damage

    bias = module.bias.detach() if module.bias is not None else None

    def ablate(candidates: list[int]) -> RemovableHandle:
        return module.register_forward_hook(_stacked_ablation(candidates, bias, module, layer))

    return _damage(
        model,
        modules,
        data,
        int(module.weight.shape[0]),
        ablate,
        layer,
        metric,
        at,
        loss_fn,
        max_batches,
        progress,
    )


@torch.no_grad()
def unit_ablation_damage(
    model: nn.Module,
    spec: UnitSpec,
    data: Iterable[Any] | torch.Tensor,
    *,
    metric: Metric = "loss",
    at: str | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Damage of ablating each attention head (or MLP unit) of ``spec``: float64 ``(spec.num_units,)``.

    A head is ablated by zeroing its ``unit_width`` columns at the input of the projection that reads the heads
    (``spec.writer``): the state removing it leaves the model in, Michel et al.'s (2019) head masking. Measures
    and arguments as in :func:`ablation_damage`. An ``nn.MultiheadAttention`` must call its ``out_proj`` as a
    module (:func:`pyprune.pruning.attention.expose_unit_inputs`).

    Raises:
        ValueError: as :func:`ablation_damage`, and when the writer never ran as a module on the data.
    """
    check_materialised(model)
    if metric not in ("cka", "loss", "mse"):
        raise ValueError(f"metric: expected 'cka', 'loss' or 'mse', got {metric!r}")
    modules = dict(model.named_modules())
    if at is not None and at not in modules:
        raise ValueError(f"at: {at!r} is not a module of {type(model).__name__}")
    writer = model.get_submodule(spec.writer)
    calls = [0]

    def ablate(candidates: list[int]) -> RemovableHandle:
        return writer.register_forward_pre_hook(_stacked_unit_ablation(candidates, spec, calls))

    damage = _damage(
        model, modules, data, spec.num_units, ablate, spec.name, metric, at, loss_fn, max_batches, progress
    )
    if not calls[0]:
        raise ValueError(
            f"model: {spec.writer!r} never ran as a module, so the {spec.granularity} of {spec.name!r} cannot be "
            "ablated there (an nn.MultiheadAttention needs pyprune.pruning.attention.expose_unit_inputs first)"
        )
    return damage


def _damage(
    model: nn.Module,
    modules: dict[str, nn.Module],
    data: Iterable[Any] | torch.Tensor,
    channels: int,
    ablate: Callable[[list[int]], RemovableHandle],
    layer: str,
    metric: Metric,
    at: str | None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    max_batches: int | None,
    progress: bool,
) -> torch.Tensor:
    """float64 ``(channels,)`` mean damage over ``data`` of the ablations that ``ablate(candidates)`` installs (a
    hook ablating candidate ``candidates[i]`` in stacked copy ``i``), measured as ``metric`` says."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    device = model_device(model)
    batches = [(data,)] if isinstance(data, torch.Tensor) else data
    totals = torch.zeros(channels, dtype=torch.float64)
    samples = 0
    original_at: list[torch.Tensor] = []
    ablated_at: list[list[torch.Tensor]] = [[] for _ in range(channels)]
    with eval_mode(model):
        for index, batch in enumerate(
            tqdm(batches, desc=f"ablating {layer}", disable=not progress, leave=False)
        ):
            if max_batches is not None and index >= max_batches:
                break
            parts = batch if isinstance(batch, list | tuple) else (batch,)
            inputs = parts[0].to(device)
            if metric == "loss" and len(parts) < 2:
                raise ValueError("data: metric='loss' needs (inputs, targets) batches")
            targets = parts[1].to(device) if len(parts) > 1 else None
            try:
                reference_out, reference_at = _forward(
                    model, modules, inputs, at if metric == "cka" else None
                )
            except RuntimeError as error:
                if inputs.is_floating_point():
                    raise ValueError(
                        f"data: the model fails on its inputs of shape {tuple(inputs.shape)}: {error}"
                    ) from error
                raise TypeError(
                    f"data: its batches hold {inputs.dtype} inputs and the model fails on them ({error}); they must "
                    "be what the model takes (floating point for a Linear/Conv network)"
                ) from error
            n = inputs.shape[0]
            samples += n
            if metric == "cka":
                original_at.append(reference_at.reshape(n, -1).double().cpu())
            reference_loss = float(loss_fn(reference_out, targets)) if metric == "loss" else 0.0
            chunk = max(1, MAX_STACKED_ROWS // n)
            for start in range(0, channels, chunk):
                candidates = list(range(start, min(start + chunk, channels)))
                stacked = inputs.repeat(len(candidates), *([1] * (inputs.ndim - 1)))
                hook = ablate(candidates)
                try:
                    out, seen_at = _forward(model, modules, stacked, at if metric == "cka" else None)
                finally:
                    hook.remove()
                out = out.reshape(len(candidates), n, *out.shape[1:])
                for i, c in enumerate(candidates):
                    if metric == "loss":
                        totals[c] += (float(loss_fn(out[i], targets)) - reference_loss) * n
                    elif metric == "mse":
                        totals[c] += float((out[i] - reference_out).double().square().mean()) * n
                    else:
                        ablated_at[c].append(seen_at.reshape(len(candidates), n, -1)[i].double().cpu())
                # Freed before the next forward, not when it returns: a language model's stacked logits
                # (candidates x tokens x vocabulary) would otherwise be held twice at the peak.
                del out, seen_at
            del reference_out, reference_at
    # Under torch.distributed: damage and counts summed, representations gathered over every rank's shard.
    totals, samples, original_at, ablated_at = ablation_totals(
        totals, samples, *((original_at, ablated_at) if metric == "cka" else (None, None))
    )
    if samples == 0:
        raise ValueError("data: expected at least one batch, got none")
    if metric != "cka":
        return totals / samples
    reference = torch.cat(original_at)
    return torch.tensor([1.0 - _linear_cka(reference, torch.cat(a)) for a in ablated_at], dtype=torch.float64)


def _forward(
    model: nn.Module, modules: dict[str, nn.Module], inputs: torch.Tensor, at: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model output and the output compared by ``metric="cka"``: that of module ``at``, or the model output
    itself when ``at`` is None; one forward pass."""
    captured: list[torch.Tensor] = []
    hook = None
    if at is not None:
        hook = modules[at].register_forward_hook(lambda m, a, out: captured.append(first_tensor(out)))
    try:
        out = first_tensor(model(inputs))
    finally:
        if hook is not None:
            hook.remove()
    return out, captured[-1] if captured else out


def _stacked_ablation(candidates: list[int], bias: torch.Tensor | None, module: nn.Module, layer: str):
    """Forward hook for a forward pass on ``len(candidates)`` stacked copies of the input batch: in copy ``i`` of
    the layer's output, channel ``candidates[i]`` is set to its bias (0 without one)."""
    copies = len(candidates)

    def hook(mod: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        dim = channel_dim(output, module)
        if dim is None or output.ndim < 2 or output.shape[0] % copies:
            raise ValueError(
                f"layer: {layer!r} returned shape {tuple(output.shape)} in a forward pass on {copies} stacked "
                "copies of the batch; ablation needs the batch along dim 0 of its output"
            )
        ablated = output.clone()
        # (copies, C, rows of one copy, ...) view: the copy index is outermost in dim 0 of every tensor.
        moved = ablated.view(copies, output.shape[0] // copies, *output.shape[1:]).movedim(dim + 1, 1)
        for i, c in enumerate(candidates):
            moved[i, c] = 0.0 if bias is None else bias[c]
        return ablated

    return hook


def _stacked_unit_ablation(candidates: list[int], spec: UnitSpec, calls: list[int]):
    """Forward pre-hook on ``spec.writer`` for a forward pass on ``len(candidates)`` stacked copies of the batch:
    in copy ``i`` of the writer's input, the columns of unit ``candidates[i]`` are zeroed; counts its calls."""
    copies, width = len(candidates), spec.num_units * spec.unit_width

    def hook(mod: nn.Module, args: Any) -> tuple[Any, ...]:
        x = args[0]
        dim = spec.writer_batch_dim
        if x.ndim < 2 or x.shape[dim] % copies or x.shape[-1] != width:
            raise ValueError(
                f"model: {spec.writer!r} read shape {tuple(x.shape)} in a forward pass on {copies} stacked copies "
                f"of the batch; ablating the {spec.granularity} of {spec.name!r} needs the batch along dim {dim} and "
                f"{width} columns last"
            )
        calls[0] += 1
        keep = torch.ones(copies, spec.num_units, dtype=x.dtype, device=x.device)
        keep[torch.arange(copies), torch.tensor(candidates)] = 0
        # (copies, units) -> one row per example of every copy, one column per input column of the writer.
        rows = keep.repeat_interleave(x.shape[dim] // copies, 0).repeat_interleave(spec.unit_width, 1)
        shape = [1] * x.ndim
        shape[dim], shape[-1] = rows.shape
        return (x * rows.reshape(shape), *args[1:])

    return hook


def _linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Biased linear CKA of ``(n, d1)`` and ``(n, d2)`` float64 matrices (feature space or sample space, whichever
    is smaller); 0 when either side is constant."""
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    if x.shape[1] + y.shape[1] <= x.shape[0]:
        cross, xx, yy = (x.T @ y).square().sum(), (x.T @ x).square().sum(), (y.T @ y).square().sum()
    else:
        k, l_ = x @ x.T, y @ y.T
        cross, xx, yy = (k * l_).sum(), k.square().sum(), l_.square().sum()
    den = float((xx * yy).sqrt())
    return float(cross) / den if den > 0 else 0.0


class AblationDamage(ChannelCriterion):
    """Channel criterion scoring each channel by :func:`ablation_damage` (importance = damage).

    Scores are computed lazily per layer on first request, from the data given at construction.
    """

    name = "ablation"
    needs_data = True

    def __init__(
        self,
        model: nn.Module,
        data: Iterable[Any],
        *,
        metric: Metric = "loss",
        at: str | None = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        max_batches: int | None = None,
        progress: bool = False,
    ) -> None:
        # Every layer reads the data again. A re-iterable (a list, a DataLoader) is kept as it is, so the batches
        # are not all held at once; a one-shot iterator is drawn once, up to max_batches.
        if iter(data) is data:
            data = list(itertools.islice(data, max_batches))
        self.model, self.data, self.metric, self.at = model, data, metric, at
        self.loss_fn, self.max_batches, self.progress = loss_fn, max_batches, progress
        self._cache: dict[str, torch.Tensor] = {}

    def scores(
        self, module: nn.Module, name: str, dropped_inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        if name not in self._cache:
            self._cache[name] = ablation_damage(
                self.model,
                name,
                self.data,
                metric=self.metric,
                at=self.at,
                loss_fn=self.loss_fn,
                max_batches=self.max_batches,
                progress=self.progress,
            )
        return self._cache[name]

    def unit_scores(self, spec: UnitSpec) -> torch.Tensor:
        """Damage of ablating each head (unit) of ``spec``, by :func:`unit_ablation_damage` over the data."""
        if spec.name not in self._cache:
            self._cache[spec.name] = unit_ablation_damage(
                self.model,
                spec,
                self.data,
                metric=self.metric,
                at=self.at,
                loss_fn=self.loss_fn,
                max_batches=self.max_batches,
                progress=self.progress,
            )
        return self._cache[spec.name]

    def __repr__(self) -> str:
        return f"AblationDamage(metric={self.metric!r}, at={self.at!r})"


def plan_oracle(
    model: nn.Module,
    amount: Any,
    *,
    example_input: torch.Tensor | None = None,
    data: Iterable[Any] | None = None,
    loss_fn: Any = None,
    metric: Metric = "loss",
    at: str | None = None,
    max_batches: int | None = None,
    progress: bool = False,
    measure: bool = True,
    **options: Any,
) -> PruningPlan:
    """The ``"oracle"`` method: score channels by :class:`AblationDamage` over ``data``, then
    :func:`~pyprune.pruning.selection.plan_structured` them (the output layer is left out unless
    ``ignored_layers`` says otherwise). Attention heads (and GPT-2 MLP units) are scored by ablating each one
    (Michel et al. 2019) unless ``attention="skip"``.

    ``metric`` (``"loss"``, ``"mse"`` or ``"cka"``) is what the damage compares; ``measure`` is the planner's
    switch for the plan's parameter/FLOP table, as for every structured method."""
    if not isinstance(measure, bool):
        hint = f"; the oracle's damage is chosen by metric={measure!r}" if isinstance(measure, str) else ""
        raise TypeError(
            f"measure: expected True or False (count parameters and FLOPs for the plan), got {measure!r}{hint}"
        )
    options.setdefault("ignored_layers", [output_layer_name(model)])
    scored = model
    if options.get("attention", "heads") == "heads" and any(
        isinstance(m, nn.MultiheadAttention) for m in model.modules()
    ):
        # Its heads are ablated at out_proj's input, which only a copy that calls out_proj as a module exposes.
        scored = copy.deepcopy(model)
        expose_unit_inputs(scored)
    criterion = AblationDamage(
        scored, data, metric=metric, at=at, loss_fn=loss_fn, max_batches=max_batches, progress=progress
    )
    return plan_structured(
        model, amount, example_input, criterion=criterion, method="oracle", measure=measure, **options
    )
