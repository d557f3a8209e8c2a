"""Depth pruning: score whole residual blocks by how little they change their input, then remove them.

Scores of a run of ``n`` consecutive blocks ``l .. l+n-1``, from the representation ``x`` entering block ``l`` and
``y`` leaving block ``l+n-1`` over the calibration samples (tokens for sequence models, images for CNNs):

* ``"angular"``: Gromov et al. 2024 (The Unreasonable Ineffectiveness of the Deeper Layers, Eq. 7), the mean over
  samples of ``arccos(x . y / (|x| |y|)) / pi``.
* ``"bi"``: ShortGPT's Block Influence (Men et al. 2024, Eq. 1), ``1 - mean cos(x, y)``.
* ``"cka"``: ``1 - linear CKA(x, y)`` (Kornblith et al. 2019), all pairs in one fused pass of
  :func:`pyprune.cka_matrix`.

Low scores mean the run is close to the identity and goes first. :func:`block_importance` scores;
:func:`plan_blocks` picks the ``n`` least important blocks (``contiguous=False``) or the best run of ``n``
(``contiguous=True``, Gromov et al.'s procedure); :class:`BlockPlan` applies the choice (a shorter block list;
Hugging Face configs get ``num_hidden_layers`` and ``layer_types`` rewritten and attention ``layer_idx`` renumbered
so key/value caches index the surviving layers) and serialises to JSON, so :func:`pyprune.save_pruned` /
:func:`pyprune.load_pruned` replay it. Only shape-preserving blocks can go (a ResNet stage's first block, which
downsamples, is never removed).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from pyprune.activations import eval_mode
from pyprune.pruning.apply import HISTORY_ATTRIBUTE, restore_on_error
from pyprune.pruning.fingerprint import check_fingerprint, model_fingerprint
from pyprune.pruning.oneshot.calibration import model_inputs

BLOCK_PLAN_FORMAT = "pyprune-blocks/1"
Metric = Literal["angular", "bi", "cka"]
METRICS: tuple[str, ...] = ("angular", "bi", "cka")
_LEAF_TYPES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.LayerNorm,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Embedding,
)


def find_residual_blocks(model: nn.Module, blocks: str | Sequence[str] | None = None) -> list[str]:
    """Qualified names of the containers (``nn.ModuleList``/``nn.Sequential``) whose children are the blocks.

    Default: every container of two or more children of one class that are not plain layers, outside any other
    such container (GPT-2 ``transformer.h``, Llama ``model.layers``, BERT ``encoder.layer``, timm ``blocks``,
    torchvision ViT ``encoder.layers``, ResNet ``layer1`` .. ``layer4``).
    """
    if blocks is not None:
        names = [blocks] if isinstance(blocks, str) else list(blocks)
        modules = dict(model.named_modules())
        for name in names:
            container = modules.get(name)
            if not isinstance(container, (nn.ModuleList, nn.Sequential)) or len(container) == 0:
                raise ValueError(f"blocks: {name!r} is not a non-empty ModuleList/Sequential of the model")
        return names
    found: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in found):
            continue
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) == 1 and not issubclass(next(iter(kinds)), _LEAF_TYPES) and any(module[0].children()):
            found.append(name)
    if not found:
        raise ValueError(
            f"model: {type(model).__name__} has no list of residual blocks; pass blocks='<ModuleList name>'"
        )
    return found


@dataclass
class BlockImportance:
    """Scores of every run of ``n`` consecutive blocks (see the module docstring).

    Attributes:
        metric: ``"angular"``, ``"bi"`` or ``"cka"``.
        n: run length.
        blocks: qualified names of all blocks, in forward order.
        scores: float64 ``(len(blocks) - n + 1,)``; ``scores[l]`` scores removing blocks ``l .. l+n-1``; ``inf``
            where the run changes the shape of the representation (cannot be removed).
        samples: number of calibration samples (tokens or images) the scores use.
    """

    metric: str
    n: int
    blocks: list[str]
    scores: torch.Tensor
    samples: int

    def best_run(self) -> list[str]:
        """The run of ``n`` blocks with the lowest score (first one on ties)."""
        start = int(torch.argmin(self.scores))
        if not math.isfinite(float(self.scores[start])):
            raise ValueError(f"n: no run of {self.n} consecutive blocks keeps the representation's shape")
        return self.blocks[start : start + self.n]

    def table(self) -> str:
        rows = [f"{'start':<40} {self.metric:>10}"]
        rows += [f"{self.blocks[i]:<40} {float(s):>10.5f}" for i, s in enumerate(self.scores)]
        return "\n".join(rows)


def block_importance(
    model: nn.Module,
    data: Iterable[Any],
    metric: Metric = "angular",
    *,
    n: int = 1,
    blocks: str | Sequence[str] | None = None,
    max_samples: int = 4096,
    max_batches: int | None = None,
    progress: bool = True,
) -> BlockImportance:
    """Score every run of ``n`` consecutive residual blocks of ``model`` on calibration batches.

    Args:
        model: a Hugging Face decoder/encoder, a timm/torchvision ViT, a ResNet, ...; not modified.
        data: batches: tensors, ``(input, target)`` tuples or dicts (``input_ids``/``attention_mask``/
            ``pixel_values``); padding tokens (``attention_mask == 0``) are left out.
        metric: ``"angular"``, ``"bi"`` or ``"cka"``.
        n: run length (1: single blocks).
        blocks: container name(s); default :func:`find_residual_blocks`.
        max_samples: keep at most this many samples (tokens or images, in batch order) per block: memory is
            ``2 * blocks * max_samples * width`` float32 values.
        max_batches: stop after this many batches.
        progress: a tqdm bar over the batches.
    """
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    if not isinstance(max_samples, int) or max_samples < 2:
        raise ValueError(f"max_samples: expected an int >= 2, got {max_samples!r}")
    containers = find_residual_blocks(model, blocks)
    modules = dict(model.named_modules())
    names = [f"{c}.{child}" for c in containers for child, _ in modules[c].named_children()]
    if n > len(names):
        raise ValueError(f"n: the model has {len(names)} blocks, cannot score runs of {n}")
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    tokens: list[torch.Tensor | None] = [None]
    kept = [0]

    def record(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        shapes.setdefault(name, (tuple(x.shape[1:]), tuple(y.shape[1:])))
        room = max_samples - kept[0]
        inputs[name].append(_samples(x, tokens[0])[:room].float().cpu())
        outputs[name].append(_samples(y, tokens[0])[:room].float().cpu())

    def hook(name: str):
        def on_forward(module, args, kwargs, output):
            x = args[0] if args else kwargs.get("hidden_states")
            y = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
                record(name, x.detach(), y.detach())

        return on_forward

    handles = [modules[name].register_forward_hook(hook(name), with_kwargs=True) for name in names]
    from tqdm.auto import tqdm

    try:
        with torch.no_grad(), eval_mode(model):
            for index, batch in enumerate(
                tqdm(data, desc=f"block {metric}", disable=not progress, leave=False)
            ):
                if (max_batches is not None and index >= max_batches) or kept[0] >= max_samples:
                    break
                batch_inputs = model_inputs(batch)
                mask = batch_inputs.get("attention_mask") if isinstance(batch_inputs, dict) else None
                tokens[0] = mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None
                _call(model, batch_inputs)
                kept[0] += inputs[names[0]][-1].shape[0] if inputs[names[0]] else 0
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if not inputs[name]]
    if missing:
        raise ValueError(f"data: blocks {missing[:3]} never ran on the calibration batches")
    xs = [torch.cat(inputs[name]) for name in names]
    ys = [torch.cat(outputs[name]) for name in names]
    starts = range(len(names) - n + 1)
    removable = [
        all(shapes[names[i]][0] == shapes[names[i]][1] for i in range(start, start + n)) for start in starts
    ]
    scores = torch.full((len(starts),), math.inf, dtype=torch.float64)
    if metric == "cka":
        from pyprune.similarity import cka_matrix

        usable = [start for start in starts if removable[start]]
        if usable:
            matrix = cka_matrix([xs[s] for s in usable], [ys[s + n - 1] for s in usable])
            for position, start in enumerate(usable):
                scores[start] = 1.0 - float(matrix[position, position])
    else:
        for start in starts:
            if removable[start]:
                cos = _cosines(xs[start], ys[start + n - 1])
                value = torch.arccos(cos).mean() / math.pi if metric == "angular" else 1.0 - cos.mean()
                scores[start] = float(value)
    return BlockImportance(metric, n, names, scores, int(xs[0].shape[0]))


def _samples(t: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
    """``(samples, features)``: tokens of a ``(batch, seq, width)`` tensor (padding dropped), else one row per
    example."""
    if t.dim() == 3:
        if tokens is not None and tokens.shape == t.shape[:2]:
            return t[tokens.to(t.device)]
        return t.reshape(-1, t.shape[-1])
    return t.reshape(t.shape[0], -1)


def _cosines(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, y = x.double(), y.double()
    dot = (x * y).sum(dim=1)
    norms = x.norm(dim=1) * y.norm(dim=1)
    return (dot / norms.clamp_min(torch.finfo(torch.float64).tiny)).clamp(-1.0, 1.0)


def _call(model: nn.Module, inputs: Any) -> Any:
    if getattr(getattr(model, "config", None), "use_cache", None) is not None:
        return (
            model(**inputs, use_cache=False) if isinstance(inputs, dict) else model(inputs, use_cache=False)
        )
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


# ------------------------------------------------------------------------------------------------ plan / apply


@dataclass
class BlockPlan:
    """Which residual blocks go; apply with :meth:`apply` (in place).

    Attributes:
        removed: qualified block names (``"transformer.h.5"``).
        fingerprint: parameter names and shapes of the model planned for.
        options: how the blocks were chosen (metric, n, scores), for the record.
    """

    removed: list[str]
    fingerprint: list[tuple[str, tuple[int, ...]]]
    options: dict[str, Any] = field(default_factory=dict)

    def apply(self, model: nn.Module) -> nn.Module:
        """Remove the blocks from ``model`` (in place; untouched if anything fails); returns ``model``."""
        check_fingerprint(self.fingerprint, model)
        by_container: dict[str, list[int]] = {}
        modules = dict(model.named_modules())
        for name in self.removed:
            container, _, child = name.rpartition(".")
            if not isinstance(modules.get(container), (nn.ModuleList, nn.Sequential)) or name not in modules:
                raise ValueError(f"plan: {name!r} is not a block in a ModuleList/Sequential of the model")
            by_container.setdefault(container, []).append(
                list(dict(modules[container].named_children())).index(child)
            )
        with restore_on_error(model):
            config = getattr(model, "config", None)
            config_before = dict(vars(config)) if config is not None else None
            try:
                for container, drop in by_container.items():
                    _shorten(model, container, set(drop))
                _rewrite_config(model, by_container)
            except BaseException:
                if config is not None:
                    vars(config).clear()
                    vars(config).update(config_before)
                raise
            history = list(getattr(model, HISTORY_ATTRIBUTE, None) or [])
            history.append(self.to_dict())
            object.__setattr__(model, HISTORY_ATTRIBUTE, history)
        return model

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BLOCK_PLAN_FORMAT,
            "mode": "blocks",
            "removed": list(self.removed),
            "fingerprint": [[name, list(shape)] for name, shape in self.fingerprint],
            "options": self.options,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockPlan:
        if not isinstance(data, dict) or data.get("format") != BLOCK_PLAN_FORMAT:
            raise ValueError(f"not a pyprune block plan: expected format {BLOCK_PLAN_FORMAT!r}")
        return cls(
            removed=list(data["removed"]),
            fingerprint=[(name, tuple(shape)) for name, shape in data["fingerprint"]],
            options=dict(data.get("options", {})),
        )

    def __str__(self) -> str:
        return f"BlockPlan: remove {len(self.removed)} block(s): {', '.join(self.removed)}"


def plan_blocks(
    model: nn.Module,
    data: Iterable[Any],
    amount: float | int,
    metric: Metric = "angular",
    *,
    contiguous: bool = True,
    blocks: str | Sequence[str] | None = None,
    **options: Any,
) -> BlockPlan:
    """Choose blocks to remove; the model is not modified.

    Args:
        model, data, metric, blocks: as for :func:`block_importance` (``**options``: its other arguments).
        amount: number of blocks (int >= 1) or fraction of all blocks (float in (0, 1), rounded half up).
        contiguous: remove the best run of consecutive blocks (Gromov et al.) or, with False, the individually
            least important blocks (ShortGPT's procedure, scores of single blocks).
    """
    total = len(
        [
            c
            for name in find_residual_blocks(model, blocks)
            for c in dict(model.named_modules())[name].children()
        ]
    )
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"amount: expected a block count or a fraction, got {type(amount).__name__}")
    count = amount if isinstance(amount, int) else math.floor(amount * total + 0.5)
    if isinstance(amount, float) and not 0 < amount < 1:
        raise ValueError(f"amount: expected a fraction in (0, 1), got {amount}")
    if not 1 <= count < total:
        raise ValueError(f"amount: removes {count} of {total} blocks; expected between 1 and {total - 1}")
    scores = block_importance(model, data, metric, n=count if contiguous else 1, blocks=blocks, **options)
    if contiguous:
        removed = scores.best_run()
    else:
        order = torch.argsort(scores.scores, stable=True)[:count]
        if not torch.isfinite(scores.scores[order]).all():
            raise ValueError(f"amount: fewer than {count} blocks keep the representation's shape")
        removed = [scores.blocks[int(i)] for i in sorted(order.tolist())]
    return BlockPlan(
        removed,
        model_fingerprint(model),
        {"metric": metric, "amount": amount, "contiguous": contiguous, "scores": scores.scores.tolist()},
    )


def prune_blocks(
    model: nn.Module, data: Iterable[Any], amount: float | int, metric: Metric = "angular", **options: Any
) -> BlockPlan:
    """:func:`plan_blocks`, then apply the plan to ``model`` in place; returns the plan."""
    plan = plan_blocks(model, data, amount, metric, **options)
    plan.apply(model)
    return plan


def _shorten(model: nn.Module, container_name: str, drop: set[int]) -> None:
    parent_name, _, attribute = container_name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    container = getattr(parent, attribute)
    children = list(container.named_children())
    kept = [(name, child) for i, (name, child) in enumerate(children) if i not in drop]
    if isinstance(container, nn.ModuleList):
        replacement: nn.Module = nn.ModuleList([child for _, child in kept])
    elif all(name.isdigit() for name, _ in children):
        replacement = nn.Sequential(*[child for _, child in kept])
    else:  # named children (torchvision ViT's encoder_layer_0, ...) keep their names
        replacement = nn.Sequential(OrderedDict(kept))
    setattr(parent, attribute, replacement)
    # Hugging Face attention layers index the key/value cache by layer_idx: renumber the survivors.
    for position, (_, child) in enumerate(kept):
        for module in child.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position


def _rewrite_config(model: nn.Module, removed: dict[str, list[int]]) -> None:
    config = getattr(model, "config", None)
    if config is None or len(removed) != 1:
        return
    ((container, drop),) = removed.items()
    count = len(model.get_submodule(container))
    if getattr(config, "num_hidden_layers", None) is not None:
        config.num_hidden_layers = count  # GPT-2's n_layer follows through its attribute map
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == count + len(drop):
        config.layer_types = [t for i, t in enumerate(layer_types) if i not in set(drop)]
