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
    g = gram.detach().to(torch.float64, copy=True)
    sq_norms = g.diagonal()
    dist = sq_norms[:, None] + sq_norms[None, :] - 2.0 * g
    dist = torch.where(dist > 0.0, dist, 0.0).to(gram.dtype)  # rounded to the storage dtype, like the kernels
    dist = torch.tril(dist, -1) + torch.tril(dist, -1).mT  # symmetric, zero diagonal
    gram.copy_(torch.where(lower, dist, gram))

    values = dist.flatten().sort().values  # numpy's median over all n^2 entries
    total = n * n
    if total % 2 == 1:
        median = float(values[total // 2])
    else:
        median = 0.5 * (float(values[total // 2 - 1]) + float(values[total // 2]))
    all_zero = not bool(dist.any())
    if median == 0.0 and not all_zero:
        raise ValueError(RBF_MEDIAN_ZERO_MESSAGE)
    scale = 0.0 if all_zero else -1.0 / (2.0 * threshold * threshold * median)
    kernel = torch.exp(scale * dist.to(torch.float64)).to(gram.dtype)  # exp(0) = 1 on the diagonal
    gram.copy_(torch.where(lower, kernel, gram))
    return median
