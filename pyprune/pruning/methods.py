"""Named pruning methods: one registry that the Python API, the command line and the demo share.

A :class:`Method` wraps a planner with fixed choices (criterion, granularity, scope) under a name such as
``"l1_filter"``. :func:`plan` looks a name up and returns a :class:`~pyprune.pruning.plan.PruningPlan`;
:func:`prune` plans and applies in one call. Methods added by other modules (CKA damage, SiPP, PFP) join by
calling :func:`register_method`, and are then available everywhere a method name is accepted.

Every method's planner has the signature
``planner(model, amount, *, example_input=None, data=None, loss_fn=None, **options) -> PruningPlan``;
``data`` (a DataLoader or an iterable of ``(input, target)`` batches) and ``loss_fn`` are used by data-driven
methods such as ``"taylor"`` and ignored by the others.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pyprune.distributed import planning_model
from pyprune.pruning.criteria.magnitude import FilterNorm, Magnitude, RandomChannels, RandomWeights
from pyprune.pruning.plan import PruningPlan, check_untied
from pyprune.pruning.selection import Amount, check_materialised, plan_structured, plan_unstructured

Planner = Callable[..., PruningPlan]
AMOUNT_UNITS = ("weights", "channels", "params")


@dataclass(frozen=True)
class Method:
    """A registered pruning method.

    Attributes:
        name: the name users pass (``pyprune.prune(model, "l1_filter", ...)``).
        planner: see the module docstring.
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


METHODS: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry; ``replace=True`` overrides an existing entry of the same name."""
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
        **options: passed to the method's planner (e.g. ``scope="global"``, ``ignored_layers=[...]``).
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
    # A plan that would untie shared parameters is refused before anyone applies it.
    check_untied(result, model)
    return result


def _bad_input(
    model: nn.Module, example_input: Any, data: Iterable[Any] | None, method: str
) -> Exception | None:
    """After a planner failed: the error naming ``data`` or ``example_input`` when the model itself fails on it
    (run on a copy in eval mode, without gradients), else None (the planner's own error stands)."""
    from pyprune.activations import call_model
    from pyprune.pruning.apply import describe_input

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


# Factories take the seed so that every method accepts seed=...; deterministic criteria ignore it.
def _weights(criterion_factory: Callable[[int], Any], default_scope: str) -> Planner:
    def planner(
        model, amount, *, example_input=None, data=None, loss_fn=None, seed=0, scope=default_scope, **options
    ):
        criterion = criterion_factory(seed)
        return plan_unstructured(
            model, amount, criterion=criterion, scope=scope, example_input=example_input, **options
        )

    return planner


def _channels(criterion_factory: Callable[[int], Any], mode: str) -> Planner:
    def planner(model, amount, *, example_input=None, data=None, loss_fn=None, seed=0, **options):
        criterion = criterion_factory(seed)
        return plan_structured(
            model, amount, example_input, criterion=criterion, mode=options.pop("mode", mode), **options
        )

    return planner


def _taylor(
    model, amount, *, example_input=None, data=None, loss_fn=None, max_batches=None, progress=True, **options
):
    from pyprune.pruning.criteria.taylor import Taylor

    options.setdefault("scope", "global")
    taylor_options = {
        k: options.pop(k)
        for k in ("reduction", "normalize", "flops_lambda", "flops_unit", "point", "loss_reduction")
        if k in options
    }
    # Scores come from forward/backward passes of a copy: train-mode BatchNorm would update the model's statistics.
    criterion = Taylor(copy.deepcopy(model), **taylor_options)
    criterion.accumulate_over(
        data, loss_fn or nn.functional.cross_entropy, max_batches=max_batches, progress=progress
    )
    return plan_structured(model, amount, example_input, criterion=criterion, method="taylor", **options)


def _magnitude(model, amount, *, example_input=None, data=None, loss_fn=None, seed=0, **options):
    # n_m=..., owl=... or blocks=... ask for the one-shot language-model form (pyprune.pruning.oneshot).
    from pyprune.pruning.oneshot import ONESHOT_OPTIONS, magnitude_oneshot

    if any(key in options for key in ONESHOT_OPTIONS):
        return magnitude_oneshot(model, amount, example_input=example_input, data=data, **options)
    return _weights(lambda seed: Magnitude(), "layer")(
        model, amount, example_input=example_input, seed=seed, **options
    )


for _method in (
    Method(
        "magnitude",
        _magnitude,
        "|w| per layer, exactly round(k * numel) each (Han et al. 2015)",
        False,
    ),
    Method(
        "magnitude_global",
        _weights(lambda seed: Magnitude(), "global"),
        "|w| ranked over all layers (IMP)",
        False,
    ),
    Method("random", _weights(RandomWeights, "layer"), "random weights per layer (baseline)", False),
    Method(
        "unit_l2",
        _channels(lambda seed: FilterNorm(2), "mask"),
        "units by L2 norm of incoming weights, masked (unit pruning)",
        True,
    ),
    Method(
        "l1_filter",
        _channels(lambda seed: FilterNorm(1), "remove"),
        "filters by L1 norm, removed (Li et al.)",
        True,
        True,
    ),
    Method(
        "l2_filter",
        _channels(lambda seed: FilterNorm(2), "remove"),
        "filters by L2 norm, removed",
        True,
        True,
    ),
    Method(
        "random_channels",
        _channels(RandomChannels, "remove"),
        "random channels, removed (baseline)",
        True,
        True,
    ),
    Method(
        "taylor",
        _taylor,
        "Taylor |z * dL/dz| per channel, layer-normalised, global (Molchanov 2017)",
        True,
        True,
        True,
    ),
):
    register_method(_method)
