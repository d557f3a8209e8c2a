"""Plain-torch reference implementations of pyprune's kernels.

They define what the C++ (``csrc/cpu``) and CUDA (``csrc/cuda``) kernels compute: the kernels are tested
against them, and they run on any device when the backend is ``"reference"``. They favour obvious
correctness over speed and memory (they materialise the full symmetric matrices in float64), but are
vectorised. Argument checking is shared with the CUDA path so that every backend rejects the same inputs
with the same messages as ``pyprune._C``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

RBF_MEDIAN_ZERO_MESSAGE = (
    "the median pairwise distance is 0 (more than half of the samples coincide), so the RBF bandwidth "
    "threshold * median is undefined; use the linear kernel or remove duplicate samples"
)


def check_grams(
    grams: Sequence[torch.Tensor],
    name: str,
    *,
    n: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    require_row_contiguous: bool = True,
    single: bool = False,
) -> tuple[int, torch.dtype]:
    """Check a list of square float32/float64 matrices of one size, dtype and device; return (n, dtype).

    Raises ``TypeError``/``ValueError`` naming ``name[i]`` (or ``name`` when ``single``), with the messages of
    ``pyprune._C``. ``n``, ``dtype`` and ``device`` impose the values of another list.
    """
    if isinstance(grams, torch.Tensor) or not isinstance(grams, (list, tuple)):
        raise TypeError(f"{name}: expected a list of tensors, got {type(grams).__name__}")
    if not grams:
        raise ValueError(f"{name}: expected at least one Gram matrix, got none")
    for index, g in enumerate(grams):
        where = name if single else f"{name}[{index}]"
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"{where}: expected a torch.Tensor, got {type(g).__name__}")
        if g.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{where}: expected float32 or float64, got {g.dtype}")
        if g.ndim != 2 or g.shape[0] != g.shape[1]:
            raise ValueError(f"{where}: expected a square 2-D matrix, got shape {tuple(g.shape)}")
        if require_row_contiguous and g.shape[1] > 1 and g.stride(1) != 1:
            raise ValueError(f"{where}: rows must be contiguous (column stride 1), got strides {g.stride()}")
        if require_row_contiguous and g.stride(0) < g.shape[1]:
            raise ValueError(f"{where}: unsupported row stride {g.stride(0)}")
        n = g.shape[0] if n is None else n
        if g.shape[0] != n:
            raise ValueError(f"{where}: expected {n} x {n}, got {g.shape[0]} x {g.shape[0]}")
        dtype = g.dtype if dtype is None else dtype
        if g.dtype != dtype:
            raise TypeError(f"{where}: all Gram matrices must share one dtype")
        device = g.device if device is None else device
        if g.device != device:
            raise ValueError(f"{where}: expected every tensor on {device}, got {g.device}")
    return n, dtype


def check_rbf_arguments(n: int, threshold: float) -> None:
    if n < 2:
        raise ValueError(f"rbf_from_linear_gram needs at least 2 samples, got {n}")
    if not threshold > 0.0:
        raise ValueError("threshold must be > 0")


def _dtype_name(dtype: torch.dtype) -> str:
    """``float64`` for ``torch.float64``: the spelling NumPy (and so ``pyprune._C``) uses."""
    return str(dtype).removeprefix("torch.")


def _check_tensor(t: object, name: str, dtype: torch.dtype) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected {_dtype_name(dtype)}, got {_dtype_name(t.dtype)}")


def _check_device(t: torch.Tensor, name: str, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{name}: expected every tensor on {device}, got {t.device}")


def _check_shape(t: torch.Tensor, name: str, ok: bool, wanted: str) -> None:
    if not ok:
        raise ValueError(f"{name}: expected {wanted}, got shape {tuple(t.shape)}")


def _check_contiguous(t: torch.Tensor, name: str) -> None:
    if not t.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")


def check_greedy_arguments(interaction: torch.Tensor, active: torch.Tensor | None) -> int:
    """Check the arguments of ``greedy_removal_order``; return ``p``.

    ``interaction``: float64 ``(p, p)``, contiguous; ``active``: None or bool ``(p,)``, contiguous, on the same
    device. Raises ``TypeError``/``ValueError`` naming the argument, with the messages of ``pyprune._C``.
    """
    _check_tensor(interaction, "interaction", torch.float64)
    square = interaction.ndim == 2 and interaction.shape[0] == interaction.shape[1]
    _check_shape(interaction, "interaction", square, "a square 2-D matrix")
    _check_contiguous(interaction, "interaction")
    p = interaction.shape[0]
    if active is not None:
        _check_tensor(active, "active", torch.bool)
        _check_shape(active, "active", tuple(active.shape) == (p,), f"shape ({p},)")
        _check_contiguous(active, "active")
        _check_device(active, "active", interaction.device)
    return p


def check_rbf_scan_arguments(
    distances_kept: torch.Tensor,
    values: torch.Tensor,
    candidates: torch.Tensor,
    inv_two_sigma_sq: torch.Tensor,
    target: torch.Tensor,
) -> tuple[int, int, int, int]:
    """Check the arguments of ``rbf_candidate_scan``; return ``(n, p, T, m)``.

    All float64 except ``candidates`` (int64), contiguous, on one device; shapes ``(n, n)``, ``(p, n, T)``,
    ``(m,)``, ``(m,)``, ``(n, n)``; every candidate in ``[0, p)``. Raises ``TypeError``/``ValueError`` naming the
    argument, with the messages of ``pyprune._C``.
    """
    _check_tensor(distances_kept, "distances_kept", torch.float64)
    square = distances_kept.ndim == 2 and distances_kept.shape[0] == distances_kept.shape[1]
    _check_shape(distances_kept, "distances_kept", square, "a square 2-D matrix")
    _check_contiguous(distances_kept, "distances_kept")
    n = distances_kept.shape[0]
    device = distances_kept.device
    _check_tensor(values, "values", torch.float64)
    _check_shape(values, "values", values.ndim == 3 and values.shape[1] == n, f"shape (p, {n}, T)")
    _check_contiguous(values, "values")
    _check_tensor(candidates, "candidates", torch.int64)
    _check_shape(candidates, "candidates", candidates.ndim == 1, "a 1-D tensor")
    _check_contiguous(candidates, "candidates")
    m = candidates.shape[0]
    _check_tensor(inv_two_sigma_sq, "inv_two_sigma_sq", torch.float64)
    _check_shape(inv_two_sigma_sq, "inv_two_sigma_sq", tuple(inv_two_sigma_sq.shape) == (m,), f"shape ({m},)")
    _check_contiguous(inv_two_sigma_sq, "inv_two_sigma_sq")
    _check_tensor(target, "target", torch.float64)
    _check_shape(target, "target", tuple(target.shape) == (n, n), f"shape ({n}, {n})")
    _check_contiguous(target, "target")
    for name, t in (
        ("values", values),
        ("candidates", candidates),
        ("inv_two_sigma_sq", inv_two_sigma_sq),
        ("target", target),
    ):
        _check_device(t, name, device)
    p, t_features = values.shape[0], values.shape[2]
    bad = (candidates < 0) | (candidates >= p)
    if m and bool(bad.any()):
        index = int(bad.nonzero()[0, 0])
        raise ValueError(f"candidates[{index}]: {int(candidates[index])} is out of range [0, {p})")
    return n, p, t_features, m


def numpy_median(values: torch.Tensor) -> float:
    """Median of a 1-D tensor as NumPy defines it (mean of the two middle values for an even count);
    ``torch.median`` returns the lower one."""
    count = values.numel()
    upper = float(values.kthvalue(count // 2 + 1).values)
    if count % 2:
        return upper
    return 0.5 * (float(values.kthvalue(count // 2).values) + upper)


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
    n, dtype = check_grams(grams_a, "grams_a")
    if grams_b is not None:
        check_grams(grams_b, "grams_b", n=n, dtype=dtype, device=grams_a[0].device)
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
    check_grams([gram], "gram", single=True)
    n = gram.shape[0]
    check_rbf_arguments(n, threshold)
    lower = torch.ones(n, n, dtype=torch.bool, device=gram.device).tril()
    dist = symmetric_distances(gram)
    gram.copy_(torch.where(lower, dist.to(gram.dtype), gram))

    median = numpy_median(dist.flatten())  # over all n^2 entries
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
        k, n_m: exactly one of them (checked by :func:`pyprune.ops.nm_select.nm_select`).

    Returns:
        bool ``(rows, cols)``: True where the weight is removed.
    """
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


def check_permutation_arguments(
    a: torch.Tensor, b: torch.Tensor, permutations: torch.Tensor
) -> tuple[int, int]:
    """Check the arguments of ``permutation_hsic``; return ``(n, S)``.

    ``a``, ``b``: square float32/float64 ``(n, n)`` of one dtype and device, rows contiguous; ``permutations``:
    int64 ``(S, n)``, contiguous, on the same device, every row a permutation of ``0..n-1``. Raises
    ``TypeError``/``ValueError`` naming the argument.
    """
    n, dtype = check_grams([a], "a", single=True)
    check_grams([b], "b", n=n, dtype=dtype, device=a.device, single=True)
    _check_tensor(permutations, "permutations", torch.int64)
    rows_ok = permutations.ndim == 2 and permutations.shape[1] == n
    _check_shape(permutations, "permutations", rows_ok, f"(S, {n})")
    _check_contiguous(permutations, "permutations")
    _check_device(permutations, "permutations", a.device)
    identity = torch.arange(n, device=a.device)
    if permutations.numel() and not bool((permutations.sort(dim=1).values == identity).all()):
        raise ValueError(f"permutations: every row must be a permutation of 0..{n - 1}")
    return n, permutations.shape[0]


def permutation_hsic_reference(a: torch.Tensor, b: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """``out[s] = <A, P_s B P_s^T>_F = sum_ij A[i, j] B[p_s(i), p_s(j)]``, float64 ``(S,)``.

    ``A`` is the symmetric matrix given by the lower triangle of ``a``; ``b`` is used in full.
    """
    a64 = _symmetric_float64([a])[0]
    b64 = b.detach().to(torch.float64)
    values = [(a64 * b64[p][:, p]).sum() for p in permutations]
    return torch.stack(values) if values else a64.new_zeros(0)
