"""SiPP: sensitivity-informed provable weight pruning (Baykal et al. 2019).

Three planners share one sensitivity pass (:class:`SensitivityTracker`) and differ in how they spend the budget:

* :func:`sipp_det_plan` (SiPPDet, the variant of the papers' experiments): keep the ``B`` weights with the largest
  patch-mean sensitivity over the whole network, ``W ⊙ [s >= tau]``; no reweighting.
* :func:`sipp_rand_plan` (SiPPRand): split every layer into (output unit ``f``, weight sign) groups, allocate the
  budget across groups by minimising the sum of their error bounds (:func:`sipp_allocation`), then keep a
  multinomial sample of each group's weights (probabilities proportional to the patch-max sensitivity) and
  reweight the kept ones by ``gamma_j = counts_j / (m p_j)`` (importance sampling, unbiased on the sign part).
* :func:`sipp_hybrid_plan` (SiPPHybrid): the same allocation; per group, sampling where its bound is smaller than
  the deterministic top-``x`` bound ``C * (sensitivity left out)``, else the top ``x``.

Budget. ``amount`` is the fraction of the *compressible weights* to remove: ``N`` = every weight of the
tracked Linear/Conv2d layers (all of them by default, classifier included, as in the authors' code); ``B = N -
round(amount * N)`` stay (round half up, as :func:`~pyprune.pruning.selection.plan_unstructured`). Biases and
BatchNorm are never touched. The authors' code (``lucaslie/provable_pruning``, "pp", and its successor
``lucaslie/torchprune``, "tp") defines a keep ratio over *all* parameters instead: pp converts it into a
weight budget inconsistently (inflated by ``kr * (size - compressible_size)``) and tp fixes that and adds an
outer root search until the realised ratio is within 0.5 %. We count compressible weights only, because SiPP
removes nothing else — a ratio over all parameters would only shift the target by a model-dependent constant
(under 1 % of the networks of Baykal et al. 2019) — and because every other weight-pruning method of pyprune
reads ``amount`` the same way, so methods are compared at equal sparsity. Weights that are already zero
(masked by an earlier plan, or exactly zero) count as removed first: when there are more than ``round(amount *
N)`` of them, only they go.

Realised size. SiPPDet keeps exactly ``min(B, nonzero weights)`` weights. SiPPRand/Hybrid allocate exactly ``B``
distinct weights, but how many distinct weights the draws hit is random (:func:`adapt_sample_size` targets the
expectation), so the realised count scatters around ``B``; it is recorded in ``plan.options["kept"]``.

Allocation (SiPPRand/Hybrid). For group ``g`` with total sensitivity ``S_g``, coefficient ``a_g = alpha(P_l,
kappa_l, c, delta) * S_g`` and ``n_g`` weights of positive sensitivity, minimise ``sum_g e(x_g; a_g) / F_l``
subject to ``0 <= x_g <= n_g`` and ``sum_g x_g <= B``, with ``e`` the bound of
:func:`~pyprune.pruning.criteria.provable.bounds.error_bound`. The authors' code hands this to cvxpy; it is a
separable convex problem, solved here exactly by its KKT conditions (:func:`continuous_allocation`): inverting
``e`` gives ``x(e) = a (2e + 3) / (6 e^2)``, so the stationarity condition ``e'(x) / F = -lambda`` becomes the
cubic ``e^3 / (e + 3) = lambda a F / 3``, whose single positive root has a closed form; ``x_g(lambda)`` is
that root's ``x`` clipped to ``[0, n_g]``, and ``lambda`` is found by bisection on ``sum_g x_g(lambda) = B``
(water-filling).

Rounding. The authors' code rounds every ``x_g`` up, which overshoots the budget by up to the number of groups
(less one). :func:`integer_allocation` instead returns the optimum of the same program over integers: the
``B`` largest marginal gains ``(e(k - 1) - e(k)) / F`` over all units ``k`` of all groups (greedy marginal
allocation is exact for separable convex objectives). It starts from the ceiling of the continuous solution
for the budget ``B + groups``, which provably contains that optimum, and takes back the units of smallest
marginal gain until ``sum_g x_g = B``. The first unit of a group has an infinite gain (``e(0) = inf``), so
every group with positive sensitivity keeps at least one weight; a budget smaller than the number of such
groups is an error.

Edge cases. Groups whose total sensitivity is ``<= eps_f32`` (dead inputs, zero weights) get nothing. Where a
group's allocation covers all its sensitive weights they are kept as they are (the authors' code would still
sample, capping ``x`` at ``n_g - 1``). Budget left once every sensitive weight is kept goes to the remaining
nonzero weights in (layer, index) order, so ``amount=0`` removes only zeros. Every layer keeps at least one
weight, since :func:`~pyprune.pruning.apply.apply_plan` refuses to empty a layer: SiPPDet gives a layer that
the global top-``B`` would leave empty its most sensitive weight, at the expense of the globally least
sensitive selected one; a layer without any sensitivity (all inputs or all weights zero on ``S``) keeps its
first nonzero weight (or its first weight when all are zero). Ties are broken by (layer order, flat index),
earlier first; sampling uses a ``torch.Generator`` seeded with ``seed``, so plans are reproducible. Grouped
convolutions are not supported (left out of the default layers and listed in ``plan.options["untouched"]``,
see :func:`sensitivity_layers`).
"""

from __future__ import annotations

import heapq
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pyprune.distributed import rank_identical_generator
from pyprune.ops.sensitivity import EPSILON
from pyprune.pruning.criteria.base import PRUNABLE_TYPES
from pyprune.pruning.criteria.provable.bounds import adapt_sample_size, alpha, sensitivity_set_size
from pyprune.pruning.criteria.provable.tracker import COMPRESSIBLE_TYPES, SensitivityTracker
from pyprune.pruning.fingerprint import model_fingerprint
from pyprune.pruning.layers import resolve_layer_refs
from pyprune.pruning.plan import LayerPlan, PruningPlan
from pyprune.pruning.selection import check_amount, measure_plan

Variant = Literal["rand", "hybrid"]


class SmallSensitivitySetWarning(UserWarning):
    """The sensitivities come from fewer samples than the bound's ``|S|`` (Baykal et al. 2019, Lemma 1) asks for."""


def group_error(x: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """``e(x; a) = (sqrt((a/3x)^2 + 6 a/3x) + a/3x) / 2`` elementwise (``inf`` where ``x <= 0``), float64."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.asarray(coefficients, dtype=np.float64) / (3 * x)
        return np.where(x > 0, 0.5 * (np.sqrt(t * t + 6 * t) + t), np.inf)


def continuous_allocation(
    coefficients: np.ndarray, weights: np.ndarray, upper: np.ndarray, budget: float
) -> tuple[np.ndarray, float]:
    """Minimise ``sum_g weights_g * e(x_g; a_g)`` s.t. ``0 <= x_g <= upper_g``, ``sum_g x_g <= budget``.

    Water-filling on the KKT conditions (see the module docstring): ``x_g(lambda)`` in closed form, ``lambda`` by
    bisection on its logarithm to float64 resolution.

    Args:
        coefficients: ``(G,)`` ``a_g > 0``.
        weights: ``(G,)`` ``> 0`` (``1 / F_l`` for SiPP).
        upper: ``(G,)`` ``>= 0``.
        budget: ``> 0``.

    Returns:
        ``(x, lambda)``: the optimum ``(G,)`` float64 and its Lagrange multiplier (0 when ``sum(upper) <=
        budget``, i.e. everything fits).
    """
    a, w, u = (np.asarray(v, dtype=np.float64) for v in (coefficients, weights, upper))
    if not (a.shape == w.shape == u.shape and a.ndim == 1):
        raise ValueError(f"expected three (G,) arrays, got shapes {a.shape}, {w.shape}, {u.shape}")
    if not ((a > 0).all() and (w > 0).all() and (u >= 0).all() and np.isfinite(a / w).all()):
        raise ValueError("coefficients and weights must be finite and > 0, upper >= 0")
    if not budget > 0:
        raise ValueError(f"budget: expected a number > 0, got {budget!r}")
    if u.sum() <= budget:
        return u.copy(), 0.0

    def spent(log_multiplier: float) -> float:
        return float(_stationary_x(a, w, u, log_multiplier).sum())

    # sum_g x_g(lambda) decreases continuously from sum(upper) > budget to 0: bracket, then bisect.
    low = high = 0.0
    while spent(low) < budget:
        low -= 8.0
    while spent(high) > budget:
        high += 8.0
    while True:
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        if spent(middle) > budget:
            low = middle
        else:
            high = middle
    return _stationary_x(a, w, u, high), math.exp(high)


def _stationary_x(a: np.ndarray, w: np.ndarray, u: np.ndarray, log_multiplier: float) -> np.ndarray:
    """``x_g(lambda)``: where ``w_g e'(x; a_g) = -lambda``, clipped to ``[0, u_g]``."""
    # In terms of the error e the condition is e^3 / (e + 3) = y with y = lambda a / (3 w); its one positive root
    # (Descartes) is the trigonometric (three real roots) or hyperbolic (one real root) form of Cardano.
    y = np.exp(np.clip(log_multiplier + np.log(a / (3 * w)), -690.0, 690.0))
    r = 4.5 * np.sqrt(3 / y)
    shape = np.where(
        r >= 1, np.cosh(np.arccosh(np.maximum(r, 1)) / 3), np.cos(np.arccos(np.minimum(r, 1)) / 3)
    )
    e = 2 * np.sqrt(y / 3) * shape
    return np.clip(a * (2 * e + 3) / (6 * e * e), 0.0, u)


def integer_allocation(
    coefficients: np.ndarray, weights: np.ndarray, upper: np.ndarray, budget: int
) -> np.ndarray:
    """The integer optimum of :func:`continuous_allocation`'s program: ``(G,)`` int64 summing to
    ``min(budget, sum(upper))``.

    It consists of the ``budget`` largest marginal gains ``w_g (e(k-1) - e(k))``, ``k = 1..upper_g``, over all
    groups (gains decrease in ``k`` as ``e`` is convex). Units beyond ``floor(x_g) + 1`` of the continuous
    solution for ``budget + G`` gain less than its multiplier, and at least ``budget`` units gain more, so that
    solution bounds the optimum from above; the smallest gains are then taken back one at a time. Ties take back
    the later group first. Every group with ``upper_g >= 1`` gets at least one unit when ``budget >= G``.
    """
    u = np.asarray(upper)
    if not (isinstance(budget, int | np.integer) and budget >= 0):
        raise ValueError(f"budget: expected an int >= 0, got {budget!r}")
    if np.any(u != np.floor(u)):
        raise ValueError("upper: expected integer bounds")
    u = u.astype(np.int64)
    if u.sum() <= budget:
        return u.copy()
    a, w = np.asarray(coefficients, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    loose, _ = continuous_allocation(a, w, u, budget + len(u))
    x = np.minimum(u, np.floor(loose).astype(np.int64) + 1)
    heap = [(_marginal_gain(a[g], w[g], int(x[g])), -g) for g in range(len(x)) if x[g] > 0]
    heapq.heapify(heap)
    for _ in range(int(x.sum()) - budget):
        _, negative = heapq.heappop(heap)
        g = -negative
        x[g] -= 1
        if x[g] > 0:
            heapq.heappush(heap, (_marginal_gain(a[g], w[g], int(x[g])), negative))
    return x


def _marginal_gain(a: float, w: float, k: int) -> float:
    """``w (e(k - 1; a) - e(k; a))`` without cancellation (``inf`` for ``k = 1``)."""
    if k == 1:
        return math.inf
    t1, t2 = a / (3 * (k - 1)), a / (3 * k)
    r1, r2 = math.sqrt(t1 * t1 + 6 * t1), math.sqrt(t2 * t2 + 6 * t2)
    # e = (r + t) / 2 and r1 - r2 = (t1 - t2)(t1 + t2 + 6) / (r1 + r2), with t1 - t2 = a / (3 k (k - 1)).
    return w * 0.5 * a / (3 * k * (k - 1)) * (1 + (t1 + t2 + 6) / (r1 + r2))


@dataclass
class SiPPAllocation:
    """SiPPRand's budget split over (layer, output unit, sign) groups, in that order (positive sign first).

    Attributes (arrays are ``(G,)``, ``G = 2 * sum_l F_l``; groups without sensitivity have zeros):
        layers: the layer names; ``layer`` indexes into it.
        layer, unit: int64 layer index and output unit ``f``.
        sign: int64 ``+1`` or ``-1``: the group's weights are those of that sign in row ``f``.
        total: float64 ``S_g``, the sum of the group's patch-max sensitivities.
        coefficient: float64 ``a_g = alpha_l * S_g`` (0 for groups with ``S_g <= eps_f32``).
        sensitive: int64 ``n_g``, weights with positive sensitivity.
        continuous: float64 optimum of the relaxed program.
        kept: int64 integer optimum: the number of distinct weights each group keeps.
        budget: weights the groups share (``B`` less one per layer without any sensitivity).
    """

    layers: list[str]
    layer: np.ndarray
    unit: np.ndarray
    sign: np.ndarray
    total: np.ndarray
    coefficient: np.ndarray
    sensitive: np.ndarray
    continuous: np.ndarray
    kept: np.ndarray
    budget: int

    def error(self) -> np.ndarray:
        """``e(kept_g; a_g)`` per group (0 for groups without sensitivity)."""
        valid = self.coefficient > 0
        return np.where(valid, group_error(np.maximum(self.kept, 1), self.coefficient), 0.0)


def sipp_allocation(
    tracker: SensitivityTracker, amount: float, *, c: float = 3.0, delta: float = 1e-16
) -> SiPPAllocation:
    """Split the budget of ``amount`` (module docstring) over the groups of ``tracker``'s layers.

    Raises:
        ValueError: the budget is smaller than the number of groups with positive sensitivity.
    """
    names = tracker.layer_names
    budget = _budget(tracker, amount)
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("layer", "unit", "sign", "total", "a", "n", "w")}
    dead = 0
    for index, name in enumerate(names):
        _, parts = _sign_parts(tracker, name)
        shape = tracker.shape(name)
        total = torch.stack([part.sum(1) for part in parts], 1).flatten().numpy()  # (F * 2,): f-major
        count = torch.stack([(part > 0).sum(1) for part in parts], 1).flatten().numpy()
        valid = total > EPSILON
        dead += int(not valid.any())
        units = shape.out_channels
        columns["layer"].append(np.full(2 * units, index))
        columns["unit"].append(np.repeat(np.arange(units), 2))
        columns["sign"].append(np.tile([1, -1], units))
        columns["total"].append(total)
        columns["a"].append(np.where(valid, alpha(shape.patches, shape.kappa, c, delta) * total, 0.0))
        columns["n"].append(np.where(valid, count, 0))
        columns["w"].append(np.full(2 * units, 1.0 / units))
    arrays = {key: np.concatenate(value) for key, value in columns.items()}
    valid = arrays["a"] > 0
    shared = budget - dead
    if valid.sum() > shared:
        raise ValueError(
            f"amount: {amount} leaves {budget} weights, but SiPPRand keeps at least one weight in each of the "
            f"{int(valid.sum())} (unit, sign) groups with positive sensitivity (and one per layer without any); "
            "use a smaller amount, or sipp_det"
        )
    continuous = np.zeros(valid.shape)
    kept = np.zeros(valid.shape, dtype=np.int64)
    if valid.any():
        args = (arrays["a"][valid], arrays["w"][valid], arrays["n"][valid])
        continuous[valid] = continuous_allocation(*args, shared)[0]
        kept[valid] = integer_allocation(*args, shared)
    return SiPPAllocation(
        layers=names,
        layer=arrays["layer"].astype(np.int64),
        unit=arrays["unit"].astype(np.int64),
        sign=arrays["sign"].astype(np.int64),
        total=arrays["total"],
        coefficient=arrays["a"],
        sensitive=arrays["n"].astype(np.int64),
        continuous=continuous,
        kept=kept,
        budget=shared,
    )


def sipp_det_plan(
    model: nn.Module,
    amount: float,
    data: Iterable[Any] | torch.Tensor | SensitivityTracker,
    *,
    layers: Sequence[str] | None = None,
    c: float = 3.0,
    delta: float = 1e-16,
    max_batches: int | None = None,
    progress: bool = True,
    example_input: torch.Tensor | None = None,
) -> PruningPlan:
    """Plan SiPPDet: keep the ``B`` weights of largest patch-mean sensitivity over all layers (no reweighting).

    Args:
        model: the model; not modified (it runs in eval mode on ``data``).
        amount: fraction in [0, 1) of the compressible weights to remove (module docstring).
        data: the sensitivity set ``S``: a DataLoader, an iterable of batches (first item = input) or one input
            tensor; or a :class:`SensitivityTracker` of ``model`` that has already seen it.
        layers: Linear/Conv2d layer names to prune (default all, the classifier included).
        c, delta: only size the ``|S|`` check: a :class:`SmallSensitivitySetWarning` says by how
            many samples ``S`` is short.
        max_batches, progress: passed to :meth:`SensitivityTracker.accumulate_over`.
        example_input: when given, the plan also records parameter and FLOP counts.

    Returns:
        a ``mode="mask"`` plan with one weight-granularity :class:`LayerPlan` per layer.
    """
    check_amount(amount)  # before the sensitivity pass, which is the expensive part
    tracker = _tracker(model, data, layers, c, delta, max_batches, progress)
    budget = _budget(tracker, amount)
    names = tracker.layer_names
    if budget < len(names):
        raise ValueError(
            f"amount: {amount} leaves {budget} weights for {len(names)} layers; every layer keeps at least one"
        )
    keys = []
    for name in names:
        s = tracker.weight_sensitivity(name, "mean").detach().double().cpu().flatten()
        keys.append(
            torch.where(_weight(tracker, name).flatten() != 0, s, -1.0)
        )  # zeros rank below everything
    flat = torch.cat(keys)
    sizes = [k.numel() for k in keys]
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)
    rank = flat.clone()
    # Each layer's best weight first: pure top-B unless a layer would get nothing (apply refuses empty layers).
    rank[offsets + torch.stack([k.argmax() for k in keys])] = math.inf
    chosen = torch.sort(rank, descending=True, stable=True).indices[: min(budget, int((rank >= 0).sum()))]
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[chosen] = True
    masks = [m.view(_weight(tracker, n).shape) for n, m in zip(names, keep.split(sizes), strict=True)]
    options = {"amount": float(amount), "c": c, "delta": delta, "patch_reduce": "mean", "budget": budget}
    return _plan(model, "sipp_det", tracker, masks, {}, options, example_input)


def sipp_rand_plan(
    model: nn.Module,
    amount: float,
    data: Iterable[Any] | torch.Tensor | SensitivityTracker,
    *,
    layers: Sequence[str] | None = None,
    c: float = 3.0,
    delta: float = 1e-16,
    seed: int = 0,
    max_batches: int | None = None,
    progress: bool = True,
    example_input: torch.Tensor | None = None,
) -> PruningPlan:
    """Plan SiPPRand: allocate by :func:`sipp_allocation`, keep a multinomial sample of every (unit, sign) group
    and reweight it by ``counts / (m p)`` through ``plan.rescale``.

    Arguments as :func:`sipp_det_plan`, plus ``c`` (the constant C, 3 as tp; pp's evaluator used 10) and
    ``delta`` (failure probability) of the bounds, and ``seed`` for the draws. The plan's ``rescale[layer]`` is a
    float64 tensor shaped like the weight: ``gamma_j`` where a group was reweighted, 1 elsewhere.
    """
    return _sampled_plan(
        model, amount, data, "rand", layers, c, delta, seed, max_batches, progress, example_input
    )


def sipp_hybrid_plan(
    model: nn.Module,
    amount: float,
    data: Iterable[Any] | torch.Tensor | SensitivityTracker,
    *,
    layers: Sequence[str] | None = None,
    c: float = 3.0,
    delta: float = 1e-16,
    seed: int = 0,
    max_batches: int | None = None,
    progress: bool = True,
    example_input: torch.Tensor | None = None,
) -> PruningPlan:
    """Plan SiPPHybrid: :func:`sipp_allocation`, then per group sample and reweight as SiPPRand when
    ``C * (sensitivity outside the top x) > e(x; a)``, else keep the top ``x`` as they are.

    Arguments as :func:`sipp_rand_plan`; ``plan.options["randomized_groups"]`` counts the sampled groups.
    """
    return _sampled_plan(
        model, amount, data, "hybrid", layers, c, delta, seed, max_batches, progress, example_input
    )


def _sampled_plan(
    model: nn.Module,
    amount: float,
    data: Iterable[Any] | torch.Tensor | SensitivityTracker,
    variant: Variant,
    layers: Sequence[str] | None,
    c: float,
    delta: float,
    seed: int,
    max_batches: int | None,
    progress: bool,
    example_input: torch.Tensor | None,
) -> PruningPlan:
    check_amount(amount)
    tracker = _tracker(model, data, layers, c, delta, max_batches, progress)
    allocation = sipp_allocation(tracker, amount, c=c, delta=delta)
    errors = allocation.error()
    generator = rank_identical_generator(seed)  # the same draws on every rank under torchrun
    masks, factors, sampled, spare = [], {}, 0, []
    # Budget left once every sensitive weight is kept (then no group samples) goes to the other nonzero weights.
    leftover = allocation.budget - int(allocation.sensitive.sum())
    for index, name in enumerate(allocation.layers):
        weight, parts = _sign_parts(tracker, name)
        keep = torch.zeros(weight.shape, dtype=torch.bool)
        gamma = torch.ones(weight.shape, dtype=torch.float64)
        for g in np.flatnonzero((allocation.layer == index) & (allocation.kept > 0)):
            f, x = int(allocation.unit[g]), int(allocation.kept[g])
            s = parts[0 if allocation.sign[g] > 0 else 1][f]
            if x >= allocation.sensitive[g]:
                keep[f] |= s > 0
                continue
            if variant == "hybrid":
                top = torch.sort(s, descending=True, stable=True).indices[:x]  # ties: lower index first
                if not c * float(s.sum() - s[top].sum()) > errors[g]:
                    keep[f, top] = True
                    continue
            sampled += 1
            p = s / s.sum()
            draws = adapt_sample_size(p, x)
            counts = torch.bincount(
                torch.multinomial(p, draws, replacement=True, generator=generator), minlength=p.numel()
            ).double()
            # As in the authors' code, weights with p <= eps_f32 are zeroed even when drawn: 1 / (m p) would
            # blow them up.
            picked = (counts > 0) & (p > EPSILON)
            members = weight[f] > 0 if allocation.sign[g] > 0 else weight[f] < 0
            if picked.sum() < members.sum():
                keep[f] |= picked
                gamma[f, picked] = counts[picked] / (draws * p[picked])
            else:
                keep[f] |= members
        masks.append(keep)
        spare.append((weight != 0) & ~keep)
        if (gamma != 1).any():
            factors[name] = gamma
    _spend_leftover(masks, spare, leftover)
    for name, keep in zip(allocation.layers, masks, strict=True):
        # A layer without sensitivity keeps its first nonzero weight: apply_plan never empties a layer.
        if not keep.any():
            keep.view(-1)[int((_weight(tracker, name).flatten() != 0).int().argmax())] = True
    options = {
        "amount": float(amount),
        "c": c,
        "delta": delta,
        "seed": seed,
        "patch_reduce": "max",
        "budget": allocation.budget,
    }
    if variant == "hybrid":
        options["randomized_groups"] = sampled
    return _plan(model, f"sipp_{variant}", tracker, masks, factors, options, example_input)


def _spend_leftover(masks: list[torch.Tensor], spare: list[torch.Tensor], leftover: int) -> None:
    """Keep up to ``leftover`` of the ``spare`` weights (nonzero, not kept), in (layer, index) order."""
    for keep, candidates in zip(masks, spare, strict=True):
        if leftover <= 0:
            return
        chosen = torch.nonzero(candidates.flatten()).flatten()[:leftover]
        keep.view(-1)[chosen] = True
        leftover -= chosen.numel()


def _tracker(
    model: nn.Module,
    data: Iterable[Any] | torch.Tensor | SensitivityTracker,
    layers: Sequence[str] | None,
    c: float,
    delta: float,
    max_batches: int | None,
    progress: bool,
) -> SensitivityTracker:
    """A tracker that has seen ``data`` (or ``data`` itself), after warning when ``S`` is too small."""
    if isinstance(data, SensitivityTracker):
        if data.model is not model:
            raise ValueError("data: the SensitivityTracker was built for another model")
        if layers is not None and list(layers) != data.layer_names:
            raise ValueError(
                f"layers: {list(layers)} differs from the tracker's layers {data.layer_names}; build the "
                "tracker with those layers or leave layers out"
            )
        if data.num_samples == 0:
            raise ValueError("data: the SensitivityTracker has seen no data; call accumulate_over first")
        tracker = data
    elif data is None:
        raise ValueError("data: SiPP needs the sensitivity set S: a DataLoader, batches or an input tensor")
    else:
        layers = sensitivity_layers(model) if layers is None else layers
        tracker = SensitivityTracker(model, layers).accumulate_over(data, max_batches, progress=progress)
    needed = sensitivity_set_size([tracker.shape(name).neurons for name in tracker.layer_names], c, delta)
    if tracker.num_samples < needed:
        warnings.warn(
            f"data: sensitivities come from {tracker.num_samples} samples, but |S| = ceil(c ln(8 eta eta* / "
            f"delta)) = {needed} for c={c}, delta={delta}: {needed - tracker.num_samples} short; "
            "the sampling bounds assume at least that many",
            SmallSensitivitySetWarning,
            stacklevel=4,
        )
    return tracker


def sensitivity_layers(model: nn.Module) -> list[str]:
    """Default layers of SiPP and PFP: every Linear and Conv2d whose sensitivity is defined and observable.

    Left out (and listed by :func:`untracked_layers`): grouped and depthwise convolutions (one kernel per group
    of inputs: the reference method defines relative contributions for dense kernels only; they hold few
    weights in MobileNet/EfficientNet/ConvNeXt), and the ``out_proj`` of ``nn.MultiheadAttention``, whose
    weight the attention reads directly, so no hook ever sees that layer's input.
    """
    return [name for name, module in model.named_modules() if _untracked_reason(model, name, module) is None]


def untracked_layers(model: nn.Module, tracked: Sequence[str]) -> dict[str, str]:
    """``{layer: reason}`` for every Linear/ConvNd of ``model`` that is not in ``tracked``."""
    chosen = set(tracked)
    untouched = {}
    for name, module in model.named_modules():
        if name in chosen or not isinstance(module, PRUNABLE_TYPES):
            continue
        untouched[name] = _untracked_reason(model, name, module) or "not in layers"
    return untouched


def _untracked_reason(model: nn.Module, name: str, module: nn.Module) -> str | None:
    if not isinstance(module, PRUNABLE_TYPES):
        return "not a Linear or ConvNd layer"
    if not isinstance(module, COMPRESSIBLE_TYPES):
        return f"{type(module).__name__}: sensitivities are defined for Linear and Conv2d layers"
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        return (
            f"grouped/depthwise Conv2d (groups={module.groups}): sensitivities are defined for dense kernels"
        )
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    if isinstance(parent, nn.MultiheadAttention) and name.endswith("out_proj"):
        return "nn.MultiheadAttention reads out_proj.weight itself: no hook ever sees this layer's input"
    return None


def _budget(tracker: SensitivityTracker, amount: float) -> int:
    """``B = N - round(amount * N)``, ``N`` the weights of the tracked layers (round half up)."""
    amount = check_amount(amount)
    total = sum(tracker.model.get_submodule(name).weight.numel() for name in tracker.layer_names)
    return total - math.floor(amount * total + 0.5)


def _weight(tracker: SensitivityTracker, name: str) -> torch.Tensor:
    """The layer's current weight (masked, if a mask is applied) as ``(F, J)`` on the CPU."""
    return tracker.model.get_submodule(name).weight.detach().cpu().flatten(1)


def _sign_parts(
    tracker: SensitivityTracker, name: str
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The layer's weight ``(F, J)`` and its patch-max sensitivities split by weight sign, each ``(F, J)``
    float64 with zeros outside the sign; all on the CPU."""
    weight = _weight(tracker, name)
    s = tracker.weight_sensitivity(name, "max").detach().double().cpu().flatten(1)
    return weight, (s * (weight > 0), s * (weight < 0))


def _plan(
    model: nn.Module,
    method: str,
    tracker: SensitivityTracker,
    masks: list[torch.Tensor],
    rescale: dict[str, torch.Tensor],
    options: dict[str, Any],
    example_input: torch.Tensor | None,
) -> PruningPlan:
    layers = [
        LayerPlan(name, "weights", keep.numel(), torch.nonzero(~keep.flatten()).flatten())
        for name, keep in zip(tracker.layer_names, masks, strict=True)
    ]
    shapes = {name: tracker.model.get_submodule(name).weight.shape for name in rescale}
    options = {
        **options,
        "samples": tracker.num_samples,
        "kept": sum(int(m.sum()) for m in masks),
        "untouched": untracked_layers(model, tracker.layer_names),
    }
    plan = PruningPlan(
        method=method,
        mode="mask",
        layers=layers,
        fingerprint=model_fingerprint(model),
        options=options,
        rescale={name: gamma.view(shapes[name]) for name, gamma in rescale.items()},
    )
    if example_input is not None:
        measure_plan(plan, model, example_input)
    return plan


SIPP_VARIANTS: dict[str, Callable[..., PruningPlan]] = {
    "det": sipp_det_plan,
    "rand": sipp_rand_plan,
    "hybrid": sipp_hybrid_plan,
}


def plan_sipp(
    model: nn.Module,
    amount: float,
    data: Iterable[Any] | torch.Tensor | SensitivityTracker,
    *,
    variant: Literal["det", "rand", "hybrid"] = "det",
    seed: int = 0,
    progress: bool = True,
    ignored_layers: Sequence[str | nn.Module] | None = None,
    **options: Any,
) -> PruningPlan:
    """SiPP by ``variant`` (:func:`sipp_det_plan`, :func:`sipp_rand_plan`, :func:`sipp_hybrid_plan`): the form the
    ``"sipp_*"`` methods run.

    ``seed`` goes to the sampling variants only. ``ignored_layers`` (the option every structured and unstructured
    planner takes) is subtracted from SiPP's own ``layers``, the layers to prune, default all it can track.
    """
    if variant not in SIPP_VARIANTS:
        raise ValueError(f"variant: expected one of {tuple(SIPP_VARIANTS)}, got {variant!r}")
    if variant != "det":
        options["seed"] = seed
    if ignored_layers is not None:
        skip = set(resolve_layer_refs(model, ignored_layers, "ignored_layers"))
        chosen = options.get("layers")
        chosen = sensitivity_layers(model) if chosen is None else resolve_layer_refs(model, chosen, "layers")
        options["layers"] = [name for name in chosen if name not in skip]
        if not options["layers"]:
            raise ValueError("ignored_layers: no layer is left to prune")
    return SIPP_VARIANTS[variant](model, amount, data, progress=progress, **options)
