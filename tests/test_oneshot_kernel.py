"""The fused Wanda / N:M selection kernel (pyprune.ops.nm_select) against its torch reference."""

from __future__ import annotations

import pytest
import torch

import pyprune
from pyprune.ops.backend import cpu_kernels
from pyprune.ops.nm_select import nm_select
from pyprune.ops.reference import nm_select_reference

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _weights(rows: int, cols: int, dtype: torch.dtype, seed: int, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if ties:  # a few distinct magnitudes, both signs: most scores tie
        return (torch.randint(-3, 4, (rows, cols), generator=g) * 0.5).to(dtype)
    return torch.randn(rows, cols, generator=g).to(dtype)


def _direct(weight: torch.Tensor, norms: torch.Tensor | None, group: int, drop: int) -> torch.Tensor:
    """Definition by counting, independent of any sort: removed iff fewer than ``drop`` rank below."""
    s = weight.abs().double() * (1.0 if norms is None else norms.double())
    rows, cols = s.shape
    out = torch.zeros(rows, cols, dtype=torch.bool)
    for i in range(rows):
        for j in range(cols):
            start = j - j % group
            other = s[i, start : start + group]
            index = torch.arange(start, start + group)
            below = ((other < s[i, j]) | ((other == s[i, j]) & (index < j))).sum()
            out[i, j] = bool(below < drop)
    return out


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("with_norms", [False, True])
def test_reference_matches_definition(ties: bool, with_norms: bool) -> None:
    w = _weights(5, 12, torch.float64, 1, ties)
    norms = torch.arange(12, dtype=torch.float64) % 3 if with_norms else None
    assert torch.equal(nm_select_reference(w, norms, k=5), _direct(w, norms, 12, 5))
    assert torch.equal(nm_select_reference(w, norms, n_m=(2, 4)), _direct(w, norms, 4, 2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 8), (17, 64), (64, 33), (2, 1000)])
@pytest.mark.parametrize("ties", [False, True])
def test_kernel_equals_reference(dtype: torch.dtype, shape: tuple[int, int], ties: bool) -> None:
    assert cpu_kernels() is not None
    rows, cols = shape
    w = _weights(rows, cols, dtype, rows * cols, ties)
    norms = (torch.arange(cols, dtype=torch.float64) % 4) * 0.25
    for extra in (
        {"k": 0},
        {"k": cols // 2},
        {"k": cols},
        *([{"n_m": (2, 4)}, {"n_m": (1, 4)}] if cols % 4 == 0 else []),
    ):
        for x in (None, norms):
            got = nm_select(w, x, **extra)
            with pyprune.use_backend("reference"):
                want = nm_select(w, x, **extra)
            assert torch.equal(got, want), (extra, x is None)


def test_kernel_strides_and_threads() -> None:
    w = _weights(40, 24, torch.float32, 3, True).t()  # non-contiguous view
    want = nm_select_reference(w, None, k=17)
    for threads in (1, 3):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            assert torch.equal(nm_select(w, None, k=17), want)
        finally:
            torch.set_num_threads(previous)


def test_every_row_and_group_count_exact() -> None:
    w = _weights(9, 32, torch.float32, 4, True)
    assert (nm_select(w, k=11).sum(dim=1) == 11).all()
    removed = nm_select(w, n_m=(2, 4)).reshape(9, 8, 4)
    assert (removed.sum(dim=-1) == 2).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"k": 2, "n_m": (2, 4)}, ValueError, "exactly one"),
        ({"k": 9}, ValueError, "0 <= k <= 8"),
        ({"n_m": (4, 4)}, ValueError, "0 < n < m"),
        ({"n_m": (1, 3)}, ValueError, "groups of m=3"),
        ({"n_m": "2:4"}, TypeError, "pair of ints"),
        ({"k": 1.5}, TypeError, "k: expected an int"),
    ],
)
def test_bad_arguments(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        nm_select(torch.ones(2, 8), **kwargs)


def test_bad_tensors() -> None:
    with pytest.raises(ValueError, match="weight: contains NaN"):
        nm_select(torch.tensor([[1.0, float("nan")]]), k=1)
    with pytest.raises(ValueError, match="norms: expected shape"):
        nm_select(torch.ones(2, 4), torch.ones(3), k=1)
    with pytest.raises(ValueError, match="non-negative"):
        nm_select(torch.ones(2, 4), -torch.ones(4), k=1)
    with pytest.raises(TypeError, match="floating dtype"):
        nm_select(torch.ones(2, 4, dtype=torch.int32), k=1)


def test_binding_checks_memory_arguments() -> None:
    import numpy as np

    c = cpu_kernels()
    with pytest.raises(ValueError, match="norms: expected shape"):
        c.nm_select(np.ones((2, 4)), np.ones(3), 1, 0, 0, 1)
    with pytest.raises(TypeError, match="weight: expected float32 or float64"):
        c.nm_select(np.ones((2, 4), dtype=np.int64), None, 1, 0, 0, 1)
    with pytest.raises(ValueError, match="rows must be contiguous"):
        c.nm_select(np.ones((4, 4))[:, ::2], None, 1, 0, 0, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 4), (7, 300), (64, 4096)])
def test_cuda_kernel_equals_reference(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    from pyprune.ops import cuda as _cuda

    if not _cuda.available():
        pytest.skip(_cuda.unavailable_reason())
    rows, cols = shape
    for ties in (False, True):
        w = _weights(rows, cols, dtype, 7, ties).cuda()
        norms = ((torch.arange(cols, dtype=torch.float64) % 4) * 0.25).cuda()
        for extra in ({"k": cols // 3}, {"k": cols}, {"n_m": (2, 4)}):
            for x in (None, norms):
                want = nm_select_reference(w, x, **extra)
                assert torch.equal(nm_select(w, x, **extra), want), (extra, ties)
