"""Saving a pruned model and loading it into a freshly built instance of its architecture.

A structurally pruned model no longer matches the ``state_dict`` shapes of its class's constructor, which is why
loading pruned models is the most common complaint about pruning tools. pyprune stores the plans that were
applied (``model.pyprune_history``, plain data) next to the ``state_dict``; loading builds nothing from pickled
classes: it replays the plans on the fresh model you pass, in order, then loads the weights with strict key and
shape checking. The file is read with ``torch.load(weights_only=True)``, so it cannot run code.

Integrity: every file carries a SHA-256 checksum of its content (tensor bytes, dtypes and shapes, plans, metadata),
verified on load; a changed byte, a truncated file or one that is not a pyprune file raises ValueError naming the
file. Non-finite parameters are refused on saving and on loading. :func:`save_checked` and :func:`load_checked`
give the same guarantees to any tensor/plain-data object (the schedules' per-round state).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from pyprune.pruning.apply import HISTORY_ATTRIBUTE, make_permanent, restore_on_error
from pyprune.pruning.plan import PruningPlan

CHECKPOINT_FORMAT = "pyprune-pruned/1"
CHECKSUM_KEY = "checksum"


def save_pruned(model: nn.Module, path: str | os.PathLike[str], **extra: Any) -> None:
    """Write ``model``'s weights and pruning history to ``path`` (a ``torch.save`` file with a checksum).

    Args:
        model: a model pruned with pyprune plans (a dense model is saved too, with an empty history).
        path: destination file.
        **extra: JSON-serialisable metadata stored alongside (e.g. accuracy, epoch).

    Raises:
        ValueError: a parameter holds NaN or infinity (named): such a model cannot be meant to be kept.
    """
    history = getattr(model, HISTORY_ATTRIBUTE, None) or []
    masks_folded = not any(name.endswith("_mask") for name, _ in model.named_buffers())
    state = model.state_dict()
    _check_finite(state, {name for name, _ in model.named_parameters()}, "model")
    save_checked(
        {
            "format": CHECKPOINT_FORMAT,
            "history": json.dumps(history),
            "masks_folded": masks_folded and any(plan["mode"] == "mask" for plan in history),
            "state_dict": state,
            "extra": json.dumps(extra),
        },
        path,
    )


def load_pruned(path: str | os.PathLike[str], model: nn.Module, *, map_location: Any = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` into ``model``, a fresh instance of the same architecture.

    The file's checksum is verified and every stored plan validated before ``model`` changes; then the plans are
    applied to ``model`` in order (each checks that it meets the architecture it was made for), and the weights
    are loaded strictly. Returns ``model``; the stored ``extra`` metadata is available as
    ``model.pyprune_extra``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is corrupt, truncated, not written by :func:`save_pruned`, holds non-finite
            parameters or a malformed plan (the message names the file); the model is then unchanged.
    """
    checkpoint = load_checked(path, map_location=map_location)
    where = os.fspath(path)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"path: {where!r} is not a checkpoint written by pyprune.save_pruned")
    try:
        plans = [_plan_from_dict(plan_data) for plan_data in json.loads(checkpoint["history"])]
        extra = json.loads(checkpoint["extra"])
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"path: {where!r} holds a malformed pruning history: {error}") from error
    with restore_on_error(model):
        for plan in plans:
            plan.apply(model)
        if checkpoint["masks_folded"]:
            make_permanent(model)
        state = checkpoint["state_dict"]
        _check_finite(state, {name for name, _ in model.named_parameters()}, where)
        # load_state_dict copies in place before it reports a mismatch; check first so a failure changes nothing.
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        found = {name: tuple(t.shape) for name, t in state.items()}
        if found != expected:
            difference = next(
                f"{name!r}: {found.get(name, 'missing')} in the file, {expected.get(name, 'absent')} in the model"
                for name in [*expected, *found]
                if found.get(name) != expected.get(name)
            )
            raise ValueError(
                f"path: {where!r} does not fit this model after replaying its plans ({difference}); pass a fresh "
                "instance of the architecture it was saved from"
            )
        model.load_state_dict(state, strict=True)
    _refresh_masked_tensors(model)
    object.__setattr__(model, "pyprune_extra", extra)
    return model


def _plan_from_dict(data: Any) -> Any:
    """A history entry as a plan: a :class:`~pyprune.pruning.depth.BlockPlan` (depth pruning) or a PruningPlan."""
    from pyprune.pruning.depth import BLOCK_PLAN_FORMAT, BlockPlan

    if isinstance(data, dict) and data.get("format") == BLOCK_PLAN_FORMAT:
        return BlockPlan.from_dict(data)
    return PruningPlan.from_dict(data)


def save_checked(payload: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """``torch.save`` a dict of tensors and plain data with a ``"checksum"`` entry (SHA-256 of the rest)."""
    if not isinstance(payload, dict) or CHECKSUM_KEY in payload:
        raise ValueError(f"payload: expected a dict without a {CHECKSUM_KEY!r} key")
    torch.save({**payload, CHECKSUM_KEY: checksum(payload)}, path)


def load_checked(path: str | os.PathLike[str], *, map_location: Any = None) -> dict[str, Any]:
    """Read a file written by :func:`save_checked` (weights only) and verify its checksum; returns the payload.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: as ``open`` does.
        ValueError: the file cannot be read as a ``torch.save`` file of tensors (truncated, corrupt, or a pickle
            that would run code), or its checksum is missing or does not match; the message names the file.
    """
    where = os.fspath(path)
    with open(where, "rb"):  # missing files and permissions raise their own, accurate errors
        pass
    try:
        loaded = torch.load(where, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(
            f"path: {where!r} is corrupt, truncated or not a pyprune file: torch.load refused it "
            f"({type(error).__name__}: {str(error).strip()[:300] or 'no detail'})"
        ) from error
    if not isinstance(loaded, dict) or CHECKSUM_KEY not in loaded:
        raise ValueError(
            f"path: {where!r} is not a pyprune file (no checksum); it was not written by pyprune"
        )
    stored = loaded.pop(CHECKSUM_KEY)
    if stored != checksum(loaded):
        raise ValueError(
            f"path: {where!r} is corrupt: its content does not match the checksum written with it (a changed "
            "byte in the weights or plans); restore it from a copy"
        )
    return loaded


def checksum(value: Any) -> str:
    """SHA-256 (hex) of nested dicts/lists/tuples of tensors and plain values: keys, order, dtypes, shapes, bytes."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"T{tensor.dtype}{tuple(value.shape)}:".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}:".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, list | tuple):
        digest.update(f"L{type(value).__name__}{len(value)}:".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, str | bytes | bool | int | float):
        digest.update(f"V{type(value).__name__}{value!r}:".encode())
    else:
        raise TypeError(f"checksum: cannot digest a {type(value).__name__}; expected tensors and plain data")


def _check_finite(state: dict[str, Any], names: set[str], where: str) -> None:
    """ValueError naming the first parameter of ``state`` (a key in ``names``) that holds NaN or infinity."""
    for name, tensor in state.items():
        if name in names and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{where}: parameter {name!r} holds NaN or infinity; refusing to keep it")


def _refresh_masked_tensors(model: nn.Module) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` for every prune reparametrisation of ``model``.

    ``torch.nn.utils.prune`` refreshes the derived tensor only in a forward pre-hook, so right after
    ``load_state_dict`` it still holds the values of the fresh architecture until the first forward pass.
    """
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                setattr(module, hook._tensor_name, hook.apply_mask(module))
