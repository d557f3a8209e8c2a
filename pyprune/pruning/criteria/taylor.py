"""Taylor first-order channel criterion (Molchanov et al., ICLR 2017), accumulated by hooks during training.

The score of output channel ``c`` of a layer is the first-order Taylor estimate of the change in the loss when its
feature map ``z_c`` is set to zero::

    θ_c = mean over examples x of | mean over positions m of  z_c(x, m) · ∂L/∂z_c(x, m) |       ("paper")

A position is a spatial location of a ConvNd output (dim 1 is the channel) or, for a Linear layer, one of the
leading positions of a ``(B, ..., C)`` output (the last dim is the channel; ``(B, C)`` has one position per
example). The public implementation ``jacobgil/pytorch-pruning`` averages the *signed* product over the batch
and positions, sums that over batches and takes the absolute value only at the end; pyprune divides the sum by
the number of batches so that both variants are on the same scale (the L2-normalised scores are that
implementation's exactly)::

    θ_c = | Σ over batches of mean over (b, m) of z_c · ∂L/∂z_c | / num_batches                  ("signed_sum_then_abs")

**Attention heads and MLP units** (:mod:`pyprune.pruning.attention`) are scored as units, by Michel et al.'s head
importance (NeurIPS 2019): the derivative of the loss with respect to a gate ``ξ_h`` multiplying head ``h``'s
output, observed at the input of the projection that reads the heads (``out_proj``, ``proj``, ``c_proj``,
``o_proj``), where head ``h`` owns ``unit_width`` consecutive columns ``J_h``. Per example, ``∂ℓ/∂ξ_h`` is the sum
over positions and ``J_h`` of ``z · ∂ℓ/∂z``; with positions averaged, as for channels::

    θ_h = mean over examples x of | mean over positions m of Σ_{j in J_h} z_j(x, m) · ∂L/∂z_j(x, m) |

(``"signed_sum_then_abs"`` likewise). Under grouped-query attention a unit is a key/value group with its query
heads; a GPT-2 MLP's unit is one hidden unit after the activation.

**Normalising heads next to channels** (what ``scope="global"`` ranks together). Molchanov et al.'s layer-wise L2
normalisation makes the scores of a layer of ``n`` equally important channels ``1/sqrt(n)``: it depends on the
number of units normalised over. Normalised over their units, 4 heads would score ``1/2`` each while the 64
channels of the next layer score ``1/8``, so a global ranking would take every channel before any head,
whatever the data say. pyprune therefore normalises a layer of units over the *channels* the units span (the
``num_units * unit_width`` input columns of the projection that reads them, :class:`UnitSpec`), each channel
carrying an equal share ``θ_h / unit_width`` of its unit's θ (first-order Taylor estimates add up over the
channels of a head, which is how ``θ_h`` is formed). The L2 norm of those shares is ``||θ|| / sqrt(unit_width)``,
so a unit's score is its channels' normalised share::

    score_h = θ_h / (||θ||_2 · sqrt(unit_width))

A layer of heads is then normalised exactly as a channel layer of the same width would be (``n`` equally
important heads of width ``d`` score ``1/sqrt(n d)``, as ``n d`` equal channels do), and a head is ranked by its
estimated loss change per channel it removes. ``unit_width`` is 1 for an MLP's units, whose scores are plain
L2-normalised as channels are. Within one layer (``scope="layer"``) the factor changes nothing.

:meth:`Taylor.scores` divides each layer's θ by its L2 norm, then subtracts ``flops_lambda · FLOPs per channel /
flops_unit`` (Molchanov et al. 2017: normalise first, then penalise; the paper uses λ = 1e-3 with FLOPs in
units of 1e6).

Conventions a user should know:

* **Loss reduction.** Eq. 8 needs per-example gradients ``∂ℓ_b/∂z``. A loss that averages over the batch
  (PyTorch's default, ``loss_reduction="mean"``) gives ``(1/B) ∂ℓ_b/∂z``, so the products are multiplied by
  ``B = z.shape[0]``; with ``loss_reduction="sum"`` the gradients are used as they come. Either way, batches of
  different sizes then give the same θ as one pass over all examples. A token-level mean over ``(B, T)``
  positions is a per-example mean averaged over B, so ``"mean"`` is right for it too.
* **Coupled examples.** The per-example gradient is exact only when examples do not interact: BatchNorm in
  training mode couples a batch (as it did in the paper), and a GradScaler multiplies every gradient by its
  current scale (use an unscaled backward, or equal scales, when comparing batches).
* **Where z is observed.** By default z is the layer's own output. ``point={layer: module}`` observes the first
  output of ``module`` after each call of the layer instead, e.g. the BatchNorm or the activation that follows
  (the paper's map is post-activation). Calls of ``module`` that do not follow a call of the layer are ignored,
  so a shared activation module (torchvision's ``self.relu``, used twice per block) works.
* **In-place operations.** The forward hook stores a copy of z (``z.detach().clone()``) and registers a tensor
  hook on z itself. An in-place op applied afterwards (torchvision's ``ReLU(inplace=True)``, a residual
  ``out += identity``) overwrites z's storage but not the copy, and PyTorch hands a hook registered before the
  in-place op the gradient with respect to the value before it, so the product is the one at the hooked point.
  The cost is one extra copy of each observed map, held from its forward until its gradient arrives.
* **Counting.** Every forward call of an observed layer whose gradient arrives is one batch of ``B`` examples,
  counted once (a second backward through a retained graph is ignored); a module called k times per forward
  contributes k batches. Products are formed in float32 (float64 for float64 models) and accumulated over
  examples and batches in float64.

Example:
    >>> taylor = Taylor(model, point={"features.0": "features.1"})  # doctest: +SKIP
    >>> for x, y in loader:                                          # doctest: +SKIP
    ...     with taylor.accumulate():
    ...         loss = F.cross_entropy(model(x), y)
    ...         loss.backward()
    ...     optimizer.step(); optimizer.zero_grad()
    >>> taylor.scores(model.features[0], "features.0")               # doctest: +SKIP
"""

from __future__ import annotations

import copy
import itertools
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from pyprune.activations import LayerSelector, call_model, model_device, to_device
from pyprune.arguments import close_matches_hint
from pyprune.distributed import TaylorTotals, taylor_totals
from pyprune.pruning.attention import UnitSpec, expose_unit_inputs, find_units
from pyprune.pruning.criteria.base import ChannelCriterion
from pyprune.pruning.criteria.scored_layers import channel_dim, resolve_points, resolve_scored_layers
from pyprune.pruning.plan import PruningPlan
from pyprune.pruning.selection import plan_structured

Reduction = Literal["paper", "signed_sum_then_abs"]
LossReduction = Literal["mean", "sum"]
REDUCTIONS = ("paper", "signed_sum_then_abs")
LOSS_REDUCTIONS = ("mean", "sum")


class Taylor(ChannelCriterion):
    """First-order Taylor importance ``|z · ∂L/∂z|`` of each output channel; see the module docstring.

    Args:
        model: the model whose layers are scored; hooks are attached to it only inside :meth:`accumulate`.
        layers: the Linear/ConvNd layers to score: names as in ``model.named_modules()``, a predicate
            ``(name, module) -> bool`` or module type(s); default every Linear and ConvNd layer.
        point: ``{layer name: module name}``: observe z at that module's output (e.g. the following BatchNorm
            or activation) instead of the layer's own output. Its channel dim (dim 1, last for Linear layers)
            must have the layer's number of output channels.
        reduction: ``"paper"`` (abs per example, then mean) or ``"signed_sum_then_abs"``
            (``jacobgil/pytorch-pruning``).
        normalize: divide each layer's θ by its L2 norm in :meth:`scores` (a zero vector stays zero); a layer of
            units by the norm over the channels they span in :meth:`unit_scores` (module docstring).
        flops_lambda: λ >= 0 of the FLOPs penalty subtracted in :meth:`scores` (paper: 1e-3).
        flops_unit: FLOPs per unit of the penalty (paper: 1e6, i.e. MFLOPs).
        loss_reduction: how the loss reduces over the batch dim 0: ``"mean"`` or ``"sum"``.
        heads: also score every attention layer and GPT-2 MLP that :func:`pyprune.pruning.attention.find_units`
            recognises, by unit (module docstring); read with :meth:`unit_scores`. An ``nn.MultiheadAttention``
            is observed only once :func:`pyprune.pruning.attention.expose_unit_inputs` made it call its
            ``out_proj`` (the ``"taylor"`` method does this on its working copy).

    Raises:
        ValueError: an unknown layer or point name (with close matches), an unknown option value.
        TypeError: a selected layer that is not a Linear/ConvNd, a malformed ``point``.
    """

    name = "taylor"
    needs_data = True

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSelector | None = None,
        *,
        point: Mapping[str, str] | None = None,
        reduction: Reduction = "paper",
        normalize: bool = True,
        flops_lambda: float = 0.0,
        flops_unit: float = 1e6,
        loss_reduction: LossReduction = "mean",
        heads: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"loss_reduction: expected one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
        if not (_is_real(flops_lambda) and math.isfinite(flops_lambda) and flops_lambda >= 0):
            raise ValueError(f"flops_lambda: expected a finite number >= 0, got {flops_lambda!r}")
        if not (_is_real(flops_unit) and math.isfinite(flops_unit) and flops_unit > 0):
            raise ValueError(f"flops_unit: expected a finite number > 0, got {flops_unit!r}")
        self.model = model
        self.reduction: Reduction = reduction
        self.normalize = bool(normalize)
        self.flops_lambda = float(flops_lambda)
        self.flops_unit = float(flops_unit)
        self.loss_reduction: LossReduction = loss_reduction
        self._layers = resolve_scored_layers(model, layers)
        self._points = resolve_points(model, self._layers, point)
        self._units: dict[str, UnitSpec] = {spec.name: spec for spec in find_units(model)} if heads else {}
        self._scored: dict[str, nn.Module] = {
            **self._layers,
            **{name: _units_stand_in(spec.num_units) for name, spec in self._units.items()},
        }
        # Per layer (or attention layer / MLP of units): float64 (C,) sums of per-example |mean z·g| (paper) or of per-batch signed means.
        self._sums: dict[str, torch.Tensor] = {}
        self._examples: dict[str, int] = {}
        self._batches: dict[str, int] = {}
        # Output positions per example of the layer itself (spatial product, or Linear's leading dims).
        self._positions: dict[str, int] = {}
        # The four dicts above summed over the ranks of torch.distributed, taken when first read (see _totals).
        self._over_ranks: TaylorTotals | None = None
        self._armed: dict[str, bool] = {}
        # Tensor hooks whose gradient has not arrived yet, removed when accumulate() exits.
        self._pending: dict[int, RemovableHandle] = {}
        self._next_key = 0
        self._active = False
        self._observed = 0
        self._received = 0

    @property
    def layer_names(self) -> list[str]:
        """The scored layers, in the order selected."""
        return list(self._layers)

    @property
    def unit_names(self) -> list[str]:
        """The attention layers (and GPT-2 MLPs) whose heads (units) are scored, in ``named_modules`` order."""
        return list(self._units)

    @property
    def num_examples(self) -> int:
        """Examples whose gradient reached a scored layer (the largest count over layers; 0 before any)."""
        return max(self._examples.values(), default=0)

    @property
    def num_batches(self) -> int:
        """Forward calls whose gradient reached a scored layer (the largest count over layers)."""
        return max(self._batches.values(), default=0)

    def reset(self) -> None:
        """Forget every accumulated product and recorded output size (hooks, if active, stay)."""
        self._sums.clear()
        self._examples.clear()
        self._batches.clear()
        self._positions.clear()
        self._over_ranks = None

    @contextmanager
    def accumulate(self) -> Iterator[Taylor]:
        """Context in which forward and backward passes of the model add to the scores.

        Run the forward *and* ``loss.backward()`` inside the block: gradients that arrive after it are not
        recorded. Every hook is removed on exit, also when the block raises. Parameter gradients are whatever
        the user's backward makes of them (see :meth:`accumulate_over` to leave them untouched).

        Warns:
            UserWarning: scored layers ran with gradients enabled but no gradient arrived before the block ended.
        """
        if self._active:
            raise RuntimeError(
                "accumulate: this Taylor criterion is already accumulating; blocks do not nest"
            )
        self._active = True
        self._observed = self._received = 0
        handles: list[RemovableHandle] = []
        try:
            for name, layer in self._layers.items():
                handles.append(layer.register_forward_hook(partial(self._on_layer, name)))
                if name in self._points:
                    point_module = self.model.get_submodule(self._points[name])
                    handles.append(point_module.register_forward_hook(partial(self._on_point, name)))
            for name, spec in self._units.items():
                writer = self.model.get_submodule(spec.writer)
                handles.append(writer.register_forward_pre_hook(partial(self._on_unit, name)))
            yield self
            if self._observed and not self._received:
                warnings.warn(
                    f"Taylor.accumulate: {self._observed} forward call(s) of scored layers but no gradient "
                    "arrived inside the block; call loss.backward() inside it",
                    stacklevel=3,
                )
        finally:
            for handle in itertools.chain(handles, self._pending.values()):
                handle.remove()
            self._pending.clear()
            self._armed.clear()
            self._active = False

    def accumulate_over(
        self,
        loader: Iterable[Any],
        loss_fn: Callable[[Any, Any], torch.Tensor],
        max_batches: int | None = None,
        *,
        progress: bool = True,
    ) -> Taylor:
        """Accumulate over ``(inputs, targets, ...)`` batches: forward, ``loss_fn(output, targets)``, backward.

        No optimizer step; the model's training flags are used as they are; every parameter's ``.grad`` is
        restored on return (also on error), so the caller's gradients are untouched. Tensors in the batch are
        moved to the model's device.

        Args:
            loader: a DataLoader or any iterable of tuples/lists whose first two items are inputs and targets.
            loss_fn: returns a scalar loss, reduced over the batch as ``loss_reduction`` says.
            max_batches: stop after this many batches (default: the whole loader).
            progress: show a tqdm bar on stderr (as every data-driven method does with ``progress=True``).

        Returns:
            ``self``, so that ``Taylor(model).accumulate_over(loader, loss_fn).scores(...)`` reads in one line.
        """
        if max_batches is not None and not (_is_int(max_batches) and max_batches >= 1):
            raise ValueError(f"max_batches: expected None or an int >= 1, got {max_batches!r}")
        params = list(self.model.parameters())
        saved = [p.grad for p in params]
        device = model_device(self.model)
        total = _length(loader, max_batches)
        seen = 0
        try:
            with (
                torch.enable_grad(),  # the backward passes are the point, also inside a caller's no_grad()
                self.accumulate(),
                tqdm(
                    total=total, unit="batch", desc="taylor scores", disable=not progress, leave=False
                ) as bar,
            ):
                for batch in itertools.islice(loader, max_batches):
                    inputs, targets = _split_batch(batch)
                    for p in params:
                        p.grad = None
                    loss = loss_fn(
                        call_model(self.model, to_device(inputs, device)), to_device(targets, device)
                    )
                    if not (isinstance(loss, torch.Tensor) and loss.ndim == 0):
                        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                        raise ValueError(f"loss_fn: expected a scalar tensor, got {shape}")
                    loss.backward()
                    seen += 1
                    bar.update(1)
        finally:
            for p, grad in zip(params, saved, strict=True):
                p.grad = grad
        if seen == 0:
            raise ValueError("loader: yielded no batches")
        return self

    def raw_scores(self, name: str) -> torch.Tensor:
        """Un-normalised float64 θ ``(C_out,)`` of layer ``name`` (``(num_units,)`` of an attention layer or MLP
        in :attr:`unit_names`) on the CPU, without the FLOPs penalty.

        Raises:
            ValueError: ``name`` is neither a scored layer nor a scored attention layer / MLP.
            RuntimeError: no gradient has been recorded for it yet.
        """
        self._check_name(name)
        totals = self._totals()
        if not totals.batches.get(name):
            where = (
                f" (observed at {self._points[name]!r}, which must run after it)"
                if name in self._points
                else ""
            )
            raise RuntimeError(
                f"Taylor: no gradient recorded for layer {name!r}{where}; run a forward/backward inside "
                "taylor.accumulate() first, or call taylor.accumulate_over(loader, loss_fn)"
            )
        total = totals.sums[name].cpu()
        if self.reduction == "paper":
            return total / totals.examples[name]
        return total.abs() / totals.batches[name]

    def _totals(self) -> TaylorTotals:
        """The statistics over every rank of torch.distributed (this rank's alone otherwise), reduced once after
        each change: ranks must read scores in lockstep, as the planner does on every rank."""
        if self._over_ranks is None:
            self._over_ranks = taylor_totals(
                self._scored, self._sums, self._examples, self._batches, self._positions
            )
        return self._over_ranks

    def scores(
        self, module: nn.Module, name: str, dropped_inputs: torch.Tensor | None = None
    ) -> torch.Tensor:
        """float64 ``(C_out,)`` scores of layer ``name`` on the CPU: θ, L2-normalised, minus the FLOPs penalty.

        ``module`` may be the layer of a copy of the model (the planner scores a deep copy); only its number of
        output channels is checked. ``dropped_inputs`` is ignored: θ comes from the observed maps and their
        gradients, not from the layer's input kernels.

        Raises:
            RuntimeError: nothing recorded for ``name`` yet, or ``module`` has another number of output channels
                than the recorded θ (the layer was pruned since: ``reset()`` and accumulate again).
        """
        theta = self.raw_scores(name)
        channels = int(module.weight.shape[0])
        if channels != theta.numel():
            raise RuntimeError(
                f"module: {name!r} has {channels} output channels but its Taylor scores have {theta.numel()}; "
                "was it pruned since? call reset() and accumulate again"
            )
        theta = self._normalised(theta)
        if self.flops_lambda:
            theta = theta - self.flops_lambda * self.flops_per_channel(name) / self.flops_unit
        return theta

    def unit_scores(self, spec: UnitSpec) -> torch.Tensor | None:
        """float64 ``(num_units,)`` head (unit) importance of ``spec.name`` on the CPU (Michel et al. 2019, module
        docstring); None when this criterion does not score that layer's units.

        Raises:
            RuntimeError: nothing recorded for it yet (an ``nn.MultiheadAttention`` not exposed by
                :func:`pyprune.pruning.attention.expose_unit_inputs`), or it has another number of units now.
            ValueError: ``flops_lambda`` > 0: the FLOPs penalty is defined per channel, not per head.

        With ``normalize`` the scores are ``θ_h / (||θ||_2 · sqrt(spec.unit_width))``: normalised over the channels
        the units span, so that heads and channels share one scale in a global ranking (module docstring).
        """
        if spec.name not in self._units:
            return None
        if self.flops_lambda:
            raise ValueError(
                f"flops_lambda: the FLOPs penalty is defined per channel; {spec.name!r} is scored by "
                f"{spec.granularity} (use flops_lambda=0, or attention='skip' to leave attention layers as they are)"
            )
        theta = self.raw_scores(spec.name)
        if theta.numel() != spec.num_units:
            raise RuntimeError(
                f"spec: {spec.name!r} has {spec.num_units} {spec.granularity} but its Taylor scores have "
                f"{theta.numel()}; was it pruned since? call reset() and accumulate again"
            )
        return self._normalised(theta, spec.unit_width)

    def _normalised(self, theta: torch.Tensor, unit_width: int = 1) -> torch.Tensor:
        """θ divided by the L2 norm of its ``unit_width`` equal shares per unit (module docstring)."""
        if self.normalize:
            norm = torch.linalg.vector_norm(theta)
            if norm > 0:
                theta = theta / (norm * math.sqrt(unit_width))
        return theta

    def flops_per_channel(self, name: str) -> int:
        """Forward FLOPs of one output channel of layer ``name`` per example, at the last recorded input size.

        ConvNd: ``2 · P · (C_in/groups · prod(kernel) + 1)`` with ``P`` the product of the *output* spatial dims
        (the paper's eq. 11 counts the input map; the output map is what a strided conv computes); the
        ``+ 1`` (bias) is counted whether the layer has a bias or not, as in the paper. Linear:
        ``P · (2 · I - 1)`` with ``P`` the number of positions of a ``(B, ..., I)`` input (1 for ``(B, I)``).

        Raises:
            RuntimeError: the layer has not run inside :meth:`accumulate` since construction or :meth:`reset`.
        """
        self._check_name(name)
        positions = self._totals().positions
        if name not in positions:
            raise RuntimeError(
                f"Taylor: the output size of layer {name!r} is unknown; run a forward inside "
                "taylor.accumulate() first"
            )
        layer = self._layers[name]
        positions = positions[name]
        if isinstance(layer, nn.Linear):
            return positions * (2 * int(layer.weight.shape[1]) - 1)
        # weight[0] holds one filter: C_in/groups · prod(kernel) multiply-adds per output position.
        return 2 * positions * (int(layer.weight[0].numel()) + 1)

    def __repr__(self) -> str:
        names = list(self._layers)
        shown = (
            repr(names)
            if len(names) <= 4
            else f"[{', '.join(map(repr, names[:3]))}, ... ({len(names)} in all)]"
        )
        point = f", point={self._points!r}" if self._points else ""
        return (
            f"Taylor(layers={shown}{point}, reduction={self.reduction!r}, normalize={self.normalize}, "
            f"flops_lambda={self.flops_lambda!r}, flops_unit={self.flops_unit!r}, "
            f"loss_reduction={self.loss_reduction!r})"
        )

    def _check_name(self, name: str) -> None:
        if name not in self._scored:
            raise ValueError(
                f"name: {name!r} is not a layer scored by this Taylor criterion"
                f"{close_matches_hint(name, list(self._scored))}"
            )

    def _on_layer(self, name: str, layer: nn.Module, args: Any, output: Any) -> None:
        self._positions[name] = _positions(output, layer)
        if name in self._points:
            self._armed[name] = True
        else:
            self._observe(name, output)

    def _on_point(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if self._armed.pop(name, False):
            self._observe(name, output)

    def _observe(self, name: str, z: Any) -> None:
        layer = self._layers[name]
        if not isinstance(z, torch.Tensor):
            raise TypeError(
                f"point: module {self._points[name]!r} (observing {name!r}) returned {type(z).__name__}; "
                "expected a tensor"
            )
        dim = channel_dim(z, layer)
        channels = int(layer.weight.shape[0])
        if dim is None or z.shape[dim] != channels:
            where = f"module {self._points[name]!r}" if name in self._points else f"layer {name!r}"
            expected = "last dim" if isinstance(layer, nn.Linear) else "dim 1"
            raise ValueError(
                f"point: the output of {where} has shape {tuple(z.shape)}; expected {channels} channels "
                f"({type(layer).__name__} {name!r} has {channels} outputs) in its {expected}"
            )
        self._watch(z, partial(self._add, name, dim=dim))

    def _on_unit(self, name: str, writer: nn.Module, args: Any) -> None:
        spec = self._units[name]
        z = args[0] if args else None
        width = spec.num_units * spec.unit_width
        if not isinstance(z, torch.Tensor) or z.ndim == 0 or z.shape[-1] != width:
            found = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(
                f"model: {spec.writer!r} reads {found}; expected the {spec.num_units} {spec.granularity} of "
                f"{name!r} as {width} columns in the last dim (was it pruned since? build a new Taylor)"
            )
        self._watch(z, partial(self._add_units, name))

    def _watch(self, z: torch.Tensor, add: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
        """Call ``add(copy of z, dL/dz)`` once z's gradient arrives (nothing when z needs no gradient)."""
        if not z.requires_grad:
            return
        self._observed += 1
        key = self._next_key
        self._next_key += 1
        # The copy survives in-place ops applied to z after this hook (see the module docstring).
        state = {"z": z.detach().clone()}

        def on_grad(grad: torch.Tensor) -> None:
            value = state.pop("z", None)
            if value is None:  # a second backward through a retained graph
                return
            # Not handle.remove(): PyTorch iterates the hook dict while calling this; the handle goes stale
            # with z, and accumulate() removes the hooks still pending on exit.
            self._pending.pop(key, None)
            self._received += 1
            add(value, grad)

        self._pending[key] = z.register_hook(on_grad)

    def _add(self, name: str, z: torch.Tensor, grad: torch.Tensor, dim: int) -> None:
        layer = self._layers[name]
        batched = dim != 0 if not isinstance(layer, nn.Linear) else z.ndim >= 2
        work = torch.float64 if z.dtype == torch.float64 else torch.float32
        product = (z.to(work) * grad.to(work)).movedim(dim, -1)
        batch = product.shape[0] if batched else 1
        self._accumulate(name, product.reshape(batch, -1, product.shape[-1]).mean(1).double())  # (B, C)

    def _add_units(self, name: str, z: torch.Tensor, grad: torch.Tensor) -> None:
        spec = self._units[name]
        work = torch.float64 if z.dtype == torch.float64 else torch.float32
        product = z.to(work) * grad.to(work)
        product = product.movedim(spec.writer_batch_dim, 0) if product.ndim >= 2 else product[None]
        batch = product.shape[0]
        # (B, positions, units, unit_width): each unit's gate derivative per position, averaged over positions.
        gates = product.reshape(batch, -1, spec.num_units, spec.unit_width).sum(-1).mean(1)
        self._accumulate(name, gates.double())

    def _accumulate(self, name: str, per_example: torch.Tensor) -> None:
        """Add one batch's float64 ``(B, C)`` per-example products (means over positions) of ``name``."""
        batch = per_example.shape[0]
        if self.loss_reduction == "mean":
            per_example = per_example * batch
        contribution = per_example.abs().sum(0) if self.reduction == "paper" else per_example.mean(0)
        total = self._sums.get(name)
        if total is None:
            self._sums[name] = contribution
            self._examples[name] = self._batches[name] = 0
        elif total.shape != contribution.shape:
            raise RuntimeError(
                f"Taylor: layer {name!r} now has {contribution.numel()} channels but {total.numel()} were "
                "accumulated; call reset() after pruning"
            )
        else:
            total += contribution
        self._examples[name] += batch
        self._batches[name] += 1
        self._over_ranks = None


def _units_stand_in(num_units: int) -> nn.Module:
    """A module whose ``weight.shape[0]`` is ``num_units``: :func:`pyprune.distributed.taylor_totals` sizes the
    zeros of a rank that saw no gradient by a scored layer's weight."""
    stand_in = nn.Module()
    stand_in.weight = torch.empty(num_units, 0)
    return stand_in


def _positions(output: torch.Tensor, layer: nn.Module) -> int:
    """Output positions per example of ``layer``: the spatial product (ConvNd) or Linear's leading dims."""
    if isinstance(layer, nn.Linear):
        return math.prod(output.shape[1:-1]) if output.ndim >= 2 else 1
    return math.prod(output.shape[-len(layer.kernel_size) :])


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise TypeError(
            f"loader: expected (inputs, targets, ...) batches (tuples or lists), got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    return batch[0], batch[1]


def _length(loader: Iterable[Any], max_batches: int | None) -> int | None:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return max_batches
    return n if max_batches is None else min(n, max_batches)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


TAYLOR_OPTIONS = ("reduction", "normalize", "flops_lambda", "flops_unit", "point", "loss_reduction")
"""Options of the ``"taylor"`` method that configure the :class:`Taylor` criterion; the rest go to the planner."""


def plan_taylor(
    model: nn.Module,
    amount: Any,
    *,
    example_input: Any = None,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    **options: Any,
) -> PruningPlan:
    """The ``"taylor"`` method: score channels by :class:`Taylor` over ``data`` (``loss_fn`` default cross-entropy),
    then :func:`~pyprune.pruning.selection.plan_structured` them, ranked globally unless ``scope`` says otherwise.

    Options named in :data:`TAYLOR_OPTIONS` configure the criterion; the others go to the planner. Attention heads
    (and GPT-2 MLP units) are scored as units (Michel et al. 2019) unless ``attention="skip"``.
    """
    options.setdefault("scope", "global")
    taylor_options = {key: options.pop(key) for key in TAYLOR_OPTIONS if key in options}
    # Scores come from forward/backward passes of a copy: train-mode BatchNorm would update the model's statistics.
    work = copy.deepcopy(model)
    heads = options.get("attention", "heads") == "heads"
    if heads:
        expose_unit_inputs(work)
    criterion = Taylor(work, heads=heads, **taylor_options)
    criterion.accumulate_over(
        data, loss_fn or nn.functional.cross_entropy, max_batches=max_batches, progress=progress
    )
    return plan_structured(model, amount, example_input, criterion=criterion, method="taylor", **options)
