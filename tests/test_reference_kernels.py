"""The C++ kernels (``pyprune._C``) and the plain-torch references against exact float64 NumPy results.

Inputs have odd sizes, strided rows (views into bigger buffers) and NaN in every entry the kernels must not
read (upper triangles, padding). Tolerances follow the flash-attention tests: float64 inputs must match the
exact result to ``rtol=1e-12`` (relative to the sum of the magnitudes of the terms), and for float32 inputs
the error must stay within a small factor of the error of the same computation done plainly in float32 torch
(plus a tiny atol for what is exact in both). ``tests/test_cuda_kernels.py`` reuses these helpers on CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from pyprune import _C
from pyprune.ops.reference import gram_hsic_terms_reference, rbf_from_linear_gram_reference

DTYPES = [torch.float32, torch.float64]
SIZES = [1, 2, 5, 17, 64, 129]
# (La, Lb); Lb None is the symmetric mode (B = A).
LAYOUTS = [(1, None), (3, None), (1, 1), (1, 3), (3, 1), (3, 3)]
KEYS = ("cross", "self_a", "self_b", "row_sums_a", "diag_a", "row_sums_b", "diag_b")
FACTOR = 4.0  # allowed multiple of the plain float32 error
RTOL64 = 1e-12
THRESHOLD = 0.8
MEDIAN_ZERO = "the median pairwise distance is 0"


# --------------------------------------------------------------------------------------------------------------
# Inputs


def embed_lower(lower: torch.Tensor, dtype: torch.dtype, strided: bool, device: str | torch.device = "cpu"):
    """``lower``'s lower triangle in a view whose upper triangle and padding hold NaN (rows ld apart if strided).

    Returns (view, buffer): the view is what the kernels get; the buffer lets a test check what they wrote.
    """
    n = lower.shape[0]
    pad = 3 if strided else 0
    buffer = torch.full((n + pad, n + 2 * pad), float("nan"), dtype=dtype)
    view = buffer[pad : pad + n, pad : pad + n]
    view.copy_(torch.where(torch.ones(n, n, dtype=torch.bool).tril(), lower.to(dtype), float("nan")))
    buffer = buffer.to(device)
    return buffer[pad : pad + n, pad : pad + n], buffer


def make_grams(count: int, n: int, dtype: torch.dtype, seed: int, device: str | torch.device = "cpu"):
    """``count`` Gram-like matrices: X X^T and random signed matrices of varied scale, strided every other one."""
    gen = torch.Generator().manual_seed(seed)
    grams = []
    for k in range(count):
        if k % 3 == 0:
            x = torch.randn(n, 7, generator=gen, dtype=torch.float64)
            lower = x @ x.T
        else:
            lower = torch.randn(n, n, generator=gen, dtype=torch.float64) * 10.0 ** (k - 1)
        grams.append(embed_lower(lower, dtype, strided=k % 2 == 1, device=device)[0])
    return grams


def _sym64(g: torch.Tensor) -> np.ndarray:
    m = g.detach().cpu().to(torch.float64).numpy()
    return np.tril(m) + np.tril(m, -1).T


def exact_terms(grams_a: Sequence[torch.Tensor], grams_b: Sequence[torch.Tensor] | None):
    """(exact float64 terms, magnitude bounds: the same sums over absolute values) with NumPy."""
    a = np.stack([_sym64(g) for g in grams_a])
    b = a if grams_b is None else np.stack([_sym64(g) for g in grams_b])
    exact = {
        "cross": np.einsum("irc,jrc->ij", a, b),
        "self_a": np.einsum("irc,irc->i", a, a),
        "self_b": np.einsum("irc,irc->i", b, b),
        "row_sums_a": a.sum(2),
        "diag_a": np.diagonal(a, axis1=1, axis2=2),
        "row_sums_b": b.sum(2),
        "diag_b": np.diagonal(b, axis1=1, axis2=2),
    }
    abs_a, abs_b = np.abs(a), np.abs(b)
    bound = {
        "cross": np.einsum("irc,jrc->ij", abs_a, abs_b),
        "self_a": exact["self_a"],
        "self_b": exact["self_b"],
        "row_sums_a": abs_a.sum(2),
        "diag_a": np.abs(exact["diag_a"]),
        "row_sums_b": abs_b.sum(2),
        "diag_b": np.abs(exact["diag_b"]),
    }
    return exact, bound


def float32_terms(
    grams_a: Sequence[torch.Tensor], grams_b: Sequence[torch.Tensor] | None
) -> dict[str, np.ndarray]:
    """The same terms computed plainly in float32 torch (the baseline error for float32 inputs)."""

    def sym32(grams):
        g = torch.stack([x.to(torch.float32) for x in grams])
        return torch.tril(g) + torch.tril(g, -1).mT

    a = sym32(grams_a)
    b = a if grams_b is None else sym32(grams_b)
    out = {
        "cross": a.flatten(1) @ b.flatten(1).mT,
        "self_a": (a * a).sum((1, 2)),
        "self_b": (b * b).sum((1, 2)),
        "row_sums_a": a.sum(2),
        "diag_a": a.diagonal(dim1=1, dim2=2),
        "row_sums_b": b.sum(2),
        "diag_b": b.diagonal(dim1=1, dim2=2),
    }
    return {k: v.cpu().to(torch.float64).numpy() for k, v in out.items()}


# --------------------------------------------------------------------------------------------------------------
# Tolerances


def assert_float64_close(name: str, got: np.ndarray, exact: np.ndarray, bound: np.ndarray) -> None:
    err = np.abs(got - exact)
    allowed = RTOL64 * bound
    assert np.all(err <= allowed), f"{name}: max error {err.max():.3g} over {RTOL64:g} x magnitude"


def assert_float32_close(
    name: str, got: np.ndarray, exact: np.ndarray, plain32: np.ndarray, atol: float
) -> None:
    err = float(np.abs(got - exact).max(initial=0.0))
    err32 = float(np.abs(plain32 - exact).max(initial=0.0))
    assert err <= FACTOR * err32 + atol, f"{name}: error {err:.3g} vs plain float32 error {err32:.3g}"


def check_terms(out: dict, grams_a, grams_b, dtype: torch.dtype) -> None:
    """Checks the result of any gram_hsic_terms implementation (values as tensors or arrays)."""
    assert set(out) == set(KEYS)
    num_a = len(grams_a)
    num_b = num_a if grams_b is None else len(grams_b)
    n = grams_a[0].shape[0]
    shapes = {"cross": (num_a, num_b), "self_a": (num_a,), "self_b": (num_b,), "row_sums_a": (num_a, n)}
    shapes.update(diag_a=(num_a, n), row_sums_b=(num_b, n), diag_b=(num_b, n))
    got = {}
    for key, value in out.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == torch.float64, key
            value = value.cpu().numpy()
        assert value.dtype == np.float64, key
        assert value.shape == shapes[key], (key, value.shape)
        got[key] = value
    exact, bound = exact_terms(grams_a, grams_b)
    plain32 = float32_terms(grams_a, grams_b) if dtype == torch.float32 else None
    for key in KEYS:
        assert np.isfinite(got[key]).all(), f"{key}: NaN/Inf, so an entry outside the lower triangle was read"
        if dtype == torch.float64:
            assert_float64_close(key, got[key], exact[key], bound[key])
        else:
            atol = 1e-12 * float(bound[key].max(initial=0.0))
            assert_float32_close(key, got[key], exact[key], plain32[key], atol)
    if grams_b is None:
        for key in ("self", "row_sums", "diag"):
            np.testing.assert_array_equal(got[f"{key}_b"], got[f"{key}_a"])
        np.testing.assert_array_equal(got["cross"], got["cross"].T)


def gram_case(n: int, layout: tuple[int, int | None], dtype: torch.dtype, device="cpu"):
    num_a, num_b = layout
    seed = 1000 * n + 10 * num_a + (num_b or 0)
    grams_a = make_grams(num_a, n, dtype, seed, device)
    grams_b = None if num_b is None else make_grams(num_b, n, dtype, seed + 1, device)
    return grams_a, grams_b


# --------------------------------------------------------------------------------------------------------------
# RBF


def rbf_points(n: int, kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7 * n + len(kind))
    if kind == "random":
        return torch.randn(n, 3, generator=gen, dtype=torch.float64) + 0.5
    if kind == "duplicates":  # a few coincident samples, far fewer than half: some zero distances, median > 0
        x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
        x[1 : max(2, n // 4)] = x[0]
        return x
    raise ValueError(kind)


def rbf_expected(gram: torch.Tensor) -> tuple[np.ndarray, float]:
    """Google's convention in NumPy from the Gram matrix as stored: (kernel matrix, median squared distance)."""
    g = _sym64(gram)
    sq = np.diag(g)
    dist = np.maximum(0.0, sq[:, None] + sq[None, :] - 2.0 * g)
    np.fill_diagonal(dist, 0.0)
    median = float(np.median(dist))
    return np.exp(-dist / (2.0 * THRESHOLD**2 * median)), median


def rbf_plain32(gram: torch.Tensor) -> tuple[np.ndarray, float]:
    g = torch.from_numpy(_sym64(gram)).to(torch.float32)
    sq = g.diagonal()
    dist = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min(0.0)
    dist.fill_diagonal_(0.0)
    median = float(np.median(dist.numpy()))
    return torch.exp(-dist / (2.0 * THRESHOLD**2 * median)).to(torch.float64).numpy(), median


def make_rbf_input(n: int, kind: str, dtype: torch.dtype, strided: bool, device="cpu"):
    x = rbf_points(n, kind)
    return embed_lower(x @ x.T, dtype, strided, device)


def check_rbf(
    gram_before: torch.Tensor,
    buffer_before: torch.Tensor,
    buffer_after: torch.Tensor,
    gram_after,
    median: float,
    dtype: torch.dtype,
) -> None:
    """gram_after (the view into buffer_after) must hold the RBF kernel on and below the diagonal, rest intact."""
    n = gram_before.shape[0]
    lower = torch.ones(n, n, dtype=torch.bool).tril()
    pad = (buffer_before.shape[0] - n, buffer_before.shape[1] - n)
    untouched = torch.ones(buffer_before.shape, dtype=torch.bool)
    untouched[pad[0] : pad[0] + n, pad[1] // 2 : pad[1] // 2 + n] = ~lower
    before, after = buffer_before.cpu(), buffer_after.cpu()
    torch.testing.assert_close(after[untouched], before[untouched], rtol=0, atol=0, equal_nan=True)

    expected, expected_median = rbf_expected(gram_before)
    got = np.tril(gram_after.detach().cpu().to(torch.float64).numpy())
    expected = np.tril(expected)
    assert np.isfinite(got).all()
    assert np.all(np.diag(got) == 1.0)
    if dtype == torch.float64:
        np.testing.assert_allclose(median, expected_median, rtol=RTOL64)
        np.testing.assert_allclose(got, expected, rtol=RTOL64, atol=1e-15)
    else:
        plain, plain_median = rbf_plain32(gram_before)
        eps32 = float(np.finfo(np.float32).eps)
        assert_float32_close(
            "median",
            np.array(median),
            np.array(expected_median),
            np.array(plain_median),
            atol=eps32 * expected_median,
        )
        assert_float32_close("kernel", got, expected, np.tril(plain), atol=2 * eps32)


def run_rbf(impl: str, gram: torch.Tensor, threshold: float, threads: int = 1) -> float:
    if impl == "cpu":
        return _C.rbf_from_linear_gram(gram.numpy(), threshold, threads)
    if impl == "reference":
        return rbf_from_linear_gram_reference(gram, threshold)
    if impl == "cuda":
        from pyprune.ops.cuda import rbf_from_linear_gram_cuda

        return rbf_from_linear_gram_cuda(gram, threshold)
    raise ValueError(impl)


def run_gram_hsic(impl: str, grams_a, grams_b, threads: int = 1) -> dict:
    if impl == "cpu":
        arrays_b = None if grams_b is None else [g.numpy() for g in grams_b]
        return _C.gram_hsic_terms([g.numpy() for g in grams_a], arrays_b, threads)
    if impl == "reference":
        return gram_hsic_terms_reference(grams_a, grams_b)
    if impl == "cuda":
        from pyprune.ops.cuda import gram_hsic_terms_cuda

        return gram_hsic_terms_cuda(grams_a, grams_b)
    raise ValueError(impl)


RBF_CASES = [(n, "random") for n in (2, 5, 17, 64, 129)] + [(17, "duplicates"), (64, "duplicates")]


def rbf_roundtrip(impl: str, n: int, kind: str, dtype: torch.dtype, strided: bool, device="cpu", threads=1):
    gram, buffer = make_rbf_input(n, kind, dtype, strided, device)
    gram_before, buffer_before = gram.clone(), buffer.clone()
    median = run_rbf(impl, gram, THRESHOLD, threads)
    assert isinstance(median, float)
    check_rbf(gram_before, buffer_before, buffer, gram, median, dtype)


def rbf_constant(impl: str, dtype: torch.dtype, device="cpu") -> None:
    n = 9
    gram, buffer = embed_lower(
        torch.full((n, n), 2.5, dtype=torch.float64), dtype, strided=True, device=device
    )
    buffer_before = buffer.clone()
    assert run_rbf(impl, gram, THRESHOLD) == 0.0
    assert torch.equal(torch.tril(gram).cpu(), torch.ones(n, n, dtype=dtype).tril())
    upper = torch.ones(n, n, dtype=torch.bool).triu(1)
    torch.testing.assert_close(buffer.cpu()[0], buffer_before.cpu()[0], equal_nan=True)  # padding row intact
    assert torch.isnan(gram.cpu()[upper]).all()


def rbf_degenerate(impl: str, dtype: torch.dtype, device="cpu") -> str:
    """More than half of the n^2 distances are zero but not all: the bandwidth is undefined."""
    x = torch.tensor([[1.0, 2.0, 0.0]] * 4 + [[3.0, 0.0, 1.0]], dtype=torch.float64)
    gram, _ = embed_lower(x @ x.T, dtype, strided=False, device=device)
    with pytest.raises(ValueError, match=MEDIAN_ZERO) as info:
        run_rbf(impl, gram, THRESHOLD)
    return str(info.value)


def rbf_argument_errors(impl: str, device="cpu") -> list[str]:
    messages = []
    one, _ = embed_lower(torch.ones(1, 1, dtype=torch.float64), torch.float64, strided=False, device=device)
    with pytest.raises(ValueError, match="at least 2 samples, got 1") as info:
        run_rbf(impl, one, THRESHOLD)
    messages.append(str(info.value))
    two, _ = embed_lower(torch.eye(2, dtype=torch.float64), torch.float64, strided=False, device=device)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="threshold must be > 0") as info:
            run_rbf(impl, two, bad)
        messages.append(str(info.value))
    return messages


# --------------------------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("n", SIZES)
def test_gram_hsic_terms_cpu(n, layout, dtype, threads):
    grams_a, grams_b = gram_case(n, layout, dtype)
    check_terms(run_gram_hsic("cpu", grams_a, grams_b, threads), grams_a, grams_b, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("n", SIZES)
def test_gram_hsic_terms_reference(n, layout, dtype):
    grams_a, grams_b = gram_case(n, layout, dtype)
    check_terms(run_gram_hsic("reference", grams_a, grams_b), grams_a, grams_b, dtype)


def test_gram_hsic_terms_cpu_matches_reference_closely():
    # Both accumulate in float64, so even on float32 inputs they agree to float64 round-off.
    grams_a, grams_b = gram_case(129, (3, 3), torch.float32)
    cpu, ref = run_gram_hsic("cpu", grams_a, grams_b, 2), run_gram_hsic("reference", grams_a, grams_b)
    for key in KEYS:
        np.testing.assert_allclose(cpu[key], ref[key].numpy(), rtol=1e-10, atol=1e-9, err_msg=key)


@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_gram_hsic_terms_argument_errors(impl):
    good = make_grams(2, 4, torch.float64, 0)
    with pytest.raises(ValueError, match="grams_a: expected at least one Gram matrix"):
        run_gram_hsic(impl, [], None)
    with pytest.raises(TypeError, match=r"grams_a\[0\]: expected float32 or float64"):
        run_gram_hsic(impl, [torch.zeros(4, 4, dtype=torch.int32)], None)
    with pytest.raises(ValueError, match=r"grams_a\[1\]: expected a square 2-D matrix"):
        run_gram_hsic(impl, [good[0], good[1][:, :3]], None)
    with pytest.raises(ValueError, match=r"grams_b\[0\]: expected 4 x 4, got 3 x 3"):
        run_gram_hsic(impl, good, [good[0][:3, :3]])
    with pytest.raises(TypeError, match=r"grams_b\[1\]: all Gram matrices must share one dtype"):
        run_gram_hsic(impl, good, [good[0], good[1].to(torch.float32)])
    with pytest.raises(ValueError, match=r"grams_a\[0\]: rows must be contiguous"):
        run_gram_hsic(impl, [good[0].mT], None)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("n", "kind"), RBF_CASES)
def test_rbf_cpu(n, kind, dtype, strided, threads):
    rbf_roundtrip("cpu", n, kind, dtype, strided, threads=threads)


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("n", "kind"), RBF_CASES)
def test_rbf_reference(n, kind, dtype, strided):
    rbf_roundtrip("reference", n, kind, dtype, strided)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", ["cpu", "reference"])
def test_rbf_constant_gives_ones(impl, dtype):
    rbf_constant(impl, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rbf_degenerate_median_raises_same_error(dtype):
    assert rbf_degenerate("cpu", dtype) == rbf_degenerate("reference", dtype)


def test_rbf_argument_errors_match():
    assert rbf_argument_errors("cpu") == rbf_argument_errors("reference")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    ("threads", "widths"),
    [(1, [40, 9, 23, 5]), (2, [40, 9, 23, 5, 31]), (3, [17, 17, 17]), (2, [60, 3])],
    ids=["one-thread", "two-threads", "three-threads", "one-wide-layer"],
)
def test_linear_grams_match_one_layer_at_a_time(dtype, threads, widths):
    """Several layers at once (one BLAS thread each, own buffers) or one at a time ("one-wide-layer": no
    balanced split): the same bits as linear_gram layer by layer."""
    from pyprune.ops.gram import linear_gram, linear_grams

    gen = torch.Generator().manual_seed(len(widths) * 10 + threads)
    layers = [torch.randn(37, p, generator=gen, dtype=torch.float64).to(dtype) for p in widths]
    out = torch.full((len(layers), 37, 37), float("nan"), dtype=dtype)
    buffers = {}

    def prepare(k, buffer):
        buffers.setdefault(buffer.data_ptr(), set()).add(k)
        assert buffer.dtype == dtype
        assert buffer.numel() >= layers[k].numel()
        return torch.mul(layers[k], 2, out=buffer[: layers[k].numel()].view(layers[k].shape))

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        linear_grams(layers, prepare, out)
    finally:
        torch.set_num_threads(previous)
    assert sorted(k for ks in buffers.values() for k in ks) == list(range(len(layers)))
    for k, x in enumerate(layers):
        want = linear_gram(2 * x).tril()
        torch.testing.assert_close(out[k].tril(), want, rtol=0, atol=0)
