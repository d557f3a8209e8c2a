"""Saving a pruned model and loading it into a freshly built instance of its architecture.

A structurally pruned model no longer matches the ``state_dict`` shapes of its class's constructor, which is why
loading pruned models is the most common complaint about pruning tools. pyprune stores the plans that were
applied (``model.pyprune_history``, plain data) next to the ``state_dict``; loading builds nothing from pickled
classes: it replays the plans on the fresh model you pass, in order, then loads the weights with strict key and
shape checking. The file is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from pyprune.pruning.apply import HISTORY_ATTRIBUTE, make_permanent
from pyprune.pruning.plan import PruningPlan

CHECKPOINT_FORMAT = "pyprune-pruned/1"


def save_pruned(model: nn.Module, path: str | os.PathLike[str], **extra: Any) -> None:
    """Write ``model``'s weights and pruning history to ``path`` (a ``torch.save`` file).

    Args:
        model: a model pruned with pyprune plans (a dense model is saved too, with an empty history).
        path: destination file.
        **extra: JSON-serialisable metadata stored alongside (e.g. accuracy, epoch).
    """
    history = getattr(model, HISTORY_ATTRIBUTE, None) or []
    masks_folded = not any(name.endswith("_mask") for name, _ in model.named_buffers())
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "history": json.dumps(history),
            "masks_folded": masks_folded and any(plan["mode"] == "mask" for plan in history),
            "state_dict": model.state_dict(),
            "extra": json.dumps(extra),
        },
        path,
    )


def load_pruned(path: str | os.PathLike[str], model: nn.Module, *, map_location: Any = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` into ``model``, a fresh instance of the same architecture.

    The saved plans are applied to ``model`` in order (each checks that it meets the architecture it was made
    for), then the weights are loaded strictly. Returns ``model``; the stored ``extra`` metadata is available as
    ``model.pyprune_extra``.
    """
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"path: {os.fspath(path)!r} is not a checkpoint written by pyprune.save_pruned")
    for plan_data in json.loads(checkpoint["history"]):
        PruningPlan.from_dict(plan_data).apply(model)
    if checkpoint["masks_folded"]:
        make_permanent(model)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    _refresh_masked_tensors(model)
    object.__setattr__(model, "pyprune_extra", json.loads(checkpoint["extra"]))
    return model


def _refresh_masked_tensors(model: nn.Module) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` for every prune reparametrisation of ``model``.

    ``torch.nn.utils.prune`` refreshes the derived tensor only in a forward pre-hook, so right after
    ``load_state_dict`` it still holds the values of the fresh architecture until the first forward pass.
    """
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                setattr(module, hook._tensor_name, hook.apply_mask(module))
