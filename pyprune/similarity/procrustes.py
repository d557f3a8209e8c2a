"""Orthogonal Procrustes shape metrics (Williams, Kunz, Kornblith & Linderman 2021, "Generalized shape metrics
on neural representations", NeurIPS; the ``netrep`` package).

For centred representations ``Xc`` (n, p1) and ``Yc`` (n, p2), zero-padded to a common width (which changes
nothing below), the best rotation ``Q`` aligning them gives

* ``procrustes_similarity = max_Q <Xc Q, Yc>_F / (|Xc|_F |Yc|_F) = |Xc^T Yc|_* / (|Xc|_F |Yc|_F)``, in [0, 1];
* the angular shape metric ``arccos(procrustes_similarity)``, in [0, pi/2] (Williams et al., eq. 6; netrep's
  ``LinearMetric(alpha=1, score_method="angular")``), a true metric on shapes;
* the Euclidean Procrustes distance ``min_Q |Xc Q - Yc|_F = sqrt(|Xc|^2 + |Yc|^2 - 2 |Xc^T Yc|_*)`` (netrep's
  ``score_method="euclidean"``), which depends on scale; ``normalize=True`` first scales both sides to unit
  Frobenius norm, giving ``sqrt(2 - 2 procrustes_similarity)`` (the Procrustes distance of Ding, Denain &
  Steinhardt 2021).

``alpha`` in [0, 1] is netrep's partial whitening: each side becomes ``Xc Z`` with
``Z = V diag(alpha + (1 - alpha) lam^{-1/2}) V^T`` from the eigendecomposition ``Xc^T Xc = V diag(lam) V^T``
(eigenvalues clipped at 1e-7), rescaled so that the total variance is preserved. ``alpha = 1`` (the default) is
plain Procrustes; ``alpha = 0`` whitens fully, and the similarity becomes ``sum(rho) / sqrt(p1 p2)`` over the
canonical correlations ``rho`` (the mean CCA when ``p1 = p2`` and both sides have full rank).

The similarity for ``alpha = 1`` is the linear Normalized Bures Similarity, and is computed by
:func:`pyprune.nbs` (its closed form avoids the ``p1 x p2`` product when a side has more features than samples).
Everything is float64 on the inputs' device. A constant side has similarity 0 (angle pi/2), as for CKA.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

import torch

from pyprune.similarity._inputs import Flatten, as_pair, centre, is_constant
from pyprune.similarity.nbs import nbs

Score = Literal["angular", "euclidean"]
SCORES = ("angular", "euclidean")
#: netrep's ``whiten(eigval_tol=1e-7)``: covariance eigenvalues are clipped here before the inverse square root.
EIGENVALUE_FLOOR = 1e-7


def procrustes_similarity(x: Any, y: Any, *, alpha: float = 1.0, flatten: Flatten = "example") -> float:
    """Cosine of the Procrustes angle: ``|Xc^T Yc|_* / (|Xc|_F |Yc|_F)`` after optional partial whitening.

    Args:
        x: activations ``(n, p1, ...)``, floating point (torch tensor, NumPy or CuPy array).
        y: activations ``(n, p2, ...)`` of the same samples.
        alpha: partial-whitening parameter in [0, 1] (netrep); 1 is no whitening.
        flatten: how inputs with more than two dimensions become ``(samples, features)``: ``"example"``
            ``(n, C*H*W)`` or ``"channel"`` ``(n*H*W, C)``; see :func:`pyprune.flatten_activations`.

    Returns:
        A Python float in [0, 1]; 1 when ``y`` is a rotation (and, with ``alpha = 1``, isotropic scaling) of
        ``x``; 0 when a side is constant.
    """
    xw, yw = _aligned_inputs(x, y, alpha, flatten)
    if xw is None:
        return 0.0
    return nbs(xw, yw)


def procrustes_distance(
    x: Any,
    y: Any,
    *,
    score: Score = "angular",
    alpha: float = 1.0,
    normalize: bool = False,
    flatten: Flatten = "example",
) -> float:
    """Procrustes shape distance between two representations of the same ``n`` samples.

    Args:
        x, y, alpha, flatten: as for :func:`procrustes_similarity`.
        score: ``"angular"``: ``arccos`` of the similarity, in radians in [0, pi/2] (scale-free);
            ``"euclidean"``: ``min_Q |Xc Q - Yc|_F`` in the units of the activations.
        normalize: (euclidean only) scale both sides to unit Frobenius norm first, giving
            ``sqrt(2 - 2 similarity)`` in [0, sqrt(2)].

    Returns:
        A Python float; 0 for identical shapes.
    """
    if score not in SCORES:
        raise ValueError(f"score: expected one of {SCORES}, got {score!r}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
    xw, yw = _aligned_inputs(x, y, alpha, flatten)
    similarity = 0.0 if xw is None else nbs(xw, yw)
    if score == "angular":
        return math.acos(min(1.0, max(0.0, similarity)))
    if normalize:
        return math.sqrt(max(0.0, 2.0 - 2.0 * similarity))
    x_norm = 0.0 if xw is None else float(torch.linalg.matrix_norm(xw))
    y_norm = 0.0 if yw is None else float(torch.linalg.matrix_norm(yw))
    # Constant sides still have a (zero) centred norm; the formula then reduces to the other side's norm.
    return math.sqrt(max(0.0, x_norm**2 + y_norm**2 - 2.0 * similarity * x_norm * y_norm))


def _aligned_inputs(
    x: Any, y: Any, alpha: float, flatten: Flatten
) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """Centred, partially whitened float64 ``(n, p)`` sides; ``(None, None)`` when a side is constant."""
    if not (isinstance(alpha, numbers.Real) and not isinstance(alpha, bool) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    xt, yt = as_pair(x, y, flatten)
    if is_constant(xt) or is_constant(yt):
        return None, None
    return _partial_whiten(centre(xt), alpha), _partial_whiten(centre(yt), alpha)


def _partial_whiten(xc: torch.Tensor, alpha: float) -> torch.Tensor:
    # netrep returns early for alpha within eigval_tol of 1, so no eigendecomposition for plain Procrustes.
    if alpha > 1.0 - EIGENVALUE_FLOOR:
        return xc
    lam, v = torch.linalg.eigh(xc.T @ xc)
    lam = lam.clamp(min=EIGENVALUE_FLOOR)
    d = alpha + (1.0 - alpha) * lam.rsqrt()
    transformed_variance = (alpha**2 * lam + 2 * alpha * (1 - alpha) * lam.sqrt() + (1 - alpha) ** 2).sum()
    d = d * torch.sqrt(lam.sum() / transformed_variance)
    return xc @ ((v * d) @ v.T)
