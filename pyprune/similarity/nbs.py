"""Normalized Bures Similarity (NBS) between two layers or two kernel matrices.

Definition (Tang, Maddox, Dickens, Diethe & Damianou 2020, "Similarity of neural networks with gradients",
arXiv:2003.11498): for PSD Gram matrices ``K``, ``L`` of ``n`` samples, ``H = I - 11^T/n``,
``Kbar = HKH`` and ``Lbar = HLH``,

    ``NBS(K, L) = tr((Kbar^{1/2} Lbar Kbar^{1/2})^{1/2}) / sqrt(tr(Kbar) tr(Lbar))``,

the fidelity between the trace-normalised centred kernels; it lies in ``[0, 1]``, equals 1 for identical
representations and is invariant to orthogonal transforms and isotropic scaling of either side.

For the linear kernel ``K = X X^T`` it has the closed form ``||Xc^T Yc||_* / (||Xc||_F ||Yc||_F)`` (nuclear
norm over Frobenius norms of the centred features), which :func:`nbs` uses instead of an ``n x n``
eigendecomposition. Other kernels go through :func:`nbs_kernel` (``O(n^3)``).

Degenerate inputs: a representation whose samples are all identical has a zero centred kernel and no defined
NBS; pyprune returns 0 for it, as for CKA. Everything is computed in float64 on the inputs' device.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

import torch

from pyprune.ops.reference import numpy_median
from pyprune.similarity._inputs import Flatten, as_pair, centre, is_constant, to_tensor, to_unit_peak

KERNELS = ("linear", "rbf")


def nbs(
    x: Any,
    y: Any,
    *,
    kernel: Literal["linear", "rbf"] = "linear",
    threshold: float = 0.5,
    flatten: Flatten = "example",
) -> float:
    """Normalized Bures Similarity of two representations of the same ``n`` samples.

    Args:
        x: activations ``(n, p1, ...)``, floating point (torch tensor, NumPy or CuPy array).
        y: activations ``(n, p2, ...)`` of the same samples.
        kernel: ``"linear"`` (closed form, ``O(n p1 p2)``, or ``O(n^2 p)`` for a side with ``p > n``) or
            ``"rbf"``: ``K_ab = exp(-|x_a - x_b|^2 / (2 t^2 m))`` with ``t = threshold`` and ``m`` the median
            of all ``n^2`` squared distances, zero diagonal included (the Kornblith et al. / Google
            convention), then :func:`nbs_kernel`.
        threshold: RBF bandwidth as a fraction of the median distance; ignored for the linear kernel.
        flatten: how inputs with more than two dimensions become ``(samples, features)``: ``"example"`` gives
            ``(n, C*H*W)``, ``"channel"`` gives ``(n*H*W, C)``.

    Returns:
        A Python float in ``[0, 1]``; 0 when either side is constant.

    Raises:
        ValueError: unknown kernel, bad threshold, or (RBF) a median squared distance of 0, i.e. more than
            half of the sample pairs coincide, which leaves the bandwidth undefined.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    if not (isinstance(threshold, numbers.Real) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold: expected a finite number > 0, got {threshold!r}")
    xt, yt = as_pair(x, y, flatten)
    if is_constant(xt) or is_constant(yt):
        return 0.0
    if kernel == "rbf":
        return _nbs_grams(_rbf_gram(xt, threshold, "x"), _rbf_gram(yt, threshold, "y"))
    # NBS is scale-invariant: exact power-of-two rescaling keeps the products below inside float64's range.
    xc, yc = _compact(centre(to_unit_peak(xt))), _compact(centre(to_unit_peak(yt)))
    nuclear = torch.linalg.matrix_norm(xc.T @ yc, ord="nuc")
    return float(nuclear / (torch.linalg.matrix_norm(xc) * torch.linalg.matrix_norm(yc)))


def nbs_kernel(K: Any, L: Any) -> float:
    """Normalized Bures Similarity of two kernel (Gram) matrices of the same ``n`` samples.

    Both are double-centred here and factored by ``eigh`` as ``Kbar = A A^T``, ``Lbar = B B^T``, with
    negative and round-off-sized eigenvalues set to 0 (so a kernel that is only nearly PSD is accepted); then
    ``NBS = ||A^T B||_* / (||A||_F ||B||_F)``. This equals ``sum_i sqrt(lambda_i) / sqrt(tr Kbar tr Lbar)``
    with ``lambda`` the eigenvalues of ``Kbar^{1/2} Lbar Kbar^{1/2}``, but does not lose half the digits to
    the square roots. Cost ``O(n^3)``.

    Args:
        K: ``(n, n)`` symmetric PSD kernel matrix, floating point (torch tensor, NumPy or CuPy array), e.g.
            ``X @ X.T`` (centring is done here, so uncentred Grams are fine).
        L: ``(n, n)`` kernel matrix of the same samples, on the same device.

    Returns:
        A Python float in ``[0, 1]``; 0 when a centred kernel is zero (every sample represented identically).

    Raises:
        TypeError: not a floating-point array.
        ValueError: not square, different sizes or devices, not symmetric (beyond the square root of the
            dtype's machine epsilon, relative to the largest entry), or containing NaN/Inf.
    """
    kt, lt = _as_kernel(K, "K"), _as_kernel(L, "L")
    if kt.shape != lt.shape:
        raise ValueError(
            f"K and L: expected kernels of the same size, got {tuple(kt.shape)} and {tuple(lt.shape)}"
        )
    if kt.device != lt.device:
        raise ValueError(f"K and L: expected the same device, got {kt.device} and {lt.device}")
    return _nbs_grams(kt, lt)


def _as_kernel(k: Any, name: str) -> torch.Tensor:
    """``k`` as a symmetric float64 ``(n, n)`` tensor, after checking it is one."""
    t = to_tensor(k, name)
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] < 2:
        raise ValueError(
            f"{name}: expected a square (n, n) kernel matrix with n >= 2 (one sample has no similarity), got shape {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or Inf values")
    tolerance = math.sqrt(torch.finfo(t.dtype).eps) * float(t.abs().max())
    asymmetry = float((t - t.T).abs().max())
    if asymmetry > tolerance:
        raise ValueError(
            f"{name}: expected a symmetric kernel matrix, got max |{name} - {name}^T| = {asymmetry:.3g} "
            f"(tolerance {tolerance:.3g})"
        )
    t = to_unit_peak(t.double())  # NBS ignores the kernels' scale; this keeps products inside float64's range
    return (t + t.T) / 2


def _nbs_grams(k: torch.Tensor, l_gram: torch.Tensor) -> float:
    """NBS of two symmetric float64 ``(n, n)`` Grams, not yet centred."""
    # With Kbar = A A^T and Lbar = B B^T, tr((Kbar^{1/2} Lbar Kbar^{1/2})^{1/2}) = ||A^T B||_* and
    # tr(Kbar) = ||A||_F^2: the linear closed form applied to the factors. Singular values of A^T B keep full
    # precision where square roots of eigvalsh(R Lbar R) would turn round-off into sqrt(eps)-sized terms, and
    # taking both traces from the same factors keeps the ratio exactly 1 for proportional kernels.
    a, b = _centred_factor(k), _centred_factor(l_gram)
    if a.shape[1] == 0 or b.shape[1] == 0:
        return 0.0
    nuclear = torch.linalg.svdvals(a.T @ b).sum()
    return float(nuclear / (torch.linalg.matrix_norm(a) * torch.linalg.matrix_norm(b)))


def _centred_factor(k: torch.Tensor) -> torch.Tensor:
    """``A`` (n, r) with ``A A^T = HKH`` over the eigenpairs above round-off level; ``r = 0`` when ``HKH`` is
    round-off only (every sample represented identically)."""
    n = k.shape[0]
    k_bar = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
    w, v = torch.linalg.eigh(k_bar)
    # Centring leaves errors of order eps * max|K| in every entry (a constant kernel c 11^T does not become
    # exactly 0), so eigenvalues up to n times that, or within eigh's own round-off, are noise; their square
    # roots would be sqrt(eps)-sized columns of A.
    eps = torch.finfo(k.dtype).eps
    noise = max(16 * n * eps * float(k.abs().max()), n * eps * float(w.max()))
    keep = w > noise
    return v[:, keep] * w[keep].sqrt()


def _compact(xc: torch.Tensor) -> torch.Tensor:
    """An ``(n, min(n, p))`` matrix with the same Gram ``xc xc^T`` as ``xc`` (n, p).

    The nuclear norm of ``Xc^T Yc`` and the Frobenius norms only depend on the Grams, so a side with more
    features than samples is replaced by ``U S`` from its thin SVD: this avoids forming a ``p1 x p2`` product.
    """
    if xc.shape[1] <= xc.shape[0]:
        return xc
    u, s, _ = torch.linalg.svd(xc, full_matrices=False)
    return u * s


def _rbf_gram(x: torch.Tensor, threshold: float, name: str) -> torch.Tensor:
    """RBF Gram ``(n, n)`` of ``x`` (n, p) float64 with the median-distance bandwidth of :func:`nbs`."""
    # Distances do not depend on the mean; centring first avoids cancellation in |a|^2 + |b|^2 - 2 a.b.
    xc = centre(to_unit_peak(x))
    gram = xc @ xc.T
    norms = gram.diagonal()
    distances = (norms[:, None] + norms[None, :] - 2 * gram).clamp(min=0)
    distances.fill_diagonal_(0)
    median = numpy_median(distances.reshape(-1))
    if median == 0:
        raise ValueError(
            f"{name}: the RBF bandwidth is undefined because the median squared distance between samples "
            "is 0 (more than half of the sample pairs coincide); use kernel='linear'"
        )
    return torch.exp(-distances / (2 * threshold**2 * median))
