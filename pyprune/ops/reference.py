"""Plain-torch reference implementations of pyprune's kernels.

They define what the C++ (``csrc/cpu``) and CUDA (``csrc/cuda``) kernels compute: the kernels are tested
against them, and they run on any device when the backend is ``"reference"``. They favour obvious
correctness over speed and memory (they materialise the full symmetric matrices in float64), but are
vectorised. Each checks its arguments on entry with the checker of :mod:`pyprune.ops.checks`, as the C++ and
CUDA paths do, so every backend rejects the same inputs with the same messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from pyprune.ops.checks import (
    check_gram_hsic_arguments,
    check_greedy_arguments,
    check_nm_select_arguments,
    check_permutation_arguments,
    check_rbf_gram_arguments,
    check_rbf_scan_arguments,
)

RBF_MEDIAN_ZERO_MESSAGE = (
    "the median pairwise distance is 0 (more than half of the samples coincide), so the RBF bandwidth "
    "threshold * median is undefined; use the linear kernel or remove duplicate samples"
)


def _middle(count: int, order_statistic: Callable[[int], float]) -> float:
    """NumPy's median of ``count`` values given their order statistics (0-based): the middle one, or the mean
    of the two middle ones for an even count (``torch.median`` returns the lower one)."""
    upper = order_statistic(count // 2)
    if count % 2:
        return upper
    return 0.5 * (order_statistic(count // 2 - 1) + upper)


def numpy_median(values: torch.Tensor) -> float:
    """Median of a 1-D tensor as NumPy defines it (mean of the two middle values for an even count)."""
    return _middle(values.numel(), lambda q: float(values.kthvalue(q + 1).values))


def full_matrix_median(lower: torch.Tensor, n: int) -> float:
    """NumPy's median of all ``n * n`` entries of a symmetric ``(n, n)`` matrix with a zero diagonal and
    non-negative entries (squared distances), from its ``n (n - 1) / 2`` strictly-lower entries ``lower`` (1-D,
    any order): the ``n`` zeros of the diagonal sort first and every other entry counts twice. Selects instead
    of sorting, on ``lower``'s device; ``csrc/cpu/rbf_gram.cpp`` (``full_matrix_median``) is the C++ version."""

    def order_statistic(q: int) -> float:
        return 0.0 if q < n else float(torch.kthvalue(lower, (q - n) // 2 + 1).values)

    return _middle(n * n, order_statistic)


def strictly_lower(matrix: torch.Tensor) -> torch.Tensor:
    """The ``n (n - 1) / 2`` entries below the diagonal of an ``(n, n)`` matrix, 1-D, row by row."""
    n = matrix.shape[0]
    rows, cols = torch.tril_indices(n, n, -1, device=matrix.device)
    return matrix[rows, cols]


def symmetric_distances(gram: torch.Tensor) -> torch.Tensor:
    """Squared distances ``(n, n)`` float64, symmetric with a zero diagonal, from the lower triangle of a
    linear Gram matrix, rounded to the Gram's dtype like the kernels round them."""
    g = gram.detach().to(torch.float64, copy=True)
    sq_norms = g.diagonal()
    dist = sq_norms[:, None] + sq_norms[None, :] - 2.0 * g
    dist = torch.where(dist > 0.0, dist, 0.0).to(gram.dtype).to(torch.float64)
    return torch.tril(dist, -1) + torch.tril(dist, -1).mT


def _symmetric_float64(grams: Sequence[torch.Tensor]) -> torch.Tensor:
    """(L, n, n) float64 stack of the symmetric matrices given by the lower triangles."""
    g = torch.stack([x.detach().to(torch.float64) for x in grams])
    return torch.tril(g) + torch.tril(g, -1).mT


def gram_hsic_terms_reference(
    grams_a: Sequence[torch.Tensor], grams_b: Sequence[torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Reference for ``gram_hsic_terms``: same arguments and float64 results (see ``pyprune.ops``)."""
    check_gram_hsic_arguments(grams_a, grams_b)
    a = _symmetric_float64(grams_a)
    b = a if grams_b is None else _symmetric_float64(grams_b)
    cross = a.flatten(1) @ b.flatten(1).mT
    if grams_b is None:
        cross = 0.5 * (cross + cross.mT)  # exactly symmetric, whatever order the matmul summed in
    out = {
        "cross": cross,
        "self_a": a.square().sum((1, 2)),
        "row_sums_a": a.sum(2),
        "diag_a": a.diagonal(dim1=1, dim2=2).contiguous(),
    }
    if grams_b is None:
        out.update(self_b=out["self_a"], row_sums_b=out["row_sums_a"], diag_b=out["diag_a"])
    else:
        out.update(
            self_b=b.square().sum((1, 2)), row_sums_b=b.sum(2), diag_b=b.diagonal(dim1=1, dim2=2).contiguous()
        )
    return out


def rbf_from_linear_gram_reference(gram: torch.Tensor, threshold: float) -> float:
    """Reference for ``rbf_from_linear_gram``: in place on the lower triangle; returns the median distance."""
    n = check_rbf_gram_arguments(gram, threshold)
    lower = torch.ones(n, n, dtype=torch.bool, device=gram.device).tril()
    dist = symmetric_distances(gram)
    gram.copy_(torch.where(lower, dist.to(gram.dtype), gram))

    median = full_matrix_median(strictly_lower(dist), n)
    all_zero = not bool(dist.any())
    if median == 0.0 and not all_zero:
        raise ValueError(RBF_MEDIAN_ZERO_MESSAGE)
    scale = 0.0 if all_zero else -1.0 / (2.0 * threshold * threshold * median)
    kernel = torch.exp(scale * dist.to(torch.float64)).to(gram.dtype)  # exp(0) = 1 on the diagonal
    gram.copy_(torch.where(lower, kernel, gram))
    return median


def greedy_removal_order_reference(
    interaction: torch.Tensor, active: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy CKA-damage removal order of a layer's neurons from their interaction matrix.

    ``M[a, b]`` is the inner product of the centred Gram contributions of neurons ``a`` and ``b``: ``G[a, b]^2``
    with ``G`` the centred covariance for channels-as-neurons, ``<HK_aH, HK_bH>_F`` in general. With ``K`` the
    kept set, the linear CKA between the original layer and the layer with the others replaced by constants is
    ``CKA(K) = sum_{a, b in K} ... = N(K) / (F * sqrt(D2(K)))`` where ``N(K) = sum_{a in A, b in K} M[a, b]``,
    ``D2(K) = sum_{a, b in K} M[a, b]``, ``F^2 = D2(A)`` and ``A`` is the active set.

    Each step removes the kept neuron whose removal leaves the highest CKA (ties: lowest index), until none is
    left. A candidate whose remaining ``D2`` is not positive scores 0 (the CKA of an empty or constant layer).

    Args:
        interaction: ``(p, p)`` symmetric float64 tensor.
        active: ``(p,)`` bool tensor, neurons that may be removed (default all); inactive neurons count neither
            in ``F`` nor in any sum.

    Returns:
        ``order`` int64 ``(n_active,)``: neuron indices in removal order; ``cka_after`` float64 ``(n_active,)``:
        the layer's CKA after each removal (non-increasing in exact arithmetic for PSD ``M``; 0 after the last).
    """
    check_greedy_arguments(interaction, active)
    m = interaction.to(torch.float64)
    p = m.shape[0]
    active = torch.ones(p, dtype=torch.bool, device=m.device) if active is None else active.to(m.device)
    m = m * (active[:, None] & active[None, :])
    column = m.sum(dim=0)  # sum over all active a of M[a, j]
    total = float(column.sum())
    norm = total**0.5
    kept = active.clone()
    kept_column = column.clone()  # sum over kept a of M[a, j]
    numerator = denominator_sq = total
    diag = m.diagonal()
    order, cka_after = [], []
    for _ in range(int(active.sum())):
        remaining = denominator_sq - 2 * kept_column + diag
        den = norm * remaining.clamp_min(0).sqrt()
        score = torch.where(den > 0, (numerator - column) / den.where(den > 0, 1.0), 0.0)
        score = score.masked_fill(~kept, -torch.inf)
        j = int(torch.argmax(score))  # first maximum: ties go to the lowest index
        order.append(j)
        cka_after.append(float(score[j]))
        numerator -= float(column[j])
        denominator_sq = float(remaining[j])
        kept[j] = False
        kept_column -= m[j]
    return (
        torch.tensor(order, dtype=torch.int64, device=m.device),
        torch.tensor(cka_after, dtype=torch.float64, device=m.device),
    )


def rbf_candidate_scan_reference(
    distances_kept: torch.Tensor,
    values: torch.Tensor,
    candidates: torch.Tensor,
    inv_two_sigma_sq: torch.Tensor,
    target: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """HSIC sums of the RBF kernel of a layer with each candidate neuron removed, against a centred target.

    For candidate ``j = candidates[c]``: ``d_ab = max(D[a, b] - sum_t (V[j, a, t] - V[j, b, t])^2, 0)`` and
    ``k_ab = exp(-d_ab * inv_two_sigma_sq[c])``. With ``r = k 1``:

    * ``cross[c] = sum_ab target[a, b] k_ab`` (``target`` is already centred, so this is ``<target, HkH>``),
    * ``self_sq[c] = sum_ab k_ab^2``, ``row_sq[c] = |r|^2``, ``total[c] = 1^T r``,

    from which ``|HkH|_F^2 = self_sq - 2 row_sq / n + total^2 / n^2`` and the RBF CKA follow.

    Args:
        distances_kept: ``(n, n)`` float64 squared distances of the kept representation.
        values: ``(p, n, T)`` float64: neuron ``j``'s ``T`` features (1 for a unit, ``H*W`` for a channel).
        candidates: int64 ``(m,)`` indices into ``values``.
        inv_two_sigma_sq: float64 ``(m,)``: ``1 / (2 sigma^2)`` for each candidate.
        target: ``(n, n)`` float64, centred kernel matrix of the original representation.

    Returns:
        float64 tensors ``(m,)``: ``cross``, ``self_sq``, ``row_sq``, ``total``.
    """
    check_rbf_scan_arguments(distances_kept, values, candidates, inv_two_sigma_sq, target)
    v = values[candidates].to(torch.float64)  # (m, n, T)
    sq = (v * v).sum(dim=2)
    own = sq[:, :, None] + sq[:, None, :] - 2 * v @ v.transpose(1, 2)  # (m, n, n)
    d = (distances_kept.to(torch.float64)[None] - own).clamp_min(0)
    k = torch.exp(-d * inv_two_sigma_sq.to(torch.float64)[:, None, None])
    rows = k.sum(dim=2)
    return {
        "cross": (k * target.to(torch.float64)[None]).sum(dim=(1, 2)),
        "self_sq": (k * k).sum(dim=(1, 2)),
        "row_sq": (rows * rows).sum(dim=1),
        "total": rows.sum(dim=1),
    }


def nm_select_reference(
    weight: torch.Tensor,
    norms: torch.Tensor | None,
    *,
    k: int | None = None,
    n_m: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Which weights a Wanda/magnitude selection removes: the lowest scores per row, or per N:M group.

    The score of weight ``(i, j)`` is ``|W_ij| * norms_j`` computed in float64 (Sun et al. 2023, Wanda: the
    input-feature norm ``||X_j||_2``; ``norms=None`` means magnitude). Scores are compared within a row: ``k``
    removes the ``k`` lowest of every row; ``n_m=(n, m)`` keeps ``n`` of every ``m`` consecutive columns, so it
    removes the ``m - n`` lowest of each group. Equal scores go lowest column index first (a stable sort).

    Args:
        weight: ``(rows, cols)`` floating tensor (the ``(out, in)`` orientation).
        norms: ``(cols,)`` non-negative tensor or None.
        k, n_m: exactly one of them.

    Returns:
        bool ``(rows, cols)``: True where the weight is removed.
    """
    k, n_m = check_nm_select_arguments(weight, norms, k, n_m)
    score = weight.abs().to(torch.float64)
    if norms is not None:
        score = score * norms.to(torch.float64)
    rows, cols = score.shape
    if n_m is None:
        groups, drop = score.unsqueeze(1), k
    else:
        groups, drop = score.reshape(rows, cols // n_m[1], n_m[1]), n_m[1] - n_m[0]
    order = torch.sort(groups, dim=-1, stable=True).indices
    removed = torch.zeros(groups.shape, dtype=torch.bool, device=weight.device)
    removed.scatter_(-1, order[..., :drop], True)
    return removed.reshape(rows, cols)


def permutation_hsic_reference(a: torch.Tensor, b: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """``out[s] = <A, P_s B P_s^T>_F = sum_ij A[i, j] B[p_s(i), p_s(j)]``, float64 ``(S,)``.

    ``A`` is the symmetric matrix given by the lower triangle of ``a``; ``b`` is used in full.
    """
    check_permutation_arguments(a, b, permutations)
    a64 = _symmetric_float64([a])[0]
    b64 = b.detach().to(torch.float64)
    values = [(a64 * b64[p][:, p]).sum() for p in permutations]
    return torch.stack(values) if values else a64.new_zeros(0)
