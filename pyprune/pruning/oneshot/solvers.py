"""Per-layer one-shot solvers on a weight ``W`` of shape ``(out, in)`` and its calibration input statistics.

* :func:`select_by_score`: magnitude (``|W_ij|``, compared over the whole layer) and Wanda
  (``|W_ij| * ||X_j||_2``, compared within each output row; Sun et al. 2023, Eq. 1), unstructured or N:M, through
  the fused :func:`pyprune.ops.nm_select.nm_select` kernel.
* :func:`sparsegpt`: SparseGPT (Frantar & Alistarh 2023, Algorithm 1): optimal-brain-surgeon reconstruction
  with the Cholesky factor of the inverse Hessian, lazy updates in blocks of 128 columns and the mask chosen
  adaptively per block (unstructured) or per group of ``m`` columns (N:M).
"""

from __future__ import annotations

import math

import torch

from pyprune.ops.nm_select import nm_select

SPARSEGPT_BLOCK = 128
"""Columns per lazy-update block (Frantar & Alistarh 2023, Section 3.4)."""

SPARSEGPT_DAMPING = 0.01
"""Hessian damping ``lambda`` as a fraction of the mean diagonal (the paper's 1%)."""


def count_half_up(fraction: float, n: int) -> int:
    """``floor(fraction * n + 0.5)``: how many of ``n`` go at ``fraction`` (pyprune's rounding everywhere)."""
    return math.floor(fraction * n + 0.5)


def select_by_score(
    weight: torch.Tensor,
    norms: torch.Tensor | None,
    sparsity: float,
    n_m: tuple[int, int] | None,
) -> torch.Tensor:
    """Bool ``(out, in)``, True where removed.

    Args:
        weight: ``(out, in)``.
        norms: ``(in,)`` input-feature norms ``||X_j||_2`` (Wanda: each row keeps its own best ``1 - sparsity``)
            or None (magnitude: the lowest ``round(sparsity * numel)`` of the whole layer go).
        sparsity: fraction removed (ignored with ``n_m``).
        n_m: ``(n, m)``: keep ``n`` of every ``m`` consecutive input weights of each row.
    """
    if n_m is not None:
        return nm_select(weight, norms, n_m=n_m)
    if norms is None:
        flat = weight.reshape(1, -1)
        return nm_select(flat, None, k=count_half_up(sparsity, flat.shape[1])).reshape(weight.shape)
    return nm_select(weight, norms, k=count_half_up(sparsity, weight.shape[1]))


def sparsegpt(
    weight: torch.Tensor,
    gram: torch.Tensor,
    tokens: int,
    sparsity: float,
    n_m: tuple[int, int] | None = None,
    *,
    block_size: int = SPARSEGPT_BLOCK,
    damping: float = SPARSEGPT_DAMPING,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one layer; returns ``(removed, new_weight)``, both ``(out, in)`` (``new_weight`` float64,
    zero where removed).

    The Hessian of the layer-wise reconstruction error ``||W X - W' X||^2`` is ``H = 2 X^T X / N``; columns that
    never see a nonzero input are set to zero (``H_jj = 1``) and ``lambda I`` with ``lambda = damping *
    mean(diag H)`` is added before ``U = chol(H^-1)`` (upper). In each block the saliency ``w_ij^2 / U_jj^2``
    chooses the mask: the lowest ``k_b`` over the block (the per-block counts add up to exactly
    ``round(sparsity * numel)`` for the layer), or at every ``m``-th column the ``m - n`` lowest of each group of
    the current (already updated) weights. Each column's error then updates the later columns (Eq. 3).

    Args:
        weight: ``(out, in)``, any float dtype; computed in float64.
        gram: ``(in, in)`` float64 ``X^T X`` over ``tokens`` calibration tokens.
        tokens: ``N``, > 0.
        sparsity: fraction removed (ignored with ``n_m``).
        n_m: ``(n, m)`` semi-structured pattern (``block_size`` must be a multiple of ``m``).
        block_size, damping: the lazy-update block and the relative damping ``lambda``.
    """
    if tokens <= 0:
        raise ValueError("data: the layer saw no calibration tokens")
    if n_m is not None and block_size % n_m[1]:
        raise ValueError(f"block_size: {block_size} is not a multiple of m={n_m[1]}")
    w = weight.detach().to(torch.float64).clone()
    rows, cols = w.shape
    h = gram.to(w.device, torch.float64) * (2.0 / tokens)
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += torch.eye(cols, dtype=torch.float64, device=w.device) * (damping * torch.diagonal(h).mean())
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    removed = torch.zeros_like(w, dtype=torch.bool)
    total = count_half_up(sparsity, w.numel())
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        w1, u1 = w[:, start:end].clone(), u[start:end, start:end]
        inverse_diag = 1.0 / torch.diagonal(u1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if n_m is None:
            # Exact per-layer count: block b removes round(s * cols_end * rows) - round(s * cols_start * rows).
            k = count_half_up(sparsity, end * rows) - count_half_up(sparsity, start * rows)
            scores = w1.t().reshape(1, -1)  # column-major, so each column's weights share one norm entry
            mask1 = (
                nm_select(scores, inverse_diag.repeat_interleave(rows), k=k).reshape(end - start, rows).t()
            )
        errors = torch.zeros_like(w1)
        for i in range(end - start):
            if n_m is not None and i % n_m[1] == 0:
                group = slice(i, i + n_m[1])
                mask1[:, group] = nm_select(w1[:, group], inverse_diag[group], n_m=n_m)
            column = w1[:, i]
            kept = column.masked_fill(mask1[:, i], 0.0)
            error = (column - kept) / u1[i, i]
            w1[:, i:] -= error[:, None] * u1[i, i:][None, :]
            w1[:, i] = kept
            errors[:, i] = error
        w[:, start:end] = w1
        removed[:, start:end] = mask1
        w[:, end:] -= errors @ u[start:end, end:]
    if n_m is None and int(removed.sum()) != total:
        raise RuntimeError(f"sparsegpt removed {int(removed.sum())} weights, expected {total}")
    return removed, w
