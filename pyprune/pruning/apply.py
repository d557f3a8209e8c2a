"""Applying a :class:`~pyprune.pruning.plan.PruningPlan`: the only step in pyprune that changes a model.

* ``mode="mask"``: ``torch.nn.utils.prune.custom_from_mask`` on ``weight`` (and, for channel plans, ``bias``), so
  the model gets the usual ``weight_orig`` / ``weight_mask`` pair, composes with masks already there and is undone
  or folded with ``prune.remove`` / :func:`make_permanent`.
* ``mode="remove"``: Torch-Pruning's dependency graph, traced on a zero input of the plan's ``input_shape``,
  removes each group's channels physically (BatchNorm, consumers' inputs, residual partners, flatten -> linear
  column blocks), as :class:`ChannelCut` s of named tensors. The planner already traced the model and computed
  them; it remembers them with the plan, so applying it to the planned model, or another instance of that
  architecture, traces nothing.

* heads / units (``LayerPlan`` granularity ``"heads"`` or ``"units"``): attention heads (KV groups under
  grouped-query attention) and GPT-2 MLP units are sliced out by :mod:`pyprune.pruning.attention`, which also
  rewrites the layer's attributes and, for a Hugging Face model, its config.

Everything that can be checked is checked before the first change (architecture fingerprint, index ranges). A plan
that changes shapes is then verified: one forward pass on a zero input built from the plan's input description
(the example input's shapes and dtypes; an ``attention_mask`` is all ones) must run and give outputs of the same
shapes as before. If applying or that check fails, every module's state is put back as it was: both Torch-Pruning and
``torch.nn.utils.prune`` *replace* parameters, buffers and attributes rather than writing into them, so restoring
each module's attribute dictionaries (and class, which head pruning of ``nn.MultiheadAttention`` swaps) restores
the model exactly, with the very same ``Parameter`` objects (an optimizer holding them keeps working).

Every applied plan is appended to ``model.pyprune_history`` (plain dicts), which :func:`pyprune.save_pruned` stores
so that :func:`pyprune.load_pruned` can replay it on a fresh instance of the architecture.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import prune

from pyprune.activations import call_model, eval_mode
from pyprune.pruning.attention import find_units, is_hf_model, remove_units, rewrite_hf_config, unit_spec
from pyprune.pruning.fingerprint import check_fingerprint
from pyprune.pruning.groups import build_dependency_graph, index_mappings_fixed, output_tensors

if TYPE_CHECKING:
    # Names for annotations only: plan.py imports this module (PruningPlan.apply), not the other way round.
    from pyprune.pruning.plan import LayerPlan, PruningPlan

HISTORY_ATTRIBUTE = "pyprune_history"
#: What :func:`apply_plan` reads from a plan; checked by name because this module cannot import PruningPlan.
PLAN_FIELDS = ("method", "mode", "layers", "fingerprint", "rescale", "weights", "options", "to_dict")
UNIT_GRANULARITIES = ("heads", "units")
#: Set on a pruned Hugging Face model: None when its config describes it, else why it cannot.
CONFIG_NOTE_ATTRIBUTE = "pyprune_config_note"


def apply_plan(plan: PruningPlan, model: nn.Module, *, verify: bool = True) -> nn.Module:
    """Apply ``plan`` to ``model`` in place; returns ``model``. See the module docstring.

    Args:
        plan: the plan.
        model: the architecture the plan was made for, in the state it had then.
        verify: run the forward check after a plan that changes shapes (``mode="remove"``); on failure the model
            is restored and ValueError raised. ``False`` skips the two forward passes.
    """
    if not all(hasattr(plan, field) for field in PLAN_FIELDS):
        raise TypeError(f"plan: expected a PruningPlan, got {type(plan).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    check_fingerprint(plan.fingerprint, model)
    modules = dict(model.named_modules())
    for layer in plan.layers:
        _check_layer(layer, modules)
    scaled = _rescaled_tensors(plan, modules)
    replaced = _replaced_tensors(plan, modules)
    example = plan_example_input(plan, model) if verify and plan.mode == "remove" else None
    expected = None
    if example is not None:
        # Recorded by the planner's trace when there was one; otherwise one forward pass now.
        recorded = plan.options.get("output_shapes")
        expected = [tuple(s) for s in recorded] if recorded is not None else _output_shapes(model, example)
    # A mask plan changes only its layers: saving those alone keeps a plan over a DenseNet's 120 layers cheap.
    touched = None if plan.mode == "remove" else [modules[layer.name] for layer in plan.layers]
    with restore_on_error(model, touched, written=[tensor for tensor, _ in [*replaced, *scaled]]):
        _apply(plan, model, modules, scaled, replaced)
        if example is not None:
            _verify(plan, model, example, expected)
    return model


def _rescaled_tensors(
    plan: PruningPlan, modules: dict[str, nn.Module]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight parameter, factors)`` for every entry of ``plan.rescale``, checked before anything changes."""
    pairs = []
    for name, factors in plan.rescale.items():
        weight = _stored_weight(modules, name, "plan.rescale")
        try:
            torch.broadcast_shapes(factors.shape, weight.shape)
        except RuntimeError:
            raise ValueError(
                f"plan.rescale[{name!r}]: factors of shape {tuple(factors.shape)} do not broadcast against the "
                f"weight's {tuple(weight.shape)}"
            ) from None
        pairs.append((weight, factors))
    return pairs


def _replaced_tensors(
    plan: PruningPlan, modules: dict[str, nn.Module]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(weight parameter, new values)`` for every entry of ``plan.weights``, checked before anything changes."""
    pairs = []
    for name, values in plan.weights.items():
        weight = _stored_weight(modules, name, "plan.weights")
        if tuple(values.shape) != tuple(weight.shape):
            raise ValueError(
                f"plan.weights[{name!r}]: values of shape {tuple(values.shape)}, the weight has {tuple(weight.shape)}"
            )
        pairs.append((weight, values))
    return pairs


def _stored_weight(modules: dict[str, nn.Module], name: str, field: str) -> torch.Tensor:
    """The parameter behind module ``name``'s weight: ``weight_orig`` under a ``torch.nn.utils.prune`` mask (the
    masked weight is recomputed from it on every forward, so that is what must change), else ``weight``."""
    module = modules.get(name)
    if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
        raise ValueError(f"{field}: {name!r} is not a module with a weight in the model")
    return getattr(module, "weight_orig", module.weight)


def _apply(
    plan: PruningPlan,
    model: nn.Module,
    modules: dict[str, nn.Module],
    scaled: list[tuple[torch.Tensor, torch.Tensor]],
    replaced: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    with torch.no_grad():
        for weight, values in replaced:
            weight.copy_(values.to(weight.device, weight.dtype))
        for weight, factors in scaled:
            weight.mul_(factors.to(weight.device, weight.dtype))
    if plan.mode == "mask":
        for layer in plan.layers:
            _apply_mask(layer, modules[layer.name])
    elif plan.mode == "remove":
        _remove_channels(plan, model, modules)
    else:
        raise ValueError(f"plan.mode: expected 'mask' or 'remove', got {plan.mode!r}")
    history = getattr(model, HISTORY_ATTRIBUTE, None)
    history = [] if history is None else list(history)
    history.append(plan.to_dict())
    # Set through object.__setattr__ so nn.Module does not try to register a list as a submodule.
    object.__setattr__(model, HISTORY_ATTRIBUTE, history)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every ``torch.nn.utils.prune`` mask of ``model`` into its tensor (``prune.remove``); returns ``model``.

    Pruned entries stay exactly zero, but nothing keeps them zero during later training any more.
    """
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
    return model


@contextmanager
def restore_on_error(
    model: nn.Module, touched: Iterable[nn.Module] | None = None, *, written: Sequence[torch.Tensor] = ()
) -> Iterator[None]:
    """Run a block that mutates ``model``; if it raises, put every module's state back and re-raise.

    ``touched``: the only modules the block can change besides ``model`` itself (a mask plan's layers); by
    default every module is saved (Torch-Pruning's groups reach BatchNorms and consumers anywhere).
    ``written``: tensors the block writes in place (a plan's new or rescaled weights); their values are copied
    now and written back, since saving the modules' attributes keeps the same tensor objects.
    """
    modules = model.modules() if touched is None else dict.fromkeys([model, *touched])
    snapshot: list[tuple[Any, type, dict[str, Any]]] = [
        (module, type(module), _shallow_state(module)) for module in modules
    ]
    # A Hugging Face config is shared by the model's modules and rewritten after head pruning.
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        snapshot.append((config, type(config), dict(config.__dict__)))
    history = getattr(model, HISTORY_ATTRIBUTE, None)
    values = [tensor.detach().clone() for tensor in written]
    try:
        yield
    except BaseException:
        for owner, cls, state in snapshot:
            owner.__class__ = cls
            owner.__dict__.clear()
            owner.__dict__.update(state)
        with torch.no_grad():
            for tensor, value in zip(written, values, strict=True):
                tensor.copy_(value)
        if history is None:
            model.__dict__.pop(HISTORY_ATTRIBUTE, None)
        else:
            object.__setattr__(model, HISTORY_ATTRIBUTE, history)
        raise


def _shallow_state(module: nn.Module) -> dict[str, Any]:
    # One level deeper than a plain dict copy: the registries (_parameters, _buffers, hook dicts, ...) are
    # themselves replaced-into, so they must be copies; the tensors in them are never written in place.
    return {key: value.copy() if isinstance(value, dict) else value for key, value in module.__dict__.items()}


def _check_layer(layer: LayerPlan, modules: dict[str, nn.Module]) -> None:
    module = modules.get(layer.name)
    if module is None:
        raise ValueError(f"plan: layer {layer.name!r} does not exist in the model")
    if layer.granularity in UNIT_GRANULARITIES:
        spec = unit_spec(layer.name, module)
        size = 0 if spec is None else spec.num_units
        if spec is None or spec.granularity != layer.granularity:
            raise ValueError(
                f"plan: layer {layer.name!r} ({type(module).__name__}) is not an attention layer or MLP with "
                f"{layer.granularity} pyprune can remove"
            )
        _check_indices(layer, size)
        return
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"plan: layer {layer.name!r} ({type(module).__name__}) has no weight tensor")
    size = weight.numel() if layer.granularity == "weights" else weight.shape[0]
    if size != layer.size:
        raise ValueError(
            f"plan: layer {layer.name!r} has {size} {layer.granularity}, the plan expects {layer.size}"
        )
    _check_indices(layer, size)


def _check_indices(layer: LayerPlan, size: int) -> None:
    if layer.num_removed and (int(layer.removed.min()) < 0 or int(layer.removed.max()) >= size):
        raise ValueError(f"plan: layer {layer.name!r} has removed indices outside [0, {size})")
    if layer.num_removed >= size:
        raise ValueError(f"plan: layer {layer.name!r} would lose all of its {size} {layer.granularity}")


def _apply_mask(layer: LayerPlan, module: nn.Module) -> None:
    weight = module.weight
    prune.custom_from_mask(module, "weight", layer.keep_mask(weight.shape).to(weight.device))
    bias = getattr(module, "bias", None)
    if layer.granularity == "channels" and isinstance(bias, torch.Tensor):
        # A masked unit with a surviving bias still emits the constant act(b): zero the bias too.
        prune.custom_from_mask(module, "bias", layer.keep_mask(bias.shape).to(bias.device))


@dataclass(frozen=True)
class ChannelCut:
    """One tensor cut of a ``mode="remove"`` plan: a Torch-Pruning handler (a pruner's ``prune_out_channels`` /
    ``prune_in_channels``) applied along ``dim`` to the module named ``target`` (a bare ``nn.Parameter``'s name
    when ``parameter``), removing ``idxs`` (indices in the unpruned model)."""

    target: str
    parameter: bool
    handler: Callable[..., Any]
    dim: int
    idxs: tuple[int, ...]


def channel_cuts(plan: PruningPlan, model: nn.Module, graph: Any) -> list[ChannelCut]:
    """Every tensor cut that ``plan``'s channel layers make in ``model``, from Torch-Pruning's ``graph`` of it.

    All groups are built in the unpruned model's coordinates and each tensor is cut once by the union of what the
    groups take from it. Pruning group by group, as Torch-Pruning's ``Group.prune`` does, leaves the same tensors
    but must recompute the whole graph's index mappings before each group (offsets behind a concatenation shift
    as earlier groups shrink its inputs): on densenet121 that was 120 full recomputations. The checks are
    Torch-Pruning's (``check_pruning_group``) on cumulative counts, so a plan fails where pruning group by group
    would have failed.
    """
    import torch_pruning as tp

    layers = [layer for layer in plan.layers if layer.granularity not in UNIT_GRANULARITIES]
    for layer in layers:
        if layer.granularity != "channels":
            raise ValueError(
                f"plan: layer {layer.name!r} has weight granularity but the plan removes channels"
            )
    modules = dict(model.named_modules())
    with index_mappings_fixed(graph):
        groups = [
            (layer, graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels,
                                            idxs=layer.removed.tolist()))
            for layer in layers
            if layer.num_removed
            for module in [modules[layer.name]]
        ]  # fmt: skip
    # (target node, handler) -> [dependency, channels to remove, channels before]
    unions: dict[tuple[Any, Any], list[Any]] = {}
    for layer, group in groups:
        for dep, idxs in group:
            key = (dep.target, dep.handler)
            if key not in unions:
                size = None
                if graph.is_out_channel_pruning_fn(dep.handler):
                    size = graph.get_out_channels(dep.target.module)
                elif graph.is_in_channel_pruning_fn(dep.handler):
                    size = graph.get_in_channels(dep.target.module)
                unions[key] = [dep, set(), size]
            union = unions[key]
            union[1].update(idxs)
            if union[2] is not None and union[2] <= len(union[1]):
                raise ValueError(
                    f"plan: removing channels {layer.removed.tolist()} of {layer.name!r} is not valid"
                )
    names = {module: name for name, module in modules.items()}
    parameters = {id(p): name for name, p in model.named_parameters()}
    cuts = []
    for dep, idxs, _ in unions.values():
        parameter = dep.target.type == tp.ops.OPTYPE.PARAMETER
        # Torch-Pruning's graph also holds stand-ins for functional operations (concatenations, additions); their
        # handlers only keep that graph's own offsets up to date, which nothing reads once the cuts are made.
        if idxs and (parameter or dep.target.module in names):
            target = parameters[id(dep.target.module)] if parameter else names[dep.target.module]
            cuts.append(
                ChannelCut(target, parameter, dep.handler, dep.target.pruning_dim, tuple(sorted(idxs)))
            )
    return cuts


def remember_cuts(plan: PruningPlan, model: nn.Module, cuts: list[ChannelCut]) -> None:
    """Keep ``cuts`` (from :func:`channel_cuts`) for applying ``plan`` to a model built like ``model`` later, so
    that applying needs no second trace; forgotten when the plan is garbage-collected."""
    key = id(plan)
    if key not in _REMEMBERED_CUTS:
        weakref.finalize(plan, _REMEMBERED_CUTS.pop, key, None)
    _REMEMBERED_CUTS[key] = (_cut_key(plan, model), cuts)


_REMEMBERED_CUTS: dict[int, tuple[Any, list[ChannelCut]]] = {}


def _cut_key(plan: PruningPlan, model: nn.Module) -> tuple[Any, ...]:
    """What the cuts depend on: the plan's decisions and input, and the model's module names and classes (its
    parameter shapes are checked against the plan's fingerprint before anything is applied)."""
    layers = tuple(
        (layer.name, layer.granularity, layer.size, tuple(layer.removed.tolist())) for layer in plan.layers
    )
    structure = tuple((name, type(module)) for name, module in model.named_modules())
    return layers, repr(plan.options.get("input_spec")), plan.input_shape, structure


def apply_traced(plan: PruningPlan, model: nn.Module, cuts: list[ChannelCut]) -> None:
    """Prune ``model`` by a ``mode="remove"`` plan through its :func:`channel_cuts`, already computed (the
    planner's working copy); no checks, no verification, no history: the caller owns that copy."""
    _remove_channels(plan, model, dict(model.named_modules()), cuts)


def removed_by_cuts(
    model: nn.Module, cuts: Sequence[ChannelCut]
) -> dict[str, dict[int, tuple[int, ...]]] | None:
    """``{parameter name: {dim: removed indices}}`` for every parameter of ``model`` that ``cuts`` shrink, without
    running Torch-Pruning's handlers (which copy every kept weight): for measuring a plan by shapes alone.

    The slices are those that Torch-Pruning's Conv, depthwise Conv, Linear, BatchNorm and LayerNorm pruners and its
    bare-parameter pruner remove, on exactly those module classes (ungrouped, or depthwise, convolutions); None
    when a cut uses any other handler or module class.
    """
    from torch_pruning.pruner import function as tp_function

    modules = dict(model.named_modules())
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm)
    removed: dict[
        tuple[str, str], dict[int, tuple[int, ...]]
    ] = {}  # (owner module, tensor) -> {dim: indices}

    def shrink(owner: str, tensor: str, dim: int, idxs: tuple[int, ...]) -> None:
        value = getattr(modules[owner], tensor)
        if value is not None:
            removed.setdefault((owner, tensor), {})[dim % value.ndim] = idxs

    for cut in cuts:
        pruner, side = type(cut.handler.__self__), cut.handler.__name__
        if cut.parameter:
            if pruner is not tp_function.ParameterPruner:
                return None
            owner, _, attribute = cut.target.rpartition(".")
            shrink(owner, attribute, cut.dim, cut.idxs)
            continue
        module = modules[cut.target]
        if pruner is tp_function.DepthwiseConvPruner and type(module) in conv:
            for tensor in ("weight", "bias"):
                shrink(cut.target, tensor, 0, cut.idxs)
        elif pruner is tp_function.ConvPruner and type(module) in conv and module.groups == 1:
            out_dim = 1 if module.transposed else 0
            if side == "prune_out_channels":
                shrink(cut.target, "weight", out_dim, cut.idxs)
                shrink(cut.target, "bias", 0, cut.idxs)
            else:
                shrink(cut.target, "weight", 1 - out_dim, cut.idxs)
        elif pruner is tp_function.LinearPruner and type(module) is nn.Linear:
            shrink(cut.target, "weight", 0 if side == "prune_out_channels" else 1, cut.idxs)
            if side == "prune_out_channels":
                shrink(cut.target, "bias", 0, cut.idxs)
        elif pruner in (tp_function.BatchnormPruner, tp_function.LayernormPruner) and type(module) in norms:
            dim = 0 if pruner is tp_function.BatchnormPruner else cut.dim
            if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) < -dim:
                continue  # Torch-Pruning leaves such a LayerNorm as it is
            for tensor in ("weight", "bias"):
                shrink(cut.target, tensor, dim, cut.idxs)
        else:
            return None
    return {f"{owner}.{tensor}" if owner else tensor: dims for (owner, tensor), dims in removed.items()}


def _remove_channels(
    plan: PruningPlan, model: nn.Module, modules: dict[str, nn.Module], cuts: list[ChannelCut] | None = None
) -> None:
    channels = [layer for layer in plan.layers if layer.granularity not in UNIT_GRANULARITIES]
    units = [layer for layer in plan.layers if layer.granularity in UNIT_GRANULARITIES]
    if any(layer.num_removed for layer in channels):
        if cuts is None:
            remembered = _REMEMBERED_CUTS.get(id(plan))
            if remembered is not None and remembered[0] == _cut_key(plan, model):
                cuts = remembered[1]
            else:
                # Traced before the heads go: head removal is local to an attention layer, the groups never
                # contain it.
                cuts = channel_cuts(
                    plan, model, build_dependency_graph(model, plan_example_input(plan, model))
                )
        _cut(model, modules, cuts)
    for layer in units:
        remove_units(model, unit_spec(layer.name, modules[layer.name]), layer.removed)
    if is_hf_model(model):
        note = rewrite_hf_config(model, find_units(model))
        object.__setattr__(model, CONFIG_NOTE_ATTRIBUTE, note)


def _cut(model: nn.Module, modules: dict[str, nn.Module], cuts: list[ChannelCut]) -> None:
    for cut in cuts:
        # What Torch-Pruning's Dependency.__call__ does: the pruner singletons take their dim as an attribute.
        cut.handler.__self__.pruning_dim = cut.dim
        if not cut.parameter:
            cut.handler(modules[cut.target], list(cut.idxs))
            continue
        # A bare nn.Parameter (a ViT's class token) is pruned into a new Parameter, set where the old one was.
        owner, _, attribute = cut.target.rpartition(".")
        setattr(modules[owner], attribute, cut.handler(model.get_parameter(cut.target), list(cut.idxs)))


def plan_example_input(plan: PruningPlan, model: nn.Module) -> Any:
    """A zero input matching the plan's example input (tensor, tuple or dict), on ``model``'s device and dtype."""
    spec = plan.options.get("input_spec")
    if spec is not None:
        return inputs_from_spec(spec, model)
    if plan.input_shape is None:
        raise ValueError("plan: a plan that removes channels needs input_shape to trace the model")
    return example_input_from_shape(model, plan.input_shape)


def describe_input(inputs: Any, argument: str = "example_input") -> dict[str, Any]:
    """JSON description of a model input: a tensor, a tuple/list of tensors or a dict of tensors (or None)."""
    if isinstance(inputs, torch.Tensor):
        return {"tensor": list(inputs.shape), "dtype": str(inputs.dtype).removeprefix("torch.")}
    if isinstance(inputs, (tuple, list)):
        return {"tuple": [describe_input(item, argument) for item in inputs]}
    if isinstance(inputs, Mapping):
        return {"dict": {str(key): describe_input(value, argument) for key, value in inputs.items()}}
    if inputs is None:
        return {"none": None}
    raise TypeError(
        f"{argument}: expected a tensor, a tuple/list of tensors or a dict of tensors, got {type(inputs).__name__}"
    )


def inputs_from_spec(spec: dict[str, Any], model: nn.Module, key: str | None = None) -> Any:
    """Zeros shaped as :func:`describe_input` recorded; floating inputs take the model's dtype and every input its
    device; an ``attention_mask`` entry is all ones (nothing masked)."""
    if "tuple" in spec:
        return tuple(inputs_from_spec(item, model) for item in spec["tuple"])
    if "dict" in spec:
        return {k: inputs_from_spec(v, model, k) for k, v in spec["dict"].items()}
    if "none" in spec:
        return None
    dtype = getattr(torch, spec["dtype"])
    reference = example_input_from_shape(model, ())
    if dtype.is_floating_point:
        dtype = reference.dtype
    fill = 1 if key == "attention_mask" else 0
    return torch.full(spec["tensor"], fill, dtype=dtype, device=reference.device)


def _output_shapes(model: nn.Module, inputs: Any) -> list[tuple[int, ...]]:
    with eval_mode(model), torch.no_grad():
        return [tuple(t.shape) for t in output_tensors(call_model(model, inputs))]


def _verify(plan: PruningPlan, model: nn.Module, inputs: Any, expected: list[tuple[int, ...]]) -> None:
    try:
        found = _output_shapes(model, inputs)
    except Exception as error:
        raise ValueError(
            f"plan: the pruned model fails its forward check ({type(error).__name__}: {error}); the model was "
            f"restored. Plan {plan.method!r} removed {[layer.name for layer in plan.layers if layer.num_removed]}"
        ) from error
    if found != expected:
        raise ValueError(
            f"plan: the pruned model's outputs have shapes {found}, {expected} before; the model was restored"
        )


def example_input_from_shape(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """A zero tensor of ``shape`` with the dtype and device of ``model``'s first floating parameter."""
    reference = next((p for p in model.parameters() if p.is_floating_point()), None)
    dtype = torch.float32 if reference is None else reference.dtype
    device = None if reference is None else reference.device
    return torch.zeros(shape, dtype=dtype, device=device)
