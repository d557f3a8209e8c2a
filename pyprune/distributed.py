"""Data-driven pruning under ``torchrun``: every rank reduces its shard's statistics and plans the same.

Under an initialised ``torch.distributed`` process group each rank accumulates a criterion's statistics on its own
shard of the data (a :class:`~torch.utils.data.distributed.DistributedSampler`), and the criterion reduces them
over ranks once, when the plan first reads them, with the operation that makes the result the statistic of the
concatenated data:

* sums with their counts: Taylor's summed ``|z · ∂L/∂z|`` and example/batch counts (Molchanov et al. 2017,
  eq. 8 is a mean over examples), CKA damage's second moments ``Σ a aᵀ``, ``Σ a`` and row counts (Kornblith et al.
  2019's linear CKA from the centred covariance), ablation damage's per-candidate loss increases times batch sizes
  and the number of examples;
* maxima: SiPP/PFP's empirical sensitivities, which are maxima over the data set S (SiPP, Baykal et al. 2019;
  PFP, Liebenwein et al. 2020), and output sizes;
* representations that need all samples at once (CKA damage with ``representation="flatten"`` or the RBF kernel,
  ablation damage measured by CKA) are gathered, concatenated in rank order.

Sums run in float64 on the reduction device (the model's CUDA device under NCCL, the CPU under gloo), so the
reduced statistics differ from a single process's only by the order of float64 additions (relative 1e-16 per
addition); the plan can differ only where two candidates' scores are that close. Every rank receives the same
reduced bytes, so every rank computes the same plan. Without an initialised process group every helper returns its
input unchanged, so single-process code pays nothing.

Applying a plan to a DDP model prunes its ``module``; a plan that removes channels also needs a new wrapper
(:func:`rewrap`), which the schedules build.

Every rank must reach the same collectives in the same order: plan on every rank, with the same method and options.
:func:`check_same_architecture` (called at the plan entry) turns a mismatch of models into an error on every rank
instead of a hang in a later collective of unequal sizes.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Mapping, Sequence
from itertools import zip_longest
from typing import Any, Literal, NamedTuple, NoReturn

import torch
import torch.distributed as dist
from torch import nn

Op = Literal["sum", "max"]


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group (of any size)."""
    return dist.is_available() and dist.is_initialized()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper, or ``model`` itself.

    Plans name layers as the bare model does (``features.0``, not ``module.features.0``), so planning and applying
    go through the inner module on every rank.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


def rewrap(model: nn.parallel.DistributedDataParallel) -> nn.parallel.DistributedDataParallel:
    """A new ``DistributedDataParallel`` around ``model.module``, with ``model``'s process group, devices, bucket
    size and gradient settings.

    DDP registers the module's parameters once, when it is built (gradient hooks, buckets, the initial
    broadcast). Removing channels replaces parameters with smaller ones that the old wrapper would never
    synchronise, so after a plan that removes channels the module needs a new wrapper. Building it is collective:
    every rank must call this, with identically pruned modules (DDP checks the parameter shapes across ranks and
    broadcasts rank 0's parameters and buffers). Communication hooks registered on ``model`` and a mixed-precision
    configuration are not carried over.
    """
    settings: dict[str, Any] = {
        "device_ids": model.device_ids,
        "output_device": model.output_device,
        "dim": model.dim,
        "process_group": model.process_group,
        "find_unused_parameters": model.find_unused_parameters,
        "gradient_as_bucket_view": model.gradient_as_bucket_view,
        "static_graph": model.static_graph,
    }
    if not getattr(model, "bucket_bytes_cap_default", True):  # an explicit bucket_cap_mb
        settings["bucket_cap_mb"] = model.bucket_bytes_cap / 2**20
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers and warns on the old name.
    if hasattr(model, "forward_sync_buffers"):
        settings["forward_sync_buffers"] = model.forward_sync_buffers
    else:
        settings["broadcast_buffers"] = model.broadcast_buffers
    return nn.parallel.DistributedDataParallel(model.module, **settings)


def reduction_device(like: torch.Tensor | None = None) -> torch.device:
    """Where collectives run: NCCL reduces only CUDA tensors (``like``'s device, else the current one); gloo and
    MPI take CPU tensors."""
    if dist.get_backend() != "nccl":
        return torch.device("cpu")
    if like is not None and like.is_cuda:
        return like.device
    return torch.device("cuda", torch.cuda.current_device())


def all_reduce(tensors: Sequence[torch.Tensor], op: Op) -> list[torch.Tensor]:
    """Sum or max of each tensor over ranks, in one collective, accumulated in float64.

    Args:
        tensors: any shapes, real dtypes; not modified.
        op: ``"sum"`` or ``"max"``.

    Returns:
        New tensors with the inputs' shapes, dtypes and devices (the same objects when not distributed). A float32
        maximum is exact; a float32 sum is rounded once, after the float64 reduction.
    """
    if op not in ("sum", "max"):
        raise ValueError(f"op: expected 'sum' or 'max', got {op!r}")
    tensors = list(tensors)
    if not is_distributed() or not tensors:
        return tensors
    device = reduction_device(tensors[0])
    flat = torch.cat([t.detach().reshape(-1).to(device, torch.float64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    parts = flat.split([t.numel() for t in tensors])
    return [p.reshape(t.shape).to(t.device, t.dtype) for p, t in zip(parts, tensors, strict=True)]


def sum_counts(counts: Sequence[int]) -> list[int]:
    """Integer counts summed over ranks (exact below 2**53); the counts themselves when not distributed."""
    if not is_distributed():
        return list(counts)
    (total,) = all_reduce([torch.tensor([float(c) for c in counts], dtype=torch.float64)], "sum")
    return [int(c) for c in total.tolist()]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``(n_r, ...)`` tensor concatenated along dim 0 in rank order ``(Σ n_r, ...)``.

    A rank with no rows may pass any trailing shape of the same number of dims (it does not know the others').

    Raises:
        ValueError: (on every rank) ranks with rows hold different trailing dims.
    """
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    device = reduction_device(tensor)
    shape = torch.tensor(tuple(tensor.shape), dtype=torch.int64, device=device)
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape)
    shapes_list = [tuple(s.tolist()) for s in shapes]
    trailing = {s[1:] for s in shapes_list if s[0] > 0} or {tuple(tensor.shape[1:])}
    if len(trailing) != 1:
        raise ValueError(
            f"tensor: ranks hold rows of different shapes {shapes_list}; expected equal trailing dims"
        )
    rows = max(s[0] for s in shapes_list)
    padded = torch.zeros((rows, *next(iter(trailing))), dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: s[0]] for g, s in zip(gathered, shapes_list, strict=True)]).to(tensor.device)


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's parameter and buffer names and shapes (not values), as hex."""
    digest = hashlib.sha256()
    for kind, items in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, value in items:
            digest.update(f"{kind} {name} {tuple(value.shape)}\n".encode())
    return digest.hexdigest()


def check_same_architecture(model: nn.Module) -> None:
    """Raise on every rank unless every rank holds a model with the same :func:`fingerprint`.

    One all-gather of a fixed-size digest, so a mismatch cannot hang; on a mismatch a second gather of the
    parameter lists names the first difference. No-op when not distributed.

    Raises:
        ValueError: the fingerprints differ (the same message on every rank).
    """
    if not is_distributed():
        return
    model = unwrap_model(model)
    mine = fingerprint(model)
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, mine)
    if len(set(digests)) == 1:
        return
    layouts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(layouts, [(n, tuple(p.shape)) for n, p in model.named_parameters()])
    groups: dict[str, list[int]] = {}
    for rank, digest in enumerate(digests):
        groups.setdefault(digest, []).append(rank)
    first = next(
        (
            f"rank 0 has {a} where rank {rank} has {b}"
            for rank, layout in enumerate(layouts)
            for a, b in zip_longest(layouts[0], layout)
            if a != b
        ),
        "parameters agree; buffers differ",
    )
    raise ValueError(
        "model: the ranks of the process group hold different architectures (parameter and buffer names and "
        f"shapes hashed): ranks by fingerprint {sorted(groups.values())}; first difference: {first}. Every rank "
        "must plan the same model"
    )


def agree_on_seed(seed: Any) -> Any:
    """``seed``, after checking that every rank passed the same one (no-op when not distributed).

    Raises:
        ValueError: (on every rank) the ranks passed different seeds.
    """
    if not is_distributed():
        return seed
    seeds: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seeds, seed)
    if any(s != seeds[0] for s in seeds):
        raise ValueError(
            f"seed: expected the same seed on every rank (randomised plans must be identical), got {seeds}"
        )
    return seed


def rank_identical_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``, checked to be the same seed on every rank.

    CPU generators give the same stream on every machine for a seed; draws made on the CPU and moved to the
    model's device therefore agree across ranks, whatever their devices.
    """
    return torch.Generator().manual_seed(agree_on_seed(seed))


def check_rank_identical(values: Sequence[float], name: str) -> None:
    """Raise on every rank unless ``values`` are bitwise equal on every rank (no-op when not distributed).

    Raises:
        ValueError: naming ``name`` and the largest difference.
    """
    if not is_distributed():
        return
    exact = [float(v).hex() for v in values]
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, exact)
    differing = [
        i for i, column in enumerate(zip(*everyone, strict=True)) if any(v != column[0] for v in column)
    ]
    if differing:
        i = differing[0]
        raise ValueError(
            f"{name}: returned different values on different ranks ({len(differing)} of {len(exact)}; the first, "
            f"by rank: {[float.fromhex(e[i]) for e in everyone]}); it must return the metric over all ranks' "
            "data (pyprune.train.evaluate with a DistributedSampler does)"
        )


# -- per-criterion reductions ---------------------------------------------------------------------------------


class TaylorTotals(NamedTuple):
    """Taylor statistics over all ranks, per layer: float64 sums ``(C,)``, examples, batches, output positions."""

    sums: dict[str, torch.Tensor]
    examples: dict[str, int]
    batches: dict[str, int]
    positions: dict[str, int]


def taylor_totals(
    layers: Mapping[str, nn.Module],
    sums: Mapping[str, torch.Tensor],
    examples: Mapping[str, int],
    batches: Mapping[str, int],
    positions: Mapping[str, int],
) -> TaylorTotals:
    """Sum Taylor's per-layer sums and counts over ranks (max of the output positions), in two collectives.

    ``layers`` are the scored layers: one that no gradient reached on some rank contributes zeros there. Not
    distributed: copies of the dicts (the tensors themselves).
    """
    if not is_distributed():
        return TaylorTotals(dict(sums), dict(examples), dict(batches), dict(positions))
    names = list(layers)
    local = [
        sums[n] if n in sums else torch.zeros(int(layers[n].weight.shape[0]), dtype=torch.float64)
        for n in names
    ]
    counts = torch.tensor([[examples.get(n, 0), batches.get(n, 0)] for n in names], dtype=torch.float64)
    *reduced, counts = all_reduce([*local, counts], "sum")
    (sizes,) = all_reduce([torch.tensor([positions.get(n, 0) for n in names], dtype=torch.float64)], "max")
    seen = [i for i, n in enumerate(names) if counts[i, 1] > 0]
    return TaylorTotals(
        {names[i]: reduced[i] for i in seen},
        {names[i]: int(counts[i, 0]) for i in seen},
        {names[i]: int(counts[i, 1]) for i in seen},
        {n: int(s) for n, s in zip(names, sizes.tolist(), strict=True) if s > 0},
    )


def max_sensitivities(
    weights: Mapping[str, torch.Tensor],
    s_mean: dict[str, torch.Tensor],
    s_max: dict[str, torch.Tensor],
    patches: dict[str, int],
    new_samples: int,
) -> int:
    """Replace SiPP/PFP's running maxima in place by their maxima over ranks; returns ``new_samples`` summed.

    A maximum of maxima is the maximum over the union of the shards, and taking it again changes nothing, so
    repeated accumulations stay exact. ``weights`` are the flattened ``(F, C_in·κ)`` weights, whose shape, dtype
    and device a layer unseen on this rank takes.
    """
    if not is_distributed():
        return new_samples
    names = list(weights)
    local = []
    for store in (s_mean, s_max):
        for n in names:
            if n not in store:
                store[n] = torch.zeros_like(weights[n])
            local.append(store[n])
    sizes = torch.tensor([patches.get(n, 0) for n in names], dtype=torch.float64)
    *reduced, sizes = all_reduce([*local, sizes], "max")
    for store, part in ((s_mean, reduced[: len(names)]), (s_max, reduced[len(names) :])):
        for n, value in zip(names, part, strict=True):
            store[n].copy_(value)
    for n, p in zip(names, sizes.tolist(), strict=True):
        if p > 0:
            patches[n] = int(p)
        else:  # no rank ran the layer: unseen, as in one process
            del s_mean[n], s_max[n]
    (total,) = sum_counts([new_samples])
    return total


class CKATotals(NamedTuple):
    """CKA-damage statistics over all ranks: ``[Σ a aᵀ, Σ a, rows]`` per layer (channels representation) or the
    kept samples per layer as ``(n_i, C, T)`` blocks, one per batch in one process, one gathered block over ranks
    (flatten representation / RBF)."""

    moments: dict[str, list[Any]]
    samples: dict[str, list[torch.Tensor]]


def cka_totals(
    channels: Mapping[str, int],
    moments: Mapping[str, list[Any]],
    samples: Mapping[str, list[torch.Tensor]] | None,
    max_samples: int,
) -> CKATotals:
    """Sum CKA damage's second moments over ranks (``samples=None``, channels representation), or gather its kept
    samples in rank order and keep the first ``max_samples`` (with more samples than that in all, which ones are
    kept depends on the sharding)."""
    if samples is None:
        if not is_distributed():
            return CKATotals(dict(moments), {})
        names = list(channels)
        local: list[torch.Tensor] = []
        for n in names:
            c = channels[n]
            outer, total, rows = moments.get(
                n, [torch.zeros(c, c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0]
            )
            local += [outer, total, torch.tensor([float(rows)], dtype=torch.float64, device=outer.device)]
        reduced = all_reduce(local, "sum")
        summed = {}
        for i, n in enumerate(names):
            outer, total, rows = reduced[3 * i : 3 * i + 3]
            if rows.item() > 0:
                summed[n] = [outer, total, int(rows.item())]
        return CKATotals(summed, {})
    if not is_distributed():
        return CKATotals({}, dict(samples))
    gathered = {}
    for n in channels:
        mine = samples.get(n)
        local_rows = torch.cat(mine) if mine else torch.zeros(0, channels[n], 0, dtype=torch.float64)
        everything = gather_rows(local_rows)[:max_samples]
        if everything.shape[0]:
            gathered[n] = [everything]
    return CKATotals({}, gathered)


def ablation_totals(
    damage: torch.Tensor,
    samples: int,
    original: list[torch.Tensor] | None,
    ablated: list[list[torch.Tensor]] | None,
) -> tuple[torch.Tensor, int, list[torch.Tensor] | None, list[list[torch.Tensor]] | None]:
    """Ablation damage over ranks: per-candidate damage sums ``(C,)`` and example counts summed; for the CKA
    measure (``original`` and ``ablated`` given, ``(n, d)`` float64 blocks per batch) the representations are
    gathered in rank order, in one collective, as one block each. Not distributed: the inputs themselves."""
    if not is_distributed():
        return damage, samples, original, ablated
    (damage,) = all_reduce([damage], "sum")
    (samples,) = sum_counts([samples])
    if original is None or ablated is None:
        return damage, samples, original, ablated
    blocks = [original, *ablated]
    local = (
        torch.cat([torch.cat(block) for block in blocks], dim=1)
        if original
        else torch.zeros(0, 0, dtype=torch.float64)
    )
    everything = gather_rows(local)
    parts = everything.split(everything.shape[1] // len(blocks), dim=1)
    return damage, samples, [parts[0]], [[part] for part in parts[1:]]


def exit_rank() -> NoReturn:
    """End a rank's process once its work is done: barrier (no rank tears the group down while another still
    talks to it), destroy the process group, exit 0 without static destructors (gloo's threads can abort the
    interpreter's own shutdown with "terminate called without an active exception" after all the work)."""
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def planning_model(model: nn.Module, seed: Any = None) -> nn.Module:
    """The model to plan on (the inner module of a DDP wrapper), after checking, under torch.distributed, that
    every rank holds the same architecture and passed the same ``seed`` (errors on every rank, see
    :func:`check_same_architecture` and :func:`agree_on_seed`)."""
    model = unwrap_model(model)
    check_same_architecture(model)
    agree_on_seed(seed)
    return model
