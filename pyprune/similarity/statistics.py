"""Significance and uncertainty of a similarity value: permutation tests and bootstrap confidence intervals.

:func:`similarity_test` answers two questions about ``measure(x, y)`` on ``n`` paired samples:

* Is it larger than chance? The null hypothesis is that ``x`` and ``y`` are independent. The samples of ``y``
  are shuffled ``S`` times (``y[p_s]``), the measure is recomputed each time, and the one-sided p-value is
  ``p = (1 + #{s : null_s >= observed}) / (1 + S)`` (Phipson & Smyth 2010, "Permutation p-values should never
  be zero"), which is never 0 and is a valid (conservative) p-value for any ``S``.
* How precise is it? ``B`` bootstrap replicates resample the ``n`` sample pairs with replacement
  (``(x[i_b], y[i_b])``); the confidence interval is the percentile interval of the replicates (Efron &
  Tibshirani 1993, ch. 13), with linear interpolation between order statistics.

CKA (linear or RBF, biased or unbiased) never recomputes a Gram matrix: permuting the samples of ``y``
permutes the rows and columns of its Gram matrix, and ``H`` commutes with permutations, so
``HSIC(K, P L P^T) ∝ <HKH, P (HLH) P^T>`` while the self terms do not change. All ``S`` permuted numerators
come from one batched kernel, :func:`pyprune.ops.permutation_hsic`, in ``O(S n^2)`` gathered multiply-adds.
Bootstrap replicates of biased CKA are quadratic forms in the replicate's count vector ``c`` (how often each
sample was drawn): ``<K_b, L_b> = c^T (K∘L) c``, ``(K_b 1)·(L_b 1) = sum_a c_a (Kc)_a (Lc)_a`` and
``1^T K_b 1 = c^T K c``, so all ``B`` replicates cost a few ``(B, n) x (n, n)`` GEMMs. For the RBF kernel both
shortcuts keep the bandwidth of the full sample (the median distance is permutation-invariant, so the
permutation test is exact; a bootstrap that re-estimated the bandwidth per replicate would differ slightly).
The unbiased estimator is not a quadratic form of the counts, so its bootstrap recomputes CKA per replicate.

Every other measure (a name from :data:`MEASURES` or any callable ``f(x, y) -> float``) is recomputed on each
shuffled or resampled copy. Randomness comes from one ``torch.Generator`` seeded with ``seed``: the same seed
gives the same permutations, replicates and results on every backend. Exactly: with
``g = torch.Generator().manual_seed(seed)``, the permutations are ``S`` successive ``torch.randperm(n, generator=g)``
draws and then the replicates are ``torch.randint(n, (B, n), generator=g)``.

Caveat on the bootstrap of kernel measures: a replicate holds duplicated samples, and a duplicated pair is
perfectly aligned in both representations, which pulls kernel similarities up (strongly for RBF CKA with a
narrow bandwidth, and for the unbiased estimator, which counts duplicate pairs as distinct samples). The
result's :attr:`~SimilarityTestResult.bootstrap_bias` (mean replicate minus observed value) shows how much. The
default percentile interval is centred on the replicates and can miss the observed value entirely;
``ci_method="basic"`` reflects the replicates about the observed value, which removes that bias to first order.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pyprune.ops import linear_gram, permutation_hsic, rbf_from_linear_gram
from pyprune.similarity._inputs import Flatten, as_representation, centre, check_same_samples, is_constant
from pyprune.similarity.cca import mean_cca, pwcca, r2_cca, svcca
from pyprune.similarity.cka import Activations, Kernel, as_layer_list, check_options, cka
from pyprune.similarity.nbs import nbs
from pyprune.similarity.neighbors import cknna, mutual_knn
from pyprune.similarity.procrustes import procrustes_similarity
from pyprune.similarity.regression import linear_regression_r2
from pyprune.similarity.rsa import rsa

#: Measures :func:`similarity_test` accepts by name; all are similarities (larger means more alike).
MEASURES: dict[str, Callable[..., float]] = {
    "cka": cka,
    "mean_cca": mean_cca,
    "r2_cca": r2_cca,
    "svcca": svcca,
    "pwcca": pwcca,
    "nbs": nbs,
    "procrustes_similarity": procrustes_similarity,
    "mutual_knn": mutual_knn,
    "cknna": cknna,
    "rsa": rsa,
    "linear_regression_r2": linear_regression_r2,
}
CI_METHODS = ("percentile", "basic")
_CKA_OPTIONS = frozenset({"kernel", "threshold", "unbiased", "method"})
# Bootstrap replicates per batch of the CKA shortcut: bounds the (batch, n) float64 work arrays.
_BOOTSTRAP_BATCH = 256


@dataclass(frozen=True, eq=False)
class SimilarityTestResult:
    """Outcome of :func:`similarity_test`.

    Attributes:
        measure: the measure's name.
        observed: its value on the unshuffled data.
        p_value: one-sided permutation p-value in ``(0, 1]``, None when ``n_permutations == 0``.
        null: float64 ``(n_permutations,)``: the measure on each shuffled copy.
        ci: ``(low, high)`` percentile bootstrap interval at ``confidence``, None when ``n_bootstrap == 0``.
        bootstrap: float64 ``(n_bootstrap,)``: the measure on each resampled copy.
        confidence: the interval's coverage, e.g. 0.95.
        n_samples: ``n``, the number of paired samples.
        seed: the seed the permutations and replicates came from.
    """

    measure: str
    observed: float
    p_value: float | None
    null: torch.Tensor
    ci: tuple[float, float] | None
    bootstrap: torch.Tensor
    confidence: float
    n_samples: int
    seed: int

    @property
    def bootstrap_bias(self) -> float | None:
        """Mean of the bootstrap replicates minus :attr:`observed` (None without replicates)."""
        return float(self.bootstrap.mean()) - self.observed if self.bootstrap.numel() else None

    def __str__(self) -> str:
        parts = [f"{self.measure} = {self.observed:.4f} (n = {self.n_samples})"]
        if self.p_value is not None:
            parts.append(f"p = {self.p_value:.4g} ({self.null.numel()} permutations)")
        if self.ci is not None:
            parts.append(f"{self.confidence:.0%} CI [{self.ci[0]:.4f}, {self.ci[1]:.4f}]")
        return ", ".join(parts)


def similarity_test(
    x: Any,
    y: Any,
    measure: str | Callable[..., float] = "cka",
    *,
    n_permutations: int = 1000,
    n_bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
    ci_method: str = "percentile",
    flatten: Flatten = "example",
    **options: Any,
) -> SimilarityTestResult:
    """Permutation-test p-value and bootstrap confidence interval for a similarity measure.

    Args:
        x: activations ``(n, p1, ...)`` (torch tensor, NumPy or CuPy array), floating point.
        y: activations ``(n, p2, ...)`` of the same samples; its samples are the ones shuffled.
        measure: a name from :data:`MEASURES` (``"cka"``, ``"mean_cca"``, ``"rsa"``, ...) or a callable
            ``f(x, y, **options) -> float`` taking two ``(n, p)`` float64 tensors; larger must mean more similar.
        n_permutations: number of shuffles ``S >= 0`` (0 skips the test); the smallest attainable p-value is
            ``1 / (S + 1)``.
        n_bootstrap: number of bootstrap replicates ``B >= 0`` (0 skips the interval; use ~1000 or more).
        seed: seed of the ``torch.Generator`` that draws the permutations and the replicates.
        confidence: coverage of the interval, in ``(0, 1)``.
        ci_method: ``"percentile"`` ``[q_lo, q_hi]`` of the replicates, or ``"basic"``
            ``[2 observed - q_hi, 2 observed - q_lo]``, which subtracts the bootstrap's own bias (see the module
            notes on duplicated samples); Efron & Tibshirani 1993, ch. 13.
        flatten: ``"example"`` ``(n, C*H*W)`` or ``"channel"`` ``(n*H*W, C)`` for inputs with more than 2 dims
            (with ``"channel"`` the shuffled and resampled units are the rows, i.e. positions).
        **options: passed to the measure, e.g. ``kernel="rbf", threshold=0.5`` or ``unbiased=True`` for CKA.

    Returns:
        A :class:`SimilarityTestResult`.

    Example:
        >>> import torch, pyprune
        >>> x = torch.randn(200, 10, dtype=torch.float64)
        >>> result = pyprune.similarity_test(x, x @ torch.randn(10, 5, dtype=torch.float64), n_permutations=99)
        >>> result.p_value
        0.01
    """
    name, fn = _resolve(measure)
    for value, label in ((n_permutations, "n_permutations"), (n_bootstrap, "n_bootstrap")):
        if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"{label}: expected an integer >= 0, got {value!r}")
    if not (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if not (isinstance(confidence, numbers.Real) and 0 < confidence < 1):
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    if ci_method not in CI_METHODS:
        raise ValueError(f"ci_method: expected one of {CI_METHODS}, got {ci_method!r}")
    xt = as_representation(x, "x", flatten).double()
    yt = as_representation(y, "y", flatten).double()
    check_same_samples(xt, yt)
    n = xt.shape[0]
    generator = torch.Generator().manual_seed(int(seed))
    # Drawn on the CPU so that a seed means the same shuffles on every device.
    perms = _permutations(n, n_permutations, generator)
    draws = torch.randint(n, (n_bootstrap, n), generator=generator)

    if fn is cka and set(options) <= _CKA_OPTIONS:
        observed, null, bootstrap = _cka_shortcut(xt, yt, perms.to(xt.device), draws.to(xt.device), options)
    else:
        observed = float(fn(xt, yt, **options))
        null = _values(fn, xt, yt, [(slice(None), p) for p in perms], options, xt.device)
        bootstrap = _values(fn, xt, yt, [(i, i) for i in draws], options, xt.device)

    p_value = None
    if n_permutations:
        p_value = (1 + int((null >= observed).sum())) / (1 + n_permutations)
    ci = None
    if n_bootstrap:
        levels = torch.tensor([(1 - confidence) / 2, (1 + confidence) / 2], dtype=torch.float64)
        low, high = torch.quantile(bootstrap.cpu(), levels).tolist()
        ci = (low, high) if ci_method == "percentile" else (2 * observed - high, 2 * observed - low)
    return SimilarityTestResult(
        name, observed, p_value, null.cpu(), ci, bootstrap.cpu(), float(confidence), n, int(seed)
    )


@dataclass(frozen=True, eq=False)
class CKAMatrixTest:
    """Outcome of :func:`cka_matrix_test`.

    Attributes:
        values: float64 ``(L1, L2)``: CKA of every layer pair (as :func:`pyprune.cka_matrix`).
        p_values: float64 ``(L1, L2)``: one-sided permutation p-values in ``(0, 1]``.
        n_permutations: the number of shuffles behind each p-value.
        seed: the seed of the shuffles (the same shuffles for every pair).
    """

    values: torch.Tensor
    p_values: torch.Tensor
    n_permutations: int
    seed: int


def cka_matrix_test(
    xs: Activations,
    ys: Activations | None = None,
    *,
    n_permutations: int = 1000,
    seed: int = 0,
    kernel: Kernel = "linear",
    threshold: float = 0.5,
    unbiased: bool = False,
    flatten: Flatten = "example",
) -> CKAMatrixTest:
    """Layer-by-layer CKA with a permutation p-value for every cell (for significance marks on heatmaps).

    Each layer's Gram matrix is formed and centred once; every pair then costs one call of the batched kernel
    :func:`pyprune.ops.permutation_hsic` over the same ``n_permutations`` shuffles. Memory: one ``(n, n)``
    float64 matrix per layer. Arguments as for :func:`pyprune.cka_matrix` and :func:`similarity_test`; no
    correction for testing many cells is applied (compare p-values with ``alpha / (L1 L2)`` for Bonferroni).

    Returns:
        A :class:`CKAMatrixTest` with CPU tensors; pass ``p_values`` to :class:`pyprune.LayerSimilarity` to
        mark the non-significant cells of its plot.
    """
    if not (isinstance(n_permutations, numbers.Integral) and not isinstance(n_permutations, bool)):
        raise ValueError(f"n_permutations: expected an integer >= 1, got {n_permutations!r}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations: expected an integer >= 1, got {n_permutations!r}")
    if not (isinstance(seed, numbers.Integral) and not isinstance(seed, bool)):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    x_list, x_names = as_layer_list(xs, "xs", flatten)
    y_list, y_names = (x_list, x_names) if ys is None else as_layer_list(ys, "ys", flatten)
    check_same_samples(x_list[0], y_list[0], "xs", "ys")
    n = x_list[0].shape[0]
    _check_cka_options(kernel, threshold, unbiased, "auto", n)
    perms = _permutations(n, n_permutations, torch.Generator().manual_seed(int(seed))).to(x_list[0].device)
    batch = _with_identity(perms)
    sides_x = [
        _prepare(x.double(), f"xs[{k!r}]", kernel, threshold, unbiased)
        for k, x in zip(x_names, x_list, strict=True)
    ]
    sides_y = (
        sides_x
        if ys is None
        else [
            _prepare(y.double(), f"ys[{k!r}]", kernel, threshold, unbiased)
            for k, y in zip(y_names, y_list, strict=True)
        ]
    )
    values = torch.empty(len(sides_x), len(sides_y), dtype=torch.float64)
    p_values = torch.empty_like(values)
    for i, a in enumerate(sides_x):
        for j, b in enumerate(sides_y):
            scores = _permuted_cka(a, b, batch).cpu()
            values[i, j] = scores[0]
            p_values[i, j] = (1 + int((scores[1:] >= scores[0]).sum())) / (1 + n_permutations)
    return CKAMatrixTest(values, p_values, int(n_permutations), int(seed))


def _permutations(n: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` successive ``torch.randperm(n, generator=generator)`` draws as int64 ``(count, n)``."""
    if count == 0:
        return torch.zeros(0, n, dtype=torch.int64)
    return torch.stack([torch.randperm(n, generator=generator) for _ in range(count)])


def _resolve(measure: str | Callable[..., float]) -> tuple[str, Callable[..., float]]:
    if isinstance(measure, str):
        if measure not in MEASURES:
            raise ValueError(f"measure: expected one of {sorted(MEASURES)} or a callable, got {measure!r}")
        return measure, MEASURES[measure]
    if callable(measure):
        return getattr(measure, "__name__", type(measure).__name__), measure
    raise TypeError(f"measure: expected a name or a callable, got {type(measure).__name__}")


def _values(
    fn: Callable[..., float],
    x: torch.Tensor,
    y: torch.Tensor,
    index_pairs: list[tuple[Any, torch.Tensor]],
    options: dict[str, Any],
    device: torch.device,
) -> torch.Tensor:
    values = [float(fn(x[ix], y[iy], **options)) for ix, iy in index_pairs]
    return torch.tensor(values, dtype=torch.float64, device=device)


def _cka_shortcut(
    x: torch.Tensor, y: torch.Tensor, perms: torch.Tensor, draws: torch.Tensor, options: dict[str, Any]
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(observed CKA, permuted CKAs, bootstrap CKAs) from one Gram matrix per side."""
    kernel = options.get("kernel", "linear")
    threshold = options.get("threshold", 0.5)
    unbiased = options.get("unbiased", False)
    _check_cka_options(kernel, threshold, unbiased, options.get("method", "auto"), x.shape[0])
    side_x = _prepare(x, "x", kernel, threshold, unbiased)
    side_y = _prepare(y, "y", kernel, threshold, unbiased)
    values = _permuted_cka(side_x, side_y, _with_identity(perms))
    if unbiased:  # not a quadratic form of the counts: recompute per replicate
        bootstrap = _values(cka, x, y, [(i, i) for i in draws], options, x.device)
    else:
        bootstrap = _bootstrap_biased(side_x, side_y, draws)
    return float(values[0]), values[1:], bootstrap


@dataclass(frozen=True, eq=False)
class _Side:
    """One layer, ready for permuted CKA: ``HKH`` (biased) or ``K`` with a zero diagonal and its row sums
    (unbiased), and the layer's HSIC numerator with itself."""

    matrix: torch.Tensor
    rows: torch.Tensor | None
    self_term: float
    constant: bool


def _prepare(x: torch.Tensor, name: str, kernel: str, threshold: float, unbiased: bool) -> _Side:
    n = x.shape[0]
    if is_constant(x):  # CKA is 0 with everything, for every shuffle and replicate
        return _Side(x.new_zeros(0, 0), None, 0.0, True)
    k = _gram(x, kernel, threshold)
    if not unbiased:
        kc = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
        return _Side(kc, None, float((kc * kc).sum()), False)
    k.fill_diagonal_(0.0)
    rows = k.sum(dim=1)
    self_term = float((k * k).sum() + rows.sum() ** 2 / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (rows @ rows))
    if self_term <= 0:
        raise ValueError(
            f"{name}: the unbiased HSIC of the layer with itself is <= 0, so its CKA is undefined; use more "
            "samples or unbiased=False"
        )
    return _Side(k, rows, self_term, False)


def _check_cka_options(kernel: str, threshold: float, unbiased: bool, method: str, n: int) -> None:
    """The checks :func:`pyprune.cka` makes, without computing anything."""
    check_options(kernel, threshold, method)
    if not isinstance(unbiased, bool):
        raise TypeError(f"unbiased: expected a bool, got {type(unbiased).__name__}")
    if n < (4 if unbiased else 2):
        raise ValueError(
            f"x and y: {'unbiased ' if unbiased else ''}CKA needs at least {4 if unbiased else 2} samples, got {n}"
        )


def _with_identity(perms: torch.Tensor) -> torch.Tensor:
    # The identity permutation rides along as row 0, so the observed value and the null values come from the
    # same arithmetic, and a null value equal to the observed one compares equal.
    return torch.cat([torch.arange(perms.shape[1], device=perms.device)[None], perms])


def _permuted_cka(a: _Side, b: _Side, batch: torch.Tensor) -> torch.Tensor:
    """CKA of ``a`` with ``b`` shuffled by each row of ``batch``, float64 ``(len(batch),)``."""
    if a.constant or b.constant:
        return torch.zeros(len(batch), dtype=torch.float64, device=batch.device)
    cross = permutation_hsic(a.matrix, b.matrix, batch)
    if a.rows is not None:
        n = batch.shape[1]
        # Song et al.'s HSIC_1 numerator of (K~, P L~ P^T), using (P L~ P^T) 1 = (L~ 1)[p].
        sums = a.rows.sum() * b.rows.sum() / ((n - 1) * (n - 2))
        cross = cross + sums - 2.0 / (n - 2) * (b.rows[batch] @ a.rows)
    return cross / math.sqrt(a.self_term * b.self_term)


def _gram(x: torch.Tensor, kernel: str, threshold: float) -> torch.Tensor:
    """Full symmetric float64 kernel matrix of ``x`` (n, p), with :func:`pyprune.cka`'s kernel conventions."""
    gram = linear_gram(centre(x).contiguous())  # lower triangle; centring first avoids cancellation
    if kernel == "rbf":
        rbf_from_linear_gram(gram, threshold)
    lower = torch.tril(gram)
    return lower + torch.tril(lower, -1).T


def _bootstrap_biased(a: _Side, b: _Side, draws: torch.Tensor) -> torch.Tensor:
    """Biased CKA of every replicate ``(K[i, i], L[i, i])`` from quadratic forms in its count vector.

    ``HKH`` may stand in for ``K``: the row and column means it subtracts are removed again by the centring
    within each replicate.
    """
    out = torch.zeros(len(draws), dtype=torch.float64, device=draws.device)
    if a.constant or b.constant:
        return out
    k, l_gram = a.matrix, b.matrix
    n = k.shape[0]
    products = {"kl": k * l_gram, "kk": k * k, "ll": l_gram * l_gram}
    for start in range(0, len(draws), _BOOTSTRAP_BATCH):
        idx = draws[start : start + _BOOTSTRAP_BATCH]
        counts = torch.zeros(len(idx), n, dtype=torch.float64, device=k.device)
        counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))
        kc, lc = counts @ k, counts @ l_gram
        total_k, total_l = (kc * counts).sum(dim=1), (lc * counts).sum(dim=1)
        cross = _centred_inner(counts, products["kl"], kc, lc, total_k, total_l)
        self_k = _centred_inner(counts, products["kk"], kc, kc, total_k, total_k)
        self_l = _centred_inner(counts, products["ll"], lc, lc, total_l, total_l)
        denominator = torch.sqrt(self_k.clamp(min=0) * self_l.clamp(min=0))
        # A replicate that drew a single distinct sample has no variance: CKA 0, as for a constant layer.
        out[start : start + len(idx)] = torch.where(denominator > 0, cross / denominator, 0.0)
    return out


def _centred_inner(
    counts: torch.Tensor,
    product: torch.Tensor,
    a_counts: torch.Tensor,
    b_counts: torch.Tensor,
    total_a: torch.Tensor,
    total_b: torch.Tensor,
) -> torch.Tensor:
    """``<H A_b H, H B_b H> = <A_b, B_b> - 2/n (A_b 1).(B_b 1) + (1'A_b 1)(1'B_b 1)/n^2`` per replicate ``b``.

    ``product = A∘B``; ``a_counts = C A`` and ``b_counts = C B`` for the ``(batch, n)`` count matrix ``C``.
    """
    n = counts.shape[1]
    inner = ((counts @ product) * counts).sum(dim=1)
    return inner - 2.0 / n * (counts * a_counts * b_counts).sum(dim=1) + total_a * total_b / n**2
