"""Representational similarity analysis, RSA (Kriegeskorte, Mur & Bandettini 2008, "Representational
similarity analysis - connecting the branches of systems neuroscience", Front. Syst. Neurosci.).

Each representation is summarised by its representational dissimilarity matrix (RDM), ``(n, n)``, one entry per
pair of samples; two representations are compared by the correlation of their RDMs' off-diagonal upper
triangles (``n(n-1)/2`` entries each):

* ``metric="correlation"`` (the usual choice): ``RDM_ij = 1 - pearson(x_i, x_j)``, the correlation distance
  between the two samples' feature vectors (each needs at least two features that are not all equal);
* ``metric="euclidean"``: ``RDM_ij = |x_i - x_j|_2``.

``compare="spearman"`` (rank correlation, ties get their average rank, the usual choice because RDMs from
different metrics or layers need not be linearly related) or ``"pearson"``.

The RDMs come from Gram matrices formed by :func:`pyprune.ops.linear_gram` (half a GEMM) in float64.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from pyprune.similarity._inputs import Flatten, as_pair, as_representation, centre
from pyprune.similarity.neighbors import full_gram

RdmMetric = Literal["correlation", "euclidean"]
Comparison = Literal["spearman", "pearson"]
RDM_METRICS = ("correlation", "euclidean")
COMPARISONS = ("spearman", "pearson")


def rdm(x: Any, *, metric: RdmMetric = "correlation", flatten: Flatten = "example") -> torch.Tensor:
    """Representational dissimilarity matrix of one representation.

    Args:
        x: activations ``(n, p, ...)``, floating point (torch tensor, NumPy or CuPy array).
        metric: ``"correlation"`` (``1 - Pearson r`` of two samples' features, in [0, 2]) or ``"euclidean"``
            (distance in the activations' units).
        flatten: ``"example"`` ``(n, C*H*W)`` or ``"channel"`` ``(n*H*W, C)`` for inputs with more than 2 dims.

    Returns:
        float64 ``(n, n)`` symmetric tensor with a zero diagonal, on the input's device.

    Raises:
        ValueError: ``metric="correlation"`` and a sample's features are all equal (its correlation with any
            other sample is undefined; use ``metric="euclidean"``).
    """
    return _rdm(as_representation(x, "x", flatten).double(), metric, "x")


def rsa(
    x: Any,
    y: Any,
    *,
    metric: RdmMetric = "correlation",
    compare: Comparison = "spearman",
    flatten: Flatten = "example",
) -> float:
    """RSA score: correlation between the RDMs of two representations of the same ``n >= 3`` samples.

    Args:
        x: activations ``(n, p1, ...)``; y: activations ``(n, p2, ...)`` of the same samples.
        metric: RDM dissimilarity, as for :func:`rdm`.
        compare: ``"spearman"`` or ``"pearson"`` correlation of the upper triangles.
        flatten: as for :func:`rdm`.

    Returns:
        A Python float in [-1, 1]; 0 when an RDM is constant (e.g. every sample represented identically under
        ``"euclidean"``), where the correlation is undefined.
    """
    if compare not in COMPARISONS:
        raise ValueError(f"compare: expected one of {COMPARISONS}, got {compare!r}")
    xt, yt = as_pair(x, y, flatten)
    n = xt.shape[0]
    if n < 3:
        raise ValueError(f"x and y: RSA needs at least 3 samples (3 pairs), got {n}")
    rows, cols = torch.triu_indices(n, n, offset=1, device=xt.device)
    dx = _rdm(xt, metric, "x")[rows, cols]
    dy = _rdm(yt, metric, "y")[rows, cols]
    if compare == "spearman":
        dx, dy = average_ranks(dx), average_ranks(dy)
    return _pearson(dx, dy)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, tied values sharing their average rank (``scipy.stats.rankdata``)."""
    order = torch.argsort(values, stable=True)
    ordered = values[order]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group = starts.cumsum(dim=0) - 1
    counts = torch.bincount(group).double()
    last_rank = counts.cumsum(dim=0)
    ranks = torch.empty(values.shape, dtype=torch.float64, device=values.device)
    ranks[order] = (last_rank - (counts - 1) / 2)[group]
    return ranks


def _rdm(x: torch.Tensor, metric: str, name: str) -> torch.Tensor:
    if metric not in RDM_METRICS:
        raise ValueError(f"metric: expected one of {RDM_METRICS}, got {metric!r}")
    if metric == "correlation":
        if x.shape[1] < 2:
            raise ValueError(f"{name}: the correlation RDM needs at least 2 features per sample, got 1")
        rows = x - x.mean(dim=1, keepdim=True)
        norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        flat = (norms == 0).flatten().nonzero().flatten()
        if flat.numel():
            raise ValueError(
                f"{name}: sample(s) {flat[:5].tolist()} have all features equal, so their correlation with other "
                "samples is undefined; use metric='euclidean'"
            )
        gram = full_gram(rows / norms)
        result = 1.0 - gram
    else:
        # Centring first avoids cancellation in |a|^2 + |b|^2 - 2 a.b (distances do not depend on the mean).
        gram = full_gram(centre(x))
        norms = gram.diagonal()
        # Round-off can leave tiny negative squared distances between (near-)coincident samples.
        result = (norms[:, None] + norms[None, :] - 2.0 * gram).clamp(min=0.0).sqrt()
    return result.fill_diagonal_(0.0)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    if float(denominator) == 0.0:
        return 0.0
    return float((a @ b) / denominator)
