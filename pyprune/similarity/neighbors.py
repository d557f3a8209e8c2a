"""Nearest-neighbour alignment: mutual k-NN and CKNNA (Huh, Cheung, Wang & Isola 2024, "The Platonic
Representation Hypothesis", ICML, section 2 and appendix A; their code is ``minyoungg/platonic-rep``).

Both compare which samples are close to which. With ``normalize=True`` (the default, as in the paper's
``compute_score``) every sample's feature vector is scaled to unit length first, so neighbours are by cosine
similarity. For sample ``i``, ``N_X(i)`` are the ``k`` other samples with the largest inner products
``<x_i, x_j>`` (the sample itself excluded).

* ``mutual_knn = mean_i |N_X(i) ∩ N_Y(i)| / k``, in [0, 1] (paper eq. 11).
* ``cknna``: CKA restricted to mutual neighbours. With ``K = X X^T``, ``L = Y Y^T`` (not centred: the HSIC
  estimator centres) and ``alpha_ij = 1[j in N_X(i) and j in N_Y(i)]``,
  ``CKNNA = HSIC(alpha∘K, alpha∘L) / sqrt(HSIC(alpha_X∘K, alpha_X∘K) HSIC(alpha_Y∘L, alpha_Y∘L))``, where
  ``alpha_X`` uses ``N_X`` twice (paper eq. 12-14). ``unbiased=True`` (the paper's default) uses Song et al.'s
  HSIC_1 exactly as the platonic-rep code writes it for these non-symmetric matrices:
  ``[sum(A ∘ B^T) + sum(A) sum(B) / ((n-1)(n-2)) - 2/(n-2) 1^T A B 1] / (n(n-3))``; ``unbiased=False`` uses
  ``tr(A H B H) / (n-1)^2``, and then a sample may count itself as a neighbour, as in the original code.

Neighbours among exactly tied inner products are chosen by ``torch.topk``, in an unspecified order. The Gram
matrices are formed by :func:`pyprune.ops.linear_gram` (half a GEMM); the rest is ``O(n^2)`` in float64.
A sample whose features are all zero stays zero under ``normalize`` (it has no direction) and so is nobody's
preferred neighbour.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import torch

from pyprune.ops import linear_gram
from pyprune.similarity._inputs import Flatten, as_pair


def mutual_knn(x: Any, y: Any, *, k: int = 10, normalize: bool = True, flatten: Flatten = "example") -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024, eq. 11).

    Args:
        x: activations ``(n, p1, ...)``, floating point (torch tensor, NumPy or CuPy array).
        y: activations ``(n, p2, ...)`` of the same samples.
        k: neighbours per sample, ``1 <= k <= n - 1`` (the paper uses 10).
        normalize: scale each sample's features to unit L2 norm first (cosine neighbours).
        flatten: ``"example"`` ``(n, C*H*W)`` or ``"channel"`` ``(n*H*W, C)`` for inputs with more than 2 dims.

    Returns:
        A Python float in [0, 1]: the mean fraction of each sample's ``k`` neighbours shared by both sides.
    """
    gx, gy = _inner_products(x, y, k, normalize, flatten, minimum_k=1)
    neighbours_x = _neighbour_mask(gx, k, exclude_self=True)
    neighbours_y = _neighbour_mask(gy, k, exclude_self=True)
    return float((neighbours_x & neighbours_y).sum(dim=1).double().mean() / k)


def cknna(
    x: Any,
    y: Any,
    *,
    k: int = 10,
    normalize: bool = True,
    unbiased: bool = True,
    flatten: Flatten = "example",
) -> float:
    """Centred kernel nearest-neighbour alignment, CKNNA (Huh et al. 2024, eq. 12-14).

    Args:
        x, y, k, normalize, flatten: as for :func:`mutual_knn`; ``k >= 2``.
        unbiased: Song et al.'s unbiased HSIC_1 (needs ``n >= 4``), the paper's choice; else biased HSIC.

    Returns:
        A Python float, 1 for identical neighbourhoods and kernels; NaN with a ``RuntimeWarning`` when a side's
        restricted self-HSIC is not positive (its CKNNA is undefined; use more samples or a larger ``k``).
    """
    if not isinstance(unbiased, bool):
        raise TypeError(f"unbiased: expected a bool, got {type(unbiased).__name__}")
    gx, gy = _inner_products(x, y, k, normalize, flatten, minimum_k=2)
    n = gx.shape[0]
    if unbiased and n < 4:
        raise ValueError(f"x and y: unbiased HSIC needs at least 4 samples, got {n}")
    # The unbiased estimator ignores the diagonal, so a sample never counts as its own neighbour there.
    mask_x = _neighbour_mask(gx, k, exclude_self=unbiased).double()
    mask_y = _neighbour_mask(gy, k, exclude_self=unbiased).double()
    mutual = mask_x * mask_y
    hsic = _masked_hsic_unbiased if unbiased else _masked_hsic_biased
    cross = hsic(mutual * gx, mutual * gy)
    self_x = hsic(mask_x * gx, mask_x * gx)
    self_y = hsic(mask_y * gy, mask_y * gy)
    if self_x <= 0 or self_y <= 0:
        warnings.warn(
            f"cknna: the HSIC of a side with itself restricted to its {k} nearest neighbours is <= 0 "
            f"(x: {self_x:.3g}, y: {self_y:.3g}); CKNNA is undefined and returned as NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        return math.nan
    return cross / math.sqrt(self_x * self_y)


def _inner_products(
    x: Any, y: Any, k: int, normalize: bool, flatten: Flatten, minimum_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated full float64 ``(n, n)`` matrices ``X X^T`` and ``Y Y^T`` (rows unit-normalised if asked)."""
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
    xt, yt = as_pair(x, y, flatten)
    n = xt.shape[0]
    if not (isinstance(k, numbers.Integral) and not isinstance(k, bool) and minimum_k <= k <= n - 1):
        raise ValueError(f"k: expected an integer in [{minimum_k}, n - 1 = {n - 1}], got {k!r}")
    return full_gram(_unit_rows(xt) if normalize else xt), full_gram(_unit_rows(yt) if normalize else yt)


def full_gram(x: torch.Tensor) -> torch.Tensor:
    """The full symmetric ``x x^T`` ``(n, n)`` of ``x`` (n, p), from the lower triangle that
    :func:`pyprune.ops.linear_gram` computes with half the multiply-adds."""
    lower = torch.tril(linear_gram(x.contiguous()))
    return lower + torch.tril(lower, -1).T


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    return torch.where(norms > 0, x / torch.where(norms > 0, norms, 1.0), 0.0)


def _neighbour_mask(gram: torch.Tensor, k: int, exclude_self: bool) -> torch.Tensor:
    """Boolean ``(n, n)``: ``[i, j]`` when ``j`` is among the ``k`` largest entries of row ``i``."""
    scores = gram.clone()
    if exclude_self:
        scores.fill_diagonal_(-math.inf)
    indices = torch.topk(scores, k, dim=1).indices
    return torch.zeros_like(gram, dtype=torch.bool).scatter_(1, indices, True)


def _masked_hsic_unbiased(a: torch.Tensor, b: torch.Tensor) -> float:
    n = a.shape[0]
    a = a.clone().fill_diagonal_(0.0)
    b = b.clone().fill_diagonal_(0.0)
    trace_term = (a * b.T).sum()
    # 1^T A B 1 = (A^T 1) . (B 1): O(n^2) instead of the n^3 product.
    cross_term = a.sum(dim=0) @ b.sum(dim=1)
    value = trace_term + a.sum() * b.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross_term
    return float(value / (n * (n - 3)))


def _masked_hsic_biased(a: torch.Tensor, b: torch.Tensor) -> float:
    n = a.shape[0]
    # tr(A H B H) = sum(A ∘ (H B H)^T); H B H by row and column means, never an n x n product.
    b_centred = b - b.mean(dim=0, keepdim=True) - b.mean(dim=1, keepdim=True) + b.mean()
    return float((a * b_centred.T).sum() / (n - 1) ** 2)
