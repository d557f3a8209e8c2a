"""Linear regression fit, the baseline of Kornblith, Norouzi, Lee & Hinton 2019 ("Similarity of neural network
representations revisited", ICML, Table 1: ``R²_LR = |Q_Y^T X|_F^2 / |X|_F^2``).

``linear_regression_r2(x, y)`` is the fraction of the variance of ``x``'s (centred) neurons explained by a
least-squares fit from ``y``'s neurons with an intercept: ``Q_Y`` is an orthonormal basis of the centred column
space of ``Y``. It is *not* symmetric (it asks how well ``y`` predicts ``x``), lies in [0, 1], and is 1 whenever
``y`` has at least as many independent (non-constant) neurons as there are samples minus one, so ``y`` needs
fewer non-constant features than samples (as for CCA). Computed in float64 on the inputs' device.
"""

from __future__ import annotations

from typing import Any

import torch

from pyprune.similarity._inputs import Flatten, as_pair, centre
from pyprune.similarity.cca import orthonormal_basis


def linear_regression_r2(x: Any, y: Any, *, flatten: Flatten = "example") -> float:
    """R² of the least-squares linear fit of ``x`` from ``y`` (Kornblith et al. 2019, Table 1).

    Args:
        x: activations to be predicted ``(n, p1, ...)``, floating point (torch tensor, NumPy or CuPy array).
        y: predicting activations ``(n, p2, ...)`` of the same samples, fewer non-constant features than ``n``.
        flatten: ``"example"`` ``(n, C*H*W)`` or ``"channel"`` ``(n*H*W, C)`` for inputs with more than 2 dims.

    Returns:
        A Python float in [0, 1]; 0 when ``x`` or ``y`` is constant.

    Raises:
        ValueError: ``y`` has at least as many non-constant features as samples (the fit would be exact).
    """
    xt, yt = as_pair(x, y, flatten)
    # Constant neurons of y predict nothing beyond the intercept; drop them before counting.
    yc = centre(yt[:, ~(yt == yt[:1]).all(dim=0)])
    n, p = yc.shape
    if p >= n:
        raise ValueError(
            f"y: the regression needs more samples than predicting features, got {n} samples and {p} "
            "non-constant features (the fit would be exact and R² = 1); reduce y first, e.g. with "
            "pyprune.svd_reduce, or pass more samples"
        )
    xc = centre(xt)
    total = torch.linalg.matrix_norm(xc).square()
    if yc.shape[1] == 0 or float(total) == 0.0:
        return 0.0
    explained = torch.linalg.matrix_norm(orthonormal_basis(yc).T @ xc).square()
    return float(explained / total)
