"""The pruning plan: what a method decided to remove, as plain data, separate from the model.

A :class:`PruningPlan` lists, per layer, the indices that go: flat weight indices (unstructured) or output
channels (structured). It carries a fingerprint of the architecture it was made for (parameter names and shapes),
so applying it to another architecture fails before anything changes. Plans print as a table, serialise to JSON
(weight masks as packed bits, so a plan of a large model stays small) and apply to a fresh copy of the same
architecture, which is how :func:`pyprune.load_pruned` rebuilds a pruned model without pickled classes.

Applying lives in :mod:`pyprune.pruning.apply`; planning in :mod:`pyprune.pruning.planner`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

PLAN_FORMAT = "pyprune-plan/1"

Granularity = Literal["weights", "channels"]
ApplyMode = Literal["mask", "remove"]


@dataclass
class LayerPlan:
    """What goes from one layer.

    Attributes:
        name: qualified module name (``model.named_modules()``); for structured plans, the root of its
            dependency group.
        granularity: ``"weights"`` (``removed`` are flat indices into ``weight``) or ``"channels"`` (output
            channels of ``weight``, dim 0).
        size: number of weights or channels before pruning.
        removed: sorted int64 indices.
        coupled: other modules whose channels are removed with the root's (BatchNorm, consumers' inputs,
            layers tied by residual additions); informational.
        params_before, params_after: parameters of the module itself (its rows and columns both shrink when
            neighbours are pruned), when the planner measured them.
        flops_before, flops_after: forward FLOPs of the module for the plan's example input, when measured.
    """

    name: str
    granularity: Granularity
    size: int
    removed: torch.Tensor
    coupled: tuple[str, ...] = ()
    params_before: int | None = None
    params_after: int | None = None
    flops_before: int | None = None
    flops_after: int | None = None

    @property
    def num_removed(self) -> int:
        return int(self.removed.numel())

    @property
    def num_kept(self) -> int:
        return self.size - self.num_removed

    @property
    def fraction_removed(self) -> float:
        return self.num_removed / self.size if self.size else 0.0

    def keep_mask(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """Boolean mask shaped like the layer's weight: False where this plan removes a weight or channel."""
        mask = torch.ones(shape, dtype=torch.bool)
        if self.granularity == "weights":
            mask.view(-1)[self.removed] = False
        else:
            mask[self.removed] = False
        return mask

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "granularity": self.granularity, "size": self.size}
        if self.granularity == "weights":
            bits = np.zeros(self.size, dtype=bool)
            bits[self.removed.numpy()] = True
            data["removed_bits"] = base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")
        else:
            data["removed"] = self.removed.tolist()
        data["coupled"] = list(self.coupled)
        for key in ("params_before", "params_after", "flops_before", "flops_after"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerPlan:
        size = int(data["size"])
        if "removed_bits" in data:
            packed = np.frombuffer(base64.b64decode(data["removed_bits"]), dtype=np.uint8)
            removed = torch.from_numpy(np.flatnonzero(np.unpackbits(packed, count=size))).long()
        else:
            removed = torch.tensor(data["removed"], dtype=torch.long)
        return cls(
            name=data["name"],
            granularity=data["granularity"],
            size=size,
            removed=removed,
            coupled=tuple(data.get("coupled", ())),
            params_before=data.get("params_before"),
            params_after=data.get("params_after"),
            flops_before=data.get("flops_before"),
            flops_after=data.get("flops_after"),
        )


@dataclass
class PruningPlan:
    """A complete pruning decision for one model; see the module docstring.

    Attributes:
        method: name of the method that made it (e.g. ``"magnitude"``, ``"l1_filter"``, ``"taylor"``).
        mode: ``"mask"`` (``torch.nn.utils.prune`` masks, shapes unchanged) or ``"remove"`` (channels physically
            removed through Torch-Pruning's dependency graph).
        layers: one :class:`LayerPlan` per pruned layer (or dependency group).
        fingerprint: ``(parameter name, shape)`` of every parameter of the model the plan was made for, with
            ``torch.nn.utils.prune``'s ``_orig`` suffix stripped.
        input_shape: shape of the example input, needed to rebuild the dependency graph when removing channels.
        options: the planner's arguments (amount, scope, ...), for the record.
        totals: whole-model ``{"params": [before, after], "nonzero_params": [...], "flops": [...]}`` when the
            planner measured them (``pyprune.count`` before and after applying to a copy).
        rescale: ``{module name: factors}`` multiplying that module's weight before anything is masked or
            removed; ``factors`` is float64 and broadcasts against the weight (e.g. ``(1, C_in, 1, 1)`` for input
            channels). Importance-sampling methods (SiPPRand, randomised PFP) reweight what they keep this way.
    """

    method: str
    mode: ApplyMode
    layers: list[LayerPlan]
    fingerprint: list[tuple[str, tuple[int, ...]]]
    input_shape: tuple[int, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, list[int]] = field(default_factory=dict)
    rescale: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def structured(self) -> bool:
        return any(layer.granularity == "channels" for layer in self.layers)

    @property
    def num_removed(self) -> int:
        return sum(layer.num_removed for layer in self.layers)

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def fraction_removed(self) -> float:
        """Removed weights (or channels) over all weights (or channels) of the planned layers."""
        return self.num_removed / self.size if self.size else 0.0

    def layer(self, name: str) -> LayerPlan:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"the plan has no layer {name!r}; it has {[layer.name for layer in self.layers]}")

    def apply(self, model: nn.Module) -> nn.Module:
        """Apply to ``model`` in place (see :func:`pyprune.pruning.apply.apply_plan`); returns ``model``."""
        from pyprune.pruning.apply import apply_plan

        return apply_plan(self, model)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "method": self.method,
            "mode": self.mode,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "options": self.options,
            "totals": self.totals,
            "fingerprint": [[name, list(shape)] for name, shape in self.fingerprint],
            "layers": [layer.to_dict() for layer in self.layers],
            "rescale": {name: _encode_tensor(factors) for name, factors in self.rescale.items()},
        }

    def to_json(self, path: str | None = None, *, indent: int | None = 1) -> str:
        """The plan as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningPlan:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a pyprune plan: expected format {PLAN_FORMAT!r}, got {found!r}")
        return cls(
            method=data["method"],
            mode=data["mode"],
            layers=[LayerPlan.from_dict(layer) for layer in data["layers"]],
            fingerprint=[(name, tuple(shape)) for name, shape in data["fingerprint"]],
            input_shape=None if data.get("input_shape") is None else tuple(data["input_shape"]),
            options=dict(data.get("options", {})),
            totals={k: list(v) for k, v in data.get("totals", {}).items()},
            rescale={name: _decode_tensor(value) for name, value in data.get("rescale", {}).items()},
        )

    @classmethod
    def from_json(cls, text_or_path: str) -> PruningPlan:
        """Read a plan from JSON text or from a file path."""
        text = text_or_path
        if not text_or_path.lstrip().startswith("{"):
            with open(text_or_path, encoding="utf-8") as handle:
                text = handle.read()
        return cls.from_dict(json.loads(text))

    def __str__(self) -> str:
        return format_plan(self)


def model_fingerprint(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of ``model``'s parameters, ``torch.nn.utils.prune``'s ``_orig`` suffix stripped."""
    return [(name.removesuffix("_orig"), tuple(p.shape)) for name, p in model.named_parameters()]


def check_fingerprint(plan: PruningPlan, model: nn.Module) -> None:
    """Raise ValueError naming the first difference when ``model`` is not the architecture ``plan`` was made for."""
    found = model_fingerprint(model)
    if found == plan.fingerprint:
        return
    expected = dict(plan.fingerprint)
    actual = dict(found)
    for name, shape in plan.fingerprint:
        if name not in actual:
            problem = f"the model has no parameter {name!r}"
            break
        if actual[name] != shape:
            problem = f"parameter {name!r} has shape {actual[name]}, the plan expects {shape}"
            break
    else:
        extra = [name for name in actual if name not in expected]
        problem = f"the model has parameters the plan does not know: {extra[:5]}"
    raise ValueError(
        f"model: the plan was made for a different architecture ({problem}). Apply a plan to a fresh instance "
        "of the model it was made for, in the state it had when planned (earlier plans applied first)."
    )


def format_plan(plan: PruningPlan) -> str:
    """The plan as an aligned text table: layer, kind, before, after, % removed, params, FLOPs."""
    header = ["layer", "kind", "before", "after", "removed", "params", "FLOPs"]
    rows = [
        [
            layer.name,
            layer.granularity,
            f"{layer.size:,}",
            f"{layer.num_kept:,}",
            f"{100 * layer.fraction_removed:.1f}%",
            _before_after(layer.params_before, layer.params_after),
            _before_after(layer.flops_before, layer.flops_after),
        ]
        for layer in plan.layers
    ]
    rows.append(
        [
            "model" if plan.totals else "total",
            "",
            f"{plan.size:,}",
            f"{plan.size - plan.num_removed:,}",
            f"{100 * plan.fraction_removed:.1f}%",
            _before_after(
                *plan.totals.get("nonzero_params" if plan.mode == "mask" else "params", (None, None))
            ),
            _before_after(*plan.totals.get("flops", (None, None))),
        ]
    )
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Iterable[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i < 2 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    title = f"PruningPlan: {plan.method}, mode={plan.mode}, {len(plan.layers)} layer(s)"
    return "\n".join([title, line(header), line("-" * w for w in widths), *map(line, rows)])


def _before_after(before: int | None, after: int | None) -> str:
    if before is None or after is None:
        return "-"
    return f"{_short(before)} -> {_short(after)}"


def _short(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def _encode_tensor(t: torch.Tensor) -> dict[str, Any]:
    """A float64 tensor as ``{"shape", "float64"}`` with the little-endian bytes in base64 (exact round trip)."""
    array = t.detach().to(torch.float64).cpu().contiguous().numpy().astype("<f8")
    return {"shape": list(t.shape), "float64": base64.b64encode(array.tobytes()).decode("ascii")}


def _decode_tensor(data: dict[str, Any]) -> torch.Tensor:
    array = np.frombuffer(base64.b64decode(data["float64"]), dtype="<f8").reshape(data["shape"])
    return torch.from_numpy(array.copy())
