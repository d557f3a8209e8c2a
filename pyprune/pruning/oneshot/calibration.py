"""Sequential, block-by-block calibration of a stack of residual blocks (decoder layers of a causal LM).

As in SparseGPT (Frantar & Alistarh 2023, Section 4) and Wanda (Sun et al. 2023), the calibration batches run
through the model once up to the first block; their inputs to that block are kept, and then each block in turn
is (1) run on them while hooks accumulate the statistics of its prunable layers' inputs, (2) pruned on a copy,
and (3) run again, pruned, to give the next block its inputs. Every block therefore sees the already-pruned
earlier blocks. A hierarchical model has one list of blocks per stage (ConvNeXt, Swin): the lists are taken in
forward order, and the first block of a later list receives what the model computes (downsampling layers
between the lists included) from the pruned outputs of the earlier list's last block. Memory: the calibration
batches, their hidden states at the current block (plus each finished list's last output), one copy of one
block, and per layer a ``(in, in)`` float64 Gram matrix (SparseGPT) or an ``(in,)`` vector (Wanda); it does not
grow with the number of blocks. The model itself is never modified.

A model without such a list (a CNN) is calibrated as one block, one layer at a time (:func:`run_layers`): the
layers in the order the forward pass first calls them, each pruned before the next one's statistics are taken,
as SparseGPT prunes a block's layers sequentially. A ``Conv2d``'s input rows are its unfolded patches
``(C_in * kh * kw)`` (each output value is the filter row's dot product with one patch), so Wanda's
``||X_j||`` and SparseGPT's ``X^T X`` are over patches.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pyprune.activations import call_model, eval_mode
from pyprune.pruning.attention import expose_unit_inputs


class _ReachedBlock(Exception):
    """Raised by a pre-hook once the inputs it needs are recorded (the first block's, or a layer's statistics):
    the rest of the forward pass is skipped."""


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2): a linear layer whose ``weight`` is ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and isinstance(getattr(module, "weight", None), torch.Tensor)


def is_prunable_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's (effective, possibly masked) weight as ``(out, in)``: transposed for ``Conv1D``, flattened to
    ``(out, C_in/groups * prod(kernel))`` for a ConvNd (a view, except for a non-contiguous conv weight)."""
    weight = module.weight.detach()
    return weight.t() if is_conv1d(module) else weight.flatten(1)


def uncalibrated_reason(module: nn.Module) -> str | None:
    """Why :func:`run_layers` cannot take ``module``'s input statistics (None when it can): Linear, ``Conv1D``
    and ungrouped, zero-padded ``Conv2d`` layers are calibrated."""
    if is_prunable_linear(module):
        return None
    if not isinstance(module, nn.Conv2d):
        return f"{type(module).__name__}: Wanda/SparseGPT input statistics are taken for Linear and Conv2d layers"
    if module.groups != 1:
        return f"grouped convolution (groups={module.groups}): its input statistics differ per group"
    if module.padding_mode != "zeros":
        return f"padding_mode={module.padding_mode!r}: its patches are not zero-padded"
    return None


def is_calibrated(module: nn.Module) -> bool:
    """Whether Wanda/SparseGPT take ``module``'s input statistics (see :func:`uncalibrated_reason`)."""
    return uncalibrated_reason(module) is None


def find_blocks(model: nn.Module, blocks: str | Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """``[(name, container), ...]``: the model's lists of repeated residual blocks, in model order.

    A transformer has one list (its decoder/encoder layers). A hierarchical model has one per stage: torchvision's
    ConvNeXt and Swin keep their stages' blocks in ``features.1``, ``features.3``, ``features.5`` and
    ``features.7``, with the downsampling layers between them. Calibrating only one of them (as when the list
    holding the most parameters was taken) would leave every other stage dense.

    Args:
        model: the model.
        blocks: the containers' qualified names: one (``"transformer.h"`` for GPT-2, ``"model.decoder.layers"``
            for OPT, ``"model.layers"`` for Llama) or a sequence of them in forward order; default: every
            ``nn.ModuleList``/``nn.Sequential`` whose children are composite modules of one class and which holds
            a Linear (or ``Conv1D``) layer, outermost lists only. Lists of conv-only blocks (a ResNet's stages)
            are not taken: such a model is calibrated layer by layer (:func:`run_layers`), stem included.

    Raises:
        ValueError: a name that is not a non-empty ModuleList/Sequential, or no list found.
    """
    if blocks is not None:
        names = [blocks] if isinstance(blocks, str) else blocks
        if not isinstance(names, Sequence) or not names or not all(isinstance(n, str) for n in names):
            raise TypeError(
                f"blocks: expected a module name such as 'transformer.h' or a list of names, got {blocks!r}"
            )
        found = []
        for name in names:
            try:
                container = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"blocks: the model has no submodule {name!r}") from None
            if not isinstance(container, (nn.ModuleList, nn.Sequential)) or len(container) == 0:
                raise ValueError(
                    f"blocks: {name!r} is a {type(container).__name__}, expected a non-empty ModuleList"
                )
            found.append((name, container))
        return found
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 1:
            continue
        if len({type(child) for child in module}) != 1 or not any(True for _ in module[0].children()):
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue  # a list inside a list already taken (named_modules visits parents first)
        if any(is_prunable_linear(m) for m in module.modules()):
            found.append((name, module))
    if not found:
        raise ValueError(
            f"model: {type(model).__name__} has no list of identical blocks holding Linear layers; "
            "pass blocks='<name of the ModuleList>'"
        )
    return found


def model_inputs(batch: Any) -> Any:
    """What the model is called with: a dict batch minus ``labels``, a tensor, or the first item of a tuple."""
    if isinstance(batch, Mapping):
        return {key: value for key, value in batch.items() if key != "labels"}
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("data: got an empty batch")
        return batch[0]
    if isinstance(batch, torch.Tensor):
        return batch
    raise TypeError(f"data: expected tensor, tuple or dict batches, got {type(batch).__name__}")


@dataclass
class BlockInput:
    """One calibration batch at the input of a block: positional and keyword arguments, and which tokens count.

    Attributes:
        args, kwargs: the block's call arguments (hidden states first, or as ``kwargs["hidden_states"]``).
        tokens: bool ``(batch, seq)`` from the batch's ``attention_mask`` (padding excluded from statistics),
            or None.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    tokens: torch.Tensor | None = None

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: torch.Tensor) -> BlockInput:
        if self.args:
            return BlockInput((hidden, *self.args[1:]), self.kwargs, self.tokens)
        return BlockInput(self.args, {**self.kwargs, "hidden_states": hidden}, self.tokens)


def first_block_inputs(
    model: nn.Module,
    first_block: nn.Module,
    batches: list[Any],
    replace: Sequence[tuple[str, nn.Module, list[torch.Tensor]]] = (),
) -> list[BlockInput]:
    """Run the calibration ``batches`` (model inputs) up to ``first_block`` and return what it receives.

    Args:
        replace: ``(name, block, outputs)``: ``block``'s output on batch ``i`` is replaced by ``outputs[i]`` (the
            pruned copy's output of the last block of an earlier list), so that a later list of blocks receives
            what the pruned earlier ones produce. Each such block must run before ``first_block``.

    The model's parameters are not modified; the hooks are removed on return.
    """
    recorded: list[BlockInput] = []
    current = [0]
    fired: set[str] = set()

    def grab(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        recorded.append(BlockInput(tuple(args), dict(kwargs)))
        raise _ReachedBlock

    def substitute(name: str, outputs: list[torch.Tensor], out: Any) -> Any:
        fired.add(name)
        new = outputs[current[0]]
        return (new, *out[1:]) if isinstance(out, (tuple, list)) else new

    handles = [first_block.register_forward_pre_hook(grab, with_kwargs=True)]
    handles += [
        block.register_forward_hook(
            lambda m, a, out, name=name, outputs=outputs: substitute(name, outputs, out)
        )
        for name, block, outputs in replace
    ]
    try:
        with torch.no_grad(), eval_mode(model):
            for index, inputs in enumerate(batches):
                current[0] = index
                fired.clear()
                try:
                    _call_without_cache(model, inputs)
                except _ReachedBlock:
                    pass
                else:
                    raise ValueError("blocks: the calibration forward pass never reached the first block")
                late = [name for name, _, _ in replace if name not in fired]
                if late:
                    raise ValueError(
                        f"blocks: the lists of blocks must be given in forward order; {late[0]!r} did not run "
                        "before the next list's first block"
                    )
                mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
                if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                    recorded[-1].tokens = mask.bool()
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def calibration_batches(data: Iterable[Any] | None, max_batches: int | None) -> list[Any]:
    """The model inputs of at most ``max_batches`` calibration batches (see :func:`model_inputs`)."""
    if data is None:
        raise ValueError(
            "data: one-shot calibration needs batches (input_ids tensors or dicts with input_ids)"
        )
    batches = [model_inputs(batch) for batch in itertools.islice(data, max_batches)]
    if not batches:
        raise ValueError("data: no calibration batch was given")
    return batches


def _call_without_cache(model: nn.Module, inputs: Any) -> Any:
    # A Hugging Face model with use_cache on hands its blocks a key/value cache that grows with every call:
    # blocks run more than once here, so caching is switched off.
    if getattr(getattr(model, "config", None), "use_cache", None) is None:
        return call_model(model, inputs)
    if isinstance(inputs, dict):
        return model(**inputs, use_cache=False)
    return model(inputs, use_cache=False)


@dataclass
class InputStats:
    """Float64 statistics of one layer's inputs ``x`` (rows of ``X``, ``N`` tokens) over the calibration set.

    Attributes:
        squares: ``(in,)`` ``sum_t x_tj^2`` (Wanda's ``||X_j||_2^2``).
        gram: ``(in, in)`` ``X^T X`` when requested (SparseGPT's Hessian is ``2 X^T X / N``), else None.
        tokens: ``N``.
    """

    squares: torch.Tensor
    gram: torch.Tensor | None = None
    tokens: int = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.to(torch.float64)
        self.squares += (x * x).sum(dim=0)
        if self.gram is not None:
            self.gram += x.t() @ x
        self.tokens += x.shape[0]

    @property
    def norms(self) -> torch.Tensor:
        return self.squares.sqrt()


@dataclass
class BlockRun:
    """What :func:`run_blocks` hands the per-block callback: the block's index, a private copy of it, and the
    input statistics of its prunable layers (``{name relative to the block: InputStats}``)."""

    index: int
    name: str
    block: nn.Module
    stats: dict[str, InputStats] = field(default_factory=dict)


def call_block(block: nn.Module, item: BlockInput) -> torch.Tensor:
    """The block's output hidden states (first element when it returns a tuple)."""
    out = block(*item.args, **item.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def run_blocks(
    model: nn.Module,
    data: Iterable[Any],
    on_block: Callable[[BlockRun], None],
    *,
    blocks: str | Sequence[str] | None = None,
    gram: bool = False,
    max_batches: int | None = None,
    progress: bool = True,
    description: str = "calibrating",
) -> list[str]:
    """Sequential calibration (see the module docstring) of every list of blocks (:func:`find_blocks`), the lists
    in forward order; returns the lists' names.

    ``on_block`` receives each block's :class:`BlockRun` (``index`` counts over all lists) after the statistics
    pass and may modify ``run.block`` (a copy) in place: the next block's inputs are that copy's outputs. The
    first block of a later list receives what the model computes from the pruned outputs of the earlier list's
    last block (the layers between lists, a ConvNeXt's downsampling, run unpruned).
    """
    lists = find_blocks(model, blocks)
    batches = calibration_batches(data, max_batches)
    bar = _progress(sum(len(container) for _, container in lists), description, progress)
    index = 0
    finished: list[tuple[str, nn.Module, list[torch.Tensor]]] = []
    for container_name, container in lists:
        items = first_block_inputs(model, container[0], batches, finished)
        # Child names, not indices: torchvision's nn.Sequential of blocks names them ("encoder_layer_0").
        for child, original in container.named_children():
            block = copy.deepcopy(original)
            block.eval()
            expose_unit_inputs(
                block
            )  # an nn.MultiheadAttention's out_proj then runs as a module, hooks and all
            run = BlockRun(index, f"{container_name}.{child}", block, collect_stats(block, items, gram))
            on_block(run)
            with torch.no_grad():
                items = [item.with_hidden(call_block(block, item)) for item in items]
            index += 1
            bar.update(1)
        finished.append((f"{container_name}.{child}", original, [item.hidden for item in items]))
    bar.close()
    return [name for name, _ in lists]


def collect_stats(block: nn.Module, items: list[BlockInput], gram: bool) -> dict[str, InputStats]:
    """Run ``block`` on every calibration input; the input statistics of each of its calibrated layers
    (:func:`is_calibrated`; a ``Conv2d``'s rows are its patches, :func:`layer_rows`)."""
    stats: dict[str, InputStats] = {}
    current: list[torch.Tensor | None] = [None]

    def hook(module: nn.Module, args: tuple[Any, ...], name: str) -> None:
        x = args[0].detach()
        tokens = current[0]
        if tokens is not None and x.shape[:-1] == tokens.shape and not isinstance(module, nn.Conv2d):
            x = x[tokens.to(x.device)]
        x = layer_rows(module, x)
        if name not in stats:
            width = x.shape[-1]
            stats[name] = InputStats(
                torch.zeros(width, dtype=torch.float64, device=x.device),
                torch.zeros(width, width, dtype=torch.float64, device=x.device) if gram else None,
            )
        stats[name].add(x)

    handles = [
        m.register_forward_pre_hook(lambda mod, args, name=name: hook(mod, args, name))
        for name, m in block.named_modules()
        if is_calibrated(m)
    ]
    try:
        with torch.no_grad():
            for item in items:
                current[0] = item.tokens
                call_block(block, item)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def layer_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(rows, in)`` input rows of a calibrated layer (see :func:`uncalibrated_reason`) from its input ``x``:
    the positions of a Linear's ``(..., in)`` input, or a ``Conv2d``'s unfolded ``(C_in * kh * kw)`` patches."""
    if not isinstance(module, nn.Conv2d):
        return x.reshape(-1, x.shape[-1])
    if x.dim() == 3:
        x = x.unsqueeze(0)
    padding = module.padding
    if isinstance(padding, str):  # "valid" or "same" (stride 1): PyTorch puts the odd pixel on the right
        total = (
            [0, 0]
            if padding == "valid"
            else [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
        )
        x = F.pad(x, [total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2])
        padding = (0, 0)
    patches = F.unfold(x, module.kernel_size, module.dilation, padding, module.stride)  # (N, C*kh*kw, L)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def run_layers(
    model: nn.Module,
    data: Iterable[Any],
    names: list[str],
    on_layer: Callable[[str, nn.Module, InputStats], None],
    *,
    gram: bool = False,
    max_batches: int | None = None,
    progress: bool = True,
    description: str = "calibrating",
) -> None:
    """The whole model as one block, calibrated layer by layer (module docstring).

    Args:
        model: the model; not modified (a copy runs).
        data: calibration batches, as :func:`first_block_inputs` takes them.
        names: the layers to calibrate (each passes :func:`uncalibrated_reason`).
        on_layer: ``on_layer(name, layer of the copy, its InputStats)`` in forward order; it may modify the
            layer in place, and later layers' statistics see the change.
        gram: also accumulate ``X^T X``.

    Raises:
        ValueError: no batch, or a layer of ``names`` that the forward pass never calls.
    """
    batches = calibration_batches(data, max_batches)
    work = copy.deepcopy(model).eval()
    expose_unit_inputs(work)  # an nn.MultiheadAttention's out_proj then runs as a module, hooks and all
    calls: dict[str, int] = {}  # calls per forward; the dict keeps the order of first calls
    handles = [
        work.get_submodule(name).register_forward_pre_hook(
            lambda module, args, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            _call_without_cache(work, batches[0])
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in names if name not in calls]
    if missing:
        raise ValueError(f"data: layers {missing[:5]} were never called during calibration")
    bar = _progress(len(calls), description, progress, "layer")
    for name, count in calls.items():
        module = work.get_submodule(name)
        width, device = weight_matrix(module).shape[1], module.weight.device
        stats = InputStats(
            torch.zeros(width, dtype=torch.float64, device=device),
            torch.zeros(width, width, dtype=torch.float64, device=device) if gram else None,
        )

        def take(
            m: nn.Module, args: tuple[Any, ...], stats: InputStats = stats, once: bool = count == 1
        ) -> None:
            stats.add(layer_rows(m, args[0].detach()))
            if once:  # nothing after a layer called once per forward changes its statistics: stop there
                raise _ReachedBlock

        handle = module.register_forward_pre_hook(take)
        try:
            with torch.no_grad():
                for inputs in batches:
                    with contextlib.suppress(_ReachedBlock):
                        _call_without_cache(work, inputs)
        finally:
            handle.remove()
        on_layer(name, module, stats)
        bar.update(1)
    bar.close()


def _progress(total: int, description: str, enabled: bool, unit: str = "block") -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit=unit, disable=not enabled, leave=False)
