"""Canonical correlation analysis between two layers: CCA, mean CCA, R²_CCA, SVCCA and PWCCA.

Definitions (Hotelling 1936; Raghu et al. 2017, "SVCCA", NeurIPS; Morcos, Raghu & Bengio 2018, "Insights on
representational similarity in neural networks with canonical correlation", NeurIPS): for ``X`` (n, p1)
and ``Y`` (n, p2) with centred columns ``Xc``, ``Yc`` and orthonormal bases ``Qx``, ``Qy`` of their column
spaces, the canonical correlations ``rho_1 >= ... >= rho_m`` are the singular values of ``Qx^T Qy`` (the
cosines of the principal angles between the two column spaces), ``m = min(rank Xc, rank Yc)``.

* mean CCA ``= mean(rho)``; ``truncate=0.98`` reproduces ``google/svcca``'s ``"mean"``, which averages only
  the shortest prefix of ``rho`` holding 98% of ``sum(rho)``;
* ``R²_CCA = mean(rho^2)`` (Kornblith et al. 2019);
* SVCCA: mean CCA after reducing each side to the principal directions explaining ``keep`` of its variance;
* PWCCA: ``sum_i alpha_i rho_i`` with weights from how much of ``X``'s neurons each canonical variate accounts
  for. It is *not* symmetric: the weights come from the first argument.

Conventions:

* Features (columns) whose value is the same for every sample are dropped first: they carry no correlation.
  A side with nothing left has no canonical correlations: :func:`cca` returns an empty tensor and the scalar
  summaries return 0.
* CCA needs more samples than (non-constant) features on each side, else every correlation is trivially 1
  (the centred column space is the whole sample space); :func:`cca`, :func:`mean_cca`, :func:`r2_cca` and
  :func:`pwcca` raise ``ValueError`` and :func:`svcca` (which reduces the dimension first) is the usual
  remedy. Values are inflated well before that limit, so keep ``n`` a comfortable multiple of the feature
  count.
* Bases come from an SVD with a relative rank tolerance, so rank-deficient inputs (duplicated or linearly
  dependent neurons) give ``m < min(p1, p2)`` correlations rather than NaN. The tolerance is NumPy's
  ``matrix_rank`` rule with the machine epsilon of the dtype each input *arrived in*: float32 activations
  resolve only about 7 digits, and directions below that are their rounding, not neurons.
* At least 2 samples are needed (``ValueError`` otherwise). Each side is rescaled by an exact power of two
  (and each neuron again before its norm is taken), so activations of any finite magnitude give the same
  result as moderate ones.
* Everything is computed in float64 on the inputs' device.
"""

from __future__ import annotations

import numbers
from typing import Any, Literal, overload

import torch

from pyprune.similarity._inputs import (
    Flatten,
    as_pair,
    as_representation,
    centre,
    input_eps,
    peak_exponent,
    power_of_two_factors,
    to_unit_peak,
)

_FLOAT64_EPS = torch.finfo(torch.float64).eps


@overload
def cca(x: Any, y: Any, *, flatten: Flatten = ..., return_variates: Literal[False] = ...) -> torch.Tensor: ...


@overload
def cca(
    x: Any, y: Any, *, flatten: Flatten = ..., return_variates: Literal[True]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


def cca(
    x: Any, y: Any, *, flatten: Flatten = "example", return_variates: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canonical correlations between two representations of the same ``n`` samples.

    Args:
        x: activations ``(n, p1, ...)``, floating point (torch tensor, NumPy or CuPy array).
        y: activations ``(n, p2, ...)`` of the same samples.
        flatten: how inputs with more than two dimensions become ``(samples, features)``: ``"example"`` gives
            ``(n, C*H*W)``, ``"channel"`` gives ``(n*H*W, C)`` (the SVCCA convention for conv layers).
        return_variates: also return the canonical variates.

    Returns:
        ``rho``: float64 tensor ``(m,)`` on the inputs' device, descending, in ``[0, 1]``, with
        ``m = min(rank Xc, rank Yc)`` (empty when a side is constant). With ``return_variates=True``, the
        tuple ``(rho, hx, hy)`` where ``hx`` and ``hy`` are ``(n, m)`` with orthonormal columns in the
        centred column spaces of ``X`` and ``Y``, and ``hx[:, i] @ hy[:, i] == rho[i]``.

    Raises:
        ValueError: a side has at least as many non-constant features as samples (use :func:`svcca`).
    """
    xt, yt = as_pair(x, y, flatten)
    rho, hx, hy = _canonical(_prepare(xt, "x"), _prepare(yt, "y"), input_eps(x), input_eps(y))
    return (rho, hx, hy) if return_variates else rho


def mean_cca(x: Any, y: Any, *, truncate: float | None = None, flatten: Flatten = "example") -> float:
    """Mean canonical correlation (Raghu et al. 2017), in ``[0, 1]``; 1 for identical inputs.

    Args:
        x, y, flatten: as for :func:`cca`.
        truncate: ``None`` averages all correlations. A fraction in ``(0, 1]`` averages only the shortest
            prefix of the descending correlations whose sum is at least ``truncate * sum(rho)``;
            ``truncate=0.98`` is ``google/svcca``'s ``get_cca_similarity(...)["mean"]``.

    Returns:
        A Python float; 0 when a side is constant.
    """
    _check_fraction(truncate, "truncate", allow_none=True)
    return _truncated_mean(cca(x, y, flatten=flatten), truncate)


def r2_cca(x: Any, y: Any, *, flatten: Flatten = "example") -> float:
    """Mean squared canonical correlation ``R²_CCA`` (Kornblith et al. 2019, table 1), in ``[0, 1]``.

    Args: as for :func:`cca`. Returns a Python float; 0 when a side is constant.
    """
    rho = cca(x, y, flatten=flatten)
    return float(rho.square().mean()) if rho.numel() else 0.0


def svcca(
    x: Any, y: Any, *, keep: float = 0.99, truncate: float | None = None, flatten: Flatten = "example"
) -> float:
    """SVCCA (Raghu et al. 2017): mean CCA after reducing each side with :func:`svd_reduce`.

    The reduction leaves at most ``rank <= n - 1`` components per side, so this accepts inputs with more
    features than samples; the result is still only meaningful when the kept dimension is well below ``n``.

    Args:
        x, y, flatten: as for :func:`cca`.
        keep: fraction of each side's variance to keep, in ``(0, 1]``.
        truncate: as for :func:`mean_cca`; ``google/svcca``'s ``get_cca_similarity`` (as called by
            Ansuini et al.'s ``pruned_layer_similarity`` code) uses ``0.98``.

    Returns:
        A Python float in ``[0, 1]``; 0 when a side is constant.
    """
    _check_fraction(keep, "keep")
    _check_fraction(truncate, "truncate", allow_none=True)
    xt, yt = as_pair(x, y, flatten)
    eps_x, eps_y = input_eps(x), input_eps(y)
    rho, _, _ = _canonical(
        _prepare(_svd_reduce(xt, keep, eps_x), "x"), _prepare(_svd_reduce(yt, keep, eps_y), "y"), eps_x, eps_y
    )
    return _truncated_mean(rho, truncate)


def pwcca(x: Any, y: Any, *, flatten: Flatten = "example") -> float:
    """Projection-weighted CCA (Morcos, Raghu & Bengio 2018), in ``[0, 1]``; 1 for identical inputs.

    ``PWCCA = sum_i alpha_i rho_i`` with ``alpha_i ∝ sum_j |h_i^T xc_j|``: ``h_i`` the orthonormal canonical
    variates of ``x`` and ``xc_j`` its centred neurons. The weights come from ``x`` only, so
    ``pwcca(x, y) != pwcca(y, x)`` in general; average both orders for a symmetric score. Unlike
    ``google/svcca``'s ``pwcca.py`` the variates are the true (whitened) canonical variates, the neurons are
    centred, and the side is always the first argument rather than the one with fewer neurons.

    Args: as for :func:`cca`. Returns a Python float; 0 when a side is constant.
    """
    xt, yt = as_pair(x, y, flatten)
    xc = _prepare(xt, "x")
    rho, hx, _ = _canonical(xc, _prepare(yt, "y"), input_eps(x), input_eps(y))
    if rho.numel() == 0:
        return 0.0
    alpha = (hx.T @ xc).abs().sum(dim=1)
    return float((alpha * rho).sum() / alpha.sum())


def svd_reduce(x: Any, keep: float = 0.99, *, flatten: Flatten = "example") -> torch.Tensor:
    """Project centred activations on their top principal directions (SVCCA step 1).

    With ``Xc = U S V^T`` (thin SVD) and variance fractions ``v_i = s_i² / sum(s²)``, keeps
    ``k = #{i : v_1 + ... + v_i <= keep} + 1`` components, capped at the numerical rank of ``Xc`` (so
    ``keep=1`` never returns round-off directions), and returns ``U[:, :k] diag(s[:k])``: the coordinates of
    the samples in the top ``k`` principal directions. Any shape is accepted, including ``n <= p``.

    Args:
        x: activations ``(n, p, ...)``, floating point.
        keep: fraction of the variance to keep, in ``(0, 1]``.
        flatten: as for :func:`cca`.

    Returns:
        float64 tensor ``(n, k)`` on the input's device, columns in decreasing order of variance; ``(n, 0)``
        when ``x`` is constant.
    """
    _check_fraction(keep, "keep")
    return _svd_reduce(as_representation(x, "x", flatten).double(), keep, input_eps(x))


def _svd_reduce(x: torch.Tensor, keep: float, eps: float) -> torch.Tensor:
    # Constant columns are dropped rather than centred: their centring residue would pass a rank tolerance
    # that is relative to a matrix made of nothing else.
    # Exact power-of-two scaling keeps the SVD of extreme-magnitude activations inside float64's range; the
    # singular values are scaled back at the end.
    x = _non_constant(x)
    exponent = peak_exponent(x)
    u, s, _ = torch.linalg.svd(centre(to_unit_peak(x)), full_matrices=False)
    rank = _numerical_rank(s, x.shape, eps)
    if rank == 0:
        return u[:, :0]
    variance = s.square()
    fraction = variance.cumsum(dim=0) / variance.sum()
    k = min(int((fraction <= keep).sum()) + 1, rank)
    s = s[:k]
    for f in power_of_two_factors(-exponent):
        s = s * f
    return u[:, :k] * s


def _prepare(x: torch.Tensor, name: str) -> torch.Tensor:
    """Centred non-constant columns of ``x`` (n, p) float64, after checking there are fewer than ``n``."""
    x = _non_constant(x)
    n, p = x.shape
    if p >= n:
        raise ValueError(
            f"{name}: CCA needs more samples than features, got {n} samples and {p} non-constant features; "
            "use svcca, which first reduces each side to its top principal directions, or pass more samples"
        )
    return centre(to_unit_peak(x))


def _non_constant(x: torch.Tensor) -> torch.Tensor:
    return x[:, ~(x == x[:1]).all(dim=0)]


def _canonical(
    xc: torch.Tensor, yc: torch.Tensor, eps_x: float, eps_y: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Canonical correlations ``(m,)`` and variates ``(n, m)`` of two centred, constant-free inputs whose
    values resolve relative differences of ``eps_x`` and ``eps_y``."""
    n = xc.shape[0]
    if xc.shape[1] == 0 or yc.shape[1] == 0:
        empty = xc.new_zeros(n, 0)
        return xc.new_zeros(0), empty, empty.clone()
    qx, qy = orthonormal_basis(xc, eps_x), orthonormal_basis(yc, eps_y)
    u, rho, vh = torch.linalg.svd(qx.T @ qy, full_matrices=False)
    # Cosines of principal angles; round-off can push the largest just above 1.
    return rho.clamp(max=1.0), qx @ u, qy @ vh.T


def orthonormal_basis(xc: torch.Tensor, eps: float = _FLOAT64_EPS) -> torch.Tensor:
    """Orthonormal basis ``(n, r)`` of the column space of ``xc``, ``r`` its numerical rank at resolution
    ``eps``."""
    # Unit columns first so that the rank decision, like CCA itself, does not depend on each neuron's scale:
    # a tiny but genuine neuron is kept, while a linear dependency between neurons is still detected. Each
    # column is first brought to a peak in [0.5, 1) by exact powers of two (two steps keep every factor
    # finite), so that its sum of squares neither underflows nor overflows.
    exponent = torch.frexp(xc.abs().amax(dim=0)).exponent.to(xc.dtype)
    half = torch.floor(exponent / 2)
    unit = xc * torch.exp2(-half) * torch.exp2(half - exponent)
    unit = unit / torch.linalg.vector_norm(unit, dim=0)
    u, s, _ = torch.linalg.svd(unit, full_matrices=False)
    return u[:, : _numerical_rank(s, xc.shape, eps)]


def _numerical_rank(s: torch.Tensor, shape: torch.Size, eps: float) -> int:
    """Number of singular values above ``s_max * max(n, p) * eps`` (NumPy's ``matrix_rank`` rule, with the
    resolution ``eps`` of the data rather than of the float64 they are computed in)."""
    if s.numel() == 0:
        return 0
    return int((s > s[0] * max(shape) * eps).sum())


def _truncated_mean(rho: torch.Tensor, truncate: float | None) -> float:
    if rho.numel() == 0:
        return 0.0
    total = rho.sum()
    if truncate is not None and total > 0:
        # google/svcca's sum_threshold: the first prefix length whose share of the total reaches `truncate`.
        k = int((rho.cumsum(dim=0) / total < truncate).sum()) + 1
        rho = rho[: min(k, rho.numel())]
    return float(rho.mean())


def _check_fraction(value: float | None, name: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 < value <= 1):
        expected = "None or a fraction in (0, 1]" if allow_none else "a fraction in (0, 1]"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
