"""The pruning plan: what a method decided to remove, as plain data, separate from the model.

A :class:`PruningPlan` lists, per layer, the indices that go: flat weight indices (unstructured) or output
channels (structured). It carries a fingerprint of the architecture it was made for (parameter names and shapes),
so applying it to another architecture fails before anything changes. Plans print as a table, serialise to JSON
(weight masks as packed bits, so a plan of a large model stays small) and apply to a fresh copy of the same
architecture, which is how :func:`pyprune.load_pruned` rebuilds a pruned model without pickled classes.

Applying lives in :mod:`pyprune.pruning.apply`; planning in :mod:`pyprune.pruning.selection`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pyprune.distributed import unwrap_model
from pyprune.pruning.apply import apply_plan
from pyprune.pruning.fingerprint import Fingerprint
from pyprune.pruning.layers import output_layer_name

PLAN_FORMAT = "pyprune-plan/1"

MAX_RESCALE = 1e9
"""Largest ``rescale`` factor a loaded plan may carry. Importance-sampling factors ``count / (m p)`` stay below
``1 / p_min``, and probabilities below float32's epsilon are dropped, so real factors are below about 1e7; larger
ones (or 1e308) can only come from a corrupt or hostile file and would overflow float32 weights."""

Granularity = Literal["weights", "channels", "heads", "units"]
ApplyMode = Literal["mask", "remove"]


@dataclass
class LayerPlan:
    """What goes from one layer.

    Attributes:
        name: qualified module name (``model.named_modules()``); for structured plans, the root of its
            dependency group.
        granularity: ``"weights"`` (``removed`` are flat indices into ``weight``), ``"channels"`` (output
            channels of ``weight``, dim 0), ``"heads"`` (attention heads, or key/value groups under grouped-query
            attention, of the attention module ``name``) or ``"units"`` (hidden units of the MLP ``name``); see
            :mod:`pyprune.pruning.attention`.
        size: number of weights, channels, heads or units before pruning.
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
    def from_dict(cls, data: dict[str, Any], where: str = "layer") -> LayerPlan:
        """Read and validate one layer entry; ValueError naming ``where`` and the field on any inconsistency."""
        _expect(isinstance(data, dict), where, "an object", data)
        _expect(
            isinstance(data.get("name"), str) and data["name"],
            f"{where}.name",
            "a module name",
            data.get("name"),
        )
        where = f"layer {data['name']!r}"
        granularity = data.get("granularity")
        _expect(isinstance(granularity, str) and granularity, f"{where}.granularity", "a string", granularity)
        size = data.get("size")
        _expect(_is_count(size) and size >= 1, f"{where}.size", "an int >= 1", size)
        if "removed_bits" in data:
            _expect(
                granularity == "weights",
                f"{where}.removed_bits",
                "only with granularity 'weights'",
                granularity,
            )
            packed = _base64(data["removed_bits"], f"{where}.removed_bits")
            if len(packed) != (size + 7) // 8 or np.unpackbits(packed)[size:].any():
                raise ValueError(
                    f"plan: {where}.removed_bits holds {len(packed)} bytes; expected {(size + 7) // 8} for {size} "
                    "weights, with zero padding bits"
                )
            removed = torch.from_numpy(np.flatnonzero(np.unpackbits(packed, count=size))).long()
        else:
            indices = data.get("removed")
            _expect(
                isinstance(indices, list), f"{where}.removed", "a list of indices", type(indices).__name__
            )
            bad = [i for i in indices if not (_is_count(i) and 0 <= i < size)]
            if bad:
                raise ValueError(f"plan: {where}.removed holds {bad[:5]}; expected ints in [0, {size})")
            if len(set(indices)) != len(indices):
                duplicates = sorted({i for i in indices if indices.count(i) > 1})
                raise ValueError(f"plan: {where}.removed lists {duplicates[:5]} more than once")
            removed = torch.tensor(sorted(indices), dtype=torch.long)
        if removed.numel() >= size:
            raise ValueError(f"plan: {where} would lose all of its {size} {granularity}")
        coupled = data.get("coupled", [])
        _expect(
            isinstance(coupled, list) and all(isinstance(c, str) for c in coupled),
            f"{where}.coupled",
            "a list of module names",
            coupled,
        )
        counts = {}
        for key in ("params_before", "params_after", "flops_before", "flops_after"):
            value = data.get(key)
            _expect(
                value is None or (_is_count(value) and value >= 0), f"{where}.{key}", "an int >= 0", value
            )
            counts[key] = value
        return cls(
            name=data["name"],
            granularity=granularity,
            size=size,
            removed=removed,
            coupled=tuple(coupled),
            **counts,
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
        weights: ``{module name: values}`` written into that module's weight (same shape) before it is rescaled,
            masked or removed; stored exactly (float64). Reconstruction methods (SparseGPT) carry their updated
            surviving weights this way.
    """

    method: str
    mode: ApplyMode
    layers: list[LayerPlan]
    fingerprint: Fingerprint
    input_shape: tuple[int, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    totals: dict[str, list[int]] = field(default_factory=dict)
    rescale: dict[str, torch.Tensor] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def structured(self) -> bool:
        """True when the plan removes or masks whole structures: channels, attention heads or MLP units."""
        return any(layer.granularity != "weights" for layer in self.layers)

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
        """Apply to ``model`` in place (see :func:`pyprune.pruning.apply.apply_plan`); returns ``model``.

        A DistributedDataParallel wrapper is pruned through its module; re-wrap the model afterwards when the plan
        removes channels (DDP keeps references to the replaced parameters)."""
        check_untied(self, unwrap_model(model))
        check_output_kept(self, unwrap_model(model))
        apply_plan(self, unwrap_model(model))
        return model

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
            "weights": {name: _encode_tensor(values) for name, values in self.weights.items()},
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
        """Read a plan from :meth:`to_dict`'s form, validated completely before anything can use it.

        Raises:
            ValueError: not a plan, or any field malformed or inconsistent (duplicate, non-integer or
                out-of-range indices, a layer losing everything, short ``removed_bits``, non-finite or negative
                ``rescale`` factors or factors above :data:`MAX_RESCALE`, non-finite ``weights``), naming it.
        """
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"not a pyprune plan: expected format {PLAN_FORMAT!r}, got {found!r}")
        _expect(isinstance(data.get("method"), str), "method", "a string", data.get("method"))
        _expect(data.get("mode") in ("mask", "remove"), "mode", "'mask' or 'remove'", data.get("mode"))
        layers = data.get("layers")
        _expect(isinstance(layers, list), "layers", "a list", type(layers).__name__)
        names = [layer.get("name") if isinstance(layer, dict) else None for layer in layers]
        repeated = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
        _expect(not repeated, "layers", "each layer once", repeated)
        fingerprint = data.get("fingerprint")
        _expect(
            isinstance(fingerprint, list)
            and all(
                isinstance(entry, list)
                and len(entry) == 2
                and isinstance(entry[0], str)
                and _is_shape(entry[1])
                for entry in fingerprint
            ),
            "fingerprint",
            "[[parameter name, shape], ...]",
            fingerprint if not isinstance(fingerprint, list) else "a malformed entry",
        )
        input_shape = data.get("input_shape")
        _expect(input_shape is None or _is_shape(input_shape), "input_shape", "null or a shape", input_shape)
        options, totals = data.get("options", {}), data.get("totals", {})
        _expect(isinstance(options, dict), "options", "an object", type(options).__name__)
        _expect(
            isinstance(totals, dict)
            and all(
                isinstance(v, list) and all(isinstance(x, int | float) for x in v) for v in totals.values()
            ),
            "totals",
            "{name: [before, after]} counts",
            totals,
        )
        return cls(
            method=data["method"],
            mode=data["mode"],
            layers=[LayerPlan.from_dict(layer, f"layers[{i}]") for i, layer in enumerate(layers)],
            fingerprint=[(name, tuple(shape)) for name, shape in fingerprint],
            input_shape=None if input_shape is None else tuple(input_shape),
            options=dict(options),
            totals={k: list(v) for k, v in totals.items()},
            rescale=_decode_tensors(data.get("rescale", {}), "rescale", MAX_RESCALE),
            weights=_decode_tensors(data.get("weights", {}), "weights", None),
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


def check_untied(plan: PruningPlan, model: nn.Module) -> None:
    """Refuse a plan that prunes a parameter shared by several modules (tied weights, e.g. an embedding and an
    output layer), since masking or slicing it for one user would give the others different values or shapes.

    Raises:
        ValueError: naming the parameter's users and the way out (``ignored_layers``, or untying first).
    """
    holders: dict[int, list[tuple[str, nn.Module]]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for key, parameter in module._parameters.items():
            if parameter is not None:
                holders.setdefault(id(parameter), []).append((f"{name}.{key}" if name else key, module))
    modules = dict(model.named_modules())
    touched = [layer.name for layer in plan.layers] + list(plan.rescale) + list(plan.weights)
    if plan.mode == "remove":
        touched += [name for layer in plan.layers for name in layer.coupled]
    for name in dict.fromkeys(touched):
        module = modules.get(name)
        if module is None:
            continue
        for parameter in module._parameters.values():
            users = holders.get(id(parameter), []) if parameter is not None else []
            if len({id(user) for _, user in users}) > 1:
                shared = sorted({qualified for qualified, _ in users})
                raise ValueError(
                    f"model: the plan prunes {name!r}, whose parameter is shared by {shared} (tied weights); "
                    "pruning it for one user would untie it from the others. Leave every user of a shared "
                    "parameter out (ignored_layers=[...]) or untie the parameter first."
                )


def check_output_kept(plan: PruningPlan, model: nn.Module) -> None:
    """Refuse a structured plan that removes or masks output channels of the model's output layer.

    The output layer (the last Linear/ConvNd in definition order, see
    :func:`pyprune.pruning.layers.output_layer_name`) produces the model's outputs (classes, vocabulary):
    removing its channels changes the output's width, which :func:`~pyprune.pruning.apply.apply_plan`'s forward
    check would refuse after the fact, and masking them silences outputs. Planners leave it out by default; an
    explicit ``ignored_layers`` replaces that default, so a caller who lists other layers there must list the
    output layer too, as with Torch-Pruning's ``ignored_layers=[model.fc]``. Refused here rather than added
    silently, so that the plan never differs from the ``ignored_layers`` it records.

    Raises:
        ValueError: naming ``ignored_layers``, the layer and the channel counts.
    """
    touched = [layer for layer in plan.layers if layer.granularity == "channels" and layer.num_removed]
    if not touched:
        return
    output = output_layer_name(model)
    for layer in touched:
        if layer.name == output:
            verb = "removes" if plan.mode == "remove" else "masks"
            raise ValueError(
                f"ignored_layers: the plan {verb} {layer.num_removed} of the {layer.size} output channels of "
                f"{output!r}, the model's output layer, which would change the model's outputs. An explicit "
                f"ignored_layers replaces the default one (the output layer): add {output!r} to it."
            )


def format_plan(plan: PruningPlan) -> str:
    """The plan as an aligned text table: layer, kind, before, after, % removed, params, FLOPs; then one line
    naming the layers the plan leaves untouched and why (``plan.options["untouched"]``), when it lists any, and a
    ``config:`` line when a Hugging Face config cannot describe the pruned model (``plan.options["hf_config"]``);
    before them, for a ``budget="flops"`` / ``"params"`` plan, the fraction asked and reached
    (``plan.options["budget"]``)."""
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
    lines = [title, line(header), line("-" * w for w in widths), *map(line, rows)]
    budget = plan.options.get("budget")
    if budget:
        lines.append(
            f"budget: {budget['unit']} -{100 * budget['target']:.2f}% asked, -{100 * budget['achieved']:.2f}% reached "
            f"({_short(budget['before'])} -> {_short(budget['after'])})"
        )
    untouched = plan.options.get("untouched")
    if untouched:
        lines.append(_untouched_line(untouched))
    if plan.options.get("hf_config") not in (None, "rewritten"):  # a Hugging Face config that cannot follow
        lines.append(f"config: {plan.options['hf_config']}")
    return "\n".join(lines)


UNTOUCHED_SHOWN = 4
"""Layers :func:`format_plan` names on its ``untouched:`` line; the rest are counted (all are in the options)."""


def _untouched_line(untouched: dict[str, str]) -> str:
    """``untouched: fc (output layer ...), ...``: the layers the plan leaves as they are, and why."""
    shown = [f"{name} ({reason})" for name, reason in list(untouched.items())[:UNTOUCHED_SHOWN]]
    more = len(untouched) - len(shown)
    if more:
        shown.append(f"... {more} more in plan.options['untouched']")
    return "untouched: " + ", ".join(shown)


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


def _decode_tensors(data: Any, field: str, limit: float | None) -> dict[str, torch.Tensor]:
    """``{module name: tensor}`` from :func:`_encode_tensor`'s form, each validated: the byte count matches the
    shape, every value is finite, and with ``limit`` every value is in ``[0, limit]``."""
    _expect(isinstance(data, dict), field, "an object {module name: tensor}", type(data).__name__)
    tensors = {}
    for name, value in data.items():
        where = f"{field}[{name!r}]"
        _expect(isinstance(value, dict) and _is_shape(value.get("shape")), f"{where}.shape", "a shape", value)
        raw = _base64(value.get("float64"), f"{where}.float64")
        expected = 8 * math.prod(value["shape"])
        if len(raw) != expected:
            raise ValueError(
                f"plan: {where} holds {len(raw)} bytes; its shape {value['shape']} needs {expected}"
            )
        array = np.frombuffer(raw.tobytes(), dtype="<f8").reshape(value["shape"])
        if not np.isfinite(array).all():
            raise ValueError(f"plan: {where} holds non-finite values (NaN or infinity)")
        if limit is not None and array.size and not (array.min() >= 0 and array.max() <= limit):
            raise ValueError(
                f"plan: {where} holds factors in [{array.min():.6g}, {array.max():.6g}]; expected them in "
                f"[0, {limit:g}]"
            )
        tensors[name] = torch.from_numpy(array.copy())
    return tensors


def _expect(condition: Any, field: str, expected: str, found: Any) -> None:
    if not condition:
        raise ValueError(f"plan: {field}: expected {expected}, got {found!r}"[:400])


def _is_count(value: Any) -> bool:
    """A JSON integer: not a float (even 2.0, which would be truncated silently), not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_shape(value: Any) -> bool:
    return isinstance(value, list) and all(_is_count(v) and v >= 0 for v in value)


def _base64(text: Any, field: str) -> np.ndarray:
    _expect(isinstance(text, str), field, "base64 text", type(text).__name__)
    try:
        return np.frombuffer(base64.b64decode(text, validate=True), dtype=np.uint8)
    except (ValueError, binascii.Error) as error:
        raise ValueError(f"plan: {field}: not valid base64 ({error})") from None
