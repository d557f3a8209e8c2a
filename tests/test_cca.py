"""CCA, mean CCA, R²_CCA, SVCCA and PWCCA: golden values, designed correlations, invariances, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyprune.similarity.cca import cca, mean_cca, pwcca, r2_cca, svcca, svd_reduce

# Canonical correlations of the data of Google's CKA demo notebook (Kornblith et al. 2019), features centred.
GOLDEN_RHO = [0.88511, 0.86196, 0.83330, 0.76440, 0.74508, 0.72447, 0.67903, 0.66504, 0.60937, 0.54237]
GOLDEN_MEAN_CCA = 0.731014
GOLDEN_R2_CCA = 0.545396
GOLDEN_PWCCA = 0.734668


@pytest.fixture(scope="module")
def demo() -> tuple[np.ndarray, np.ndarray]:
    # np.random.seed(1337); X = randn(100, 10); Y = randn(100, 10) + X: the same legacy stream.
    rs = np.random.RandomState(1337)
    x = rs.randn(100, 10)
    return x, rs.randn(100, 10) + x


def designed_pair(rho: list[float], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``X``, ``Y`` whose canonical correlations are exactly ``rho``, hidden behind random invertible maps."""
    rng = np.random.default_rng(seed)
    m = len(rho)
    g = rng.standard_normal((n, 2 * m))
    q, _ = np.linalg.qr(g - g.mean(axis=0))  # orthonormal columns, all orthogonal to the ones vector
    r = np.asarray(rho)
    x = q[:, :m]
    y = q[:, :m] * r + q[:, m:] * np.sqrt(1 - r**2)
    mix_x = rng.standard_normal((m, m)) + 3 * np.eye(m)
    mix_y = rng.standard_normal((m, m)) + 3 * np.eye(m)
    return x @ mix_x + rng.standard_normal(m), y @ mix_y - 5.0


def google_mean(rho: np.ndarray, threshold: float) -> float:
    """``google/svcca``'s ``get_cca_similarity(...)["mean"]`` from its ``sum_threshold`` loop."""
    for i in range(len(rho)):
        if np.sum(rho[:i]) / np.sum(rho) >= threshold:
            return float(np.mean(rho[:i]))
    return float(np.mean(rho))


def test_golden_canonical_correlations(demo):
    rho = cca(*demo)
    assert rho.dtype == torch.float64
    assert rho.shape == (10,)
    np.testing.assert_allclose(rho.numpy(), GOLDEN_RHO, atol=1e-5)


def test_golden_summaries(demo):
    assert mean_cca(*demo) == pytest.approx(GOLDEN_MEAN_CCA, abs=1e-5)
    assert r2_cca(*demo) == pytest.approx(GOLDEN_R2_CCA, abs=1e-5)
    assert pwcca(*demo) == pytest.approx(GOLDEN_PWCCA, abs=1e-5)
    assert isinstance(mean_cca(*demo), float)


def test_pwcca_weights_come_from_the_first_argument(demo):
    x, y = demo
    assert abs(pwcca(x, y) - pwcca(y, x)) > 1e-4


def test_designed_correlations_are_recovered():
    rho = [0.95, 0.8, 0.5, 0.3, 0.05, 0.0]
    x, y = designed_pair(rho, n=60, seed=0)
    np.testing.assert_allclose(cca(x, y).numpy(), rho, atol=1e-12)
    assert r2_cca(x, y) == pytest.approx(np.mean(np.square(rho)), abs=1e-12)


@pytest.mark.parametrize("truncate", [0.5, 0.9, 0.98, 0.999, 1.0])
def test_truncated_mean_matches_google_sum_threshold(truncate):
    rho = np.array([0.9, 0.5, 0.1, 0.01, 0.001])
    x, y = designed_pair(list(rho), n=40, seed=1)
    assert mean_cca(x, y, truncate=truncate) == pytest.approx(google_mean(rho, truncate), abs=1e-12)


def test_truncation_drops_trailing_correlations():
    x, y = designed_pair([0.9, 0.5, 0.1, 0.01, 0.001], n=40, seed=1)
    # 0.9 + 0.5 + 0.1 is the shortest prefix holding 98% of the sum.
    assert mean_cca(x, y, truncate=0.98) == pytest.approx(0.5, abs=1e-12)
    assert mean_cca(x, y) == pytest.approx(1.511 / 5, abs=1e-12)


def test_invariant_to_invertible_linear_maps(demo):
    x, y = demo
    rng = np.random.default_rng(2)
    a = rng.standard_normal((10, 10)) + 4 * np.eye(10)
    b = rng.standard_normal((10, 10)) * np.logspace(-3, 3, 10)  # badly scaled neurons are still neurons
    np.testing.assert_allclose(cca(x @ a + 7.0, y @ b).numpy(), cca(x, y).numpy(), atol=1e-10)


def test_invariant_to_permutations(demo):
    x, y = demo
    rng = np.random.default_rng(3)
    features_x, features_y, samples = rng.permutation(10), rng.permutation(10), rng.permutation(100)
    xp, yp = x[samples][:, features_x], y[samples][:, features_y]
    np.testing.assert_allclose(cca(xp, yp).numpy(), cca(x, y).numpy(), atol=1e-12)
    assert pwcca(xp, yp) == pytest.approx(pwcca(x, y), abs=1e-12)


def test_symmetric_in_its_arguments(demo):
    x, y = demo
    np.testing.assert_allclose(cca(y, x).numpy(), cca(x, y).numpy(), atol=1e-12)


def test_identical_inputs_score_one(demo):
    x, _ = demo
    assert mean_cca(x, x) == pytest.approx(1.0, abs=1e-12)
    assert r2_cca(x, x) == pytest.approx(1.0, abs=1e-12)
    assert pwcca(x, x) == pytest.approx(1.0, abs=1e-12)
    assert svcca(x, x) == pytest.approx(1.0, abs=1e-12)


def test_canonical_variates(demo):
    rho, hx, hy = cca(*demo, return_variates=True)
    eye = torch.eye(10, dtype=torch.float64)
    torch.testing.assert_close(hx.T @ hx, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(hy.T @ hy, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(hx.T @ hy, torch.diag(rho), atol=1e-12, rtol=0)
    torch.testing.assert_close(hx.sum(dim=0), torch.zeros(10, dtype=torch.float64), atol=1e-12, rtol=0)
    # hx lies in the column space of the centred x.
    x = torch.from_numpy(demo[0])
    xc = x - x.mean(dim=0)
    coefficients = torch.linalg.lstsq(xc, hx).solution
    torch.testing.assert_close(xc @ coefficients, hx, atol=1e-12, rtol=0)


def test_rank_deficient_input_gives_rank_many_correlations(demo):
    x, y = demo
    rng = np.random.default_rng(4)
    deficient = np.hstack([x, x[:, :3], x[:, :4] @ rng.standard_normal((4, 5))])  # rank 10 of 18 columns
    rho = cca(deficient, y)
    assert not bool(torch.isnan(rho).any())
    np.testing.assert_allclose(rho.numpy(), cca(x, y).numpy(), atol=1e-10)
    assert 0 < pwcca(deficient, y) <= 1


def test_constant_columns_are_dropped(demo):
    x, y = demo
    padded = np.hstack([np.full((100, 3), 0.1), x, np.full((100, 1), -2.5)])
    np.testing.assert_allclose(cca(padded, y).numpy(), cca(x, y).numpy(), atol=1e-12)
    assert pwcca(padded, y) == pytest.approx(pwcca(x, y), abs=1e-12)
    # Constant columns do not count towards the samples-vs-features limit either.
    small = np.hstack([x[:12, :8], np.zeros((12, 6))])
    assert cca(small, y[:12, :3]).shape == (3,)


@pytest.mark.parametrize("constant_side", ["x", "y"])
def test_constant_side_has_no_correlations(demo, constant_side):
    x, y = demo
    constant = np.full((100, 4), 0.3)
    pair = (constant, y) if constant_side == "x" else (x, constant)
    rho, hx, hy = cca(*pair, return_variates=True)
    assert rho.shape == (0,)
    assert hx.shape == hy.shape == (100, 0)
    assert mean_cca(*pair) == 0.0
    assert mean_cca(*pair, truncate=0.98) == 0.0
    assert r2_cca(*pair) == 0.0
    assert pwcca(*pair) == 0.0
    assert svcca(*pair) == 0.0


def test_channel_flattening(demo):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 3, 4, 5))
    y = rng.standard_normal((6, 2, 4, 5)) + x[:, :2]
    x2 = np.moveaxis(x, 1, -1).reshape(-1, 3)
    y2 = np.moveaxis(y, 1, -1).reshape(-1, 2)
    np.testing.assert_allclose(cca(x, y, flatten="channel").numpy(), cca(x2, y2).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="svcca"):
        cca(x, y)  # "example" flattening: 6 samples of 60 features


def test_input_types_agree(demo):
    x, y = demo
    expected = cca(x, y)
    got64 = cca(torch.from_numpy(x), torch.from_numpy(y))
    got32 = cca(torch.from_numpy(x).float(), y.astype(np.float32))
    assert got64.dtype == got32.dtype == torch.float64
    torch.testing.assert_close(got64, expected, atol=1e-12, rtol=0)
    # Float32 inputs are rounded once, then everything runs in float64.
    torch.testing.assert_close(got32, expected, atol=1e-6, rtol=0)


ALL = [cca, mean_cca, r2_cca, pwcca, svcca]
NEEDS_SAMPLES = [cca, mean_cca, r2_cca, pwcca]


@pytest.mark.parametrize("fn", ALL)
def test_integer_input_is_a_type_error(demo, fn):
    x, y = demo
    with pytest.raises(TypeError, match="x: expected a floating-point dtype"):
        fn(x.astype(np.int64), y)
    with pytest.raises(TypeError, match="y"):
        fn(x, [[1.0] * 10] * 100)


@pytest.mark.parametrize("fn", ALL)
def test_bad_values_and_shapes_are_value_errors(demo, fn):
    x, y = demo
    with pytest.raises(ValueError, match="x: expected activations shaped"):
        fn(x[:, 0], y)
    bad = y.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="y: contains NaN or Inf"):
        fn(x, bad)
    bad[3, 4] = np.inf
    with pytest.raises(ValueError, match="y: contains NaN or Inf"):
        fn(x, bad)
    with pytest.raises(ValueError, match="same number of samples"):
        fn(x, y[:99])


@pytest.mark.parametrize("fn", NEEDS_SAMPLES)
@pytest.mark.parametrize(("n", "p"), [(10, 10), (10, 25)])
def test_too_few_samples_points_to_svcca(fn, n, p):
    rng = np.random.default_rng(6)
    with pytest.raises(ValueError, match=r"x: CCA needs more samples than features.*svcca"):
        fn(rng.standard_normal((n, p)), rng.standard_normal((n, 2)))
    with pytest.raises(ValueError, match=r"y: CCA needs more samples than features.*svcca"):
        fn(rng.standard_normal((n, 2)), rng.standard_normal((n, p)))


def test_svcca_accepts_more_features_than_samples():
    rng = np.random.default_rng(7)
    latent = rng.standard_normal((40, 3))
    x = latent @ rng.standard_normal((3, 200)) + 1e-3 * rng.standard_normal((40, 200))
    y = latent @ rng.standard_normal((3, 150)) + 1e-3 * rng.standard_normal((40, 150))
    assert svcca(x, y) == pytest.approx(1.0, abs=1e-3)
    assert svd_reduce(x).shape[1] <= 3


@pytest.mark.parametrize("value", [0, -0.1, 1.5, float("nan"), "0.9", True])
def test_fractions_are_checked(demo, value):
    with pytest.raises(ValueError, match="keep"):
        svcca(*demo, keep=value)
    with pytest.raises(ValueError, match="keep"):
        svd_reduce(demo[0], keep=value)
    with pytest.raises(ValueError, match="truncate"):
        mean_cca(*demo, truncate=value)
    with pytest.raises(ValueError, match="truncate"):
        svcca(*demo, truncate=value)


def test_svd_reduce_counting_rule_on_designed_spectrum():
    rng = np.random.default_rng(8)
    s = np.array([10.0, 6.0, 3.0, 1.5, 0.7, 0.2, 0.05])
    g = rng.standard_normal((30, 7))
    u, _ = np.linalg.qr(g - g.mean(axis=0))
    v, _ = np.linalg.qr(rng.standard_normal((7, 7)))
    x = (u * s) @ v.T + 3.0  # the offset is removed by the centring inside
    fractions = np.cumsum(s**2) / np.sum(s**2)
    for keep in [0.1, 0.5, 0.9, 0.99, 0.999, 0.99999, 1.0]:
        expected = min(int(np.sum(fractions <= keep)) + 1, 7)
        reduced = svd_reduce(x, keep=keep)
        assert reduced.shape == (30, expected), keep
        np.testing.assert_allclose(torch.linalg.vector_norm(reduced, dim=0).numpy(), s[:expected], rtol=1e-12)


def test_svd_reduce_reproduces_the_seed_test():
    # pruned_layer_similarity tests/test_preprocessing.py: torch.manual_seed(0); torch.rand(50, 50) keeps 38.
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((50, 50), generator=generator)
    assert svd_reduce(x, keep=0.99).shape == (50, 38)
    assert svd_reduce(x, keep=0.75).shape[1] < 38


def test_svd_reduce_keep_one_is_an_isometry_capped_at_the_rank():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((20, 4)) @ rng.standard_normal((4, 9))  # rank 4
    reduced = svd_reduce(x, keep=1.0)
    assert reduced.shape == (20, 4)
    xc = torch.from_numpy(x - x.mean(axis=0))
    torch.testing.assert_close(reduced @ reduced.T, xc @ xc.T, atol=1e-10, rtol=0)
    assert svd_reduce(np.ones((5, 3))).shape == (5, 0)


def test_svcca_is_mean_cca_of_the_reduced_inputs(demo):
    x, y = demo
    rng = np.random.default_rng(10)
    x = np.hstack([x, x @ rng.standard_normal((10, 5)) * 1e-2])
    for keep in (0.5, 0.9, 0.99):
        expected = mean_cca(svd_reduce(x, keep), svd_reduce(y, keep), truncate=0.98)
        assert svcca(x, y, keep=keep, truncate=0.98) == pytest.approx(expected, abs=1e-12)
    assert svcca(*demo, keep=1.0) == pytest.approx(mean_cca(*demo), abs=1e-12)


shapes = st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(0, 20), st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_property_correlations_are_sorted_cosines(shape):
    px, py, extra, seed = shape
    rng = np.random.default_rng(seed)
    n = max(px, py) + 1 + extra
    x = rng.standard_normal((n, px))
    y = rng.standard_normal((n, py)) + x[:, :1]
    rho = cca(x, y)
    assert rho.shape == (min(px, py),)
    assert bool((rho >= 0).all())
    assert bool((rho <= 1).all())
    assert bool((rho[:-1] >= rho[1:]).all())
    for value in (mean_cca(x, y), r2_cca(x, y), pwcca(x, y), svcca(x, y, truncate=0.98)):
        assert 0.0 <= value <= 1.0
    a = rng.standard_normal((px, px)) + 3 * np.eye(px)
    np.testing.assert_allclose(cca(x @ a, y).numpy(), rho.numpy(), atol=1e-8)


@pytest.mark.cuda
@pytest.mark.parametrize("fn", [mean_cca, r2_cca, pwcca, svcca])
def test_cupy_inputs_on_the_gpu(demo, fn):
    cupy = pytest.importorskip("cupy")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    x, y = demo
    assert fn(cupy.asarray(x), cupy.asarray(y)) == pytest.approx(fn(x, y), abs=1e-10)
    rho = cca(cupy.asarray(x), cupy.asarray(y))
    assert rho.device.type == "cuda"
    torch.testing.assert_close(rho.cpu(), cca(x, y), atol=1e-10, rtol=0)
