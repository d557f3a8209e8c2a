"""Linear Gram matrices ``X X^T`` with half the multiply-adds.

A Gram matrix is symmetric, so BLAS ``syrk`` computes only its lower triangle: half the flops of the
``torch.mm`` that every other CKA library uses. On CPU we call the ``syrk`` of SciPy's bundled BLAS on a
zero-copy NumPy view. Consumers in pyprune read only the lower triangle, so the upper one is left as BLAS
leaves it (zeros). On CUDA and under the reference backend this is ``torch.mm``.
"""

from __future__ import annotations

import functools

import torch

from pyprune.backend import get_backend, num_threads


@functools.cache
def _blas():
    from scipy.linalg import blas
    from threadpoolctl import ThreadpoolController

    # Created after SciPy's BLAS is loaded so that the controller sees it.
    return blas, ThreadpoolController()


def linear_gram(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix of the rows of ``x``.

    Args:
        x: ``(n, p)`` float32 or float64.
        out: optional ``(n, n)`` C-contiguous tensor of ``x``'s dtype and device to write into.

    Returns:
        ``(n, n)`` tensor whose lower triangle (diagonal included) holds ``x @ x.T``. The upper triangle is
        unspecified: it may hold zeros or the mirrored values.
    """
    if x.device.type == "cpu" and get_backend() == "auto" and x.dtype in (torch.float32, torch.float64):
        blas, controller = _blas()
        syrk = blas.ssyrk if x.dtype == torch.float32 else blas.dsyrk
        # Row-major x (n, p) is column-major x^T (p, n): syrk(trans=1) forms (x^T)^T x^T = x x^T in Fortran
        # order, upper triangle, which is the lower triangle of the row-major result. No copies either way.
        a = x.contiguous().numpy().T
        with controller.limit(limits=num_threads(), user_api="blas"):
            if out is None:
                return torch.from_numpy(syrk(1.0, a, trans=1).T)
            syrk(1.0, a, trans=1, beta=0.0, c=out.numpy().T, overwrite_c=1)
            return out
    if out is None:
        return x @ x.T
    return torch.mm(x, x.T, out=out)
