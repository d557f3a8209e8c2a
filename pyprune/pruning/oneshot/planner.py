"""One-shot pruning of language models from a calibration set: magnitude, Wanda and SparseGPT, unstructured or
N:M, optionally with OWL's outlier-weighed per-block sparsities. The result is an ordinary
:class:`~pyprune.pruning.plan.PruningPlan` of ``torch.nn.utils.prune`` masks; SparseGPT's reconstructed weights
travel in ``plan.weights``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from pyprune.ops.checks import check_n_m
from pyprune.pruning.fingerprint import model_fingerprint
from pyprune.pruning.layers import select_layers
from pyprune.pruning.oneshot.calibration import (
    BlockRun,
    find_blocks,
    is_conv1d,
    is_prunable_linear,
    run_blocks,
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
    blocks: str | None = None,
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
        blocks: name of the ``ModuleList`` of blocks; default found automatically (see
            :func:`~pyprune.pruning.oneshot.calibration.find_blocks`). Magnitude on a model without such a list
            prunes every Linear/ConvNd but the output layer instead (``ConvNd`` weights flattened to rows).
        max_batches: use at most this many calibration batches.
        block_size, damping: SparseGPT's lazy-update block (columns) and relative Hessian damping.
        progress: tqdm bars over the blocks.
        example_input: optional tensor batch; the plan then records parameter and FLOP counts.
        measure: with ``example_input``, measure the plan on a copy.

    Returns:
        a ``mode="mask"`` plan; ``plan.options`` records the method, pattern, per-block sparsities and the
        number of calibration tokens.

    Raises:
        NotImplementedError: Wanda or SparseGPT on a model without a list of identical blocks (pass ``blocks``).
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
    layers = _layers(model, blocks, method)
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
    container = (
        None if method == "magnitude" and not owl and blocks is None else find_blocks(model, blocks)[0]
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
                        if is_prunable_linear(m) and name in run.stats
                    ],
                    owl_threshold,
                )
            )

        run_blocks(
            model,
            data,
            measure_outliers,
            blocks=blocks,
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
            sparsity, nm = pattern(_block_index(name, container))
            w = weight_matrix(module)
            removed[name] = select_by_score(w.reshape(w.shape[0], -1), None, sparsity, nm).reshape(w.shape)
    else:

        def prune_block(run: BlockRun) -> None:
            sparsity, nm = pattern(run.index)
            for rel, module in run.block.named_modules():
                if not is_prunable_linear(module):
                    continue
                stats = run.stats.get(rel)
                if stats is None:
                    raise ValueError(f"data: layer {run.name}.{rel} was never called during calibration")
                tokens[0] = max(tokens[0], stats.tokens)
                w = weight_matrix(module)
                if method == "wanda":
                    mask = select_by_score(w, stats.norms, sparsity, nm)
                    updated = w.masked_fill(mask, 0)
                else:
                    mask, updated64 = sparsegpt(
                        w, stats.gram, stats.tokens, sparsity, nm, block_size=block_size, damping=damping
                    )
                    updated = updated64.to(w.dtype)
                    new_weights[f"{run.name}.{rel}"] = _module_layout(module, updated64)
                with torch.no_grad():
                    weight_matrix(module).copy_(updated)  # the copy's outputs feed the next block
                removed[f"{run.name}.{rel}"] = mask

        run_blocks(
            model,
            data,
            prune_block,
            blocks=blocks,
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
        },
        weights=new_weights,
    )
    if example_input is not None and measure and isinstance(example_input, torch.Tensor):
        measure_plan(plan, model, example_input)
    return plan


def _layers(model: nn.Module, blocks: str | None, method: str) -> list[tuple[str, nn.Module]]:
    try:
        name, container = find_blocks(model, blocks)
    except ValueError as error:
        if blocks is not None:
            raise
        if method != "magnitude":
            # Calibration runs block by block; a model without a list of identical blocks is not covered yet.
            raise NotImplementedError(f"{method} on {type(model).__name__}: {error}") from error
        return select_layers(model, None, None)
    found = [
        (f"{name}.{rel}", module) for rel, module in container.named_modules() if is_prunable_linear(module)
    ]
    if not found:
        if blocks is None and method == "magnitude":
            return select_layers(model, None, None)
        raise ValueError(f"blocks: {name!r} contains no Linear or Conv1D layer to prune")
    return found


def _block_index(name: str, container: str | None) -> int | None:
    if container is None or not name.startswith(container + "."):
        return None
    return int(name[len(container) + 1 :].split(".", 1)[0])


def _module_layout(module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """An ``(out, in)`` matrix in the layout of the module's ``weight`` (transposed back for ``Conv1D``)."""
    return matrix.t().contiguous() if is_conv1d(module) else matrix.reshape(module.weight.shape)


def _flat_indices(module: nn.Module, removed: torch.Tensor) -> torch.Tensor:
    return torch.flatten(_module_layout(module, removed)).nonzero().flatten().cpu()
