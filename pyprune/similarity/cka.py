"""Centred kernel alignment (CKA) and HSIC, for one pair of layers or a whole layer-by-layer matrix.

Definitions (Kornblith et al. 2019; Song et al. 2012): for Gram matrices ``K`` of ``X`` and ``L`` of ``Y``
(``n`` samples each) and ``H = I - 11^T/n``,

* biased: ``HSIC0(K, L) = <HKH, HLH>_F / (n-1)^2``;
* unbiased: ``HSIC1(K, L)``, the U-statistic of Song et al. (``n >= 4``; may be negative);
* ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

Kernels: ``"linear"`` (``K = X X^T``) and ``"rbf"`` (``K_ab = exp(-|x_a - x_b|^2 / (2 t^2 m))``, ``m`` the
median squared distance over all ``n^2`` pairs, zero diagonal included, ``t = threshold``: the Google /
Kornblith convention, "bandwidth = threshold x median distance").

How it is computed. Every layer's Gram statistics are formed once and all pairs are scored in one fused pass:

* ``"gram"`` method: centred features, Gram matrices by BLAS ``syrk`` (half a GEMM), RBF transform in place,
  then the fused kernel :func:`pyprune.ops.gram_hsic_terms` reads each Gram's lower triangle once and returns
  all ``<K_i, L_j>`` plus row sums and diagonals in float64, from which biased and unbiased HSIC follow
  exactly (``<HKH, HLH> = <K, L> - 2/n (K1)^T(L1) + (1^T K 1)(1^T L 1)/n^2``).
* ``"feature"`` method (linear kernel only): ``<HKH, HLH> = |Xc^T Yc|_F^2``, and the unbiased statistic from
  the same cross-covariances plus row norms (SPEC §1.3), which is cheaper when features are fewer than samples.

``method="auto"`` picks the one with fewer multiply-adds.

Degenerate inputs: a layer whose samples are all identical (zero variance) has no defined CKA; pyprune
returns 0 for every pair involving it. With ``unbiased=True`` a non-constant layer can still get a
non-positive self-HSIC on very few samples; its CKA is NaN and a ``RuntimeWarning`` names it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from pyprune.ops import gram_hsic_terms, linear_gram, rbf_from_linear_gram
from pyprune.similarity._inputs import Flatten, as_representation, check_same_samples, is_constant

Kernel = Literal["linear", "rbf"]
Method = Literal["auto", "gram", "feature"]
KERNELS = ("linear", "rbf")
METHODS = ("auto", "gram", "feature")
Activations = Sequence[Any] | Mapping[str, Any]


@dataclass(frozen=True)
class HsicTerms:
    """Unnormalised HSIC statistics of all layer pairs.

    ``cross[i, j]`` is ``<HK_iH, HL_jH>_F`` (biased) or ``n(n-3) HSIC1(K_i, L_j)`` (unbiased); ``self_x`` and
    ``self_y`` hold the same statistic of each layer with itself. Constant layers have all-zero entries.
    """

    cross: torch.Tensor  # (L1, L2) float64
    self_x: torch.Tensor  # (L1,) float64
    self_y: torch.Tensor  # (L2,) float64
    constant_x: torch.Tensor  # (L1,) bool
    constant_y: torch.Tensor  # (L2,) bool
    n: int
    unbiased: bool

    def hsic(self) -> torch.Tensor:
        """The normalised HSIC matrix ``(L1, L2)``: ``HSIC0`` or ``HSIC1``."""
        scale = self.n * (self.n - 3) if self.unbiased else (self.n - 1) ** 2
        return self.cross / scale

    def cka(self, names_x: Sequence[str] | None = None, names_y: Sequence[str] | None = None) -> torch.Tensor:
        """CKA matrix ``(L1, L2)`` float64, with the degenerate-layer rules of the module docstring."""
        return normalise_hsic(
            self.cross, self.self_x, self.self_y, self.constant_x, self.constant_y, names_x, names_y
        )


def normalise_hsic(
    cross: torch.Tensor,
    self_x: torch.Tensor,
    self_y: torch.Tensor,
    constant_x: torch.Tensor,
    constant_y: torch.Tensor,
    names_x: Sequence[str] | None = None,
    names_y: Sequence[str] | None = None,
) -> torch.Tensor:
    """``cross[i, j] / sqrt(self_x[i] self_y[j])``; 0 where a side is constant, NaN (with a warning) where a
    non-constant side has a non-positive self-HSIC (possible only for the unbiased estimator)."""
    bad_x = (self_x <= 0) & ~constant_x
    bad_y = (self_y <= 0) & ~constant_y
    if bool(bad_x.any()) or bool(bad_y.any()):
        labels = [f"x[{_label(names_x, i)}]" for i in bad_x.nonzero().flatten().tolist()]
        labels += [f"y[{_label(names_y, j)}]" for j in bad_y.nonzero().flatten().tolist()]
        warnings.warn(
            "unbiased HSIC of a layer with itself is <= 0 for "
            + ", ".join(labels)
            + "; its CKA is undefined "
            "and returned as NaN (use more samples or unbiased=False)",
            RuntimeWarning,
            stacklevel=3,
        )
    denominator = torch.sqrt(self_x.clamp(min=0)[:, None] * self_y.clamp(min=0)[None, :])
    result = cross / denominator
    result[bad_x[:, None] | bad_y[None, :]] = math.nan
    result[constant_x[:, None] | constant_y[None, :]] = 0.0
    return result


def _label(names: Sequence[str] | None, index: int) -> str:
    return str(index) if names is None else repr(names[index])


def _check_options(kernel: str, threshold: float, method: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if kernel == "rbf" and method == "feature":
        raise ValueError("method: 'feature' needs kernel='linear' (the RBF kernel has no feature-space form)")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold: expected a finite number > 0, got {threshold!r}")


def as_layer_list(layers: Activations, name: str, flatten: Flatten) -> tuple[list[torch.Tensor], list[str]]:
    """Validate a list or dict of activations; returns the ``(n, p)`` tensors and their names."""
    if isinstance(layers, Mapping):
        names = [str(k) for k in layers]
        values = list(layers.values())
    elif (
        isinstance(layers, Sequence) and not isinstance(layers, (str, bytes)) and not hasattr(layers, "shape")
    ):
        names = [str(i) for i in range(len(layers))]
        values = list(layers)
    else:
        raise TypeError(f"{name}: expected a list or dict of activation tensors, got {type(layers).__name__}")
    if not values:
        raise ValueError(f"{name}: expected at least one layer, got none")
    tensors = [as_representation(v, f"{name}[{k!r}]", flatten) for k, v in zip(names, values, strict=True)]
    for k, t in zip(names[1:], tensors[1:], strict=True):
        check_same_samples(tensors[0], t, f"{name}[{names[0]!r}]", f"{name}[{k!r}]")
    return tensors, names


def _compute_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _centred(x: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    # Centring first removes the large common offset of post-ReLU features, which would otherwise cancel
    # catastrophically in float32 Gram entries. A rounding error in the mean leaves the same small offset on
    # every row, and the HSIC formulas double-centre, so that offset cancels exactly.
    x = x.to(dtype)
    if out is None:
        return (x - x.mean(dim=0, keepdim=True)).contiguous()
    if x.device.type == "cpu":
        # NumPy, not torch: torch's OpenMP workers keep spinning after a parallel op and steal both cores
        # from the BLAS threads of the syrk that follows (a 1.5x slowdown of the whole heatmap measured on
        # 2 cores). This pass is memory-bound, so one thread loses nothing.
        a = x.detach().numpy()
        np.subtract(a, a.mean(axis=0, keepdims=True), out=out.numpy())
        return out
    return torch.sub(x, x.mean(dim=0, keepdim=True), out=out)


def _choose_method(method: str, kernel: str, n: int, px: list[int], py: list[int] | None) -> str:
    if method != "auto":
        return method
    if kernel != "linear":
        return "gram"
    if py is None:
        # Half-GEMM Grams plus the fused pair pass vs one covariance of all features.
        gram_cost = n * n * sum(px) / 2 + n * n * len(px) ** 2
        feature_cost = n * sum(px) ** 2
    else:
        gram_cost = n * n * (sum(px) + sum(py)) / 2 + 2 * n * n * len(px) * len(py)
        feature_cost = n * sum(px) * sum(py) + n * (sum(p * p for p in px) + sum(p * p for p in py))
    return "feature" if feature_cost < gram_cost else "gram"


def _block_square_sums(matrix: torch.Tensor, rows: list[int], cols: list[int]) -> torch.Tensor:
    """Sum of squares of every block of ``matrix`` cut by row sizes ``rows`` and column sizes ``cols``."""
    squares = matrix.double().square()
    row_ids = torch.repeat_interleave(
        torch.arange(len(rows), device=matrix.device), torch.tensor(rows, device=matrix.device)
    )
    col_ids = torch.repeat_interleave(
        torch.arange(len(cols), device=matrix.device), torch.tensor(cols, device=matrix.device)
    )
    by_row = torch.zeros(len(rows), squares.shape[1], dtype=torch.float64, device=matrix.device).index_add_(
        0, row_ids, squares
    )
    return torch.zeros(len(rows), len(cols), dtype=torch.float64, device=matrix.device).index_add_(
        1, col_ids, by_row
    )


def _feature_terms(
    xcs: list[torch.Tensor], ycs: list[torch.Tensor] | None, unbiased: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = xcs[0].shape[0]
    px = [x.shape[1] for x in xcs]
    zx = torch.cat(xcs, dim=1)
    if ycs is None:
        cross = _block_square_sums(zx.T @ zx, px, px)
        self_x = self_y = cross.diagonal().clone()
    else:
        py = [y.shape[1] for y in ycs]
        cross = _block_square_sums(zx.T @ torch.cat(ycs, dim=1), px, py)
        self_x = torch.stack([_block_square_sums(x.T @ x, [x.shape[1]], [x.shape[1]])[0, 0] for x in xcs])
        self_y = torch.stack([_block_square_sums(y.T @ y, [y.shape[1]], [y.shape[1]])[0, 0] for y in ycs])
    if not unbiased:
        return cross, self_x, self_y
    # n(n-3) HSIC1 = |Xc^T Yc|^2 - n/(n-2) r_x^T r_y + s_x s_y / ((n-1)(n-2)), r = row sums of squares.
    r_x = torch.stack([x.double().square().sum(dim=1) for x in xcs])
    r_y = r_x if ycs is None else torch.stack([y.double().square().sum(dim=1) for y in ycs])
    s_x, s_y = r_x.sum(dim=1), r_y.sum(dim=1)
    a, b = n / (n - 2), 1.0 / ((n - 1) * (n - 2))
    cross = cross - a * (r_x @ r_y.T) + b * torch.outer(s_x, s_y)
    self_x = self_x - a * r_x.square().sum(dim=1) + b * s_x.square()
    self_y = self_y - a * r_y.square().sum(dim=1) + b * s_y.square()
    return cross, self_x, self_y


def _grams(xs: list[torch.Tensor], kernel: str, threshold: float, dtype: torch.dtype) -> list[torch.Tensor]:
    n, device = xs[0].shape[0], xs[0].device
    stack = torch.empty(len(xs), n, n, dtype=dtype, device=device)
    # One scratch buffer for every layer's centred copy: fresh multi-megabyte allocations are page-faulted in
    # on every call, which costs a third of a GEMM-bound heatmap at n = 1024.
    scratch = torch.empty(n * max(x.shape[1] for x in xs), dtype=dtype, device=device)
    for gram, x in zip(stack, xs, strict=True):
        linear_gram(_centred(x, dtype, out=scratch[: x.numel()].view(x.shape)), out=gram)
    # A separate loop, not one per layer: BLAS workers keep spinning for a while after each syrk and would
    # compete with the RBF kernel's threads for the same cores.
    if kernel == "rbf":
        for gram in stack:
            rbf_from_linear_gram(gram, threshold)
    return list(stack)


def _gram_terms(
    grams_x: list[torch.Tensor], grams_y: list[torch.Tensor] | None, unbiased: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = grams_x[0].shape[0]
    t = gram_hsic_terms(grams_x, grams_y)
    cross, self_x, self_y = t["cross"], t["self_a"], t["self_b"]
    rows_x, rows_y, diag_x, diag_y = t["row_sums_a"], t["row_sums_b"], t["diag_a"], t["diag_b"]
    if not unbiased:
        sums_x, sums_y = rows_x.sum(dim=1), rows_y.sum(dim=1)
        cross = cross - 2.0 / n * (rows_x @ rows_y.T) + torch.outer(sums_x, sums_y) / n**2
        self_x = self_x - 2.0 / n * rows_x.square().sum(dim=1) + sums_x.square() / n**2
        self_y = self_y - 2.0 / n * rows_y.square().sum(dim=1) + sums_y.square() / n**2
        return cross, self_x, self_y
    # Song et al.'s HSIC1 on diagonal-free Grams K~: tr(K~L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1.
    off_x, off_y = rows_x - diag_x, rows_y - diag_y
    sums_x, sums_y = off_x.sum(dim=1), off_y.sum(dim=1)
    a, b = 2.0 / (n - 2), 1.0 / ((n - 1) * (n - 2))
    cross = cross - diag_x @ diag_y.T + b * torch.outer(sums_x, sums_y) - a * (off_x @ off_y.T)
    self_x = self_x - diag_x.square().sum(dim=1) + b * sums_x.square() - a * off_x.square().sum(dim=1)
    self_y = self_y - diag_y.square().sum(dim=1) + b * sums_y.square() - a * off_y.square().sum(dim=1)
    return cross, self_x, self_y


def hsic_terms(
    xs: list[torch.Tensor],
    ys: list[torch.Tensor] | None = None,
    *,
    kernel: Kernel = "linear",
    threshold: float = 0.5,
    unbiased: bool = False,
    method: Method = "auto",
    dtype: torch.dtype | None = None,
) -> HsicTerms:
    """HSIC statistics of every pair ``(xs[i], ys[j])`` of validated ``(n, p)`` representations.

    ``ys=None`` compares ``xs`` with itself (half the work). ``dtype`` is the working precision of Gram and
    covariance products (default: float64 if any input is float64, else float32); reductions are float64.
    """
    _check_options(kernel, threshold, method)
    n = xs[0].shape[0]
    if unbiased and n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples, got {n}")
    if n < 2:
        raise ValueError(f"CKA needs at least 2 samples, got {n}")
    dtype = dtype or _compute_dtype(list(xs) + list(ys or []))
    constant_x = torch.tensor([is_constant(x) for x in xs])
    constant_y = constant_x if ys is None else torch.tensor([is_constant(y) for y in ys])
    chosen = _choose_method(
        method, kernel, n, [x.shape[1] for x in xs], None if ys is None else [y.shape[1] for y in ys]
    )
    if chosen == "feature":
        xcs = [_centred(x, dtype) for x in xs]
        ycs = None if ys is None else [_centred(y, dtype) for y in ys]
        cross, self_x, self_y = _feature_terms(xcs, ycs, unbiased)
    else:
        grams_x = _grams(xs, kernel, threshold, dtype)
        grams_y = None if ys is None else _grams(ys, kernel, threshold, dtype)
        cross, self_x, self_y = _gram_terms(grams_x, grams_y, unbiased)
    device = cross.device
    constant_x, constant_y = constant_x.to(device), constant_y.to(device)
    # Constant layers give exactly zero statistics in exact arithmetic; remove the round-off.
    cross = cross.masked_fill(constant_x[:, None] | constant_y[None, :], 0.0)
    self_x = self_x.masked_fill(constant_x, 0.0)
    self_y = self_y.masked_fill(constant_y, 0.0)
    return HsicTerms(cross, self_x, self_y, constant_x, constant_y, n, unbiased)


def cka(
    x: Any,
    y: Any,
    *,
    kernel: Kernel = "linear",
    threshold: float = 0.5,
    unbiased: bool = False,
    flatten: Flatten = "example",
    method: Method = "auto",
) -> float:
    """CKA between two representations of the same samples, computed in float64.

    Args:
        x: ``(n, p1, ...)`` activations (torch, NumPy or CuPy), floating point.
        y: ``(n, p2, ...)`` activations of the same ``n`` samples.
        kernel: ``"linear"`` or ``"rbf"``.
        threshold: RBF bandwidth as a fraction of the median pairwise distance (ignored for linear).
        unbiased: use the unbiased HSIC1 estimator (debiased CKA; needs ``n >= 4``, may be negative).
        flatten: how inputs with more than 2 dimensions become ``(samples, features)``: ``"example"``
            ``(n, C*H*W)`` or ``"channel"`` ``(n*H*W, C)``; see :func:`pyprune.flatten_activations`.
        method: ``"auto"``, ``"gram"`` (sample space) or ``"feature"`` (linear only).

    Returns:
        CKA in [0, 1] (biased) or a real number (unbiased); 0 if either representation is constant.

    Example:
        >>> import torch, pyprune
        >>> x = torch.randn(100, 10, dtype=torch.float64)
        >>> round(pyprune.cka(x, 2 * x), 6)
        1.0
    """
    xt = as_representation(x, "x", flatten)
    yt = as_representation(y, "y", flatten)
    check_same_samples(xt, yt)
    terms = hsic_terms(
        [xt], [yt], kernel=kernel, threshold=threshold, unbiased=unbiased, method=method, dtype=torch.float64
    )
    return float(terms.cka()[0, 0])


def hsic(
    x: Any,
    y: Any,
    *,
    kernel: Kernel = "linear",
    threshold: float = 0.5,
    unbiased: bool = False,
    flatten: Flatten = "example",
) -> float:
    """Normalised HSIC between two representations: ``HSIC0`` (biased, ``/(n-1)^2``) or ``HSIC1`` (unbiased).

    Arguments as for :func:`cka`.
    """
    xt = as_representation(x, "x", flatten)
    yt = as_representation(y, "y", flatten)
    check_same_samples(xt, yt)
    terms = hsic_terms([xt], [yt], kernel=kernel, threshold=threshold, unbiased=unbiased, dtype=torch.float64)
    return float(terms.hsic()[0, 0])


def cka_matrix(
    xs: Activations,
    ys: Activations | None = None,
    *,
    kernel: Kernel = "linear",
    threshold: float = 0.5,
    unbiased: bool = False,
    flatten: Flatten = "example",
    method: Method = "auto",
) -> torch.Tensor:
    """Layer-by-layer CKA between two lists (or dicts) of activations of the same samples.

    Each layer's Gram statistics are computed once and every pair is scored in one fused pass; see the module
    docstring. Working precision follows the inputs (float32 activations give float32 Gram products),
    accumulation is float64.

    Args:
        xs: L1 activations ``(n, ...)``; a list or a ``{name: tensor}`` dict (e.g. from :func:`pyprune.capture`).
        ys: L2 activations of the same ``n`` samples, or None for ``xs`` against itself.
        kernel, threshold, unbiased, flatten, method: as for :func:`cka`.

    Returns:
        float64 tensor ``(L1, L2)`` on the activations' device; ``[i, j]`` is CKA(xs[i], ys[j]).
    """
    x_list, x_names = as_layer_list(xs, "xs", flatten)
    y_list, y_names = (None, x_names) if ys is None else as_layer_list(ys, "ys", flatten)
    if y_list is not None:
        check_same_samples(x_list[0], y_list[0], "xs", "ys")
    terms = hsic_terms(x_list, y_list, kernel=kernel, threshold=threshold, unbiased=unbiased, method=method)
    return terms.cka(x_names, y_names)
