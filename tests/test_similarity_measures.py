"""Procrustes, mutual k-NN, CKNNA, RSA and linear-regression fit against independent float64 references.

The references below are written from the papers' definitions with NumPy/SciPy (explicit rotations, explicit
n x n masks and centring matrices, ``scipy.stats``), sharing no code path with pyprune.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import pdist

import pyprune
from pyprune.similarity.rsa import average_ranks

# ---- references ------------------------------------------------------------------------------------------


def ref_whiten(xc: np.ndarray, alpha: float) -> np.ndarray:
    """netrep.utils.whiten(preserve_variance=True), written out."""
    if alpha > 1 - 1e-7:
        return xc
    lam, v = np.linalg.eigh(xc.T @ xc)
    lam = np.maximum(lam, 1e-7)
    d = alpha + (1 - alpha) / np.sqrt(lam)
    new_var = np.sum(alpha**2 * lam + 2 * alpha * (1 - alpha) * np.sqrt(lam) + (1 - alpha) ** 2)
    d = d * np.sqrt(lam.sum() / new_var)
    return xc @ (v * d) @ v.T


def ref_procrustes(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> tuple[float, float]:
    """(angle, euclidean distance) after the explicit optimal rotation of zero-padded, centred sides."""
    xc = ref_whiten(x - x.mean(0), alpha)
    yc = ref_whiten(y - y.mean(0), alpha)
    p = max(xc.shape[1], yc.shape[1])
    xc = np.pad(xc, ((0, 0), (0, p - xc.shape[1])))
    yc = np.pad(yc, ((0, 0), (0, p - yc.shape[1])))
    u, _, vt = np.linalg.svd(xc.T @ yc)
    aligned = xc @ u @ vt
    cosine = np.sum(aligned * yc) / (np.linalg.norm(xc) * np.linalg.norm(yc))
    return float(np.arccos(np.clip(cosine, -1, 1))), float(np.linalg.norm(aligned - yc))


def ref_neighbours(x: np.ndarray, k: int, exclude_self: bool = True) -> list[set[int]]:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    out = []
    for i in range(len(x)):
        row = sims[i].copy()
        if exclude_self:
            row[i] = -np.inf
        out.append(set(np.argsort(-row, kind="stable")[:k].tolist()))
    return out


def ref_mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    nx, ny = ref_neighbours(x, k), ref_neighbours(y, k)
    return float(np.mean([len(a & b) / k for a, b in zip(nx, ny, strict=True)]))


def ref_cknna(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Huh et al. 2024, eq. 12-14, with Song et al.'s HSIC_1 as written in the platonic-rep code."""
    n = len(x)
    ux = x / np.linalg.norm(x, axis=1, keepdims=True)
    uy = y / np.linalg.norm(y, axis=1, keepdims=True)
    kx, ly = ux @ ux.T, uy @ uy.T

    def mask(neigh: list[set[int]]) -> np.ndarray:
        m = np.zeros((n, n))
        for i, js in enumerate(neigh):
            m[i, list(js)] = 1
        return m

    def hsic1(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.copy(), b.copy()
        np.fill_diagonal(a, 0)
        np.fill_diagonal(b, 0)
        value = np.sum(a * b.T) + a.sum() * b.sum() / ((n - 1) * (n - 2)) - 2 * np.sum(a @ b) / (n - 2)
        return value / (n * (n - 3))

    mx, my = mask(ref_neighbours(x, k)), mask(ref_neighbours(y, k))
    both = mx * my
    return hsic1(both * kx, both * ly) / math.sqrt(hsic1(mx * kx, mx * kx) * hsic1(my * ly, my * ly))


def ref_regression_r2(x: np.ndarray, y: np.ndarray) -> float:
    design = np.hstack([y, np.ones((len(y), 1))])
    coef, *_ = np.linalg.lstsq(design, x, rcond=None)
    residual = x - design @ coef
    return float(1 - np.sum(residual**2) / np.sum((x - x.mean(0)) ** 2))


# ---- tests -----------------------------------------------------------------------------------------------


def _pair(seed: int, n: int, p1: int, p2: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p1)) + rng.uniform(-2, 2, size=p1)
    y = x @ rng.standard_normal((p1, p2)) + noise * rng.standard_normal((n, p2))
    return x, y


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(3, 30),
    p1=st.integers(1, 12),
    p2=st.integers(1, 40),
    alpha=st.sampled_from([1.0, 0.5, 0.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_procrustes_matches_explicit_rotation(n, p1, p2, alpha, seed):
    x, y = _pair(seed, n, p1, p2)
    angle, euclidean = ref_procrustes(x, y, alpha)
    assert pyprune.procrustes_distance(x, y, alpha=alpha) == pytest.approx(angle, abs=1e-7)
    assert pyprune.procrustes_similarity(x, y, alpha=alpha) == pytest.approx(math.cos(angle), abs=1e-9)
    got = pyprune.procrustes_distance(x, y, score="euclidean", alpha=alpha)
    assert got == pytest.approx(euclidean, rel=1e-7, abs=1e-7 * np.linalg.norm(x - x.mean(0)))


def test_procrustes_invariances_and_normalized_distance():
    x, y = _pair(0, 60, 8, 8)
    q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((8, 8)))
    assert pyprune.procrustes_distance(x, 3 * x @ q + 5) == pytest.approx(0.0, abs=1e-6)
    similarity = pyprune.procrustes_similarity(x, y)
    expected = math.sqrt(2 - 2 * similarity)
    assert pyprune.procrustes_distance(x, y, score="euclidean", normalize=True) == pytest.approx(expected)
    assert pyprune.procrustes_similarity(x, np.ones_like(y)) == 0.0


def test_procrustes_full_whitening_is_mean_canonical_correlation():
    x, y = _pair(2, 200, 6, 6)
    # Canonical correlations from QR bases of the centred columns (Bjorck & Golub).
    qx, _ = np.linalg.qr(x - x.mean(0))
    qy, _ = np.linalg.qr(y - y.mean(0))
    rho = np.linalg.svd(qx.T @ qy, compute_uv=False)
    assert pyprune.procrustes_similarity(x, y, alpha=0.0) == pytest.approx(rho.mean(), rel=1e-6)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(6, 40), k=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_mutual_knn_matches_reference(n, k, seed):
    x, y = _pair(seed, n, 5, 7)
    assert pyprune.mutual_knn(x, y, k=k) == pytest.approx(ref_mutual_knn(x, y, k), abs=1e-12)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(6, 40), k=st.integers(2, 5), seed=st.integers(0, 2**31 - 1))
def test_cknna_matches_reference(n, k, seed):
    x, y = _pair(seed, n, 5, 7, noise=0.3)
    expected = ref_cknna(x, y, k)
    assert pyprune.cknna(x, y, k=k) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_knn_measures_identical_inputs_and_biased_variant():
    x, _ = _pair(3, 50, 6, 6)
    assert pyprune.mutual_knn(x, 2 * x, k=5) == 1.0
    assert pyprune.cknna(x, 2 * x, k=5) == pytest.approx(1.0, rel=1e-12)
    assert pyprune.cknna(x, 2 * x, k=5, unbiased=False) == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("metric", ["correlation", "euclidean"])
@pytest.mark.parametrize("compare", ["spearman", "pearson"])
def test_rsa_matches_scipy(metric, compare):
    x, y = _pair(4, 40, 6, 9)
    dx, dy = pdist(x, metric), pdist(y, metric)
    corr = stats.spearmanr if compare == "spearman" else stats.pearsonr
    expected = corr(dx, dy)[0]
    assert pyprune.rsa(x, y, metric=metric, compare=compare) == pytest.approx(expected, rel=1e-10)
    rdm = pyprune.rdm(x, metric=metric).numpy()
    upper = rdm[np.triu_indices(40, 1)]
    np.testing.assert_allclose(upper, dx, rtol=1e-10, atol=1e-12)


def test_average_ranks_handle_ties_like_scipy():
    values = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 3.0, 0.5], dtype=torch.float64)
    np.testing.assert_array_equal(average_ranks(values).numpy(), stats.rankdata(values.numpy()))


def test_rsa_tied_distances_and_constant_layer():
    x = np.repeat(np.eye(4) * 2, 3, axis=0)  # many coincident samples: heavy ties in the RDM
    y = x + np.random.default_rng(0).standard_normal(x.shape) * 0.1
    expected = stats.spearmanr(pdist(x, "euclidean"), pdist(y, "euclidean"))[0]
    assert pyprune.rsa(x, y, metric="euclidean") == pytest.approx(expected, rel=1e-10)
    assert pyprune.rsa(x, np.ones_like(y), metric="euclidean") == 0.0


@settings(max_examples=15, deadline=None)
@given(n=st.integers(8, 40), p1=st.integers(1, 30), p2=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_regression_r2_matches_least_squares(n, p1, p2, seed):
    x, y = _pair(seed, n, p1, p2)
    assert pyprune.linear_regression_r2(x, y) == pytest.approx(ref_regression_r2(x, y), abs=1e-9)


def test_regression_r2_is_one_when_x_is_linear_in_y_and_asymmetric():
    x, y = _pair(5, 100, 3, 10, noise=1.0)
    assert pyprune.linear_regression_r2(x @ np.ones((3, 2)), x) == pytest.approx(1.0, rel=1e-12)
    assert pyprune.linear_regression_r2(x, y) != pytest.approx(pyprune.linear_regression_r2(y, x))


MEASURES = {
    "procrustes_similarity": pyprune.procrustes_similarity,
    "procrustes_distance": pyprune.procrustes_distance,
    "mutual_knn": lambda x, y, **kw: pyprune.mutual_knn(x, y, k=3, **kw),
    "cknna": lambda x, y, **kw: pyprune.cknna(x, y, k=3, **kw),
    "rsa": pyprune.rsa,
    "linear_regression_r2": pyprune.linear_regression_r2,
}


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_same_input_handling_as_existing_measures(name):
    fn = MEASURES[name]
    x, y = _pair(6, 30, 4, 5)
    expected = fn(x, y)
    assert fn(torch.from_numpy(x).float(), torch.from_numpy(y)) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    conv_x = torch.from_numpy(x).reshape(30, 4, 1, 1)
    assert fn(conv_x, y) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert fn(conv_x, torch.from_numpy(y).reshape(30, 5, 1, 1), flatten="channel") == pytest.approx(
        expected, rel=1e-12, abs=1e-12
    )
    with pytest.raises(ValueError, match="same number of samples"):
        fn(x, y[:-1])
    with pytest.raises(ValueError, match="x: contains NaN"):
        fn(np.where(np.arange(30)[:, None] == 0, np.nan, x), y)
    with pytest.raises(TypeError, match=r"y: expected a torch\.Tensor"):
        fn(x, y.tolist())
    with pytest.raises(ValueError, match="flatten"):
        fn(x, y, flatten="pixels")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x, y: pyprune.procrustes_distance(x, y, score="cosine"), ValueError, "score"),
        (lambda x, y: pyprune.procrustes_similarity(x, y, alpha=1.5), ValueError, "alpha"),
        (lambda x, y: pyprune.mutual_knn(x, y, k=0), ValueError, "k: expected an integer"),
        (lambda x, y: pyprune.mutual_knn(x, y, k=30), ValueError, "k: expected an integer"),
        (lambda x, y: pyprune.cknna(x, y, k=1), ValueError, "k: expected an integer in \\[2"),
        (lambda x, y: pyprune.mutual_knn(x, y, normalize="yes"), TypeError, "normalize"),
        (lambda x, y: pyprune.rsa(x, y, metric="cosine"), ValueError, "metric"),
        (lambda x, y: pyprune.rsa(x, y, compare="kendall"), ValueError, "compare"),
        (lambda x, y: pyprune.rsa(x[:2], y[:2]), ValueError, "at least 3 samples"),
        (lambda x, y: pyprune.rsa(np.ones_like(x), y), ValueError, "x: sample"),
        (
            lambda x, y: pyprune.linear_regression_r2(x, np.hstack([y] * 8)),
            ValueError,
            "y: the regression needs more",
        ),
    ],
)
def test_bad_arguments_name_the_argument(call, error, match):
    x, y = _pair(7, 30, 4, 5)
    with pytest.raises(error, match=match):
        call(x, y)
