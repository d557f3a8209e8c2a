"""The bad-input matrix of the pruning entry points: every public pruning function x every bad-input class, with the
outcome each cell must have (``"ok"``, or the exception type and the argument its message names).

A failing cell raised something else: a raw torch error, another exception type, an error naming the wrong argument,
or nothing where the input must be refused. Wherever an input is refused, the model must be left untouched.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import pyprune
from pyprune import schedules

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 3])


class SmallCNN(nn.Module):
    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        if tied:
            self.conv3.weight = self.conv2.weight
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))))
        return self.fc(x.mean((2, 3)))


# One bad input per class: (amount, model factory, example_input, data, ignored/unknown name).
GOOD = {"amount": 0.25, "model": SmallCNN, "x": X, "data": [(X, Y)], "name": None}
CLASSES: dict[str, dict] = {
    "ok": {},
    "amount_nan": {"amount": float("nan")},
    "amount_one": {"amount": 1.0},
    "amount_negative": {"amount": -0.25},
    "amount_numpy": {"amount": np.float32(0.25)},
    "amount_string": {"amount": "0.25"},
    "unknown_name": {"name": "conv9"},
    "meta": {"model": lambda: SmallCNN().to("meta")},
    "tied": {"model": lambda: SmallCNN(tied=True)},
    "int_data": {"data": [(torch.randint(0, 3, (4, 3, 8, 8)), Y)]},
    "bad_shape": {"x": torch.randn(4, 3, 8), "data": [(torch.randn(4, 3, 8), Y)]},
}


def _plan(method: str) -> Callable:
    def call(model, amount, x, data, name):
        extra = {"ignored_layers": [name]} if name else {}
        if pyprune.METHODS[method].needs_data:
            extra["data"] = data
            if method != "cka_single":
                extra["progress"] = False
        return pyprune.plan(model, method, amount, example_input=x, **extra)

    return call


def _structured(model, amount, x, data, name):
    return pyprune.plan_structured(model, amount, x, ignored_layers=[name] if name else None)


def _unstructured(model, amount, x, data, name):
    return pyprune.plan_unstructured(model, amount, example_input=x, ignored_layers=[name] if name else None)


def _prune(model, amount, x, data, name):
    return pyprune.prune(model, "l1_filter", amount, example_input=x, ignored_layers=[name] if name else None)


def _ablation(model, amount, x, data, name):
    return pyprune.ablation_damage(model, name or "conv2", data)


def _sensitivity(model, amount, x, data, name):
    return pyprune.sensitivity_analysis(
        model,
        lambda m: 1.0,
        x,
        ratios=[amount],
        progress=False,
        **({"ignored_layers": [name]} if name else {}),
    )


def _one_shot(model, amount, x, data, name):
    return schedules.one_shot(
        model,
        "l1_filter",
        amount,
        train_loader=data,
        eval_loader=[(X, Y)],
        epochs=0,
        example_input=x,
        method_options={"ignored_layers": [name]} if name else None,
        progress=False,
    )


ENTRIES: dict[str, Callable] = {
    **{
        f"plan:{m}": _plan(m)
        for m in (
            "magnitude",
            "random",
            "unit_l2",
            "l1_filter",
            "taylor",
            "sipp_det",
            "pfp",
            "oracle",
            "cka_single",
        )
    },
    "plan_structured": _structured,
    "plan_unstructured": _unstructured,
    "prune": _prune,
    "ablation_damage": _ablation,
    "sensitivity_analysis": _sensitivity,
    "schedules.one_shot": _one_shot,
}

DATA_DRIVEN = {
    "plan:taylor",
    "plan:sipp_det",
    "plan:pfp",
    "plan:oracle",
    "plan:cka_single",
    "ablation_damage",
}
NO_AMOUNT = {"ablation_damage"}


def expected(entry: str, bad: str) -> tuple[str, str] | str:
    """``"ok"`` or ``(exception name, argument the message starts with)``."""
    if bad in ("ok", "amount_numpy"):
        return "ok"
    if bad.startswith("amount_"):
        if entry in NO_AMOUNT:
            return "ok"
        argument = "ratios" if entry == "sensitivity_analysis" else "amount"
        return ("TypeError" if bad == "amount_string" else "ValueError", argument)
    if bad == "unknown_name":
        return ("ValueError", "layer" if entry == "ablation_damage" else "ignored_layers")
    if bad == "meta":
        return ("ValueError", "model")
    if bad == "tied":
        # Ablation only measures (a forward hook on one call of the layer); everything that prunes refuses.
        return "ok" if entry == "ablation_damage" else ("ValueError", "model")
    if bad == "int_data":
        if entry == "schedules.one_shot":
            return "ok"  # l1_filter reads no data, and epochs=0 trains on none
        return ("TypeError", "data") if entry in DATA_DRIVEN else "ok"
    if bad == "bad_shape":  # both example_input and data: data-driven methods read the data first
        return ("ValueError", "data" if entry in DATA_DRIVEN else "example_input")
    raise AssertionError(bad)


@pytest.mark.slow
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_bad_input_matrix(entry):
    failures = []
    for bad, override in CLASSES.items():
        case = {**GOOD, **override}
        torch.manual_seed(0)
        model = case["model"]()
        before = None if bad == "meta" else copy.deepcopy(model.state_dict())
        want = expected(entry, bad)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # tiny sensitivity sets, tiny-model tolerances: not the point here
                ENTRIES[entry](model, case["amount"], case["x"], case["data"], case["name"])
            got: tuple[str, str] | str = "ok"
        except (TypeError, ValueError) as error:
            got = (type(error).__name__, str(error).split(":")[0].split("[")[0])
        except Exception as error:  # a raw error of any other type is a failing cell
            got = (type(error).__name__, str(error)[:80])
        if got != want:
            failures.append(f"{bad}: expected {want}, got {got}")
        if want != "ok" and before is not None:
            changed = [
                k for k, v in model.state_dict().items() if k not in before or not torch.equal(before[k], v)
            ]
            if changed or getattr(model, "pyprune_history", None):
                failures.append(f"{bad}: refused, but the model changed ({changed[:3]})")
    assert not failures, f"{entry}:\n" + "\n".join(failures)
