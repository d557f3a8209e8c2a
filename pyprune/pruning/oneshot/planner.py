"""One-shot pruning of language models from a calibration set: magnitude, Wanda and SparseGPT, unstructured or
N:M, optionally with OWL's outlier-weighed per-block sparsities. The result is an ordinary
:class:`~pyprune.pruning.plan.PruningPlan` of ``torch.nn.utils.prune`` masks; SparseGPT's reconstructed weights
travel in ``plan.weights``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from pyprune.ops.checks import check_n_m
from pyprune.pruning.fingerprint import model_fingerprint
from pyprune.pruning.layers import output_layer_name, select_layers, weight_layers
from pyprune.pruning.oneshot.calibration import (
    BlockRun,
    InputStats,
    find_blocks,
    is_calibrated,
    is_conv1d,
    run_blocks,
    run_layers,
    uncalibrated_reason,
    weight_matrix,
)
from pyprune.pruning.oneshot.owl import (
    OWL_LAMBDA,
    OWL_THRESHOLD,
    outlier_ratio,
    owl_n_per_block,
    owl_sparsities,
)
from pyprune.pruning.oneshot.solvers import SPARSEGPT_BLOCK, SPARSEGPT_DAMPING, select_by_score, sparsegpt
from pyprune.pruning.plan import LayerPlan, PruningPlan
from pyprune.pruning.selection import check_amount, measure_plan

Score = Literal["magnitude", "wanda", "sparsegpt"]
SCORES: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")


def plan_oneshot(
    model: nn.Module,
    amount: float,
    *,
    method: Score = "wanda",
    data: Iterable[Any] | None = None,
    n_m: tuple[int, int] | None = None,
    owl: bool = False,
    owl_threshold: float = OWL_THRESHOLD,
    owl_lambda: float = OWL_LAMBDA,
    blocks: str | Sequence[str] | None = None,
    max_batches: int | None = None,
    block_size: int = SPARSEGPT_BLOCK,
    damping: float = SPARSEGPT_DAMPING,
    progress: bool = True,
    example_input: torch.Tensor | None = None,
    measure: bool = True,
) -> PruningPlan:
    """Plan one-shot pruning of the linear layers of ``model``'s residual blocks; the model is not modified.

    Args:
        model: e.g. a Hugging Face causal LM (GPT-2's ``Conv1D``, OPT, Llama with grouped-query attention).
        amount: fraction of each layer's weights removed, in [0, 1); with ``n_m=(n, m)`` it must be ``1 - n/m``.
        method: ``"magnitude"`` (``|W|`` over the layer), ``"wanda"`` (``|W| ||X_j||``, per output row) or
            ``"sparsegpt"`` (OBS reconstruction; the updated weights are in ``plan.weights``).
        data: calibration batches: ``input_ids`` tensors, ``(input_ids, ...)`` tuples or dicts with
            ``input_ids`` (and ``attention_mask``: padding is left out of the statistics). Needed by Wanda,
            SparseGPT and OWL.
        n_m: ``(n, m)``: keep ``n`` of every ``m`` consecutive input weights (``(2, 4)`` for sparse tensor cores).
        owl: outlier-weighed block sparsities (Yin et al. 2023); with ``n_m``, a mixed ``n_l:m`` per block.
        owl_threshold, owl_lambda: OWL's ``M`` and ``lambda``.
        blocks: name of the ``ModuleList`` of blocks, or the names of several (a hierarchical model's stages);
            default found automatically (see :func:`~pyprune.pruning.oneshot.calibration.find_blocks`: the one
            list of a transformer, every stage of a ConvNeXt or Swin). The Linear, ``Conv1D`` and ungrouped
            ``Conv2d`` layers inside the blocks are pruned; the layers outside them (embeddings, stem,
            downsampling, head) stay dense, as in Wanda and SparseGPT. On a model without such a list (or whose
            lists hold no Linear layer, e.g. a ResNet's stages) every Linear/ConvNd but the output layer is pruned
            instead (``ConvNd`` weights flattened to rows); Wanda and SparseGPT then calibrate the whole model as
            one block, layer by layer in forward order (:func:`~pyprune.pruning.oneshot.calibration.run_layers`),
            and leave the layers they cannot take statistics of (grouped convolutions, Conv1d/Conv3d) as they are.
        max_batches: use at most this many calibration batches.
        block_size, damping: SparseGPT's lazy-update block (columns) and relative Hessian damping.
        progress: tqdm bars over the blocks.
        example_input: optional tensor batch; the plan then records parameter and FLOP counts.
        measure: with ``example_input``, measure the plan on a copy.

    Returns:
        a ``mode="mask"`` plan; ``plan.options`` records the method, pattern, per-block sparsities, the number
        of calibration tokens (rows: tokens, or conv patches) and ``untouched``: ``{layer: why}`` for every weight
        layer the plan leaves dense.

    Raises:
        ValueError: bad arguments; OWL on a model without a list of blocks (its sparsities are per block).
    """
    if method not in SCORES:
        raise ValueError(f"method: expected one of {SCORES}, got {method!r}")
    if not isinstance(amount, (int, float)) or isinstance(amount, bool):
        raise TypeError(
            f"amount: one-shot pruning takes one fraction for every block, got {type(amount).__name__}"
        )
    amount = check_amount(amount)
    if n_m is not None:
        n_m = check_n_m(n_m)
        if not math.isclose(amount, 1 - n_m[0] / n_m[1], abs_tol=1e-9):
            raise ValueError(
                f"amount: n_m={n_m} removes {1 - n_m[0] / n_m[1]:g} of the weights, got amount={amount}"
            )
    needs_data = method != "magnitude" or owl
    if needs_data and data is None:
        raise ValueError(f"data: {method}{' with OWL' if owl else ''} needs calibration batches (data=...)")
    layers, found = _layers(model, blocks, method, owl)
    # Plain magnitude needs no calibration: it reads the blocks' layers without running the blocks.
    container = found if method != "magnitude" or owl or blocks is not None else None
    block_of = _block_indices(model, container or [])
    for name, module in layers:
        if hasattr(module, "weight_mask"):
            raise ValueError(
                f"model: layer {name!r} already carries a torch.nn.utils.prune mask; fold it first with "
                "pyprune.make_permanent(model) (one-shot methods score the weights as they are)"
            )
        if (
            n_m is not None
            and weight_matrix(module).reshape(weight_matrix(module).shape[0], -1).shape[1] % n_m[1]
        ):
            raise ValueError(
                f"n_m: layer {name!r} has {weight_matrix(module).shape[1]} inputs, not a multiple of {n_m[1]}"
            )

    block_sparsity: dict[int, float] = {}
    block_n: dict[int, int] = {}
    if owl:
        ratios: list[float] = []

        def measure_outliers(run: BlockRun) -> None:
            ratios.append(
                outlier_ratio(
                    [
                        weight_matrix(m).abs().to(torch.float64) * run.stats[name].norms
                        for name, m in run.block.named_modules()
                        if is_calibrated(m) and name in run.stats
                    ],
                    owl_threshold,
                )
            )

        run_blocks(
            model,
            data,
            measure_outliers,
            blocks=found,
            max_batches=max_batches,
            progress=progress,
            description="OWL outliers",
        )
        sparsities = owl_sparsities(ratios, amount, owl_lambda)
        block_sparsity = dict(enumerate(sparsities))
        if n_m is not None:
            block_n = dict(enumerate(owl_n_per_block(sparsities, n_m[1])))
            block_sparsity = {i: 1 - n / n_m[1] for i, n in block_n.items()}

    def pattern(block_index: int | None) -> tuple[float, tuple[int, int] | None]:
        if n_m is not None:
            return 1 - n_m[0] / n_m[1], (block_n.get(block_index, n_m[0]), n_m[1]) if block_n else n_m
        return block_sparsity.get(block_index, amount), None

    removed: dict[str, torch.Tensor] = {}
    new_weights: dict[str, torch.Tensor] = {}
    tokens = [0]
    if method == "magnitude":
        for name, module in layers:
            sparsity, nm = pattern(_block_index(name, block_of))
            w = weight_matrix(module)
            removed[name] = select_by_score(w.reshape(w.shape[0], -1), None, sparsity, nm).reshape(w.shape)
    else:

        def prune_layer(name: str, module: nn.Module, stats: InputStats, block_index: int | None) -> None:
            sparsity, nm = pattern(block_index)
            tokens[0] = max(tokens[0], stats.tokens)
            w = weight_matrix(module)
            if method == "wanda":
                mask = select_by_score(w, stats.norms, sparsity, nm)
                updated = _module_layout(module, w.masked_fill(mask, 0))
            else:
                mask, updated64 = sparsegpt(
                    w, stats.gram, stats.tokens, sparsity, nm, block_size=block_size, damping=damping
                )
                new_weights[name] = _module_layout(module, updated64)
                updated = new_weights[name].to(w.dtype)
            with torch.no_grad():
                module.weight.copy_(updated)  # the copy's outputs feed the next layers
            removed[name] = mask

        def prune_block(run: BlockRun) -> None:
            for rel, module in run.block.named_modules():
                if not is_calibrated(module):
                    continue
                stats = run.stats.get(rel)
                if stats is None:
                    raise ValueError(f"data: layer {run.name}.{rel} was never called during calibration")
                prune_layer(f"{run.name}.{rel}", module, stats, run.index)

        if container is None:
            run_layers(
                model,
                data,
                [name for name, _ in layers],
                lambda name, module, stats: prune_layer(name, module, stats, None),
                gram=method == "sparsegpt",
                max_batches=max_batches,
                progress=progress,
                description=method,
            )
        else:
            run_blocks(
                model,
                data,
                prune_block,
                blocks=container,
                gram=method == "sparsegpt",
                max_batches=max_batches,
                progress=progress,
                description=method,
            )

    plan = PruningPlan(
        method=method,
        mode="mask",
        layers=[
            LayerPlan(name, "weights", module.weight.numel(), _flat_indices(module, removed[name]))
            for name, module in layers
        ],
        fingerprint=model_fingerprint(model),
        options={
            "amount": amount,
            "method": method,
            "n_m": None if n_m is None else list(n_m),
            "owl": owl,
            "owl_threshold": owl_threshold if owl else None,
            "owl_lambda": owl_lambda if owl else None,
            "block_sparsity": [block_sparsity[i] for i in sorted(block_sparsity)] if owl else None,
            "block_n": [block_n[i] for i in sorted(block_n)] if block_n else None,
            "blocks": container,
            "calibration_tokens": tokens[0] if needs_data else None,
            "untouched": _untouched(model, layers, found),
        },
        weights=new_weights,
    )
    if example_input is not None and measure and isinstance(example_input, torch.Tensor):
        measure_plan(plan, model, example_input)
    return plan


def _layers(
    model: nn.Module, blocks: str | Sequence[str] | None, method: str, owl: bool
) -> tuple[list[tuple[str, nn.Module]], list[str] | None]:
    """The layers to prune and the names of the lists of blocks they are in (None: the whole model is one
    block)."""
    try:
        lists = find_blocks(model, blocks)
        found = [
            (f"{name}.{rel}", module)
            for name, container in lists
            for rel, module in container.named_modules()
            if is_calibrated(module)
        ]
        if not found:
            raise ValueError(
                f"blocks: {[name for name, _ in lists]} contain no Linear, Conv1D or ungrouped Conv2d layer "
                "to prune"
            )
    except ValueError as error:
        if blocks is not None:
            raise
        if owl:
            raise ValueError(
                f"owl: its sparsities are per block and {type(model).__name__} has no list of identical blocks "
                f"holding Linear layers ({error}); pass blocks='<name of the ModuleList>' or leave owl off"
            ) from error
        selected = select_layers(model, None, None)
        if method == "magnitude":
            return selected, None
        return [(n, m) for n, m in selected if uncalibrated_reason(m) is None], None
    return found, [name for name, _ in lists]


def _untouched(
    model: nn.Module, layers: list[tuple[str, nn.Module]], containers: list[str] | None
) -> dict[str, str]:
    """``{layer: why}`` for every weight layer of ``model`` that the plan leaves dense."""
    pruned = {name for name, _ in layers}
    output = output_layer_name(model)
    untouched = {}
    for name in weight_layers(model):
        if name in pruned:
            continue
        module = model.get_submodule(name)
        if containers is not None and not any(name.startswith(c + ".") for c in containers):
            untouched[name] = (
                f"outside the blocks {', '.join(repr(c) for c in containers)} (embeddings, stem, downsampling "
                "and head stay dense, as in Wanda/SparseGPT)"
            )
        elif name == output:
            untouched[name] = "output layer (left out by default)"
        else:
            untouched[name] = (
                uncalibrated_reason(module) or f"{type(module).__name__}: not a layer one-shot pruning masks"
            )
    return untouched


def _block_indices(model: nn.Module, containers: list[str]) -> dict[str, int]:
    """``{"<list>.<child>": position}`` of every block, counted over the lists in order (OWL's block index)."""
    names = [
        f"{container}.{child}"
        for container in containers
        for child, _ in model.get_submodule(container).named_children()
    ]
    return {name: index for index, name in enumerate(names)}


def _block_index(name: str, block_of: dict[str, int]) -> int | None:
    """Position of the block holding layer ``name`` (None outside every block)."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        index = block_of.get(".".join(parts[:end]))
        if index is not None:
            return index
    return None


def _module_layout(module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """An ``(out, in)`` matrix in the layout of the module's ``weight`` (transposed back for ``Conv1D``)."""
    return matrix.t().contiguous() if is_conv1d(module) else matrix.reshape(module.weight.shape)


def _flat_indices(module: nn.Module, removed: torch.Tensor) -> torch.Tensor:
    return torch.flatten(_module_layout(module, removed)).nonzero().flatten().cpu()
