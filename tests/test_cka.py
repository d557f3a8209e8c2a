from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pyprune
from tests import _references as ref


@pytest.fixture
def google_demo_data():
    """The data of Google's CKA demo notebook (``representation_similarity``, Kornblith et al. 2019)."""
    rng = np.random.RandomState(1337)
    x = rng.randn(100, 10)
    y = rng.randn(100, 10) + x
    return x, y


@pytest.mark.parametrize("method", ["gram", "feature"])
def test_golden_values_linear(google_demo_data, method):
    x, y = google_demo_data
    assert pyprune.cka(x, y, method=method) == pytest.approx(0.55761, abs=5e-6)
    assert pyprune.cka(x, y, unbiased=True, method=method) == pytest.approx(0.51346, abs=5e-6)


def test_golden_value_rbf(google_demo_data):
    x, y = google_demo_data
    assert pyprune.cka(x, y, kernel="rbf", threshold=0.5) == pytest.approx(0.65483, abs=5e-6)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(4, 40),
    p1=st.integers(1, 30),
    p2=st.integers(1, 30),
    kernel=st.sampled_from(["linear", "rbf"]),
    unbiased=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_textbook_definition(n, p1, p2, kernel, unbiased, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p1)) + rng.uniform(-3, 3, size=p1)
    y = x @ rng.standard_normal((p1, p2)) + rng.standard_normal((n, p2))
    expected = ref.cka(x, y, kernel, 0.7, unbiased)
    for method in ["gram", "feature"] if kernel == "linear" else ["gram"]:
        got = pyprune.cka(x, y, kernel=kernel, threshold=0.7, unbiased=unbiased, method=method)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-11), method


def test_hsic_values_match_definition(google_demo_data):
    x, y = google_demo_data
    k, l = ref.linear_gram(x), ref.linear_gram(y)
    assert pyprune.hsic(x, y) == pytest.approx(ref.hsic_biased(k, l), rel=1e-12)
    assert pyprune.hsic(x, y, unbiased=True) == pytest.approx(ref.hsic_unbiased(k, l), rel=1e-12)


def test_invariances(google_demo_data):
    x, y = google_demo_data
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    base = pyprune.cka(x, y)
    assert pyprune.cka(x @ q, y) == pytest.approx(base, rel=1e-12)
    assert pyprune.cka(3.7 * x, y) == pytest.approx(base, rel=1e-12)
    assert pyprune.cka(x[:, rng.permutation(10)], y) == pytest.approx(base, rel=1e-12)
    assert pyprune.cka(x, x) == pytest.approx(1.0, rel=1e-12)
    assert pyprune.cka(x, x, kernel="rbf") == pytest.approx(1.0, rel=1e-12)
    # Not invariant to a generic invertible map: the check can fail.
    assert abs(pyprune.cka(x @ rng.standard_normal((10, 10)), y) - base) > 1e-3
    # RBF is invariant to orthogonal maps and translations (distances are).
    rbf = pyprune.cka(x, y, kernel="rbf")
    assert pyprune.cka(x @ q + 5.0, y, kernel="rbf") == pytest.approx(rbf, rel=1e-10)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_matrix_equals_pairwise(kernel, unbiased):
    rng = np.random.default_rng(1)
    n = 37
    xs = {f"a{i}": rng.standard_normal((n, p)) for i, p in enumerate([3, 50, 7])}
    ys = [rng.standard_normal((n, 2, 3, 3)), rng.standard_normal((n, 11))]
    matrix = pyprune.cka_matrix(xs, ys, kernel=kernel, unbiased=unbiased)
    assert matrix.shape == (3, 2)
    assert matrix.dtype == torch.float64
    for i, x in enumerate(xs.values()):
        for j, y in enumerate(ys):
            assert matrix[i, j].item() == pytest.approx(
                pyprune.cka(x, y, kernel=kernel, unbiased=unbiased), rel=1e-10
            )
    square = pyprune.cka_matrix(xs, kernel=kernel, unbiased=unbiased)
    assert torch.allclose(square, square.T)
    assert torch.allclose(square.diagonal(), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("method", ["gram", "feature"])
def test_cka_matrix_float32_close_to_float64(method):
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(300, p, generator=gen) + 2.0 for p in (5, 64, 200)]
    got = pyprune.cka_matrix(xs, method=method)
    exact = pyprune.cka_matrix([x.double() for x in xs], method=method)
    assert (got - exact).abs().max() < 1e-5


def test_reference_backend_agrees():
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(64, p, generator=gen, dtype=torch.float64) for p in (3, 90)]
    ys = [torch.randn(64, 17, generator=gen, dtype=torch.float64)]
    for kernel in ("linear", "rbf"):
        fast = pyprune.cka_matrix(xs, ys, kernel=kernel, method="gram")
        with pyprune.use_backend("reference"):
            slow = pyprune.cka_matrix(xs, ys, kernel=kernel, method="gram")
        assert torch.allclose(fast, slow, rtol=1e-12, atol=1e-14)


def test_near_constant_deep_relu_features_are_exact():
    """Features with a tiny spread around a large mean: float32 input, answer equal to float64 to 1e-4."""
    gen = torch.Generator().manual_seed(5)
    base = torch.rand(1, 400, generator=gen) * 10
    x = base + 1e-4 * torch.randn(256, 400, generator=gen)
    y = base + 1e-4 * (x - base) + 1e-4 * torch.randn(256, 400, generator=gen)
    got = pyprune.cka_matrix([x.float()], [y.float()], method="gram")
    expected = ref.cka(x.double().numpy(), y.double().numpy())
    assert not torch.isnan(got).any()
    assert got.item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_constant_layers_give_zero_not_nan(kernel, unbiased):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 4))
    for constant in (np.zeros((20, 6)), np.full((20, 6), 0.1)):
        assert pyprune.cka(x, constant, kernel=kernel, unbiased=unbiased) == 0.0
        m = pyprune.cka_matrix([x, constant], kernel=kernel, unbiased=unbiased)
        assert torch.equal(m[1], torch.zeros(2, dtype=torch.float64))


def test_nonpositive_unbiased_self_hsic_warns_and_gives_nan():
    # Four samples where the unbiased HSIC of y with itself is negative.
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array([[0.0], [0.0], [0.0], [1.0]])
    k = ref.linear_gram(y)
    assert ref.hsic_unbiased(k, k) <= 0
    with pytest.warns(RuntimeWarning, match="undefined"):
        assert math.isnan(pyprune.cka(x, y, unbiased=True))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x, y: pyprune.cka(x, y[:10]), ValueError, "same number of samples"),
        (lambda x, y: pyprune.cka(x, np.where(y > 1, np.nan, y)), ValueError, "y: contains NaN"),
        (lambda x, y: pyprune.cka(x, np.where(y > 1, np.inf, y)), ValueError, "y: contains NaN or Inf"),
        (lambda x, y: pyprune.cka(x.astype(np.int64), y), TypeError, "x: expected a floating-point dtype"),
        (lambda x, y: pyprune.cka(x[:, 0], y), ValueError, "x: expected activations shaped"),
        (lambda x, y: pyprune.cka(x[:3], y[:3], unbiased=True), ValueError, "at least 4 samples"),
        (lambda x, y: pyprune.cka(x, y, kernel="cosine"), ValueError, "kernel: expected one of"),
        (lambda x, y: pyprune.cka(x, y, kernel="rbf", threshold=0), ValueError, "threshold"),
        (lambda x, y: pyprune.cka(x, y, kernel="rbf", method="feature"), ValueError, "method"),
        (lambda x, y: pyprune.cka(x, y, flatten="pixels"), ValueError, "flatten"),
        (lambda x, y: pyprune.cka("x", y), TypeError, "x: expected a torch.Tensor"),
        (lambda x, y: pyprune.cka(x[:, :0], y), ValueError, "x: empty"),
        (lambda x, y: pyprune.cka_matrix([], [y]), ValueError, "xs: expected at least one layer"),
        (lambda x, y: pyprune.cka_matrix(x, [y]), TypeError, "xs: expected a list or dict"),
        (lambda x, y: pyprune.cka_matrix({"a": x, "b": y[:5]}), ValueError, "xs\\['a'\\] and xs\\['b'\\]"),
        (lambda x, y: pyprune.cka_matrix([x], [y[:7]]), ValueError, "same number of samples"),
    ],
)
def test_bad_input(google_demo_data, call, error, match):
    x, y = google_demo_data
    with pytest.raises(error, match=match):
        call(x, y)


def test_rbf_degenerate_median_raises():
    x = np.zeros((10, 3))
    x[0] = 1.0  # 9 identical samples: the median distance is 0 but not every distance is
    with pytest.raises(ValueError, match="median pairwise distance is 0"):
        pyprune.cka(x, np.random.default_rng(0).standard_normal((10, 2)), kernel="rbf")


def test_channel_flattening_uses_positions_as_samples():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(8, 3, 4, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(8, 6, 4, 5, generator=gen, dtype=torch.float64)
    rows_x = x.permute(0, 2, 3, 1).reshape(-1, 3)
    rows_y = y.permute(0, 2, 3, 1).reshape(-1, 6)
    assert pyprune.cka(x, y, flatten="channel") == pytest.approx(pyprune.cka(rows_x, rows_y), rel=1e-12)
    assert pyprune.cka(x, y) == pytest.approx(ref.cka(x.numpy(), y.numpy()), rel=1e-10)
