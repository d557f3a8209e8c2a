"""Attention heads and transformer MLPs as pruning units.

Torch-Pruning's dependency graph sees the q/k/v projections of an attention layer as plain Linear layers: removing
arbitrary output channels of them breaks the ``(batch, tokens, heads, head_dim)`` reshape that follows (the
"shape ... is invalid" failures on ViTs). pyprune therefore finds the attention layers of a model itself, scores
and removes **whole heads** (for grouped-query attention, whole key/value groups with the query heads that share
them, Ainslie et al. 2023), and rewrites the attributes the layer's forward reads (``num_heads``, ``attn_dim``,
``all_head_size``...). Head removal only changes the q/k/v rows and the output projection's columns, so it is
done here by slicing those tensors, independently of the dependency graph; the residual stream (embedding width)
is left alone and listed as untouched.

Recognised layers (by structure and attribute names, so neither timm nor transformers is imported):

========================  =========================================================  ==========================
layer                     projections                                                attributes rewritten
========================  =========================================================  ==========================
timm ``Attention``        fused ``qkv`` Linear, ``proj``                              ``num_heads``, ``attn_dim``
``nn.MultiheadAttention``  ``in_proj_weight`` / ``in_proj_bias``, ``out_proj``       ``num_heads`` (class swapped
                                                                                     to :class:`PrunedMultiheadAttention`)
HF GPT-2 attention        fused ``c_attn`` Conv1D, ``c_proj`` Conv1D                 ``num_heads``, ``split_size``
HF BERT / ViT attention   ``self.query/key/value`` Linear, ``output.dense``          ``num_attention_heads``,
                                                                                     ``all_head_size``
HF Llama-style attention  ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (GQA)       config fields (see below)
========================  =========================================================  ==========================

GPT-2's MLP (``c_fc`` -> ``c_proj``, both HF ``Conv1D``, which Torch-Pruning does not know) is handled here too, as
hidden units. After applying, a Hugging Face model's config is rewritten when every layer has the same width
(``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` where the config has that field, and the MLP width
``intermediate_size`` / ``n_inner``) so that ``save_pretrained`` / ``from_pretrained`` rebuild it; models whose
config derives ``head_dim`` from ``hidden_size / num_attention_heads`` (GPT-2, BERT, ViT) cannot express fewer
heads (transformers 5 also dropped the config's ``pruned_heads`` list), and :func:`rewrite_hf_config` returns a
note saying so, which the plan keeps in ``plan.options["hf_config"]`` and prints: such a model round-trips through
:func:`pyprune.save_pruned` / :func:`pyprune.load_pruned`, not ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pyprune.pruning.criteria.base import ChannelCriterion


@dataclass(frozen=True)
class UnitSpec:
    """One prunable structure whose units are removed by slicing.

    Attributes:
        name: qualified name of the attention (or MLP) module; the plan's layer name.
        kind: ``"timm"``, ``"mha"``, ``"gpt2"``, ``"bert"``, ``"llama"`` or ``"gpt2_mlp"``.
        num_units: heads (KV groups under grouped-query attention, hidden units for an MLP).
        readers: ``{projection module name: [(first output row, rows per unit)]}``: each block holds the
            ``num_units`` units' rows one after the other (a fused qkv has three blocks; under GQA the query
            block's unit is the ``num_heads / num_kv_heads`` query heads sharing one KV head). HF Conv1D columns
            count as rows.
        writer: name of the projection reading the units (its input columns).
        unit_width: columns of ``writer`` per unit.
        num_heads, num_kv_heads, head_dim: attention geometry (0 for an MLP).
    """

    name: str
    kind: str
    num_units: int
    readers: Mapping[str, Sequence[tuple[int, int]]]
    writer: str
    unit_width: int
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def granularity(self) -> str:
        return "units" if self.kind == "gpt2_mlp" else "heads"

    @property
    def writer_batch_dim(self) -> int:
        """Batch dim of the ``writer``'s input: 1 for ``nn.MultiheadAttention`` (its out_proj reads
        ``(L, N, num_heads * head_dim)``, sequence first), 0 otherwise; the units' columns are always last."""
        return 1 if self.kind == "mha" else 0

    def rows(self, reader: str, units: torch.Tensor) -> torch.Tensor:
        """Output rows of projection ``reader`` that belong to ``units`` (int64, sorted)."""
        rows = [
            torch.arange(start + unit * width, start + (unit + 1) * width)
            for start, width in self.readers[reader]
            for unit in units.tolist()
        ]
        return torch.cat(rows).sort().values if rows else torch.zeros(0, dtype=torch.long)

    def reader_size(self, reader: str) -> int:
        return sum(width * self.num_units for _, width in self.readers[reader])


def is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D: a Linear with a (in, out) weight; not imported so transformers stays optional.
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and getattr(module, "weight", None) is not None
    )


def find_units(model: nn.Module, unsupported: dict[str, str] | None = None) -> list[UnitSpec]:
    """Every recognised attention layer (and GPT-2 MLP) of ``model``, in ``named_modules`` order.

    Attention layers whose heads pyprune cannot remove (torchvision's Swin attention derives ``head_dim`` from
    its input width; ``nn.MultiheadAttention`` with ``kdim``/``vdim``; timm attention with a gate) are left out;
    their projections go into ``unsupported`` as ``{layer: reason}`` so that planners keep them whole.
    """
    specs = []
    for name, module in model.named_modules():
        try:
            spec = unit_spec(name, module)
        except UnsupportedAttention as error:
            if unsupported is not None:
                unsupported.update(dict.fromkeys(error.layers, str(error)))
            continue
        if spec is not None:
            specs.append(spec)
    return specs


class UnsupportedAttention(ValueError):
    """An attention layer pyprune recognises but cannot remove heads from; ``layers`` must be kept whole."""

    def __init__(self, message: str, layers: Sequence[str]) -> None:
        super().__init__(message)
        self.layers = list(layers)


def _join(prefix: str, child: str) -> str:
    return f"{prefix}.{child}" if prefix else child


def unit_spec(name: str, m: nn.Module) -> UnitSpec | None:
    """The :class:`UnitSpec` of module ``m`` (named ``name``) if it is a recognised attention layer or GPT-2 MLP."""
    if isinstance(m, nn.MultiheadAttention):
        if m.in_proj_weight is None or m.bias_k is not None or m.add_zero_attn:
            raise UnsupportedAttention(
                f"nn.MultiheadAttention {name!r} has separate kdim/vdim, bias_k/bias_v or add_zero_attn: pyprune "
                "cannot remove its heads",
                [name, _join(name, "out_proj")],
            )
        heads = m.num_heads
        dim = m.in_proj_weight.shape[0] // 3 // heads
        blocks = [(0, dim), (heads * dim, dim), (2 * heads * dim, dim)]
        return UnitSpec(name, "mha", heads, {name: blocks}, _join(name, "out_proj"), dim, heads, heads, dim)
    qkv_proj = getattr(m, "qkv_proj", None)
    if isinstance(qkv_proj, nn.Conv2d) and isinstance(getattr(m, "out_proj", None), nn.Conv2d):
        # timm's MobileViTv2 separable self-attention: one query channel and key/value blocks split from one conv.
        raise UnsupportedAttention(
            f"separable self-attention {name!r} ({type(m).__name__}) splits qkv_proj into a 1-channel query and "
            "key/value blocks that must stay aligned",
            [_join(name, "qkv_proj"), _join(name, "out_proj")],
        )
    qkv, proj = getattr(m, "qkv", None), getattr(m, "proj", None)
    if (
        isinstance(qkv, nn.Linear)
        and isinstance(proj, nn.Linear)
        and isinstance(getattr(m, "num_heads", None), int)
    ):
        heads, dim = m.num_heads, getattr(m, "head_dim", 0)
        if not isinstance(dim, int) or qkv.out_features != 3 * heads * dim or proj.in_features != heads * dim:
            raise UnsupportedAttention(
                f"attention layer {name!r} ({type(m).__name__}) has a qkv of {qkv.out_features} outputs for "
                f"{heads} heads and no head_dim attribute that matches: its head width follows from its input, "
                "so heads cannot be removed",
                [_join(name, "qkv"), _join(name, "proj")],
            )
        if getattr(m, "gate", None) is not None or not isinstance(
            getattr(m, "norm", nn.Identity()), nn.Identity
        ):
            raise UnsupportedAttention(
                f"attention layer {name!r} has a gate or a norm over the heads, which pyprune does not slice",
                [_join(name, "qkv"), _join(name, "proj")],
            )
        blocks = [(0, dim), (heads * dim, dim), (2 * heads * dim, dim)]
        return UnitSpec(
            name, "timm", heads, {_join(name, "qkv"): blocks}, _join(name, "proj"), dim, heads, heads, dim
        )
    c_attn, c_proj = getattr(m, "c_attn", None), getattr(m, "c_proj", None)
    if c_attn is not None and is_conv1d(c_attn) and c_proj is not None and is_conv1d(c_proj):
        if getattr(m, "is_cross_attention", False):
            raise ValueError(
                f"model: GPT-2 cross-attention {name!r} is not supported (pass attention='skip')"
            )
        heads, dim = m.num_heads, m.head_dim
        blocks = [(0, dim), (heads * dim, dim), (2 * heads * dim, dim)]
        return UnitSpec(
            name,
            "gpt2",
            heads,
            {_join(name, "c_attn"): blocks},
            _join(name, "c_proj"),
            dim,
            heads,
            heads,
            dim,
        )
    c_fc = getattr(m, "c_fc", None)
    if c_fc is not None and is_conv1d(c_fc) and c_proj is not None and is_conv1d(c_proj):
        hidden = c_fc.nf
        return UnitSpec(name, "gpt2_mlp", hidden, {_join(name, "c_fc"): [(0, 1)]}, _join(name, "c_proj"), 1)
    inner, output = getattr(m, "self", None), getattr(m, "output", None)
    if (
        inner is not None
        and all(isinstance(getattr(inner, p, None), nn.Linear) for p in ("query", "key", "value"))
        and isinstance(getattr(output, "dense", None), nn.Linear)
        and isinstance(getattr(inner, "num_attention_heads", None), int)
    ):
        heads, dim = inner.num_attention_heads, inner.attention_head_size
        readers = {_join(name, f"self.{p}"): [(0, dim)] for p in ("query", "key", "value")}
        return UnitSpec(name, "bert", heads, readers, _join(name, "output.dense"), dim, heads, heads, dim)
    projs = [getattr(m, p, None) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    if all(isinstance(p, nn.Linear) for p in projs) and isinstance(getattr(m, "head_dim", None), int):
        dim = m.head_dim
        heads, kv = projs[0].out_features // dim, projs[1].out_features // dim
        if heads * dim != projs[0].out_features or kv * dim != projs[1].out_features or heads % kv:
            raise ValueError(
                f"model: attention layer {name!r} has projections that do not match head_dim={dim}"
            )
        readers = {
            _join(name, "q_proj"): [(0, dim * (heads // kv))],
            _join(name, "k_proj"): [(0, dim)],
            _join(name, "v_proj"): [(0, dim)],
        }
        return UnitSpec(
            name, "llama", kv, readers, _join(name, "o_proj"), dim * (heads // kv), heads, kv, dim
        )
    return None


def projection_names(specs: Sequence[UnitSpec]) -> list[str]:
    """Names of every projection that :func:`remove_units` slices (kept out of Torch-Pruning's groups)."""
    names: list[str] = []
    for spec in specs:
        names.extend(spec.readers)
        names.append(spec.writer)
        if spec.kind == "mha":
            names.append(spec.name)
    return names


class _RowView(nn.Module):
    """A Linear-shaped view of a projection's rows, for criteria that score ``weight[c]`` as channel ``c``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias


def expose_unit_inputs(model: nn.Module) -> None:
    """Make every ``nn.MultiheadAttention`` of ``model`` whose heads pyprune removes call its ``out_proj`` as a
    module, so that hooks on ``out_proj`` see the concatenated heads ``(L, N, num_heads * head_dim)``.

    ``nn.MultiheadAttention`` hands ``out_proj.weight`` to a functional kernel, so no hook on ``out_proj`` ever
    fires; each such layer becomes a :class:`PrunedMultiheadAttention` with all its heads (same parameters, same
    function). Meant for a working copy that a data-driven criterion observes; ``model`` is modified in place.
    """
    for spec in find_units(model):
        if spec.kind == "mha":
            _as_pruned_attention(model.get_submodule(spec.name))


def _as_pruned_attention(module: nn.MultiheadAttention) -> None:
    module.__class__ = PrunedMultiheadAttention
    # nn.TransformerEncoderLayer's inference fast path hands in_proj_weight to a fused kernel that requires
    # 3 * embed_dim rows; it is skipped for attention without a fused same-width in_proj, which this is now.
    module._qkv_same_embed_dim = False


def reader_module(model: nn.Module, spec: UnitSpec, reader: str) -> nn.Module:
    """The module a channel criterion scores for ``reader``: the layer itself when it is an ``nn.Linear``,
    otherwise a Linear-shaped view (MHA ``in_proj_weight``, HF Conv1D's transposed weight)."""
    module = model.get_submodule(reader)
    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, nn.MultiheadAttention):
        return _RowView(module.in_proj_weight.detach(), module.in_proj_bias)
    return _RowView(module.weight.detach().t(), module.bias)


def unit_scores(
    model: nn.Module,
    spec: UnitSpec,
    criterion: ChannelCriterion,
    reduce: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """float64 ``(num_units,)`` scores of ``spec``'s heads (or MLP units).

    The criterion's own :meth:`~pyprune.pruning.criteria.base.ChannelCriterion.unit_scores` when it measures units
    directly (Taylor's head importance, Michel et al. 2019); otherwise its channel scores of every q/k/v row a
    unit owns, reduced by ``reduce`` (how ``l1_filter`` scores a head: ``group_reduction`` over its rows).

    Raises:
        ValueError: the criterion cannot score the units or one of the projections (e.g. a data-driven criterion
            that never observed a Conv1D or an ``in_proj_weight``); the message names the layer.
    """
    try:
        direct = criterion.unit_scores(spec)
    except (KeyError, ValueError, RuntimeError) as error:
        raise ValueError(
            f"model: {criterion!r} cannot score the {spec.granularity} of {spec.name!r} "
            f"({type(error).__name__}: {error}); pass attention='skip' to leave attention layers untouched"
        ) from error
    if direct is not None:
        if tuple(direct.shape) != (spec.num_units,):
            raise ValueError(
                f"model: {criterion!r} returned {tuple(direct.shape)} scores for the {spec.num_units} "
                f"{spec.granularity} of {spec.name!r}"
            )
        return direct.detach().double().cpu()
    per_reader = {}
    for reader in spec.readers:
        module = reader_module(model, spec, reader)
        try:
            per_reader[reader] = criterion.scores(module, reader).detach().double().cpu()
        except (KeyError, ValueError, RuntimeError, AttributeError) as error:
            raise ValueError(
                f"model: {criterion!r} cannot score the {spec.granularity} of {spec.name!r} through its projection "
                f"{reader!r} ({type(error).__name__}: {error}); pass attention='skip' to leave attention layers "
                "untouched, or use a weight-based criterion"
            ) from error
    scores = torch.empty(spec.num_units, dtype=torch.float64)
    for unit in range(spec.num_units):
        index = torch.tensor([unit])
        scores[unit] = reduce(torch.cat([s[spec.rows(r, index)] for r, s in per_reader.items()]))
    return scores


def _keep(size: int, removed: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[removed] = False
    return mask.nonzero().flatten()


def _param(like: torch.Tensor, value: torch.Tensor) -> nn.Parameter:
    # A new Parameter rather than an in-place resize: apply's restore-on-error puts the old objects back.
    return nn.Parameter(value.clone(), requires_grad=like.requires_grad)


def _slice_linear(module: nn.Module, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
    """Keep output ``rows`` and input ``cols`` of a Linear, an HF Conv1D or an MHA's in_proj."""
    if isinstance(module, nn.MultiheadAttention):
        module.in_proj_weight = _param(module.in_proj_weight, module.in_proj_weight.detach()[rows])
        if module.in_proj_bias is not None:
            module.in_proj_bias = _param(module.in_proj_bias, module.in_proj_bias.detach()[rows])
        return
    conv1d = is_conv1d(module)
    weight = module.weight.detach()
    if conv1d:
        weight = weight.t()
    if rows is not None:
        weight = weight[rows]
        if module.bias is not None:
            module.bias = _param(module.bias, module.bias.detach()[rows])
    if cols is not None:
        weight = weight[:, cols]
    module.weight = _param(module.weight, weight.t().contiguous() if conv1d else weight)
    if conv1d:
        module.nf = weight.shape[0]
    else:
        module.out_features, module.in_features = weight.shape


def remove_units(model: nn.Module, spec: UnitSpec, removed: torch.Tensor) -> None:
    """Remove ``removed`` units (heads, KV groups, hidden units) of ``spec`` from ``model`` in place.

    The caller (:func:`pyprune.pruning.apply.apply_plan`) restores the model if anything fails.
    """
    removed = removed.long()
    if removed.numel() == 0:
        return
    for reader in spec.readers:
        module = model.get_submodule(reader)
        _slice_linear(module, _keep(spec.reader_size(reader), spec.rows(reader, removed)), None)
    writer = model.get_submodule(spec.writer)
    cols = torch.cat([torch.arange(u * spec.unit_width, (u + 1) * spec.unit_width) for u in removed.tolist()])
    in_size = writer.weight.shape[0] if is_conv1d(writer) else writer.weight.shape[1]
    _slice_linear(writer, None, _keep(in_size, cols))
    module = model.get_submodule(spec.name)
    kept_units = spec.num_units - removed.numel()
    if spec.kind == "timm":
        module.num_heads = kept_units
        module.attn_dim = kept_units * spec.head_dim
    elif spec.kind == "mha":
        _as_pruned_attention(module)
        module.num_heads = kept_units
    elif spec.kind == "gpt2":
        module.num_heads = kept_units
        module.split_size = kept_units * spec.head_dim
    elif spec.kind == "bert":
        inner = module.self
        inner.num_attention_heads = kept_units
        inner.all_head_size = kept_units * spec.head_dim
    elif spec.kind == "llama":
        group = spec.num_heads // spec.num_kv_heads
        for attribute, value in (("num_heads", kept_units * group), ("num_key_value_heads", kept_units)):
            if hasattr(module, attribute):
                setattr(module, attribute, value)


def rewrite_hf_config(model: nn.Module, specs_after: Sequence[UnitSpec]) -> str | None:
    """Rewrite a Hugging Face model's config to the pruned widths; returns a note when it cannot.

    Every attention layer must have the same head counts and every MLP the same width (a config has one value
    per field). Returns ``None`` when the config now describes the model (or the model has no HF config).
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict") or not hasattr(config, "num_attention_heads"):
        return None
    heads = {(s.num_heads, s.num_kv_heads, s.head_dim) for s in specs_after if s.kind != "gpt2_mlp"}
    widths = {_mlp_width(model, s) for s in specs_after if s.kind == "gpt2_mlp"} or _linear_mlp_widths(model)
    notes = []
    if len(heads) == 1:
        num_heads, num_kv, head_dim = heads.pop()
        if num_heads != config.num_attention_heads:
            if getattr(config, "head_dim", None) is not None:
                fields = {"head_dim": head_dim, "num_attention_heads": num_heads}
                if hasattr(config, "num_key_value_heads"):
                    fields["num_key_value_heads"] = num_kv
                problem = _set_validated(config, fields)
                if problem is not None:
                    notes.append(f"{type(config).__name__} refuses {fields} ({problem})")
            else:
                notes.append(
                    f"{type(config).__name__} derives head_dim from hidden_size / num_attention_heads, so it cannot "
                    f"describe {num_heads} heads of {head_dim} (and transformers 5 keeps no pruned_heads list)"
                )
    elif len(heads) > 1:
        notes.append(
            "attention layers keep different numbers of heads, which one config field cannot describe"
        )
    if len(widths) == 1:
        width = widths.pop()
        for key in ("intermediate_size", "n_inner"):
            if hasattr(config, key) and key in config.to_dict():
                setattr(config, key, width)
                break
    elif len(widths) > 1:
        notes.append("MLPs keep different widths, which one config field cannot describe")
    if not notes:
        return None
    return (
        "; ".join(notes)
        + ": save_pretrained/from_pretrained cannot rebuild the pruned model; save it with pyprune.save_pruned and "
        "rebuild it with pyprune.load_pruned(path, <a fresh instance of the model>)"
    )


def _set_validated(config: Any, fields: Mapping[str, int]) -> str | None:
    """Set ``fields`` on a Hugging Face config; put them back and return why if its validation refuses them
    (transformers 5 requires ``hidden_size`` divisible by ``num_attention_heads`` even with ``head_dim`` set)."""
    old = {key: getattr(config, key) for key in fields}
    try:
        for key, value in fields.items():
            setattr(config, key, value)
        validate = getattr(config, "validate", None)
        if callable(validate):
            validate()
    except (ValueError, TypeError) as error:
        for key, value in old.items():
            object.__setattr__(config, key, value)
        return str(getattr(error, "cause", None) or error).splitlines()[-1].strip()
    return None


def _mlp_width(model: nn.Module, spec: UnitSpec) -> int:
    return int(model.get_submodule(next(iter(spec.readers))).nf)


def _linear_mlp_widths(model: nn.Module) -> set[int]:
    # The first Linear of each HF MLP: BERT `intermediate.dense`, ViT `mlp.fc1`, Llama `mlp.up_proj`.
    return {
        module.out_features
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.endswith(("intermediate.dense", "mlp.fc1", "mlp.up_proj"))
    }


def is_hf_model(model: nn.Module) -> bool:
    """True for a Hugging Face ``PreTrainedModel`` (a module with a ``config`` that has ``hidden_size``)."""
    config = getattr(model, "config", None)
    return hasattr(config, "to_dict") and hasattr(config, "hidden_size")


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with fewer heads than ``embed_dim / head_dim``: the inner width is
    ``num_heads * head_dim`` while inputs and outputs keep ``embed_dim``.

    ``nn.MultiheadAttention`` ties the projected width to ``embed_dim``, so a pruned instance gets this class (same
    parameters and state-dict keys). Supports ``batch_first``, unbatched inputs, boolean or float ``attn_mask``
    of shape ``(L, S)`` and ``key_padding_mask`` of shape ``(N, S)``; ``need_weights=True`` returns the
    attention weights (averaged over heads unless ``average_attn_weights=False``).
    """

    def __init__(
        self, *args: Any, **kwargs: Any
    ) -> None:  # pragma: no cover - instances come from class swaps
        raise TypeError(
            "PrunedMultiheadAttention is made by pruning an nn.MultiheadAttention, not constructed"
        )

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        length, batch, _ = query.shape
        inner = self.in_proj_weight.shape[0] // 3
        w_q, w_k, w_v = self.in_proj_weight.split(inner)
        b_q, b_k, b_v = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.split(inner)

        def heads(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
            # (L, N, E) -> (N, H, L, D)
            return F.linear(x, w, b).reshape(x.shape[0], batch, self.num_heads, -1).permute(1, 2, 0, 3)

        q, k, v = heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
        bias = _additive_mask(attn_mask, key_padding_mask, q.dtype, batch, length, k.shape[2])
        if is_causal and attn_mask is None:
            causal = torch.ones(length, k.shape[2], dtype=torch.bool, device=q.device).triu(1)
            bias = _additive_mask(causal, key_padding_mask, q.dtype, batch, length, k.shape[2])
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
            if bias is not None:
                scores = scores + bias
            weights = F.dropout(scores.softmax(-1), dropout, self.training)
            out = weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(length, batch, inner))
        if self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1 if not self.batch_first else 0)
        if weights is not None:
            weights = weights.mean(1) if average_attn_weights else weights
            if unbatched:
                weights = weights.squeeze(0)
        return out, weights


def _additive_mask(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    dtype: torch.dtype,
    batch: int,
    length: int,
    source: int,
) -> torch.Tensor | None:
    """``(N, 1, L, S)`` additive float mask (``-inf`` where attention is not allowed), or None."""
    bias = None
    for mask, shape in ((attn_mask, (1, 1, length, source)), (key_padding_mask, (batch, 1, 1, source))):
        if mask is None:
            continue
        if mask.dim() != 2:
            raise ValueError(
                f"PrunedMultiheadAttention: masks must be (L, S) or (N, S), got shape {tuple(mask.shape)}"
            )
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
        mask = mask.to(dtype).reshape(shape)
        bias = mask if bias is None else bias + mask
    return bias
