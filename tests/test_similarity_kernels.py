"""The permutation-HSIC kernel (C++, CUDA, torch reference) against an exact float64 NumPy loop.

Inputs have odd sizes, strided rows and NaN in the upper triangle of ``a`` (which the kernels must not read).
float64 must match to ``rtol=1e-12`` of the sum of the terms' magnitudes; float32 inputs are exact in double
products, so the same bound holds against the float64 evaluation of the float32 values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyprune import _C, use_backend
from pyprune.ops import cuda as _cuda
from pyprune.ops import permutation_hsic
from pyprune.ops.gram import column_stats
from pyprune.ops.reference import permutation_hsic_reference

DTYPES = [torch.float32, torch.float64]


def exact(a_full: np.ndarray, b: np.ndarray, perms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum_ij A_ij B_p(i)p(j), sum_ij |A_ij B_p(i)p(j)|) per permutation, in float64."""
    values = np.array([np.sum(a_full * b[np.ix_(p, p)]) for p in perms])
    scales = np.array([np.sum(np.abs(a_full * b[np.ix_(p, p)])) for p in perms])
    return values, scales


def make_inputs(n: int, count: int, dtype: torch.dtype, seed: int, strided: bool):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    a = (x @ x.T).to(dtype)
    y = torch.randn(n, n, generator=gen, dtype=torch.float64)
    b = (y + y.T).to(dtype)
    pad = 3 if strided else 0
    buffer = torch.full((n, n + pad), float("nan"), dtype=dtype)
    a_view = buffer[:, :n]
    a_view.copy_(torch.where(torch.ones(n, n, dtype=torch.bool).tril(), a, float("nan")))
    perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(count)]) if count else None
    perms = perms if perms is not None else torch.zeros(0, n, dtype=torch.int64)
    return a_view, a, b, perms


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 7, 33, 70])
@pytest.mark.parametrize("count", [0, 1, 9])
def test_cpu_kernel_and_reference_match_exact(dtype, n, count):
    a_view, a, b, perms = make_inputs(n, count, dtype, seed=n * 10 + count, strided=n % 2 == 1)
    want, scale = exact(a.double().numpy(), b.double().numpy(), perms.numpy())
    for threads in (1, 2, 3):
        got = _C.permutation_hsic(a_view.numpy(), b.numpy(), perms.numpy(), threads)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * (scale.max(initial=0) + 1e-300))
    reference = permutation_hsic_reference(a_view, b, perms).numpy()
    np.testing.assert_allclose(reference, want, rtol=0, atol=1e-12 * (scale.max(initial=0) + 1e-300))


def test_dispatcher_agrees_across_backends():
    a_view, _, b, perms = make_inputs(40, 5, torch.float64, seed=3, strided=True)
    kernel = permutation_hsic(a_view, b, perms)
    with use_backend("reference"):
        reference = permutation_hsic(a_view, b, perms)
    torch.testing.assert_close(kernel, reference, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a, b, p: (a, b, p.int()), TypeError, "permutations: expected int64"),
        (lambda a, b, p: (a, b, p[:, :-1].contiguous()), ValueError, r"permutations: expected \(S, 6\)"),
        (lambda a, b, p: (a, b, p.T.contiguous().T), ValueError, "permutations: must be contiguous"),
        (
            lambda a, b, p: (a, b, torch.zeros_like(p)),
            ValueError,
            "permutations: every row must be a permutation",
        ),
        (lambda a, b, p: (a, b.float(), p), TypeError, "b: all Gram matrices must share one dtype"),
        (lambda a, b, p: (a[:5, :5], b, p), ValueError, "b: expected 5 x 5"),
        (lambda a, b, p: (a.int(), b, p), TypeError, "a: expected float32 or float64"),
    ],
)
def test_bad_arguments_are_named(change, error, match):
    _, a, b, perms = make_inputs(6, 2, torch.float64, seed=0, strided=False)
    args = change(a, b, perms)
    with pytest.raises(error, match=match):
        permutation_hsic(*args)
    with use_backend("reference"), pytest.raises(error, match=match):
        permutation_hsic(*args)


def test_cpp_boundary_rejects_out_of_range_indices():
    _, a, b, perms = make_inputs(6, 2, torch.float64, seed=0, strided=False)
    perms[1, 2] = 6
    with pytest.raises(ValueError, match=r"permutations: entries must lie in \[0, 6\)"):
        _C.permutation_hsic(a.numpy(), b.numpy(), perms.numpy(), 1)


@pytest.mark.cuda
@pytest.mark.skipif(not _cuda.available(), reason="CUDA kernels unavailable")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 33, 300])
def test_cuda_kernel_matches_exact(dtype, n):
    a_view, a, b, perms = make_inputs(n, 11, dtype, seed=n, strided=True)
    want, scale = exact(a.double().numpy(), b.double().numpy(), perms.numpy())
    got = _cuda.permutation_hsic_cuda(a_view.cuda(), b.cuda(), perms.cuda())
    assert got.device.type == "cuda"
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=0, atol=1e-12 * scale.max())


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 1100),
    pad=st.integers(0, 3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    exponent=st.integers(-60, 60),
    threads=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_column_stats_sums_in_row_order_and_finds_the_extremes(
    rows, cols, pad, dtype, exponent, threads, seed
):
    # Rows further apart than their length (a column slice), several 512-column blocks, any thread count: the
    # float64 column sums bit for bit as float64 additions in the documented order, and the extremes exactly.
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(rows, cols + pad, generator=gen, dtype=torch.float64).mul(2.0**exponent).to(dtype)
    x = wide[:, :cols]
    sums, low, high = _C.column_stats(x.numpy(), threads)
    # The documented order: in float64, 4 rows at a time, s += (x0 + x1) + (x2 + x3), then the last rows.
    want, d = torch.zeros(cols, dtype=torch.float64), x.double()
    whole = rows - rows % 4
    for r in range(0, whole, 4):
        want += (d[r] + d[r + 1]) + (d[r + 2] + d[r + 3])
    for r in range(whole, rows):
        want += d[r]
    assert torch.equal(torch.from_numpy(sums), want)
    assert low == float(x.min())
    assert high == float(x.max())
    with use_backend("reference"):
        ref_sums, ref_low, ref_high = column_stats(x)
    got_sums, got_low, got_high = column_stats(x)
    torch.testing.assert_close(got_sums, ref_sums, rtol=0, atol=1e-14 * float(x.double().abs().sum()))
    assert (got_low, got_high) == (ref_low, ref_high)


def test_column_stats_skips_nan_in_the_extremes_and_propagates_it_into_the_sums():
    x = np.arange(12.0).reshape(3, 4)
    x[1, 2] = np.nan
    sums, low, high = _C.column_stats(x, 2)
    assert np.isnan(sums[2])
    np.testing.assert_array_equal(np.delete(sums, 2), np.delete(np.nansum(x, axis=0), 2))
    assert (low, high) == (0.0, 11.0)
