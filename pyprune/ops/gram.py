"""Linear Gram matrices ``X X^T`` with half the multiply-adds, computed without holding the GIL.

A Gram matrix is symmetric, so BLAS ``syrk`` computes only its lower triangle: half the flops of the
``torch.mm`` that every other CKA library uses. On CPU we call the ``syrk`` of SciPy's bundled BLAS on a
zero-copy NumPy view, through the C entry points SciPy exports for Cython (``scipy.linalg.cython_blas``)
called by ``ctypes``, which releases the GIL for the duration of the call: other Python threads (progress
bars, data loaders, servers) keep running during a multi-second product. SciPy's own Python wrappers
(``scipy.linalg.blas.ssyrk``) hold the GIL throughout. Consumers in pyprune read only the lower triangle, so
the upper one is left as BLAS leaves it (zeros). On CUDA, under the reference backend and for sizes beyond
32-bit BLAS integers this is ``torch.mm`` (which also runs without the GIL).
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import torch

from pyprune.ops.backend import get_backend, num_threads
from pyprune.ops.checks import check_linear_gram_arguments

_INT32_MAX = 2**31 - 1


@functools.cache
def _blas():
    """``{dtype: syrk}`` as ctypes functions (GIL released while they run) and a BLAS thread controller."""
    from scipy.linalg import cython_blas
    from threadpoolctl import ThreadpoolController

    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    int_p = ctypes.POINTER(ctypes.c_int)
    # Fortran calling convention as SciPy's Cython wrappers expose it: every argument by pointer.
    # syrk(uplo, trans, n, k, alpha, a, lda, beta, c, ldc).
    prototype = ctypes.CFUNCTYPE(
        None,
        ctypes.c_char_p,
        ctypes.c_char_p,
        int_p,
        int_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        int_p,
        ctypes.c_void_p,
        ctypes.c_void_p,
        int_p,
    )
    functions = {}
    for dtype, name in ((torch.float32, "ssyrk"), (torch.float64, "dsyrk")):
        capsule = cython_blas.__pyx_capi__[name]
        functions[dtype] = prototype(get_pointer(capsule, get_name(capsule)))
    # Created after SciPy's BLAS is loaded so that the controller sees it.
    return functions, ThreadpoolController()


def _syrk_lower(x: torch.Tensor, out: torch.Tensor) -> None:
    """Lower triangle of ``out`` (n, n), C-contiguous, := ``x @ x.T`` for C-contiguous ``x`` (n, p)."""
    functions, controller = _blas()
    n, p = x.shape
    scalar = np.float32 if x.dtype == torch.float32 else np.float64
    alpha, beta = np.array(1.0, dtype=scalar), np.array(0.0, dtype=scalar)
    # Row-major x (n, p) is column-major x^T (p, n): syrk("U", "T") forms (x^T)^T x^T = x x^T in Fortran
    # order, upper triangle, which is the lower triangle of the row-major result. No copies either way.
    size, inner, lda = ctypes.c_int(n), ctypes.c_int(p), ctypes.c_int(max(1, p))
    ldc = ctypes.c_int(max(1, n))
    with controller.limit(limits=num_threads(), user_api="blas"):
        functions[x.dtype](
            b"U",
            b"T",
            ctypes.byref(size),
            ctypes.byref(inner),
            alpha.ctypes.data,
            x.data_ptr(),
            ctypes.byref(lda),
            beta.ctypes.data,
            out.data_ptr(),
            ctypes.byref(ldc),
        )


def linear_gram(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix of the rows of ``x``.

    Args:
        x: ``(n, p)`` float32 or float64.
        out: optional ``(n, n)`` C-contiguous tensor of ``x``'s dtype and device to write into.

    Returns:
        ``(n, n)`` tensor whose lower triangle (diagonal included) holds ``x @ x.T``. The upper triangle is
        unspecified: it may hold zeros or the mirrored values.
    """
    check_linear_gram_arguments(x, out)
    if (
        x.device.type == "cpu"
        and get_backend() == "auto"
        and x.dtype in (torch.float32, torch.float64)
        and max(x.shape) <= _INT32_MAX
        and x.numel() > 0
    ):
        x = x.detach().contiguous()
        if out is None:
            out = torch.zeros(x.shape[0], x.shape[0], dtype=x.dtype)
        _syrk_lower(x, out)
        return out
    if out is None:
        return x @ x.T
    return torch.mm(x, x.T, out=out)
