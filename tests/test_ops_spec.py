"""Every op of :data:`pyprune.ops.registry.OPS`, from its spec: the C++ implementation and (with CuPy and a GPU)
the CUDA one against the torch reference on the spec's random inputs, in each dtype the op computes in; and one
argument checker shared by all three implementations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pyprune.ops import cuda
from pyprune.ops.backend import cpu_kernels, use_backend
from pyprune.ops.registry import OPS
from pyprune.ops.spec import OpSpec

# The kernels accumulate in float64 or in the inputs' dtype, in another order than torch: a few ulps of the
# dtype, with room for sums of a few hundred terms.
TOLERANCES = {torch.float64: {"rtol": 1e-10, "atol": 1e-12}, torch.float32: {"rtol": 1e-4, "atol": 1e-5}}
CASES = [
    pytest.param(op, dtype, id=f"{op.name}-{str(dtype).removeprefix('torch.')}")
    for op in OPS
    for dtype in op.dtypes
]


def _clone(value):
    if isinstance(value, torch.Tensor):
        # Keep the strides: a row-strided view stays one.
        copy = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=value.device)
        return copy.copy_(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


def _run(implementation, args, kwargs):
    """The result and the arguments after the call (the in-place ops write into them)."""
    args = _clone(args)
    return implementation(*args, **kwargs), args


def _assert_close(got, want, tolerance, where="result"):
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _assert_close(got[key], want[key], tolerance, f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for index, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, tolerance, f"{where}[{index}]")
    elif isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype, where
        assert got.device == want.device, where
        if want.is_floating_point():
            torch.testing.assert_close(got, want, **tolerance, msg=lambda m: f"{where}: {m}")
        else:
            assert torch.equal(got, want), where
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=tolerance["rtol"], abs=tolerance["atol"]), where
    else:
        assert got == want, where


def _compare(op: OpSpec, implementation, dtype: torch.dtype, device: torch.device) -> None:
    args, kwargs = op.example(torch.Generator().manual_seed(0), dtype, device)
    with use_backend("reference"):
        want = _run(op.reference, args, kwargs)
    _assert_close(_run(implementation, args, kwargs), want, TOLERANCES[dtype])


@pytest.mark.skipif(cpu_kernels() is None, reason="pyprune._C is not built")
@pytest.mark.parametrize(("op", "dtype"), CASES)
def test_cpu_matches_reference(op, dtype):
    _compare(op, op.cpu, dtype, torch.device("cpu"))


@pytest.mark.cuda
@pytest.mark.skipif(not cuda.available(), reason=f"CUDA kernels unavailable: {cuda.unavailable_reason()}")
@pytest.mark.parametrize(("op", "dtype"), CASES)
def test_cuda_matches_reference(op, dtype):
    _compare(op, op.cuda, dtype, torch.device("cuda"))


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_every_implementation_raises_the_checkers_error(op):
    args, kwargs = op.example(torch.Generator().manual_seed(0), op.dtypes[0], torch.device("cpu"))
    bad = ("not a tensor", *args[1:])
    errors = []
    implementations = [op.check, op.reference, op] + ([op.cpu] if cpu_kernels() is not None else [])
    for implementation in implementations:
        with pytest.raises((TypeError, ValueError)) as info:
            implementation(*bad, **kwargs)
        errors.append((info.type, str(info.value)))
    assert errors[0][0] is TypeError
    assert errors == [errors[0]] * len(errors)


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_dispatch_follows_the_backend(op):
    cpu = torch.device("cpu")
    with use_backend("reference"):
        assert op.implementation(cpu) is op.reference
    with use_backend("auto"):
        assert op.implementation(cpu) is (op.cpu if cpu_kernels() is not None else op.reference)


def test_every_public_op_has_a_spec():
    import pyprune.ops as ops

    root = Path(__file__).resolve().parents[1]
    for op in OPS:
        assert (root / "csrc" / "cpu" / f"{op.source}.cpp").is_file(), op.name
        assert op.source in cuda.NAME_EXPRESSIONS, op.name
    names = {op.name for op in OPS}
    assert len(names) == len(OPS)
    assert {"gram_hsic_terms", "rbf_from_linear_gram", "permutation_hsic"} <= names
    assert set(ops.__all__) - names == {"linear_gram"}  # BLAS, not a kernel of its own
