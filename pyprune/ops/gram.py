"""Linear Gram matrices ``X X^T`` with half the multiply-adds, computed without holding the GIL.

A Gram matrix is symmetric, so BLAS ``syrk`` computes only its lower triangle: half the flops of the
``torch.mm`` that every other CKA library uses. On CPU we call the ``syrk`` of SciPy's bundled BLAS on a
zero-copy NumPy view, through the C entry points SciPy exports for Cython (``scipy.linalg.cython_blas``)
called by ``ctypes``, which releases the GIL for the duration of the call: other Python threads (progress
bars, data loaders, servers) keep running during a multi-second product. SciPy's own Python wrappers
(``scipy.linalg.blas.ssyrk``) hold the GIL throughout. Consumers in pyprune read only the lower triangle, so
the upper one is left as BLAS leaves it (zeros). On CUDA, under the reference backend and for sizes beyond
32-bit BLAS integers this is ``torch.mm`` (which also runs without the GIL).

:func:`linear_grams` forms the Grams of many layers with one layer per thread and one BLAS thread each,
instead of one layer at a time on every BLAS thread: a multi-threaded ``syrk`` synchronises its threads many
times per call, so a thread delayed by other work on a shared machine stalls the others (the Grams of the CKA
heatmap's 20 layers at n = 1,024 took 1.9x as long that way on 2 loaded cores, and 1.1x at n = 4,096), and the
caller's per-layer preparation (centring, a memory-bound pass) then overlaps the other thread's product.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pyprune.ops.backend import cpu_kernels, get_backend, num_threads, use_kernel
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


def _syrk_lower(x: torch.Tensor, out: torch.Tensor, threads: int | None = None) -> None:
    """Lower triangle of ``out`` (n, n), C-contiguous, := ``x @ x.T`` for C-contiguous ``x`` (n, p), on
    ``threads`` BLAS threads (default :func:`num_threads`); None leaves the BLAS setting alone (the caller holds
    a limit for several concurrent calls)."""
    functions, controller = _blas()
    if threads is not None:
        with controller.limit(limits=threads, user_api="blas"):
            _syrk_lower(x, out)
        return
    n, p = x.shape
    scalar = np.float32 if x.dtype == torch.float32 else np.float64
    alpha, beta = np.array(1.0, dtype=scalar), np.array(0.0, dtype=scalar)
    # Row-major x (n, p) is column-major x^T (p, n): syrk("U", "T") forms (x^T)^T x^T = x x^T in Fortran
    # order, upper triangle, which is the lower triangle of the row-major result. No copies either way.
    size, inner, lda = ctypes.c_int(n), ctypes.c_int(p), ctypes.c_int(max(1, p))
    ldc = ctypes.c_int(max(1, n))
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
    if _uses_syrk(x):
        x = x.detach().contiguous()
        if out is None:
            out = torch.zeros(x.shape[0], x.shape[0], dtype=x.dtype)
        _syrk_lower(x, out, num_threads())
        return out
    if out is None:
        return x @ x.T
    return torch.mm(x, x.T, out=out)


def _uses_syrk(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and get_backend() == "auto"
        and x.dtype in (torch.float32, torch.float64)
        and max(x.shape) <= _INT32_MAX
        and x.numel() > 0
    )


def linear_grams(
    layers: Sequence[torch.Tensor],
    prepare: Callable[[int, torch.Tensor], torch.Tensor],
    out: torch.Tensor,
) -> None:
    """``out[k]`` := the Gram matrix of the rows of ``prepare(k, buffer)``, for every layer ``k``.

    Args:
        layers: L tensors ``(n, p_k)`` on one device: only their shapes and device are read here.
        prepare: ``prepare(k, buffer)`` returns the ``(n, p_k)`` matrix whose Gram is wanted (of ``out``'s dtype,
            C-contiguous), typically a transformed copy of ``layers[k]`` written into ``buffer``, a 1-D tensor of
            at least ``n * p_k`` elements of ``out``'s dtype that the call owns until it returns. It may be
            called from several threads at once (each with its own buffer) and should release the GIL in its
            heavy parts (NumPy and torch operations do).
        out: ``(L, n, n)`` contiguous; ``out[k]``'s lower triangle receives the Gram (the upper one as in
            :func:`linear_gram`).

    On CPU, layers run concurrently, one BLAS thread each, on up to :func:`num_threads` threads (one buffer of
    the largest layer's size per thread), when that balances: no layer costs more than the threads' fair share
    of the total. Otherwise one layer at a time with every BLAS thread, in one buffer.
    """
    n = out.shape[1]
    widths = [x.shape[1] for x in layers]
    threads = min(num_threads(), len(layers))
    concurrent = (
        threads > 1
        and out.device.type == "cpu"
        and get_backend() == "auto"
        and out.dtype in (torch.float32, torch.float64)
        and 0 < n <= _INT32_MAX
        and min(widths) > 0
        and max(widths) <= _INT32_MAX
        and max(widths) * threads <= sum(widths)
    )
    buffers = [
        torch.empty(n * max(widths), dtype=out.dtype, device=out.device)
        for _ in range(threads if concurrent else 1)
    ]
    if not concurrent:
        for k in range(len(layers)):
            linear_gram(prepare(k, buffers[0]), out=out[k])
        return
    # Widest first, handed out as threads free up: the longest products do not end up last.
    order = iter(sorted(range(len(layers)), key=lambda k: -widths[k]))
    lock = threading.Lock()

    def work(worker: int) -> None:
        while True:
            with lock:
                k = next(order, None)
            if k is None:
                return
            x = prepare(k, buffers[worker]).detach().contiguous()
            check_linear_gram_arguments(x, out[k])
            _syrk_lower(x, out[k])

    _, controller = _blas()
    with controller.limit(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        for done in [pool.submit(work, worker) for worker in range(threads)]:
            done.result()


def column_stats(x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """``(sums, low, high)`` of a finite ``(n, p)`` floating tensor (``n, p >= 1``): its float64 column sums
    ``(p,)`` and its smallest and largest entries.

    On CPU (float32/float64 with contiguous rows) one pass of ``pyprune._C.column_stats`` on one thread, where
    NumPy or torch read the data three times (max, min, mean); CKA's preparation of each layer overlaps another
    layer's Gram product, so it takes no second core. Each column is summed in float64 in a fixed order (see
    the binding's docstring). Elsewhere torch.
    """
    rows_contiguous = x.shape[1] == 1 or x.stride(1) == 1
    if (
        use_kernel(x.device) == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and rows_contiguous
        and (x.shape[0] == 1 or x.stride(0) >= x.shape[1])
    ):
        sums, low, high = cpu_kernels().column_stats(x.detach().numpy(), 1)
        return torch.from_numpy(sums), low, high
    low, high = torch.aminmax(x)
    return x.sum(dim=0, dtype=torch.float64), float(low), float(high)
