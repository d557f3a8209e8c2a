from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import pyprune
from pyprune.ops import backend


def test_set_backend_validates_and_restores():
    assert pyprune.get_backend() == "auto"
    with pytest.raises(ValueError, match="backend: expected one of"):
        pyprune.set_backend("fast")
    with pyprune.use_backend("reference"):
        assert pyprune.get_backend() == "reference"
    assert pyprune.get_backend() == "auto"


def test_reference_backend_never_calls_the_compiled_kernels(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("compiled kernel called under the reference backend")

    monkeypatch.setattr(backend.cpu_kernels(), "gram_hsic_terms", fail)
    monkeypatch.setattr(backend.cpu_kernels(), "rbf_from_linear_gram", fail)
    xs = [torch.randn(40, 5, dtype=torch.float64), torch.randn(40, 300, dtype=torch.float64)]
    with pyprune.use_backend("reference"):
        pyprune.cka_matrix(xs, kernel="rbf")
    with pytest.raises(AssertionError, match="compiled kernel called"):
        pyprune.cka_matrix(xs, kernel="rbf")


@pytest.mark.parametrize(("value", "expected"), [("reference", "reference"), ("AUTO", "auto")])
def test_environment_variable_selects_backend(value, expected):
    code = "import pyprune; print(pyprune.get_backend())"
    env = {"PYPRUNE_BACKEND": value, "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_bad_environment_variable_names_it():
    code = "import pyprune; pyprune.get_backend()"
    out = subprocess.run(
        [sys.executable, "-c", code], env={"PYPRUNE_BACKEND": "gpu"}, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "PYPRUNE_BACKEND" in out.stderr


def test_info_reports_kernels_and_threads():
    details = pyprune.info()
    assert details["cpu_kernels_loaded"] is True
    assert details["threads"] == torch.get_num_threads()
    assert set(details["kernels"]) == {
        "linear_gram",
        "gram_hsic_terms",
        "rbf_from_linear_gram",
        "greedy_removal_order",
        "rbf_candidate_scan",
        "sensitivity_update",
        "nm_select",
        "permutation_hsic",
    }
    assert details["kernels"]["gram_hsic_terms"]["cpu"].startswith("C++")
    with pyprune.use_backend("reference"):
        assert pyprune.info()["kernels"]["gram_hsic_terms"]["cpu"] == "torch reference"
    text = pyprune.format_info()
    assert "gram_hsic_terms" in text
    assert "CPU threads" in text


def test_kernel_threads_follow_torch():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert backend.num_threads() == 1
    finally:
        torch.set_num_threads(previous)
