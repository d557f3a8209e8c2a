"""The CUDA kernels (``pyprune.ops.cuda``, CuPy + NVRTC) against exact float64 NumPy results.

Same inputs, checks and tolerances as ``tests/test_reference_kernels.py`` (whose helpers are reused), on a
CUDA device, plus more layer counts (every register tile of ``gram_hsic.cu``), larger sizes (several tiles),
stream ordering and argument errors. Skipped unless ``pyprune.ops.cuda.available()``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyprune.ops import cuda as _cuda


def _load_helpers():
    name = "test_reference_kernels"
    path = Path(__file__).with_name(f"{name}.py")
    loaded = sys.modules.get(name)
    if loaded is not None and Path(loaded.__file__).resolve() == path.resolve():
        return loaded
    spec = importlib.util.spec_from_file_location(f"_pyprune_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = _load_helpers()

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not _cuda.available(), reason=f"CUDA kernels unavailable: {_cuda.unavailable_reason()}"
    ),
]

SIZES = [*H.SIZES, 300]
# Symmetric and cross layouts that exercise every BM x BN register tile (1, 2, 4, 8) and partial groups.
LAYOUTS = [*H.LAYOUTS, (2, None), (5, None), (10, None), (2, 5), (9, 2), (4, 8), (10, 10), (17, 1)]
DEVICE = "cuda"


@pytest.mark.parametrize("dtype", H.DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("n", SIZES)
def test_gram_hsic_terms_cuda(n, layout, dtype):
    grams_a, grams_b = H.gram_case(n, layout, dtype, DEVICE)
    out = H.run_gram_hsic("cuda", grams_a, grams_b)
    for key, value in out.items():
        assert value.device.type == "cuda", key
    H.check_terms(out, grams_a, grams_b, dtype)


@pytest.mark.parametrize("dtype", H.DTYPES, ids=str)
@pytest.mark.parametrize("layout", [(3, None), (3, 3)], ids=str)
def test_gram_hsic_terms_reference_on_cuda(layout, dtype):
    grams_a, grams_b = H.gram_case(129, layout, dtype, DEVICE)
    H.check_terms(H.run_gram_hsic("reference", grams_a, grams_b), grams_a, grams_b, dtype)


@pytest.mark.parametrize("layout", [(3, None), (2, 5)], ids=str)
def test_gram_hsic_terms_cuda_matches_cpu_kernel(layout):
    grams_a, grams_b = H.gram_case(129, layout, torch.float32, DEVICE)
    cuda = H.run_gram_hsic("cuda", grams_a, grams_b)
    cpu_b = None if grams_b is None else [g.cpu() for g in grams_b]
    cpu = H.run_gram_hsic("cpu", [g.cpu() for g in grams_a], cpu_b, 2)
    for key in H.KEYS:
        np.testing.assert_allclose(cuda[key].cpu().numpy(), cpu[key], rtol=1e-10, atol=1e-9, err_msg=key)


@pytest.mark.slow
def test_gram_hsic_terms_cuda_large():
    grams = H.make_grams(12, 1500, torch.float32, 5, DEVICE)
    H.check_terms(H.run_gram_hsic("cuda", grams, None), grams, None, torch.float32)


def test_gram_hsic_terms_cuda_runs_on_the_current_stream():
    n = 512
    lower = torch.randn(n, n, dtype=torch.float64)
    expected = H.exact_terms([lower], None)[0]["cross"]
    source = lower.to(DEVICE)
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()  # a non-blocking stream: nothing orders it with the default stream
    with torch.cuda.stream(stream):
        gram = torch.zeros(n, n, dtype=torch.float64, device=DEVICE)
        torch.cuda._sleep(50_000_000)  # keeps the stream busy: a kernel on another stream would read zeros
        gram.copy_(source)
        out = _cuda.gram_hsic_terms_cuda([gram])
        cross = out["cross"].cpu()  # waits for `stream`
    np.testing.assert_allclose(cross.numpy(), expected, rtol=1e-12)


def test_gram_hsic_terms_cuda_argument_errors():
    good = H.make_grams(2, 4, torch.float64, 0, DEVICE)
    with pytest.raises(ValueError, match="grams_a: expected at least one Gram matrix"):
        _cuda.gram_hsic_terms_cuda([])
    with pytest.raises(ValueError, match=r"grams_a\[0\]: expected a CUDA tensor"):
        _cuda.gram_hsic_terms_cuda([g.cpu() for g in good])
    with pytest.raises(ValueError, match=r"grams_b\[0\]: expected every tensor on"):
        _cuda.gram_hsic_terms_cuda(good, [good[0].cpu()])
    with pytest.raises(TypeError, match=r"grams_b\[1\]: all Gram matrices must share one dtype"):
        _cuda.gram_hsic_terms_cuda(good, [good[0], good[1].float()])
    with pytest.raises(ValueError, match=r"grams_a\[0\]: rows must be contiguous"):
        _cuda.gram_hsic_terms_cuda([good[0].mT])


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", H.DTYPES, ids=str)
@pytest.mark.parametrize(("n", "kind"), [*H.RBF_CASES, (1000, "random"), (300, "duplicates")])
def test_rbf_cuda(n, kind, dtype, strided):
    H.rbf_roundtrip("cuda", n, kind, dtype, strided, DEVICE)


@pytest.mark.parametrize("dtype", H.DTYPES, ids=str)
def test_rbf_reference_on_cuda(dtype):
    H.rbf_roundtrip("reference", 64, "random", dtype, True, DEVICE)


@pytest.mark.parametrize("dtype", H.DTYPES, ids=str)
def test_rbf_cuda_constant_gives_ones(dtype):
    H.rbf_constant("cuda", dtype, DEVICE)


@pytest.mark.parametrize("dtype", H.DTYPES, ids=str)
def test_rbf_cuda_degenerate_median_raises_same_error(dtype):
    assert H.rbf_degenerate("cuda", dtype, DEVICE) == H.rbf_degenerate("cpu", dtype)


def test_rbf_cuda_argument_errors_match_cpu():
    assert H.rbf_argument_errors("cuda", DEVICE) == H.rbf_argument_errors("cpu")
    with pytest.raises(ValueError, match="gram: expected a CUDA tensor"):
        _cuda.rbf_from_linear_gram_cuda(torch.eye(3), 1.0)


def test_every_kernel_instantiation_loads():
    for name, expressions in _cuda.NAME_EXPRESSIONS.items():
        for expr in expressions:
            assert _cuda.module(name, (expr,)).get_function(expr) is not None
