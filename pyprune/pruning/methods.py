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

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pyprune.pruning.criteria import FilterNorm, Magnitude, RandomChannels, RandomWeights
from pyprune.pruning.plan import PruningPlan
from pyprune.pruning.planner import Amount, plan_structured, plan_unstructured

Planner = Callable[..., PruningPlan]


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
    """

    name: str
    planner: Planner
    description: str
    structured: bool
    needs_example_input: bool = False
    needs_data: bool = False


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
        amount: fraction in [0, 1) to remove (weights for unstructured methods, channels for structured ones).
        example_input: an input batch; required by structured methods, optional otherwise (then the plan also
            records parameter and FLOP counts).
        data, loss_fn: training batches and loss for data-driven methods.
        **options: passed to the method's planner (e.g. ``scope="global"``, ``ignored_layers=[...]``).
    """
    chosen = get_method(method)
    if chosen.needs_example_input and example_input is None:
        raise ValueError(f"example_input: method {method!r} needs an example input batch to trace the model")
    if chosen.needs_data and data is None:
        raise ValueError(
            f"data: method {method!r} scores channels from data; pass data=<batches> and loss_fn"
        )
    return chosen.planner(model, amount, example_input=example_input, data=data, loss_fn=loss_fn, **options)


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
    from pyprune.pruning.taylor import Taylor

    options.setdefault("scope", "global")
    taylor_options = {
        k: options.pop(k)
        for k in ("reduction", "normalize", "flops_lambda", "flops_unit", "point", "loss_reduction")
        if k in options
    }
    criterion = Taylor(model, **taylor_options)
    criterion.accumulate_over(
        data, loss_fn or nn.functional.cross_entropy, max_batches=max_batches, progress=progress
    )
    return plan_structured(model, amount, example_input, criterion=criterion, method="taylor", **options)


for _method in (
    Method(
        "magnitude",
        _weights(lambda seed: Magnitude(), "layer"),
        "|w| per layer, exactly round(k * numel) each (seed 003)",
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
        "units by L2 norm of incoming weights, masked (seed 003)",
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
