"""Every similarity entry point x every bad-input class, with the outcome each cell must have.

Outcome classes: ``("raises", ExceptionType, pattern)``: an exception that names what was wrong; ``"value"``:
a finite result equal to the reference for the same data. CKA/HSIC references are the textbook float64
formulas (tests/_references.py) on the float64 values of the input; the CCA family and NBS, which have no
independent textbook here, must give what they give on a clean, contiguous, moderate-magnitude float64 copy
of the same representation (a metamorphic check: contiguity, dtype and scale must not matter).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import pyprune
from tests import _references as ref

N, P1, P2 = 40, 3, 4


def _clean() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N, P1, generator=g, dtype=torch.float64) + 1.0
    y = x @ torch.randn(P1, P2, generator=g, dtype=torch.float64) + 0.5 * torch.randn(
        N, P2, generator=g, dtype=torch.float64
    )
    return x, y


def _minibatch(x: Any, y: Any) -> float:
    acc = pyprune.MinibatchCKA()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "batch skipped": compute() then raises
        acc.update([x], [y])
    return acc.compute()[0, 0].item()


def _cca_mean(x: Any, y: Any) -> float:
    return float(pyprune.cca(x, y).mean())


# name -> (call, kind): kind "cka" is compared with the textbook CKA, "hsic" with textbook HSIC, "self" with
# the same call on a clean float64 copy.
ENTRY_POINTS: dict[str, tuple[Callable[[Any, Any], float], str]] = {
    "cka": (lambda x, y: pyprune.cka(x, y), "cka"),
    "cka_matrix": (lambda x, y: pyprune.cka_matrix([x, y])[0, 1].item(), "cka"),
    "MinibatchCKA": (_minibatch, "cka_unbiased"),
    "hsic": (lambda x, y: pyprune.hsic(x, y), "hsic"),
    "hsic_terms": (lambda x, y: pyprune.hsic_terms([x], [y]).cka()[0, 0].item(), "cka"),
    "cca": (_cca_mean, "self"),
    "mean_cca": (lambda x, y: pyprune.mean_cca(x, y), "self"),
    "r2_cca": (lambda x, y: pyprune.r2_cca(x, y), "self"),
    "svcca": (lambda x, y: pyprune.svcca(x, y), "self"),
    "pwcca": (lambda x, y: pyprune.pwcca(x, y), "self"),
    "nbs": (lambda x, y: pyprune.nbs(x, y), "self"),
}


def _with(t: torch.Tensor, row: int, col: int, value: float) -> torch.Tensor:
    t = t.clone()
    t[row, col] = value
    return t


def _raises(kind: type[Exception], pattern: str) -> tuple[str, type[Exception], str]:
    return ("raises", kind, pattern)


# class -> (make (x, y) from the clean pair, expected outcome)
BAD_INPUTS: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], tuple[Any, Any]], Any]] = {
    "1-D": (lambda x, y: (x[:, 0], y), _raises(ValueError, r"x.*\(n_samples, n_features")),
    "0-D": (lambda x, y: (x[0, 0], y), _raises(ValueError, r"x.*\(n_samples, n_features")),
    "0 samples": (lambda x, y: (x[:0], y[:0]), _raises(ValueError, "empty")),
    "0 features": (lambda x, y: (x[:, :0], y), _raises(ValueError, "empty")),
    "1 sample": (lambda x, y: (x[:1], y[:1]), _raises(ValueError, "at least (2|4) samples|no batch")),
    "NaN": (lambda x, y: (_with(x, 3, 1, math.nan), y), None),
    "Inf": (lambda x, y: (x, _with(y, 0, 0, -math.inf)), None),
    "int": (lambda x, y: (x.round().long(), y), _raises(TypeError, "floating-point")),
    "bool": (lambda x, y: (x > 1, y), _raises(TypeError, "floating-point")),
    "complex": (lambda x, y: (x.to(torch.complex128), y), _raises(TypeError, "floating-point")),
    "list": (lambda x, y: (x.tolist(), y), _raises(TypeError, "expected a torch.Tensor")),
    "mismatched n": (lambda x, y: (x, y[:-1]), _raises(ValueError, "same number of samples")),
    "float16": (lambda x, y: (x.half(), y.half()), "value"),
    "bfloat16": (lambda x, y: (x.bfloat16(), y), "value"),
    "float32": (lambda x, y: (x.float(), y.float()), "value"),
    "numpy": (lambda x, y: (x.numpy(), y.numpy().astype(np.float32)), "value"),
    "non-contiguous": (lambda x, y: (x.T.contiguous().T, torch.cat([y, y], 1)[:, ::2]), "value"),
    "stride 0": (lambda x, y: (x[:, :1].expand(N, 3), y), "value"),
    "huge float32": (lambda x, y: (x.float() * 1e30, y.float() * 1e19), "value"),
    "tiny float32": (lambda x, y: (x.float() * 1e-30, y.float() * 1e-38), "value"),
    "huge float64": (lambda x, y: (x * 1e200, y * 1e250), "value"),
    "tiny float64": (lambda x, y: (x * 1e-200, y * 1e-310), "value"),
    "requires grad": (lambda x, y: (x.clone().requires_grad_(), y), "value"),
}
_NOT_FINITE = _raises(ValueError, "NaN or Inf")


def _as_float64(v: Any) -> np.ndarray:
    t = torch.as_tensor(v) if not isinstance(v, torch.Tensor) else v.detach()
    return t.to(torch.float64).reshape(t.shape[0], -1).numpy()


def _reference(kind: str, call: Callable[[Any, Any], float], x: Any, y: Any) -> float:
    xn, yn = _as_float64(x), _as_float64(y)
    if kind == "self":
        # Clean copy: contiguous float64, moderate magnitude (the measures are scale-invariant per side).
        def moderate(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a / np.abs(a).max()).contiguous()

        return call(moderate(xn), moderate(yn))
    if kind == "hsic":
        return ref.hsic_biased(ref.linear_gram(xn), ref.linear_gram(yn))
    # Scale-invariant: bring both sides to moderate magnitude so that the textbook float64 formula can be
    # evaluated at all (1e250^4 overflows it).
    xn, yn = xn / np.abs(xn).max(), yn / np.abs(yn).max()
    return ref.cka(xn, yn, "linear", 0.5, kind == "cka_unbiased")


CELLS = [(entry, bad) for entry in ENTRY_POINTS for bad in BAD_INPUTS]


@pytest.mark.parametrize(("entry", "bad"), CELLS, ids=[f"{e}-{b}" for e, b in CELLS])
def test_outcome_class(entry, bad):
    call, kind = ENTRY_POINTS[entry]
    make, expected = BAD_INPUTS[bad]
    expected = _NOT_FINITE if expected is None else expected
    x, y = make(*_clean())
    if entry == "hsic" and bad.startswith("huge float64"):
        # HSIC is not scale-invariant: 1e200^2 * 1e250^2 is beyond float64, and says so.
        assert call(x, y) == math.inf
        return
    if expected == "value":
        got = call(x, y)
        assert math.isfinite(got), f"{entry}({bad}) returned {got}"
        wanted = _reference(kind, call, x, y)
        low_precision = bad in ("float16", "bfloat16") or "float32" in bad or bad == "numpy"
        rel = 2e-3 if low_precision else 1e-8
        if kind == "hsic" and "tiny" in bad:
            rel = 1e-6  # the textbook formula itself runs into subnormals there
        assert got == pytest.approx(wanted, rel=rel, abs=1e-300), f"{entry}({bad})"
        return
    _, error, pattern = expected
    with pytest.raises(error, match=pattern):
        call(x, y)


# ---- capture and compare_models: data-level bad inputs


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))


@pytest.mark.parametrize(
    ("bad", "error", "pattern"),
    [
        ("empty list", ValueError, "no samples"),
        ("wrong feature count", RuntimeError, "shapes"),
        ("unknown layer", ValueError, "nope"),
    ],
)
def test_capture_bad_data_raises(bad, error, pattern):
    data = {"empty list": [], "wrong feature count": torch.randn(8, 4), "unknown layer": torch.randn(8, 3)}[
        bad
    ]
    layers = ["nope"] if bad == "unknown layer" else ["0"]
    with pytest.raises(error, match=pattern):
        pyprune.capture(_model(), data, layers)


@pytest.mark.parametrize(
    ("bad", "error", "pattern"),
    [
        ("NaN data", ValueError, "NaN or Inf"),
        ("one sample", ValueError, "at least 2 samples"),
        ("empty list", ValueError, "no samples"),
    ],
)
def test_compare_models_bad_data_raises(bad, error, pattern):
    data = {
        "NaN data": torch.full((8, 3), math.nan),
        "one sample": torch.randn(1, 3),
        "empty list": [],
    }[bad]
    model = _model()
    with pytest.raises(error, match=pattern):
        pyprune.compare_models(model, model, data, layers_a=["0", "2"], progress=False)


def test_compare_models_extreme_magnitude_data_is_finite():
    """A model fed 1e18-scale float32 inputs: its activations are ~1e18 and the heatmap stays exact."""
    model = _model()
    data = torch.randn(30, 3, generator=torch.Generator().manual_seed(1)) * 1e18
    result = pyprune.compare_models(model, model, data, layers_a=["0", "2"], progress=False)
    acts = pyprune.capture(model, data, ["0", "2"])
    a, b = (acts[k].double().numpy() / 1e18 for k in ("0", "2"))
    assert result.values[0, 1].item() == pytest.approx(ref.cka(a, b, "linear", 0.5, False), rel=1e-4)
