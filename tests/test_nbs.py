"""Normalized Bures Similarity: golden value, closed vs kernel form, invariances, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyprune.similarity.nbs import nbs, nbs_kernel

GOLDEN_LINEAR_NBS = 0.736255  # on the data of Google's CKA demo notebook, features centred


@pytest.fixture(scope="module")
def demo() -> tuple[np.ndarray, np.ndarray]:
    # np.random.seed(1337); X = randn(100, 10); Y = randn(100, 10) + X: the same legacy stream.
    rs = np.random.RandomState(1337)
    x = rs.randn(100, 10)
    return x, rs.randn(100, 10) + x


def google_rbf(x: np.ndarray, threshold: float) -> np.ndarray:
    """``gram_rbf`` of the Google CKA demo: bandwidth from ``np.median`` of all ``n^2`` squared distances."""
    dot = x @ x.T
    norms = np.diag(dot)
    distances = norms[:, None] + norms[None, :] - 2 * dot
    return np.exp(-distances / (2 * threshold**2 * np.median(distances)))


def reference_nbs(k: np.ndarray, l_gram: np.ndarray) -> float:
    """The defining formula (Tang et al. 2020): eigh square root, eigvalsh of ``R Lbar R``, negatives clamped."""
    n = k.shape[0]
    h = np.eye(n) - 1.0 / n
    k_bar, l_bar = h @ k @ h, h @ l_gram @ h
    w, v = np.linalg.eigh(k_bar)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.clip(np.linalg.eigvalsh(root @ l_bar @ root), 0, None)
    return float(np.sum(np.sqrt(lam)) / np.sqrt(np.trace(k_bar) * np.trace(l_bar)))


def random_orthogonal(p: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((p, p)))
    return q


def test_golden_linear(demo):
    value = nbs(*demo)
    assert isinstance(value, float)
    assert value == pytest.approx(GOLDEN_LINEAR_NBS, abs=1e-5)


def test_linear_closed_form_equals_kernel_form(demo):
    x, y = demo
    assert nbs(x, y) == pytest.approx(nbs_kernel(x @ x.T, y @ y.T), abs=1e-13)


@pytest.mark.parametrize(("px", "py"), [(3, 7), (45, 12), (80, 60)])
def test_closed_form_with_more_features_than_samples(px, py):
    rng = np.random.default_rng(px)
    x = rng.standard_normal((30, px))
    y = rng.standard_normal((30, py)) + x[:, :1]
    assert nbs(x, y) == pytest.approx(nbs_kernel(x @ x.T, y @ y.T), abs=1e-12)
    assert nbs(x, y) == pytest.approx(reference_nbs(x @ x.T, y @ y.T), abs=1e-6)


def test_kernel_form_matches_the_defining_formula(demo):
    x, y = demo
    k, l_gram = google_rbf(x, 0.5), google_rbf(y, 0.8)
    # The reference takes square roots of round-off-level eigenvalues, so it is good to ~sqrt(eps) only.
    assert nbs_kernel(k, l_gram) == pytest.approx(reference_nbs(k, l_gram), abs=1e-6)


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8, 2.0])
def test_rbf_matches_google_gram(demo, threshold):
    x, y = demo
    expected = nbs_kernel(google_rbf(x, threshold), google_rbf(y, threshold))
    assert nbs(x, y, kernel="rbf", threshold=threshold) == pytest.approx(expected, abs=1e-9)


def test_rbf_bandwidth_is_the_numpy_median_of_all_entries():
    # Points at 0, 1, 3, 10: 16 squared distances, 4 zeros then pairs 1, 4, 9, 49, 81, 100; NumPy's median is
    # (4 + 9) / 2 where the lower median would be 4 and the off-diagonal median 29.
    x = np.array([[0.0], [1.0], [3.0], [10.0]])
    y = np.array([[0.0], [2.0], [2.5], [4.0]])
    expected = reference_nbs(google_rbf(x, 0.5), google_rbf(y, 0.5))
    assert nbs(x, y, kernel="rbf") == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_identical_inputs_score_one(demo, kernel):
    x, _ = demo
    assert nbs(x, x, kernel=kernel) == pytest.approx(1.0, abs=1e-12)


def test_identical_kernels_score_one(demo):
    k = google_rbf(demo[0], 0.5)
    assert nbs_kernel(k, k) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_invariances(demo, kernel):
    x, y = demo
    base = nbs(x, y, kernel=kernel)
    assert nbs(y, x, kernel=kernel) == pytest.approx(base, abs=1e-12)
    assert nbs(x @ random_orthogonal(10, 0), y, kernel=kernel) == pytest.approx(base, abs=1e-12)
    assert nbs(x, y @ random_orthogonal(10, 1), kernel=kernel) == pytest.approx(base, abs=1e-12)
    assert nbs(3.7 * x, 0.01 * y, kernel=kernel) == pytest.approx(base, abs=1e-12)
    assert nbs(x + 5.0, y - np.arange(10), kernel=kernel) == pytest.approx(base, abs=1e-12)
    samples = np.random.default_rng(2).permutation(100)
    assert nbs(x[samples], y[samples], kernel=kernel) == pytest.approx(base, abs=1e-12)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_not_invariant_to_general_invertible_maps(demo, kernel):
    x, y = demo
    stretch = np.diag(np.logspace(-2, 2, 10)) @ random_orthogonal(10, 3)
    assert abs(nbs(x @ stretch, y, kernel=kernel) - nbs(x, y, kernel=kernel)) > 1e-2


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_constant_representation_scores_zero(demo, kernel):
    x, _ = demo
    assert nbs(x, np.full((100, 4), 0.1), kernel=kernel) == 0.0
    assert nbs(np.full((100, 3), -2.0), x, kernel=kernel) == 0.0


@pytest.mark.parametrize("value", [1.0, 0.1, 1 / 3, 7.7, 1e5])
@pytest.mark.parametrize("n", [7, 100])
def test_constant_kernel_scores_zero(value, n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 3))
    assert nbs_kernel(x @ x.T, np.full((n, n), value)) == 0.0
    assert nbs_kernel(np.full((n, n), value), x @ x.T) == 0.0


def test_kernel_inputs_of_any_supported_type(demo):
    x, y = demo
    expected = nbs_kernel(x @ x.T, y @ y.T)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    assert nbs_kernel(xt @ xt.T, yt @ yt.T) == pytest.approx(expected, abs=1e-13)
    # float32 Grams from a float32 matmul are symmetric only to float32 round-off, which is accepted.
    x32, y32 = xt.float(), yt.float()
    assert nbs_kernel(x32 @ x32.T, y32 @ y32.T) == pytest.approx(expected, abs=1e-5)
    assert nbs(x32, y32) == pytest.approx(nbs(x, y), abs=1e-6)


def test_channel_flattening():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3, 2, 4))
    y = rng.standard_normal((5, 6, 2, 4))
    x2 = np.moveaxis(x, 1, -1).reshape(-1, 3)
    y2 = np.moveaxis(y, 1, -1).reshape(-1, 6)
    for kernel in ("linear", "rbf"):
        assert nbs(x, y, kernel=kernel, flatten="channel") == pytest.approx(
            nbs(x2, y2, kernel=kernel), abs=1e-12
        )
        assert nbs(x, y, kernel=kernel) == pytest.approx(
            nbs(x.reshape(5, -1), y.reshape(5, -1), kernel=kernel), abs=1e-12
        )


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_bad_representations(demo, kernel):
    x, y = demo
    with pytest.raises(TypeError, match="x: expected a floating-point dtype"):
        nbs(x.astype(np.int32), y, kernel=kernel)
    with pytest.raises(ValueError, match="y: expected activations shaped"):
        nbs(x, y[:, 0], kernel=kernel)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        nbs(bad, y, kernel=kernel)
    with pytest.raises(ValueError, match="same number of samples"):
        nbs(x[:50], y, kernel=kernel)


@pytest.mark.parametrize("threshold", [0, -0.5, float("nan"), float("inf"), "0.5"])
def test_bad_threshold(demo, threshold):
    with pytest.raises(ValueError, match="threshold"):
        nbs(*demo, kernel="rbf", threshold=threshold)


def test_bad_kernel_name(demo):
    with pytest.raises(ValueError, match="kernel: expected one of"):
        nbs(*demo, kernel="cosine")


def test_rbf_with_mostly_coinciding_samples_is_refused():
    x = np.vstack([np.zeros((9, 2)), np.ones((1, 2))])  # 82 of 100 squared distances are 0
    y = np.random.default_rng(5).standard_normal((10, 2))
    with pytest.raises(ValueError, match="x: the RBF bandwidth is undefined"):
        nbs(x, y, kernel="rbf")
    assert 0.0 < nbs(x, y) <= 1.0


def test_bad_kernels(demo):
    x, y = demo
    k, l_gram = x @ x.T, y @ y.T
    with pytest.raises(ValueError, match=r"K: expected a square \(n, n\) kernel matrix"):
        nbs_kernel(k[:, :50], l_gram)
    with pytest.raises(ValueError, match=r"L: expected a square \(n, n\) kernel matrix"):
        nbs_kernel(k, l_gram[0])
    with pytest.raises(ValueError, match=r"K: expected a square \(n, n\) kernel matrix"):
        nbs_kernel(np.zeros((0, 0)), np.zeros((0, 0)))
    with pytest.raises(ValueError, match="same size"):
        nbs_kernel(k, l_gram[:50, :50])
    asymmetric = k.copy()
    asymmetric[0, 1] += 1.0
    with pytest.raises(ValueError, match="K: expected a symmetric kernel matrix"):
        nbs_kernel(asymmetric, l_gram)
    infinite = l_gram.copy()
    infinite[2, 2] = np.inf
    with pytest.raises(ValueError, match="L: contains NaN or Inf"):
        nbs_kernel(k, infinite)
    with pytest.raises(TypeError, match="K: expected a floating-point dtype"):
        nbs_kernel(np.eye(100, dtype=np.int64), l_gram)
    with pytest.raises(TypeError, match=r"L: expected a torch\.Tensor"):
        nbs_kernel(k, l_gram.tolist())


def test_nearly_psd_kernel_is_accepted(demo):
    x, y = demo
    k = x @ x.T
    w, v = np.linalg.eigh(k)
    w[:5] = -1e-9 * w[-1]  # small negative eigenvalues, as from an approximate kernel
    value = nbs_kernel((v * w) @ v.T, y @ y.T)
    assert value == pytest.approx(nbs(x, y), abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 25), st.integers(1, 40), st.integers(1, 40), st.floats(0.1, 2.0), st.integers(0, 2**32 - 1)
)
def test_property_bounded_and_forms_agree(n, px, py, threshold, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, px))
    y = rng.standard_normal((n, py)) + rng.standard_normal() * x[:, :1]
    linear = nbs(x, y)
    assert 0.0 <= linear <= 1.0 + 1e-12
    assert linear == pytest.approx(nbs_kernel(x @ x.T, y @ y.T), abs=1e-12)
    rbf = nbs(x, y, kernel="rbf", threshold=threshold)
    assert 0.0 <= rbf <= 1.0 + 1e-12
    # Wide RBF kernels have eigenvalues down at round-off level, whose square roots move NBS by ~sqrt(eps):
    # two Grams equal to round-off agree only that far.
    expected = nbs_kernel(google_rbf(x, threshold), google_rbf(y, threshold))
    assert rbf == pytest.approx(expected, abs=1e-8)


@pytest.mark.cuda
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_cupy_inputs_on_the_gpu(demo, kernel):
    cupy = pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x, y = demo
    expected = nbs(x, y, kernel=kernel)
    assert nbs(cupy.asarray(x), cupy.asarray(y), kernel=kernel) == pytest.approx(expected, abs=1e-10)
    k, l_gram = cupy.asarray(x @ x.T), cupy.asarray(y @ y.T)
    assert nbs_kernel(k, l_gram) == pytest.approx(nbs(x, y), abs=1e-10)
