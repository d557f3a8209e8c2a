"""CKA-damage pruning (CKA of Kornblith et al. 2019 as the damage measure): remove the neurons whose removal changes a layer's representation least.

The damage of removing a set of neurons is measured by CKA between the layer's original representation and the
representation with those neurons replaced by constants (a neuron whose weight row is zero outputs its bias, a
constant; after centring a constant is zero). Two procedures:

* ``greedy=False`` (``cka_single``, what the reference code ``SupurCalvinHiggins/cka-prune`` computes): rank
  neurons by their *single-removal* CKA and remove the best-scoring ones.
* ``greedy=True`` (``cka_greedy``, the procedure its README describes): remove one neuron at a time, each time
  the one whose removal leaves the highest CKA *of the whole removed set* against the original representation.

Both are exact and cheap for the linear kernel. Let ``M[a, b] = <H K_a H, H K_b H>_F`` be the inner
product of the centred Gram contributions of neurons ``a`` and ``b``; then with ``K`` the kept set,
``CKA(K) = sum_{a, b in K} M[a, b]`` ... precisely ``sum_{a in all, b in K} M[a, b] / (F * sqrt(sum_{a, b in K} M))``
with ``F^2 = sum M``. Removing a neuron updates these sums in O(p) (the greedy loop runs in C++/CUDA, see
:mod:`pyprune.ops.cka_damage`). ``M`` comes from second-moment statistics:

* ``representation="channels"`` (the default; units of a Linear, or channels of a conv map read as
  ``(N*H*W, C)``): ``M = G * G`` elementwise with ``G`` the centred ``p x p`` covariance, which is additive over
  batches, so memory does not grow with the number of samples.
* ``representation="flatten"`` (per-example conv maps ``(N, C*H*W)``): ``M[c, d] = <H K_c H, H K_d H>`` with
  ``K_c`` the Gram matrix of channel ``c``'s maps. It needs all ``N`` samples together (kept up to
  ``max_samples``) and is evaluated in feature space (``|X_c^T X_d|_F^2`` blocks of the ``C*H*W`` covariance)
  or in sample space (chunks of per-channel Gram matrices through the fused HSIC-terms kernel), whichever costs
  less.

The RBF kernel has no closed form: every candidate's removal is scored by a batched kernel that updates the
pairwise distances of the kept set by the candidate's own distances, exponentiates and reduces the centred HSIC
terms in one pass (:func:`pyprune.ops.cka_damage.rbf_candidate_scan`). Bandwidth: ``bandwidth="fixed"`` (default)
takes ``sigma^2 = threshold^2 * median squared distance`` of the *original* representation for every candidate,
so all candidates are compared with one kernel; ``"per_candidate"`` re-derives the median from each modified
representation, as Google's ``gram_rbf`` (and so cka-prune) does. The RBF kernel always uses the per-example
representation.

Where the representation is observed (``point``): the layer's own output (cka-prune's pre-activation, default),
``"post"`` (the activation module that directly follows the layer, e.g. ``fc1 -> relu1``; a BatchNorm in between
is passed over), or a ``{layer: module name}`` dict. A module observed must map channel ``c`` to channel ``c``
(BatchNorm, elementwise activations), so that a removed channel is still a constant there.

**Attention heads and MLP units** (:mod:`pyprune.pruning.attention`) are scored as units on the representation
the heads write together: the input of the projection that reads them (``out_proj``, ``proj``, ``c_proj``,
``o_proj``), where head ``h`` owns ``unit_width`` columns ``J_h``. Removing a head zeroes its columns, so the
closed form above holds with ``M`` summed over head blocks, ``M_heads[u, v] = sum over a in J_u, b in J_v of
M[a, b]``: single-removal and greedy orders of whole heads (Michel et al. 2019 prune heads; CKA is the damage
measure here). Linear kernel only: with the RBF kernel heads are scored through their q/k/v rows, as by
:func:`pyprune.pruning.attention.unit_scores`'s default.

Statistics are taken in eval mode without gradients, by hooks (:meth:`CKADamage.accumulate_over`), once for all
layers: as in cka-prune, layer ``l + 1``'s scores ignore what is removed from layer ``l`` in the same pass; the
iterative protocol (re-measure, prune 20% of what remains, retrain) is :func:`pyprune.schedules.cascade` or
:func:`pyprune.schedules.iterative`.
"""

from __future__ import annotations

import copy
import heapq
import math
import numbers
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from pyprune.activations import eval_mode, model_device
from pyprune.distributed import CKATotals, cka_totals
from pyprune.ops import gram_hsic_terms
from pyprune.ops.cka_damage import greedy_removal_order, rbf_candidate_scan
from pyprune.pruning.attention import UnitSpec, expose_unit_inputs, find_units
from pyprune.pruning.criteria.base import PRUNABLE_TYPES, ChannelCriterion
from pyprune.pruning.criteria.scored_layers import channel_dim, resolve_points, resolve_scored_layers
from pyprune.pruning.layers import output_layer_name
from pyprune.pruning.plan import PruningPlan
from pyprune.pruning.selection import plan_structured

Kernel = Literal["linear", "rbf"]
Representation = Literal["channels", "flatten"]
Bandwidth = Literal["fixed", "per_candidate"]

FEATURE_SPACE_BYTES = 1 << 30
"""Largest ``C*H*W`` covariance (bytes, float64) that the flattened representation evaluates in feature space."""

SAMPLE_SPACE_CHUNK_BYTES = 256 << 20
"""Memory for one chunk of per-channel Gram matrices (bytes) in sample-space evaluation."""

_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Mish,
    nn.Softplus,
)
_PASS_THROUGH = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.Dropout, nn.Identity)


class CKADamage(ChannelCriterion):
    """CKA-damage scores of the output neurons/channels of a model's Linear and ConvNd layers.

    Usage: build it, feed it data with :meth:`accumulate_over` (or run forward passes inside
    :meth:`accumulate`), then read :meth:`removal_order` / :meth:`trajectory`, or hand it to
    :func:`pyprune.plan_structured` as the criterion (``pyprune.plan(model, "cka_greedy", ...)`` does all this).

    Args:
        model: the model; its Linear/ConvNd layers are scored (``layers`` narrows them).
        layers: names, a type, or a predicate (as :func:`pyprune.capture` takes); default every Linear/ConvNd;
            an empty list scores heads (units) only.
        point: ``None`` (each layer's own output), ``"post"``, or ``{layer name: module name}`` (module docstring).
        kernel: ``"linear"`` or ``"rbf"``.
        greedy: the greedy set procedure (True) or single-removal ranking (False).
        representation: ``"channels"`` or ``"flatten"`` for conv layers (Linear layers are the same either way);
            the RBF kernel always uses ``"flatten"``.
        threshold: RBF bandwidth as a fraction of the median distance (Kornblith et al. 2019), > 0.
        bandwidth: ``"fixed"`` or ``"per_candidate"`` (RBF only).
        max_samples: examples kept for the representations that need all samples at once (``"flatten"`` and
            RBF); later batches are ignored. The channels representation uses every sample.
        scope: ``"layer"`` ranks within each layer; ``"global"`` makes scores comparable across layers
            (single: by damage ``1 - CKA``; greedy: per-layer greedy sequences merged by marginal damage).
        heads: with the linear kernel, also score the heads (units) of every attention layer and GPT-2 MLP that
            :func:`pyprune.pruning.attention.find_units` recognises (module docstring); read with
            :meth:`unit_scores`. An ``nn.MultiheadAttention`` is observed only once
            :func:`pyprune.pruning.attention.expose_unit_inputs` made it call its ``out_proj``.
    """

    name = "cka_damage"
    needs_data = True

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        point: str | Mapping[str, str] | None = None,
        kernel: Kernel = "linear",
        greedy: bool = True,
        representation: Representation = "channels",
        threshold: float = 0.5,
        bandwidth: Bandwidth = "fixed",
        max_samples: int = 1024,
        scope: Literal["layer", "global"] = "layer",
        heads: bool = True,
    ) -> None:
        if kernel not in ("linear", "rbf"):
            raise ValueError(f"kernel: expected 'linear' or 'rbf', got {kernel!r}")
        if representation not in ("channels", "flatten"):
            raise ValueError(f"representation: expected 'channels' or 'flatten', got {representation!r}")
        if not (isinstance(threshold, numbers.Real) and math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold: expected a finite number > 0, got {threshold!r}")
        if bandwidth not in ("fixed", "per_candidate"):
            raise ValueError(f"bandwidth: expected 'fixed' or 'per_candidate', got {bandwidth!r}")
        if not (isinstance(max_samples, numbers.Integral) and max_samples >= 4):
            raise ValueError(f"max_samples: expected an int >= 4, got {max_samples!r}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope: expected 'layer' or 'global', got {scope!r}")
        self.model = model
        self.kernel, self.greedy, self.threshold, self.bandwidth = (
            kernel,
            bool(greedy),
            float(threshold),
            bandwidth,
        )
        self.representation: Representation = "flatten" if kernel == "rbf" else representation
        self.max_samples, self.scope = max_samples, scope
        # An empty list scores no layer: a model whose only Linear is its output (GPT-2) still has heads to score.
        empty = isinstance(layers, list | tuple) and not layers
        self._layers = {} if empty else resolve_scored_layers(model, layers)
        if point == "post":
            point = _post_activation_points(model, self._layers)
        elif isinstance(point, str):
            raise ValueError(f"point: expected None, 'post' or a dict {{layer: module}}, got {point!r}")
        self._points = resolve_points(model, self._layers, point)
        # The RBF candidate scan removes single channels, not column blocks: with it, heads are scored as other
        # criteria score them, through their q/k/v rows.
        scored_units = find_units(model) if heads and kernel == "linear" else []
        self._units: dict[str, UnitSpec] = {spec.name: spec for spec in scored_units}
        # Width of each observed representation: a layer's channels, or the columns all of a spec's units write.
        self._widths = {name: int(layer.weight.shape[0]) for name, layer in self._layers.items()}
        self._widths.update({name: s.num_units * s.unit_width for name, s in self._units.items()})
        if not self._widths:
            raise ValueError(
                "layers: nothing to score: an empty list, and no attention heads scored instead (none recognised, "
                "heads=False, or kernel='rbf', which scores heads through their q/k/v Linear layers)"
            )
        self._active = False
        self.reset()

    # -- statistics -------------------------------------------------------------------------------------------

    @property
    def layer_names(self) -> list[str]:
        """Names of the scored layers, in model order."""
        return list(self._layers)

    @property
    def unit_names(self) -> list[str]:
        """The attention layers (and GPT-2 MLPs) whose heads (units) are scored, in model order."""
        return list(self._units)

    def reset(self) -> None:
        """Forget all statistics and cached orders."""
        self._moments: dict[str, list[torch.Tensor | int]] = {}  # name -> [sum a a^T, sum a, rows]
        self._samples: dict[str, list[torch.Tensor]] = {}  # name -> [(batch, C, T)] float64
        self._kept_samples: dict[str, int] = {}
        self._over_ranks: CKATotals | None = None  # the statistics over every rank, see _totals
        self._pending: dict[str, bool] = {}
        self._orders: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._global_rank: dict[str, torch.Tensor] | None = None

    def accumulate(self):
        """Context in which forward passes of the model add to the statistics (eval mode and no_grad are the
        caller's choice here; :meth:`accumulate_over` sets both)."""
        return _Accumulating(self)

    def accumulate_over(
        self, data: Iterable[Any], max_batches: int | None = None, *, progress: bool = True
    ) -> CKADamage:
        """Run ``data`` (a DataLoader, an iterable of batches whose first item is the input, or one tensor)
        through the model in eval mode without gradients, recording every scored layer. Returns ``self``."""
        if max_batches is not None and not (isinstance(max_batches, int) and max_batches >= 1):
            raise ValueError(f"max_batches: expected None or an int >= 1, got {max_batches!r}")
        batches = [data] if isinstance(data, torch.Tensor) else data
        device = model_device(self.model)
        seen = 0
        with eval_mode(self.model), torch.no_grad(), self.accumulate():
            for batch in tqdm(batches, desc="CKA statistics", disable=not progress, leave=False):
                inputs = batch[0] if isinstance(batch, list | tuple) else batch
                if not isinstance(inputs, torch.Tensor):
                    raise TypeError(
                        f"data: expected batches of tensors or (inputs, targets, ...), got {type(inputs).__name__}"
                    )
                self.model(inputs.to(device))
                seen += 1
                if max_batches is not None and seen >= max_batches:
                    break
        if seen == 0:
            raise ValueError("data: expected at least one batch, got none")
        return self

    def _on_layer(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if name in self._points:
            self._pending[name] = True
            return
        self._observe(name, output)

    def _on_point(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if not self._pending.pop(name, False):
            raise RuntimeError(
                f"point: module {self._points[name]!r} ran without layer {name!r} running before it (is it "
                "shared by several layers, or called more than once per forward?); pass a dict point naming a "
                "module that follows only this layer"
            )
        self._observe(name, output)

    def _on_unit(self, name: str, writer: nn.Module, args: Any) -> None:
        spec = self._units[name]
        z = args[0] if args else None
        width = self._widths[name]
        if not isinstance(z, torch.Tensor) or z.ndim < 2 or z.shape[-1] != width:
            found = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(
                f"model: {spec.writer!r} reads {found}; expected the {spec.num_units} {spec.granularity} of "
                f"{name!r} as {width} columns in the last dim, after a batch dim"
            )
        # Batch first, channels (the units' columns) last.
        self._record(name, z.movedim(spec.writer_batch_dim, 0), z.ndim - 1)

    def _observe(self, name: str, z: Any) -> None:
        layer = self._layers[name]
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"layer {name!r}: expected a tensor output, got {type(z).__name__}")
        dim = channel_dim(z, layer)
        channels = layer.weight.shape[0]
        if dim is None or z.shape[dim] != channels:
            raise ValueError(
                f"point: the representation observed for {name!r} has shape {tuple(z.shape)}; expected "
                f"{channels} channels at dim 1 (or last for Linear)"
            )
        self._record(name, z, dim)

    def _record(self, name: str, z: torch.Tensor, dim: int) -> None:
        """Add ``z`` (batch along dim 0, the ``self._widths[name]`` channels along ``dim``) to the statistics."""
        channels = self._widths[name]
        z = z.detach()
        batch = z.shape[0]
        not_finite = ValueError(f"layer {name!r}: the observed representation contains NaN or inf")
        if self.representation == "channels":
            # One float64 copy, channels last; the finiteness check rides on the accumulated sums (a NaN or inf
            # anywhere makes the diagonal of the second moments non-finite) instead of a pass over the copy.
            rows = z.movedim(dim, -1).reshape(-1, channels).to(torch.float64)
            moments = self._moments.setdefault(
                name,
                [
                    torch.zeros(channels, channels, dtype=torch.float64, device=z.device),
                    torch.zeros(channels, dtype=torch.float64, device=z.device),
                    0,
                ],
            )
            outer = rows.T @ rows
            if not torch.isfinite(outer.diagonal()).all():
                raise not_finite
            moments[0] += outer
            moments[1] += rows.sum(dim=0)
            moments[2] += rows.shape[0]
        else:
            kept = self._kept_samples.get(name, 0)
            take = min(batch, self.max_samples - kept)
            if take > 0:
                sample = z[:take].movedim(dim, 1).reshape(take, channels, -1).to(torch.float64)
                if not torch.isfinite(sample).all():
                    raise not_finite
                self._samples.setdefault(name, []).append(sample)
                self._kept_samples[name] = kept + take
        self._orders.pop(name, None)
        self._global_rank = None
        self._over_ranks = None

    def num_samples(self, name: str) -> int:
        """Samples (rows of the representation) recorded for layer ``name``."""
        self._check_name(name)
        totals = self._totals()
        if self.representation == "channels":
            return int(totals.moments[name][2]) if name in totals.moments else 0
        return sum(int(s.shape[0]) for s in totals.samples.get(name, []))

    def _totals(self) -> CKATotals:
        """The statistics over every rank of torch.distributed (this rank's alone otherwise), reduced once after
        each change: ranks must read scores in lockstep, as the planner does on every rank."""
        if self._over_ranks is None:
            samples = None if self.representation == "channels" else self._samples
            self._over_ranks = cka_totals(self._widths, self._moments, samples, self.max_samples)
        return self._over_ranks

    # -- scores -----------------------------------------------------------------------------------------------

    def interaction(self, name: str) -> torch.Tensor:
        """``M`` of layer ``name`` (linear kernel): ``(C, C)`` float64, see the module docstring; for an attention
        layer (MLP) in :attr:`unit_names`, ``(num_units, num_units)`` summed over the units' column blocks."""
        self._check_ready(name)
        if self.representation == "channels":
            outer, total, rows = self._totals().moments[name]
            mean = total / rows
            covariance = outer - rows * torch.outer(mean, mean)
            m = covariance * covariance
        else:
            m = _flatten_interaction(torch.cat(self._totals().samples[name]))
        spec = self._units.get(name)
        if spec is None:
            return m
        units, width = spec.num_units, spec.unit_width
        return m.reshape(units, width, units, width).sum(dim=(1, 3))

    def active(self, name: str) -> torch.Tensor:
        """Bool ``(C,)``: channels whose weights are not all zero (a zero row was pruned before, as cka-prune
        decides); every unit of an attention layer (MLP) in :attr:`unit_names` (removed ones are gone)."""
        self._check_name(name)
        if name in self._units:
            return torch.ones(self._units[name].num_units, dtype=torch.bool)
        weight = self._layers[name].weight.detach()
        return weight.flatten(1).ne(0).any(dim=1).cpu()

    def removal_order(self, name: str) -> torch.Tensor:
        """Active channels of ``name`` in removal order (first = least damage): int64 ``(n_active,)``."""
        return self._order(name)[0]

    def trajectory(self, name: str) -> torch.Tensor:
        """float64 ``(n_active,)``: CKA of the layer after each removal of :meth:`removal_order` (greedy), or the
        single-removal CKA of each neuron in that order (``greedy=False``)."""
        return self._order(name)[1]

    def removals_above(self, name: str, stop_cka: float) -> int:
        """How many channels go before the layer's CKA would fall to ``stop_cka`` or below.

        Greedy: the cumulative CKA of the removed set (cka-prune's ``stop_cka``, made cumulative). Single: the
        single-removal CKA, as cka-prune compares it."""
        if not (isinstance(stop_cka, numbers.Real) and 0 <= stop_cka <= 1):
            raise ValueError(f"stop_cka: expected a number in [0, 1], got {stop_cka!r}")
        below = (self.trajectory(name) <= stop_cka).nonzero()
        return int(below[0]) if below.numel() else int(self.trajectory(name).numel())

    def scores(
        self, module: nn.Module, name: str, dropped_inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Importance ``(C,)``: lower is removed first. Already-pruned channels score -1, then removal positions
        (per layer, or in the merged global order with ``scope="global"``)."""
        self._check_name(name)
        return self._importance(name, int(self._layers[name].weight.shape[0]))

    def unit_scores(self, spec: UnitSpec) -> torch.Tensor | None:
        """Importance ``(num_units,)`` of the heads (units) of ``spec``, lower removed first, as :meth:`scores`
        ranks channels; None when this criterion does not score that layer's units (``heads=False``, or the RBF
        kernel, whose heads are scored through their q/k/v rows).

        Raises:
            ValueError: too few samples recorded (an ``nn.MultiheadAttention`` not exposed by
                :func:`pyprune.pruning.attention.expose_unit_inputs`).
        """
        if spec.name not in self._units:
            return None
        return self._importance(spec.name, spec.num_units)

    def _importance(self, name: str, size: int) -> torch.Tensor:
        importance = torch.full((size,), -1.0, dtype=torch.float64)
        if self.scope == "global":
            ranks = self._global_ranks()[name]
        else:
            ranks = torch.arange(len(self.removal_order(name)), dtype=torch.float64)
        importance[self.removal_order(name)] = ranks
        return importance

    def _order(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self._orders:
            self._check_ready(name)
            active = self.active(name)
            if not active.any():
                raise ValueError(f"layer {name!r}: every channel is already pruned (all weights zero)")
            if self.kernel == "linear":
                m = self.interaction(name).cpu()
                if self.greedy:
                    order, cka = greedy_removal_order(m, active)
                else:
                    order, cka = _single_order(m, active)
            else:
                order, cka = _rbf_order(
                    torch.cat(self._totals().samples[name]),
                    active,
                    self.threshold,
                    self.bandwidth,
                    self.greedy,
                )
            order, cka = order.cpu(), cka.cpu()
            if self.greedy or len(order) == 1:
                # The last removal leaves no active channel: a constant layer, whose CKA is 0 by definition.
                # The running sums (and the RBF distance updates) leave rounding noise of order
                # sqrt(eps) there instead, up to ~0.2 with a per-candidate RBF bandwidth.
                cka = cka.clone()
                cka[-1] = 0.0
            self._orders[name] = (order, cka)
        return self._orders[name]

    def _global_ranks(self) -> dict[str, torch.Tensor]:
        if self._global_rank is None:
            sequences = {name: self._order(name) for name in self._widths}
            self._global_rank = _merge(sequences, by_marginal=self.greedy)
        return self._global_rank

    def _check_name(self, name: str) -> None:
        if name not in self._widths:
            raise ValueError(f"name: {name!r} is not a scored layer; scored: {list(self._widths)}")

    def _check_ready(self, name: str) -> None:
        self._check_name(name)
        if self.num_samples(name) < 4:
            raise ValueError(
                f"layer {name!r}: {self.num_samples(name)} samples recorded; feed data with accumulate_over "
                "(at least 4 samples; CKA over a few hundred is stable)"
            )

    def __repr__(self) -> str:
        return (
            f"CKADamage(layers={len(self._layers)}, kernel={self.kernel!r}, greedy={self.greedy}, "
            f"representation={self.representation!r}, scope={self.scope!r})"
        )


class _Accumulating:
    """Hooks of :meth:`CKADamage.accumulate`, removed on exit also when the block raises."""

    def __init__(self, criterion: CKADamage) -> None:
        self.criterion = criterion
        self.handles: list[RemovableHandle] = []

    def __enter__(self) -> CKADamage:
        criterion = self.criterion
        if criterion._active:
            raise RuntimeError(
                "accumulate: this CKADamage criterion is already accumulating; blocks do not nest"
            )
        criterion._active = True
        for name, layer in criterion._layers.items():
            self.handles.append(layer.register_forward_hook(partial(criterion._on_layer, name)))
            if name in criterion._points:
                point = criterion.model.get_submodule(criterion._points[name])
                self.handles.append(point.register_forward_hook(partial(criterion._on_point, name)))
        for name, spec in criterion._units.items():
            writer = criterion.model.get_submodule(spec.writer)
            self.handles.append(writer.register_forward_pre_hook(partial(criterion._on_unit, name)))
        return criterion

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.criterion._active = False
        self.criterion._pending.clear()


def _single_order(m: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-removal CKA of every active neuron, sorted best first; ties by index."""
    m = m * (active[:, None] & active[None, :])
    column = m.sum(dim=0)
    total = column.sum()
    den = total.sqrt() * (total - 2 * column + m.diagonal()).clamp_min(0).sqrt()
    cka = torch.where(den > 0, (total - column) / den.where(den > 0, 1.0), 0.0)
    index = active.nonzero().flatten()
    # Stable sort of -cka keeps equal scores in index order.
    ranked = torch.sort(-cka[index], stable=True).indices
    return index[ranked], cka[index[ranked]]


def _flatten_interaction(x: torch.Tensor) -> torch.Tensor:
    """``M[c, d] = <H K_c H, H K_d H>`` for samples ``x`` ``(n, C, T)``, in feature or sample space by cost."""
    n, channels, positions = x.shape
    width = channels * positions
    x = x - x.mean(dim=0)  # centring the features centres every K_c
    feature_cost, sample_cost = n * width * width, channels * n * n * (positions + channels)
    if width * width * 8 <= FEATURE_SPACE_BYTES and feature_cost <= sample_cost:
        flat = x.reshape(n, width)
        cross = (flat.T @ flat).reshape(channels, positions, channels, positions)
        return (cross * cross).sum(dim=(1, 3))
    # Sample space: chunks of per-channel Gram matrices; the fused kernel returns every <K_a, K_b>, row sums and
    # diagonals, and the Grams are already centred (features centred above), so <K_a, K_b> is what we need.
    chunk = max(1, SAMPLE_SPACE_CHUNK_BYTES // (2 * n * n * 8))
    by_channel = x.movedim(1, 0)  # (C, n, T)

    def grams(start: int) -> list[torch.Tensor]:
        block = by_channel[start : start + chunk]
        return list(torch.bmm(block, block.transpose(1, 2)))

    m = torch.empty(channels, channels, dtype=torch.float64)
    for i in range(0, channels, chunk):
        grams_i = grams(i)
        for j in range(i, channels, chunk):
            block = gram_hsic_terms(grams_i, grams_i if j == i else grams(j))["cross"].to(m.device)
            m[i : i + chunk, j : j + chunk] = block
            m[j : j + chunk, i : i + chunk] = block.T
    return m


def _rbf_order(
    samples: torch.Tensor, active: torch.Tensor, threshold: float, bandwidth: Bandwidth, greedy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """RBF CKA removal order of the active channels of ``samples`` ``(n, C, T)`` (module docstring)."""
    n = samples.shape[0]
    values = samples.movedim(1, 0).contiguous()  # (C, n, T)
    distances = _squared_distances(samples.reshape(n, -1))
    median = _median(distances)
    if median <= 0:
        raise ValueError(
            "the median pairwise distance of the layer's representation is 0 (more than half the samples "
            "coincide), so the RBF bandwidth is undefined; use kernel='linear'"
        )
    target = _centre(torch.exp(-distances / (2 * threshold**2 * median)))
    target_norm = float(target.square().sum().sqrt())
    kept = active.clone()
    index = active.nonzero().flatten()
    order, cka_after = [], []
    steps = len(index) if greedy else 1
    for _ in range(steps):
        candidates = kept.nonzero().flatten()
        inv = _inverse_bandwidths(distances, values, candidates, threshold, bandwidth, median)
        terms = rbf_candidate_scan(distances, values, candidates, inv, target)
        norm_sq = terms["self_sq"] - 2 * terms["row_sq"] / n + terms["total"].square() / n**2
        den = target_norm * norm_sq.clamp_min(0).sqrt()
        cka = torch.where(den > 0, terms["cross"] / den.where(den > 0, 1.0), 0.0)
        if not greedy:
            ranked = torch.sort(-cka, stable=True).indices
            return candidates[ranked], cka[ranked]
        best = int(torch.argmax(cka))
        j = int(candidates[best])
        order.append(j)
        cka_after.append(float(cka[best]))
        kept[j] = False
        distances = (distances - _squared_distances(values[j])).clamp_min(0)
    return torch.tensor(order, dtype=torch.int64), torch.tensor(cka_after, dtype=torch.float64)


def _inverse_bandwidths(
    distances: torch.Tensor,
    values: torch.Tensor,
    candidates: torch.Tensor,
    threshold: float,
    bandwidth: Bandwidth,
    median: float,
) -> torch.Tensor:
    if bandwidth == "fixed":
        return torch.full((len(candidates),), 1 / (2 * threshold**2 * median), dtype=torch.float64)
    medians = torch.tensor(
        [_median((distances - _squared_distances(values[j])).clamp_min(0)) for j in candidates.tolist()],
        dtype=torch.float64,
    )
    # A candidate that leaves a representation with zero median distance gets kernel 1 everywhere (CKA 0).
    return torch.where(medians > 0, 1 / (2 * threshold**2 * medians.where(medians > 0, 1.0)), 0.0)


def _squared_distances(x: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` squared Euclidean distances between the rows of ``x`` ``(n, d)``; exact zeros on the diagonal."""
    sq = (x * x).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    return d.fill_diagonal_(0)


def _median(d: torch.Tensor) -> float:
    """Median of all entries, averaging the two middle ones for an even count (``numpy.median``)."""
    flat = d.flatten().sort().values
    k = flat.numel()
    return float(flat[k // 2]) if k % 2 else float((flat[k // 2 - 1] + flat[k // 2]) / 2)


def _centre(k: torch.Tensor) -> torch.Tensor:
    row = k.mean(dim=0)
    return k - row[None, :] - row[:, None] + row.mean()


def _merge(
    sequences: Mapping[str, tuple[torch.Tensor, torch.Tensor]], by_marginal: bool
) -> dict[str, torch.Tensor]:
    """Global ranks of every layer's removal sequence.

    Single (``by_marginal=False``): all neurons sorted by damage ``1 - CKA``; ties by layer order, then position.
    Greedy: a k-way merge by marginal damage, ``CKA before - CKA after`` the next removal of each layer. A layer's
    CKA depends only on its own removed set, so the best next removal of a layer is always the next item of its
    greedy sequence, and the merge is the joint greedy procedure over all layers.
    """
    layer_order = {name: i for i, name in enumerate(sequences)}
    ranks = {name: torch.empty(len(order), dtype=torch.float64) for name, (order, _) in sequences.items()}
    if not by_marginal:
        items = sorted(
            (1.0 - float(c), layer_order[name], position)
            for name, (_, cka) in sequences.items()
            for position, c in enumerate(cka.tolist())
        )
        names = list(sequences)
        for rank, (_, layer, position) in enumerate(items):
            ranks[names[layer]][position] = rank
        return ranks
    heap = [
        (1.0 - float(cka[0]), layer_order[name], name, 0) for name, (_, cka) in sequences.items() if len(cka)
    ]
    heapq.heapify(heap)
    rank = 0
    while heap:
        _, layer, name, position = heapq.heappop(heap)
        ranks[name][position] = rank
        rank += 1
        cka = sequences[name][1]
        if position + 1 < len(cka):
            heapq.heappush(heap, (float(cka[position]) - float(cka[position + 1]), layer, name, position + 1))
    return ranks


def _post_activation_points(model: nn.Module, layers: Mapping[str, nn.Module]) -> dict[str, str]:
    """For each layer, the activation module that directly follows it in definition order (BatchNorm, Dropout
    and Identity in between are passed over); layers without one keep their own output."""
    modules = [(name, module) for name, module in model.named_modules() if not list(module.children())]
    position = {name: i for i, (name, _) in enumerate(modules)}
    points = {}
    for name in layers:
        for follower_name, follower in modules[position[name] + 1 :]:
            if isinstance(follower, _ELEMENTWISE):
                points[name] = follower_name
                break
            if not isinstance(follower, _PASS_THROUGH):
                break
    return points


def _names(model: nn.Module, refs: Any) -> set[str]:
    """Names of ``ignored_layers`` given as names or modules."""
    refs = [refs] if isinstance(refs, str | nn.Module) else refs
    by_module = {module: name for name, module in model.named_modules()}
    return {ref if isinstance(ref, str) else by_module.get(ref, "") for ref in refs}


def plan_cka_damage(
    model: nn.Module,
    amount: Any,
    *,
    procedure: Literal["single", "greedy"] = "single",
    example_input: torch.Tensor | None = None,
    data: Iterable[Any] | None = None,
    layers: Any = None,
    point: str | Mapping[str, str] | None = None,
    kernel: Kernel = "linear",
    representation: Representation = "channels",
    threshold: float = 0.5,
    bandwidth: Bandwidth = "fixed",
    max_samples: int = 1024,
    max_batches: int | None = None,
    stop_cka: float | None = None,
    scope: Literal["layer", "global"] = "layer",
    mode: Literal["remove", "mask"] = "remove",
    progress: bool = True,
    **options: Any,
) -> PruningPlan:
    """The ``"cka_single"`` (``procedure="single"``) and ``"cka_greedy"`` (``procedure="greedy"``) methods: score
    channels by :class:`CKADamage` over ``data``, then :func:`~pyprune.pruning.selection.plan_structured` them.
    Other options go to the planner (``greedy=True`` there is Li et al.'s greedy mode, not this procedure).

    ``amount``: fraction of channels to remove per layer (or of all, ``scope="global"``); with ``stop_cka``
    each layer instead loses channels while its CKA stays above ``stop_cka`` (pass ``amount=0``; ``amount``
    then caps nothing and is ignored). Attention heads (and GPT-2 MLP units) are scored as units (see
    :class:`CKADamage`) unless ``attention="skip"``."""
    if procedure not in ("single", "greedy"):
        raise ValueError(f"procedure: expected 'single' or 'greedy', got {procedure!r}")
    greedy = procedure == "greedy"
    heads = options.get("attention", "heads") == "heads"
    scored_model = model
    if heads and any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        # Its heads are observed at out_proj's input, which only a copy that calls out_proj as a module exposes.
        scored_model = copy.deepcopy(model)
        expose_unit_inputs(scored_model)
    ignored = options.get("ignored_layers")
    if layers is None and ignored is None:
        output = output_layer_name(model)
        layers = [
            name for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and name != output
        ]
    criterion = CKADamage(
        scored_model,
        layers,
        point=point,
        kernel=kernel,
        greedy=greedy,
        representation=representation,
        threshold=threshold,
        bandwidth=bandwidth,
        max_samples=max_samples,
        scope=scope,
        heads=heads,
    )
    if layers is not None and ignored is None:
        # plan_structured plans every prunable layer that is not ignored: leave out those not scored.
        scored = set(criterion.layer_names)
        unscored = [
            name for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and name not in scored
        ]
        if unscored:
            options["ignored_layers"] = ignored = unscored
    criterion.accumulate_over(data, max_batches, progress=progress)
    if stop_cka is not None:
        if scope != "layer":
            raise ValueError("stop_cka: a per-layer stop threshold needs scope='layer'")
        skip = {output_layer_name(model)} if ignored is None else _names(model, ignored)
        # amount counts the channels gone after the plan, already-pruned ones (ranked first) included.
        amount = {
            name: (criterion.removals_above(name, stop_cka) + int((~criterion.active(name)).sum()))
            / criterion.active(name).numel()
            for name in [*criterion.layer_names, *criterion.unit_names]
            if name not in skip
        }
        amount = {name: min(value, 1 - 1e-9) for name, value in amount.items()}
    return plan_structured(
        model,
        amount,
        example_input,
        criterion=criterion,
        scope=scope,
        mode=mode,
        method="cka_greedy" if greedy else "cka_single",
        **options,
    )
