"""similarity_test and cka_matrix_test against textbook float64 recomputation on every shuffle and replicate.

The permutations and bootstrap draws are reproduced from the documented generator sequence, and each null or
replicate value is recomputed from scratch with the NumPy definitions of ``tests/_references.py`` (explicit
n x n Gram and centring matrices), so the kernel shortcut is checked against an independent path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import pdist

import pyprune
from pyprune.similarity.statistics import _permutations
from tests import _references as ref


def draws(seed: int, n: int, n_perm: int, n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n, generator=g).numpy() for _ in range(n_perm)]
    boots = torch.randint(n, (n_boot, n), generator=g).numpy()
    return np.array(perms).reshape(n_perm, n), boots


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6)) + 1.0
    y = x @ rng.standard_normal((6, 4)) + 2.0 * rng.standard_normal((40, 4))
    return x, y


@pytest.mark.parametrize(
    "options",
    [{}, {"kernel": "rbf", "threshold": 0.6}, {"unbiased": True}, {"kernel": "rbf", "unbiased": True}],
    ids=["linear", "rbf", "linear-unbiased", "rbf-unbiased"],
)
def test_cka_shortcut_matches_recomputation(pair, options):
    x, y = pair
    kernel, threshold = options.get("kernel", "linear"), options.get("threshold", 0.5)
    unbiased = options.get("unbiased", False)
    result = pyprune.similarity_test(x, y, n_permutations=30, n_bootstrap=20, seed=5, **options)
    perms, boots = draws(5, len(x), 30, 20)
    assert result.observed == pytest.approx(ref.cka(x, y, kernel, threshold, unbiased), rel=1e-10)
    null = [ref.cka(x, y[p], kernel, threshold, unbiased) for p in perms]
    np.testing.assert_allclose(result.null.numpy(), null, rtol=1e-9, atol=1e-12)
    if kernel == "linear" or unbiased:
        # Linear: exact. Unbiased: recomputed per replicate (with the replicate's own RBF bandwidth).
        boot = [ref.cka(x[i], y[i], kernel, threshold, unbiased) for i in boots]
    else:
        # The RBF shortcut keeps the full sample's bandwidth: K[i, i] of the full-sample kernel.
        k, l_gram = ref.rbf_gram(x, threshold), ref.rbf_gram(y, threshold)
        boot = [ref.hsic_biased(k[np.ix_(i, i)], l_gram[np.ix_(i, i)]) for i in boots]
        boot = [
            b / np.sqrt(ref.hsic_biased(k[np.ix_(i, i)], k[np.ix_(i, i)]) * ref.hsic_biased(lk, lk))
            for b, i, lk in zip(boot, boots, [l_gram[np.ix_(i, i)] for i in boots], strict=True)
        ]
    np.testing.assert_allclose(result.bootstrap.numpy(), boot, rtol=1e-9, atol=1e-12)
    expected_p = (1 + np.sum(np.array(null) >= result.observed - 1e-12)) / 31
    assert result.p_value == pytest.approx(expected_p)
    low, high = np.quantile(result.bootstrap.numpy(), [0.025, 0.975])
    assert result.ci == pytest.approx((low, high))


def test_generic_measure_is_recomputed_on_each_shuffle(pair):
    x, y = pair
    result = pyprune.similarity_test(x, y, "rsa", n_permutations=8, n_bootstrap=3, seed=2, metric="euclidean")
    perms, boots = draws(2, len(x), 8, 3)

    def spearman(a, b):
        return stats.spearmanr(pdist(a), pdist(b))[0]

    np.testing.assert_allclose(result.null.numpy(), [spearman(x, y[p]) for p in perms], rtol=1e-10)
    # Duplicated samples give zero distances (ties), which Spearman ranks like SciPy does.
    np.testing.assert_allclose(result.bootstrap.numpy(), [spearman(x[i], y[i]) for i in boots], rtol=1e-10)
    assert result.observed == pytest.approx(spearman(x, y), rel=1e-12)


def test_p_values_separate_dependent_from_independent_data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 8))
    dependent = pyprune.similarity_test(x, x[:, :3] + 0.5 * rng.standard_normal((120, 3)), n_permutations=199)
    assert dependent.p_value == pytest.approx(1 / 200)
    p_independent = [
        pyprune.similarity_test(x, rng.standard_normal((120, 3)), n_permutations=99, seed=s).p_value
        for s in range(20)
    ]
    # Under the null the p-values are (discrete) uniform: not all small, and about 5% of them below 0.05.
    assert np.mean(np.array(p_independent) <= 0.05) <= 0.2
    assert np.median(p_independent) > 0.2


def test_seed_determines_the_result(pair):
    x, y = pair
    a = pyprune.similarity_test(x, y, n_permutations=20, n_bootstrap=10, seed=3)
    b = pyprune.similarity_test(
        torch.from_numpy(x), torch.from_numpy(y), n_permutations=20, n_bootstrap=10, seed=3
    )
    c = pyprune.similarity_test(x, y, n_permutations=20, n_bootstrap=10, seed=4)
    assert torch.equal(a.null, b.null)
    assert torch.equal(a.bootstrap, b.bootstrap)
    assert not torch.equal(a.null, c.null)
    assert "p = " in str(a)
    assert "95% CI" in str(a)
    assert a.bootstrap_bias == pytest.approx(float(a.bootstrap.mean()) - a.observed)
    basic = pyprune.similarity_test(x, y, n_permutations=20, n_bootstrap=10, seed=3, ci_method="basic")
    assert basic.ci == pytest.approx((2 * a.observed - a.ci[1], 2 * a.observed - a.ci[0]))


def test_constant_layer_is_never_significant(pair):
    x, _ = pair
    result = pyprune.similarity_test(x, np.ones((40, 3)), n_permutations=9, n_bootstrap=4)
    assert result.observed == 0.0
    assert result.p_value == 1.0
    assert result.ci == (0.0, 0.0)


def test_cka_matrix_test_matches_single_tests(pair):
    x, y = pair
    xs = {"a": x, "b": x[:, :2] ** 2}
    ys = {"c": y, "d": np.random.default_rng(3).standard_normal((40, 5))}
    grid = pyprune.cka_matrix_test(xs, ys, n_permutations=25, seed=11)
    for i, xi in enumerate(xs.values()):
        for j, yj in enumerate(ys.values()):
            single = pyprune.similarity_test(xi, yj, n_permutations=25, seed=11)
            assert grid.values[i, j] == pytest.approx(single.observed, rel=1e-12)
            assert grid.p_values[i, j] == pytest.approx(single.p_value)
    torch.testing.assert_close(grid.values, pyprune.cka_matrix(xs, ys), rtol=1e-10, atol=1e-12)
    assert _permutations(5, 0, torch.Generator()).shape == (0, 5)


def test_layer_similarity_plot_marks_non_significant_cells(pair, tmp_path):
    pytest.importorskip("matplotlib")
    x, y = pair
    noise = np.random.default_rng(4).standard_normal((40, 5))
    grid = pyprune.cka_matrix_test({"x": x}, {"y": y, "noise": noise}, n_permutations=49)
    assert grid.p_values[0, 0] < 0.05
    assert grid.p_values[0, 1] > 0.05
    result = pyprune.LayerSimilarity(
        grid.values, ["x"], ["y", "noise"], "linear CKA", 40, p_values=grid.p_values
    )
    fig = result.plot(tmp_path / "heatmap.png")
    ax = fig.axes[0]
    dotted = [p for p in ax.patches if p.get_hatch() == ".."]
    assert len(dotted) == 1
    assert dotted[0].get_xy() == (0.5, -0.5)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["not significant (p > 0.05)"]
    assert (tmp_path / "heatmap.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"measure": "euclid"}, ValueError, "measure: expected one of"),
        ({"measure": 3}, TypeError, "measure: expected a name or a callable"),
        ({"n_permutations": -1}, ValueError, "n_permutations: expected an integer >= 0"),
        ({"n_bootstrap": 1.5}, ValueError, "n_bootstrap"),
        ({"seed": "a"}, TypeError, "seed: expected an int"),
        ({"confidence": 1.0}, ValueError, "confidence"),
        ({"ci_method": "bca"}, ValueError, "ci_method: expected one of"),
        ({"kernel": "poly"}, ValueError, "kernel: expected one of"),
        ({"flatten": "pixels"}, ValueError, "flatten"),
    ],
)
def test_bad_arguments_are_named(pair, kwargs, error, match):
    x, y = pair
    with pytest.raises(error, match=match):
        pyprune.similarity_test(x, y, n_permutations=kwargs.pop("n_permutations", 3), **kwargs)


def test_matrix_test_bad_arguments(pair):
    x, y = pair
    with pytest.raises(ValueError, match="n_permutations: expected an integer >= 1"):
        pyprune.cka_matrix_test([x], [y], n_permutations=0)
    with pytest.raises(ValueError, match="same number of samples"):
        pyprune.cka_matrix_test([x], [y[:-1]])
    with pytest.raises(ValueError, match="p_values: expected shape"):
        pyprune.plot_similarity(np.eye(2), ["a", "b"], ["c", "d"], p_values=np.ones((2, 3)))
