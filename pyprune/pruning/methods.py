"""Named pruning methods: one registry that the Python API, the command line and the demo share.

A :class:`Method` wraps a planner with fixed choices (criterion, granularity, scope) under a name such as
``"l1_filter"``. :func:`plan` looks a name up and returns a :class:`~pyprune.pruning.plan.PruningPlan`;
:func:`prune` plans and applies in one call.

Every method's planner is a :class:`Planner`:
``planner(model, amount, *, example_input=None, data=None, loss_fn=None, **options) -> PruningPlan``;
``data`` (a DataLoader or an iterable of ``(input, target)`` batches) and ``loss_fn`` are used by data-driven
methods such as ``"taylor"`` and ignored by the others. :func:`registry_planner` gives a planning function of
another shape that signature.

The built-in methods are the rows of :data:`BUILTIN_METHODS`; a row names its planning function as
``"module:function"`` and is imported on the first lookup of the method, so ``import pyprune.pruning`` loads
neither the one-shot language-model solvers nor SiPP/PFP. Methods of your own join with :func:`register_method`.
:data:`METHODS` holds both, built-ins first, in table order.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from pyprune.activations import call_model
from pyprune.distributed import planning_model
from pyprune.pruning.apply import describe_input
from pyprune.pruning.criteria.magnitude import FilterNorm, Magnitude, RandomChannels, RandomWeights
from pyprune.pruning.layers import check_materialised
from pyprune.pruning.plan import PruningPlan, check_output_kept, check_untied
from pyprune.pruning.selection import Amount, plan_structured, plan_unstructured

LossFn = Callable[..., torch.Tensor]
AMOUNT_UNITS = ("weights", "channels", "params")
REGISTRY_KEYWORDS = ("example_input", "data", "loss_fn", "seed")
"""Keywords every method accepts: the three of :class:`Planner`'s signature, and ``seed`` (random methods use it,
and :func:`plan` reads it to check that every torchrun rank plans the same)."""
ONESHOT_OPTIONS = ("n_m", "owl", "blocks")
"""Options that send the ``"magnitude"`` method to the one-shot language-model planner
(:func:`pyprune.pruning.oneshot.plan_oneshot`)."""


class Planner(Protocol):
    """What a method runs: a plan to remove ``amount`` of ``model``, which it must not modify.

    Args:
        model: the model.
        amount: fraction in [0, 1) of the method's ``amount_unit``, or ``{layer name: fraction}``.
        example_input: an input batch (tensor, tuple of tensors or dict of tensors), or None.
        data: an iterable of ``(input, target)`` batches, or None; only data-driven methods read it.
        loss_fn: ``loss_fn(output, target) -> scalar tensor``, or None; only loss-driven methods read it.
        **options: the method's own keywords (``scope``, ``ignored_layers``, ``seed``, ...).
    """

    def __call__(
        self,
        model: nn.Module,
        amount: Amount,
        *,
        example_input: Any = None,
        data: Iterable[Any] | None = None,
        loss_fn: LossFn | None = None,
        **options: Any,
    ) -> PruningPlan: ...


def check_planner(planner: Any, name: str) -> None:
    """TypeError unless ``planner`` can be called as a :class:`Planner` (checked on its signature, not run)."""
    if not callable(planner):
        raise TypeError(f"method {name!r}: planner must be callable, got {type(planner).__name__}")
    try:
        signature = inspect.signature(planner)
    except (TypeError, ValueError):
        return  # no signature to read (a builtin or C extension): taken as it is
    try:
        signature.bind(None, None, example_input=None, data=None, loss_fn=None)
    except TypeError as error:
        raise TypeError(
            f"method {name!r}: its planner must accept planner(model, amount, *, example_input=None, data=None, "
            f"loss_fn=None, **options) -> PruningPlan; {getattr(planner, '__qualname__', planner)!s}{signature} "
            f"does not ({error})"
        ) from None


def registry_planner(
    function: Callable[..., PruningPlan],
    *,
    takes: Iterable[str] = (),
    fixed: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Planner:
    """``function(model, amount, **keywords)`` as a :class:`Planner`.

    Args:
        function: plans ``model``; called with ``model`` and ``amount`` by position, everything else by name.
        takes: which of :data:`REGISTRY_KEYWORDS` ``function`` receives; the others are accepted and dropped, as
            every method accepts them.
        fixed: keywords that make the method what it is (``criterion=FilterNorm(1)``, ``variant="rand"``); a
            caller who passes one too gets a TypeError, as from a plain call with a keyword given twice.
        defaults: options for ``function`` that a caller's options override (``mode="mask"``, ``scope="global"``).

    The planner's signature lists ``function``'s own keywords after the registry's, so a caller can see which
    options a method takes (the demo passes ``seed`` and ``progress`` only to the methods that declare them).
    """
    takes = tuple(takes)
    fixed = dict(fixed or {})
    defaults = dict(defaults or {})
    unknown = [key for key in takes if key not in REGISTRY_KEYWORDS]
    if unknown:
        raise ValueError(f"takes: expected names from {REGISTRY_KEYWORDS}, got {unknown}")

    def planner(
        model: nn.Module,
        amount: Amount,
        *,
        example_input: Any = None,
        data: Iterable[Any] | None = None,
        loss_fn: LossFn | None = None,
        **options: Any,
    ) -> PruningPlan:
        given = {
            "example_input": example_input,
            "data": data,
            "loss_fn": loss_fn,
            "seed": options.pop("seed", 0),
        }
        twice = [key for key in fixed if key in options]
        if twice:
            raise TypeError(f"{planner.__name__}() got multiple values for keyword argument {twice[0]!r}")
        return function(
            model, amount, **{key: given[key] for key in takes}, **fixed, **{**defaults, **options}
        )

    planner.__signature__ = _registry_signature(function, takes)  # type: ignore[attr-defined]
    planner.__name__ = planner.__qualname__ = getattr(function, "__name__", "planner")
    planner.__doc__ = function.__doc__
    return planner


def _registry_signature(function: Callable[..., Any], takes: tuple[str, ...]) -> inspect.Signature:
    """``(model, amount, *, example_input=None, data=None, loss_fn=None, <function's own keywords>)``."""
    own = list(inspect.signature(function).parameters.values())[2:]
    shown = [
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("amount", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *(
            inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None)
            for key in ("example_input", "data", "loss_fn")
        ),
    ]
    seen = {parameter.name for parameter in shown}
    for parameter in own:
        if parameter.name in seen or parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        kind = (
            parameter.kind
            if parameter.kind is inspect.Parameter.VAR_KEYWORD
            else inspect.Parameter.KEYWORD_ONLY
        )
        shown.append(parameter.replace(kind=kind))
    shown.sort(key=lambda parameter: parameter.kind is inspect.Parameter.VAR_KEYWORD)
    return inspect.Signature(shown)


@dataclass(frozen=True)
class Method:
    """A registered pruning method.

    Attributes:
        name: the name users pass (``pyprune.prune(model, "l1_filter", ...)``).
        planner: a :class:`Planner`; checked on construction.
        description: one line for ``pyprune methods`` and the demo's table.
        structured: True if it removes or masks whole channels.
        needs_example_input: True if ``example_input`` is required.
        needs_data: True if ``data`` (and ``loss_fn``) are required.
        amount_unit: what ``amount`` is a fraction of, the one meaning the schedules convert keep ratios with:
            ``"weights"`` (of the pruned layers' weights, masked ones counted as removed), ``"channels"`` (of the
            output channels of each dependency group, or of all with ``scope="global"``; the survivors of earlier
            plans when channels are removed) or ``"params"`` (of all parameters of the model as it is, measured on
            the pruned model: PFP). Default from ``structured``.
    """

    name: str
    planner: Planner
    description: str
    structured: bool
    needs_example_input: bool = False
    needs_data: bool = False
    amount_unit: str = ""

    def __post_init__(self) -> None:
        if not self.amount_unit:
            object.__setattr__(self, "amount_unit", "channels" if self.structured else "weights")
        if self.amount_unit not in AMOUNT_UNITS:
            raise ValueError(f"amount_unit: expected one of {AMOUNT_UNITS}, got {self.amount_unit!r}")
        check_planner(self.planner, self.name)


@dataclass(frozen=True)
class BuiltinMethod:
    """A row of :data:`BUILTIN_METHODS`: a :class:`Method` whose planner is made on first lookup.

    Attributes:
        planner: the planning function, or ``"module:function"`` to import on first lookup.
        takes, fixed, defaults: how :func:`registry_planner` adapts it.
        description, structured, needs_example_input, needs_data, amount_unit: as in :class:`Method`.
    """

    planner: Callable[..., PruningPlan] | str
    description: str
    structured: bool
    needs_example_input: bool = False
    needs_data: bool = False
    amount_unit: str = ""
    takes: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def load(self, name: str) -> Method:
        function = self.planner
        if isinstance(function, str):
            module, _, attribute = function.partition(":")
            function = getattr(importlib.import_module(module), attribute)
        return Method(
            name,
            registry_planner(function, takes=self.takes, fixed=self.fixed, defaults=self.defaults),
            self.description,
            self.structured,
            self.needs_example_input,
            self.needs_data,
            self.amount_unit,
        )


def _magnitude(
    model: nn.Module, amount: Amount, *, example_input: Any = None, data: Any = None, **options: Any
) -> PruningPlan:
    """Magnitude pruning; its one-shot language-model form when ``n_m=``, ``owl=`` or ``blocks=`` asks for it."""
    if any(key in options for key in ONESHOT_OPTIONS):
        # Imported here: the one-shot solvers load only for a model that asks for them.
        from pyprune.pruning.oneshot.planner import plan_oneshot

        return plan_oneshot(
            model, amount, method="magnitude", data=data, example_input=example_input, **options
        )
    return plan_unstructured(model, amount, criterion=Magnitude(), example_input=example_input, **options)


def _random_weights(model: nn.Module, amount: Amount, *, seed: int = 0, **options: Any) -> PruningPlan:
    return plan_unstructured(model, amount, criterion=RandomWeights(seed), **options)


def _random_channels(
    model: nn.Module, amount: Amount, *, example_input: Any = None, seed: int = 0, **options: Any
) -> PruningPlan:
    return plan_structured(model, amount, example_input, criterion=RandomChannels(seed), **options)


_CHANNELS = {"structured": True, "needs_example_input": True, "takes": ("example_input",)}
_DATA_CHANNELS = {"structured": True, "needs_example_input": True, "needs_data": True}
_SIPP = {"structured": False, "needs_data": True, "takes": ("example_input", "data", "seed")}
_PFP = {**_DATA_CHANNELS, "amount_unit": "params", "takes": ("example_input", "data", "seed")}
_ONESHOT = {"structured": False, "needs_data": True, "takes": ("example_input", "data")}
_CKA = {**_DATA_CHANNELS, "takes": ("example_input", "data")}

BUILTIN_METHODS: dict[str, BuiltinMethod] = {
    "magnitude": BuiltinMethod(
        _magnitude,
        "|w| per layer, exactly round(k * numel) each (Han et al. 2015)",
        False,
        takes=("example_input", "data"),
    ),
    "magnitude_global": BuiltinMethod(
        plan_unstructured,
        "|w| ranked over all layers (IMP)",
        False,
        takes=("example_input",),
        fixed={"criterion": Magnitude()},
        defaults={"scope": "global"},
    ),
    "random": BuiltinMethod(
        _random_weights, "random weights per layer (baseline)", False, takes=("example_input", "seed")
    ),
    "unit_l2": BuiltinMethod(
        plan_structured,
        "units by L2 norm of incoming weights, masked (unit pruning)",
        True,
        takes=("example_input",),
        fixed={"criterion": FilterNorm(2)},
        defaults={"mode": "mask"},
    ),
    "l1_filter": BuiltinMethod(
        plan_structured,
        "filters by L1 norm, removed (Li et al.)",
        **_CHANNELS,
        fixed={"criterion": FilterNorm(1)},
        defaults={"mode": "remove"},
    ),
    "l2_filter": BuiltinMethod(
        plan_structured,
        "filters by L2 norm, removed",
        **_CHANNELS,
        fixed={"criterion": FilterNorm(2)},
        defaults={"mode": "remove"},
    ),
    "random_channels": BuiltinMethod(
        _random_channels,
        "random channels, removed (baseline)",
        **{**_CHANNELS, "takes": ("example_input", "seed")},
    ),
    "taylor": BuiltinMethod(
        "pyprune.pruning.criteria.taylor:plan_taylor",
        "Taylor |z * dL/dz| per channel, layer-normalised, global (Molchanov 2017)",
        **_DATA_CHANNELS,
        takes=("example_input", "data", "loss_fn"),
    ),
    "wanda": BuiltinMethod(
        "pyprune.pruning.oneshot.planner:plan_oneshot",
        "|w| * ||x_j|| per output row, one-shot from calibration data (Sun et al. 2023)",
        **_ONESHOT,
        fixed={"method": "wanda"},
    ),
    "sparsegpt": BuiltinMethod(
        "pyprune.pruning.oneshot.planner:plan_oneshot",
        "OBS reconstruction, one-shot from calibration data (Frantar & Alistarh 2023)",
        **_ONESHOT,
        fixed={"method": "sparsegpt"},
    ),
    "sipp_det": BuiltinMethod(
        "pyprune.pruning.criteria.provable.sipp:plan_sipp",
        "weights by empirical sensitivity (patch mean), global top-k over all layers (SiPPDet, Baykal et al. 2019)",
        **_SIPP,
        fixed={"variant": "det"},
    ),
    "sipp_rand": BuiltinMethod(
        "pyprune.pruning.criteria.provable.sipp:plan_sipp",
        "weights sampled per unit and sign by sensitivity, convex budget split, reweighted (SiPPRand)",
        **_SIPP,
        fixed={"variant": "rand"},
    ),
    "sipp_hybrid": BuiltinMethod(
        "pyprune.pruning.criteria.provable.sipp:plan_sipp",
        "per unit and sign: sensitivity top-k or reweighted sampling, whichever bound is smaller (SiPPHybrid)",
        **_SIPP,
        fixed={"variant": "hybrid"},
    ),
    "pfp": BuiltinMethod(
        "pyprune.pruning.criteria.provable.pfp:plan_pfp",
        "filters by input-channel sensitivity, eps-allocated, top-k (PFP, Liebenwein 2020)",
        **_PFP,
        fixed={"variant": "det"},
    ),
    "pfp_rand": BuiltinMethod(
        "pyprune.pruning.criteria.provable.pfp:plan_pfp",
        "filters sampled by input-channel sensitivity with reweighting (PFP, randomised)",
        **_PFP,
        fixed={"variant": "rand"},
    ),
    "pfp_top": BuiltinMethod(
        "pyprune.pruning.criteria.provable.pfp:plan_pfp",
        "filters: sure ones kept, the rest sampled with reweighting (PFP, partially derandomised)",
        **_PFP,
        fixed={"variant": "top"},
    ),
    "cka_single": BuiltinMethod(
        "pyprune.pruning.criteria.cka_damage:plan_cka_damage",
        "units/channels by single-removal CKA damage of the layer's output",
        **_CKA,
        fixed={"procedure": "single"},
    ),
    "cka_greedy": BuiltinMethod(
        "pyprune.pruning.criteria.cka_damage:plan_cka_damage",
        "units/channels by greedy set CKA damage, exact closed form",
        **_CKA,
        fixed={"procedure": "greedy"},
    ),
    "oracle": BuiltinMethod(
        "pyprune.pruning.criteria.ablation:plan_oracle",
        "channels by the loss increase of ablating each one, batched (Molchanov's oracle)",
        **_DATA_CHANNELS,
        takes=("example_input", "data", "loss_fn"),
    ),
}
"""The built-in methods, in the order :data:`METHODS` lists them."""


class MethodRegistry(MutableMapping[str, Method]):
    """``{name: Method}``: the built-ins of :data:`BUILTIN_METHODS`, made on first lookup, then registered ones."""

    def __init__(self, builtins: Mapping[str, BuiltinMethod]) -> None:
        self._entries: dict[str, Method | BuiltinMethod] = dict(builtins)

    def __getitem__(self, name: str) -> Method:
        entry = self._entries[name]
        if isinstance(entry, BuiltinMethod):
            entry = self._entries[name] = entry.load(name)
        return entry

    def __setitem__(self, name: str, method: Method) -> None:
        self._entries[name] = method

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        # Mapping's own __contains__ looks the item up, which would import a built-in's module.
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"MethodRegistry({list(self._entries)})"


METHODS: MutableMapping[str, Method] = MethodRegistry(BUILTIN_METHODS)


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to :data:`METHODS`; ``replace=True`` overrides an existing entry of the same name."""
    if not isinstance(method, Method):
        raise TypeError(f"method: expected a pyprune Method, got {type(method).__name__}")
    if method.name in METHODS and not replace:
        raise ValueError(f"method: {method.name!r} is already registered (pass replace=True to override it)")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method called ``name``; ValueError with close matches otherwise."""
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"method: unknown pruning method {name!r}{hint}; registered: {sorted(METHODS)}")
    return METHODS[name]


def plan(
    model: nn.Module,
    method: str,
    amount: Amount,
    *,
    example_input: torch.Tensor | None = None,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    **options: Any,
) -> PruningPlan:
    """Plan pruning ``model`` with the registered ``method``; the model is not modified.

    Args:
        model: the model.
        method: a registered name (see :data:`METHODS`, or ``pyprune methods`` on the command line).
        amount: fraction in [0, 1) to remove, of what the method's ``amount_unit`` says (weights for
            unstructured methods, channels for structured ones, all parameters for PFP); a Python or NumPy number.
        example_input: an input batch; required by structured methods, optional otherwise (then the plan also
            records parameter and FLOP counts).
        data, loss_fn: training batches and loss for data-driven methods.
        **options: passed to the method's planner (e.g. ``scope="global"``, ``ignored_layers=[...]``; for the channel
            methods ``budget="flops"`` or ``"params"`` makes ``amount`` a fraction of the model's FLOPs or parameters,
            see :mod:`pyprune.pruning.allocation`).

    Raises:
        ValueError: besides bad arguments, a plan that prunes a parameter shared by several modules, or a structured
            plan that removes or masks output channels of the output layer (an explicit ``ignored_layers`` replaces
            the default, which is the output layer; list it there too), naming the layer.
    """
    chosen = get_method(method)
    # A DDP wrapper plans as its module; under torchrun every rank must hold the same model and seed.
    model = planning_model(model, options.get("seed"))
    if chosen.needs_example_input and example_input is None:
        raise ValueError(f"example_input: method {method!r} needs an example input batch to trace the model")
    if chosen.needs_data and data is None:
        raise ValueError(
            f"data: method {method!r} scores channels from data; pass data=<batches> and loss_fn"
        )
    if isinstance(model, nn.Module):
        check_materialised(model)
    # Tracing and data-driven scores need autograd even when the caller plans inside torch.no_grad().
    try:
        with torch.enable_grad():
            result = chosen.planner(
                model, amount, example_input=example_input, data=data, loss_fn=loss_fn, **options
            )
    except (RuntimeError, ValueError) as error:
        culprit = _bad_input(model, example_input, data if chosen.needs_data else None, method)
        if culprit is None:
            raise
        raise culprit from error
    # A plan that would untie shared parameters, or cut the model's outputs, is refused before anyone applies it.
    check_untied(result, model)
    check_output_kept(result, model)
    return result


def _bad_input(
    model: nn.Module, example_input: Any, data: Iterable[Any] | None, method: str
) -> Exception | None:
    """After a planner failed: the error naming ``data`` or ``example_input`` when the model itself fails on it
    (run on a copy in eval mode, without gradients), else None (the planner's own error stands)."""
    work = copy.deepcopy(model).eval()
    first = _first_inputs(data) if data is not None else None
    for argument, value in (("data", first), ("example_input", example_input)):
        if value is None:
            continue
        try:
            with torch.no_grad():
                call_model(work, value)
        except Exception as error:
            if argument == "data" and isinstance(value, torch.Tensor) and not value.is_floating_point():
                return TypeError(
                    f"data: its batches hold {value.dtype} inputs and the model fails on them ({error}); method "
                    f"{method!r} feeds data's inputs to the model, so they must be what it takes (floating point "
                    "for a Linear/Conv network)"
                )
            where = "its first batch's inputs" if argument == "data" else "it"
            return ValueError(
                f"{argument}: the model fails on {where} ({describe_input(value, argument)}): {type(error).__name__}: {error}"
            )
    return None


def _first_inputs(data: Any) -> Any:
    """The inputs of ``data``'s first batch; None when looking would consume ``data`` (a one-shot iterator)."""
    if isinstance(data, torch.Tensor):
        return data
    try:
        if iter(data) is data:
            return None
        batch = next(iter(data))
    except (TypeError, StopIteration):
        return None
    return batch[0] if isinstance(batch, list | tuple) and batch else batch


def prune(
    model: nn.Module,
    method: str,
    amount: Amount,
    *,
    example_input: torch.Tensor | None = None,
    data: Iterable[Any] | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    **options: Any,
) -> PruningPlan:
    """Plan with :func:`plan`, then apply the plan to ``model`` in place; returns the plan (print it for a table)."""
    result = plan(model, method, amount, example_input=example_input, data=data, loss_fn=loss_fn, **options)
    result.apply(model)
    return result
