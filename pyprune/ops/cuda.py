"""CUDA kernels through CuPy: ``csrc/cuda/*.cu`` compiled at run time by NVRTC, launched on torch's stream.

The ``.cu`` files are plain NVRTC sources (no host code); each includes ``pp_common.cuh`` (shared device
helpers) from its own directory, and takes its launch constants (:data:`LAUNCH_CONSTANTS`) as ``-D`` options
from :func:`nvrtc_options`. They are looked up in the source checkout (``<repo>/csrc/cuda``, which an editable
install uses) and then in the installed package (``<package>/cuda``, where CMake puts them). CuPy compiles each
kernel instantiation the first time it is needed and caches the binary on disk (``~/.cupy/kernel_cache``);
:func:`module` caches the loaded module.

Tensors cross from torch to CuPy by DLPack without copies, and every launch goes on
``torch.cuda.current_stream()``, so the kernels are ordered with the surrounding torch work exactly like a
torch operation. CuPy is imported lazily: this module imports (and :func:`available` answers) without it.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyprune.ops.checks import (
    Geometry,
    check_gram_hsic_arguments,
    check_greedy_arguments,
    check_kernel_arguments,
    check_on_cuda,
    check_permutation_arguments,
    check_rbf_gram_arguments,
    check_rbf_scan_arguments,
)
from pyprune.ops.reference import RBF_MEDIAN_ZERO_MESSAGE, full_matrix_median

#: NVRTC options for every module besides those of :func:`nvrtc_options`. CuPy adds ``-arch`` for the device
#: and appends ``-ftz=true``.
NVRTC_OPTIONS: tuple[str, ...] = ("--std=c++17",)

#: Launch constants shared by the launches below and the kernels, defined here only: every module is compiled
#: with them as ``-D`` options (``csrc/cuda/pp_common.cuh`` refuses to compile without them), so a block or
#: tile size cannot differ between host and device.
LAUNCH_CONSTANTS: dict[str, int] = {
    "PP_THREADS": 256,  # threads per block of every kernel but the greedy removal loop
    "PP_GREEDY_THREADS": 1024,  # the greedy removal loop: one block of this many threads
    "PP_TILE": 64,  # edge of the tiles covering the lower triangle of an n x n matrix
    "PP_SENS_COLUMNS": 32,  # sensitivity: a block's tile of columns ...
    "PP_SENS_FILTERS": 16,  # ... and of filters
}

#: The header of shared device helpers, beside the ``.cu`` files; shipped with them.
COMMON_HEADER = "pp_common.cuh"


def nvrtc_options(source_dir: Path) -> tuple[str, ...]:
    """NVRTC options for the ``.cu`` files of ``source_dir``: :data:`NVRTC_OPTIONS`, the include path of
    :data:`COMMON_HEADER`, the :data:`LAUNCH_CONSTANTS` as ``-D`` options, and ``-DPP_COMMON_DIGEST``.

    CuPy's on-disk kernel cache is keyed by the source and the options, not by included files: the digest of
    the header's bytes, an option no source reads, makes an edited header recompile every module.
    """
    header = source_dir / COMMON_HEADER
    if not header.is_file():
        raise FileNotFoundError(f"{COMMON_HEADER} not found beside the CUDA sources in {source_dir}")
    digest = hashlib.sha256(header.read_bytes()).hexdigest()[:16]
    defines = tuple(f"-D{name}={value}" for name, value in LAUNCH_CONSTANTS.items())
    return (*NVRTC_OPTIONS, f"-I{source_dir}", *defines, f"-DPP_COMMON_DIGEST=0x{digest}")


#: Register tiles (BM x BN matrices per thread block) of ``gram_hsic.cu``; all combinations are instantiated.
GRAM_HSIC_TILES: tuple[int, ...] = (1, 2, 4, 8)
_CTYPES = {torch.float32: "float", torch.float64: "double"}


def gram_hsic_expression(dtype: torch.dtype, bm: int, bn: int) -> str:
    """NVRTC name expression of one instantiation of the HSIC-terms kernel."""
    return f"pyprune::gram_hsic<{_CTYPES[dtype]}, {bm}, {bn}>"


def rbf_expressions(dtype: torch.dtype) -> tuple[str, str]:
    """NVRTC name expressions of the two RBF kernels for ``dtype``."""
    ctype = _CTYPES[dtype]
    return f"pyprune::rbf_sq_distances<{ctype}>", f"pyprune::rbf_exp<{ctype}>"


#: NVRTC name expressions of ``cka_damage.cu`` (float64 only, no templates).
CKA_DAMAGE_EXPRESSIONS: tuple[str, ...] = (
    "pyprune::cka_column_sums",
    "pyprune::cka_greedy_order",
    "pyprune::cka_rbf_scan",
)


def sensitivity_expression(dtype: torch.dtype) -> str:
    """NVRTC name expression of the sensitivity kernel for ``dtype``."""
    return f"pyprune::sensitivity_rows<{_CTYPES[dtype]}>"


#: Every name expression each ``.cu`` file (by stem) must compile; the compile test instantiates all of them.
NAME_EXPRESSIONS: dict[str, tuple[str, ...]] = {
    "gram_hsic": tuple(
        gram_hsic_expression(dtype, bm, bn)
        for dtype in _CTYPES
        for bm in GRAM_HSIC_TILES
        for bn in GRAM_HSIC_TILES
    ),
    "rbf_gram": tuple(expr for dtype in _CTYPES for expr in rbf_expressions(dtype)),
    "cka_damage": CKA_DAMAGE_EXPRESSIONS,
    "sensitivity": tuple(sensitivity_expression(dtype) for dtype in _CTYPES),
    "nm_select": tuple(
        f"nm_select_{kind}_{suffix}" for kind in ("rows", "groups") for suffix in ("f32", "f64")
    ),
    "permutation_hsic": tuple(f"pyprune::permutation_hsic<{ctype}>" for ctype in _CTYPES.values()),
}

_THREADS = LAUNCH_CONSTANTS["PP_THREADS"]
_GREEDY_THREADS = LAUNCH_CONSTANTS["PP_GREEDY_THREADS"]
_TILE = LAUNCH_CONSTANTS["PP_TILE"]
_MAX_GRID = 65535


# ------------------------------------------------------------------------------------------------------------
# Availability and module loading


@functools.cache
def _probe() -> str:
    """Empty string if the CUDA path is usable, else the reason it is not."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a CuPy that fails to initialise
        return f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy finds no CUDA device ({type(exc).__name__}: {exc})"
    if count < 1:
        return "CuPy finds no CUDA device"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (is this a CPU-only torch build?)"
    return ""


def available() -> bool:
    """True if CuPy imports, it sees a CUDA device and torch has CUDA."""
    return _probe() == ""


def unavailable_reason() -> str:
    """Why :func:`available` is False (an empty string when it is True)."""
    return _probe()


def _cupy() -> Any:
    reason = _probe()
    if reason:
        raise RuntimeError(f"pyprune's CUDA kernels are unavailable: {reason}")
    import cupy

    return cupy


def _source_dirs() -> list[Path]:
    package = Path(__file__).resolve().parents[1]
    # The source checkout first (the sources being edited), then the copy CMake installs into the package.
    return [package.parent / "csrc" / "cuda", package / "cuda"]


def cuda_sources() -> list[Path]:
    """All ``.cu`` kernel sources, from the first directory that has any."""
    for directory in _source_dirs():
        found = sorted(directory.glob("*.cu"))
        if found:
            return found
    return []


def cuda_source(name: str) -> Path:
    """The path of ``<name>.cu``."""
    for directory in _source_dirs():
        path = directory / f"{name}.cu"
        if path.is_file():
            return path
    searched = ", ".join(str(d) for d in _source_dirs())
    raise FileNotFoundError(f"CUDA source {name}.cu not found (searched {searched})")


@functools.cache
def module(name: str, name_expressions: tuple[str, ...] | None = None) -> Any:
    """The ``cupy.RawModule`` of ``<name>.cu``, compiled with :func:`nvrtc_options`, once per process.

    ``name_expressions`` selects the template instantiations to compile (default: all of
    :data:`NAME_EXPRESSIONS` ``[name]``); fetch them with ``module(...).get_function(expression)``.
    """
    cupy = _cupy()
    if name_expressions is None:
        name_expressions = NAME_EXPRESSIONS.get(name, ())
    source = cuda_source(name)
    return cupy.RawModule(
        code=source.read_text(),
        options=nvrtc_options(source.parent),
        name_expressions=list(name_expressions) or None,
    )


def _function(name: str, expression: str) -> Any:
    return module(name, (expression,)).get_function(expression)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


class _StreamHandle:
    """A raw ``cudaStream_t`` under the CUDA stream protocol (``__cuda_stream__``: version 0, the handle)."""

    def __init__(self, handle: int):
        self.handle = handle

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.handle)


def cupy_stream(cupy: Any, stream: torch.cuda.Stream) -> Any:
    """A CuPy stream that launches on the torch stream ``stream`` (which it neither owns nor destroys).

    CuPy 14 takes foreign streams through the CUDA stream protocol, ``cupy.cuda.Stream.from_external``, and
    deprecates ``cupy.cuda.ExternalStream``; CuPy 13 has only the latter.
    """
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is not None:
        return from_external(_StreamHandle(stream.cuda_stream))
    return cupy.cuda.ExternalStream(stream.cuda_stream, stream.device_index)


class _OnTorchStream:
    """Context: CuPy on the tensor's device and on torch's current stream there."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> Any:
        cupy = _cupy()
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        self._torch_device = torch.cuda.device(index)
        self._torch_device.__enter__()
        self._cupy_device = cupy.cuda.Device(index)
        self._cupy_device.__enter__()
        self._stream = cupy_stream(cupy, torch.cuda.current_stream(index))
        self._stream.__enter__()
        return cupy

    def __exit__(self, *exc: object) -> None:
        self._stream.__exit__(*exc)
        self._cupy_device.__exit__(*exc)
        self._torch_device.__exit__(*exc)


# ------------------------------------------------------------------------------------------------------------
# Kernels


def _tile(count: int) -> int:
    return (
        next(t for t in GRAM_HSIC_TILES if t >= count)
        if count <= GRAM_HSIC_TILES[-1]
        else GRAM_HSIC_TILES[-1]
    )


def gram_hsic_terms_cuda(
    grams_a: Sequence[torch.Tensor], grams_b: Sequence[torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """CUDA version of ``pyprune._C.gram_hsic_terms``: same arguments (torch CUDA tensors) and results.

    Returns float64 CUDA tensors ``cross`` (La, Lb), ``self_a`` (La,), ``self_b`` (Lb,), ``row_sums_a`` /
    ``diag_a`` (La, n) and ``row_sums_b`` / ``diag_b`` (Lb, n); with ``grams_b=None`` the ``*_b`` entries are
    the ``*_a`` tensors. Only the lower triangle of each matrix is read.
    """
    n, dtype = check_gram_hsic_arguments(grams_a, grams_b)
    device = check_on_cuda(grams_a[0], "grams_a[0]")
    same = grams_b is None
    list_b = list(grams_a if same else grams_b)
    num_a, num_b = len(grams_a), len(list_b)
    bm = _tile(num_a)
    bn = bm if same else _tile(num_b)
    groups_a = range(0, num_a, bm)
    groups_b = range(0, num_b, bn)
    pairs = [(i0, j0) for i0 in groups_a for j0 in groups_b if not same or i0 <= j0]

    f64 = {"dtype": torch.float64, "device": device}
    with _OnTorchStream(device) as cupy:
        cross = torch.zeros((num_a, num_b), **f64)
        rows_a = torch.zeros((num_a, n), **f64)
        self_a = torch.zeros(num_a, **f64)
        rows_b = rows_a if same else torch.zeros((num_b, n), **f64)
        self_b = self_a if same else torch.zeros(num_b, **f64)
        num_tiles = (n // _TILE + (n % _TILE > 0)) * (n // _TILE + (n % _TILE > 0) + 1) // 2
        if n > 0:
            meta_host = [g.data_ptr() for g in grams_a] + [g.stride(0) for g in grams_a]
            meta_host += [g.data_ptr() for g in list_b] + [g.stride(0) for g in list_b]
            meta_host += [index for pair in pairs for index in pair]
            meta = torch.tensor(meta_host, dtype=torch.int64).to(device)
            grid_y = max(1, min(num_tiles, _MAX_GRID, math.ceil(8 * _sm_count(device.index) / len(pairs))))
            kernel = _function("gram_hsic", gram_hsic_expression(dtype, bm, bn))
            args = [cupy.from_dlpack(meta), np.int32(num_a), np.int32(num_b), np.int32(same), np.int64(n)]
            args += [np.int64(num_tiles)]
            args += [cupy.from_dlpack(t) for t in (cross, self_a, self_b, rows_a, rows_b)]
            kernel((len(pairs), grid_y), (_THREADS,), tuple(args))
        diag_a = torch.stack([g.diagonal() for g in grams_a]).to(torch.float64)
        diag_b = diag_a if same else torch.stack([g.diagonal() for g in list_b]).to(torch.float64)
        if same:  # the kernel wrote the pairs i <= j
            cross = torch.triu(cross) + torch.triu(cross, 1).mT
            self_a.copy_(cross.diagonal())
    return {
        "cross": cross,
        "self_a": self_a,
        "self_b": self_b,
        "row_sums_a": rows_a,
        "diag_a": diag_a,
        "row_sums_b": rows_b,
        "diag_b": diag_b,
    }


def rbf_from_linear_gram_cuda(gram: torch.Tensor, threshold: float) -> float:
    """CUDA version of ``pyprune._C.rbf_from_linear_gram``: in place on the lower triangle; returns m."""
    n = check_rbf_gram_arguments(gram, threshold)
    device = check_on_cuda(gram, "gram")
    with _OnTorchStream(device) as cupy:
        sq_norms = gram.diagonal().to(torch.float64, copy=True)
        lower = torch.empty(n * (n - 1) // 2, dtype=gram.dtype, device=device)
        cu_gram = cupy.from_dlpack(gram.detach())
        ld = np.int64(gram.stride(0))
        grid = (min(n, _MAX_GRID),)
        sq_distances, exp_kernel = (_function("rbf_gram", e) for e in rbf_expressions(gram.dtype))
        sq_distances(
            grid, (_THREADS,), (cu_gram, np.int64(n), ld, cupy.from_dlpack(sq_norms), cupy.from_dlpack(lower))
        )
        median = full_matrix_median(lower, n)
        all_zero = not bool(lower.any())
        if median == 0.0 and not all_zero:
            raise ValueError(RBF_MEDIAN_ZERO_MESSAGE)
        scale = 0.0 if all_zero else -1.0 / (2.0 * threshold * threshold * median)
        exp_kernel(grid, (_THREADS,), (cu_gram, np.int64(n), ld, np.float64(scale)))
    return median


def greedy_removal_order_cuda(
    interaction: torch.Tensor, active: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CUDA version of ``pyprune._C.greedy_removal_order``: ``(order int64, cka_after float64)`` on the device.

    Same arguments as :func:`~pyprune.ops.reference.greedy_removal_order_reference` (float64 ``interaction``,
    optional bool ``active``), checked by :func:`~pyprune.ops.checks.check_greedy_arguments`.
    """
    p = check_greedy_arguments(interaction, active)
    device = check_on_cuda(interaction, "interaction")
    with _OnTorchStream(device) as cupy:
        # A fresh uint8 array either way: the kernel clears the entries of the neurons it removes.
        kept = torch.ones(p, dtype=torch.uint8, device=device) if active is None else active.to(torch.uint8)
        steps = p if active is None else int(kept.sum())
        order = torch.empty(steps, dtype=torch.int64, device=device)
        cka_after = torch.empty(steps, dtype=torch.float64, device=device)
        if steps > 0:
            f64 = {"dtype": torch.float64, "device": device}
            column, diag, kept_column = torch.empty(p, **f64), torch.empty(p, **f64), torch.empty(p, **f64)
            m = cupy.from_dlpack(interaction.detach())
            kept_cu = cupy.from_dlpack(kept)
            column_cu, diag_cu = cupy.from_dlpack(column), cupy.from_dlpack(diag)
            column_sums = _function("cka_damage", "pyprune::cka_column_sums")
            grid = (min(math.ceil(p / _THREADS), _MAX_GRID),)
            column_sums(grid, (_THREADS,), (m, np.int64(p), kept_cu, column_cu, diag_cu))
            greedy = _function("cka_damage", "pyprune::cka_greedy_order")
            args = (
                m,
                np.int64(p),
                np.int64(steps),
                kept_cu,
                column_cu,
                diag_cu,
                cupy.from_dlpack(kept_column),
            )
            greedy((1,), (_GREEDY_THREADS,), (*args, cupy.from_dlpack(order), cupy.from_dlpack(cka_after)))
    return order, cka_after


def rbf_candidate_scan_cuda(
    distances_kept: torch.Tensor,
    values: torch.Tensor,
    candidates: torch.Tensor,
    inv_two_sigma_sq: torch.Tensor,
    target: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """CUDA version of ``pyprune._C.rbf_candidate_scan``: float64 ``cross``, ``self_sq``, ``row_sq``, ``total``.

    Same arguments as :func:`~pyprune.ops.reference.rbf_candidate_scan_reference`, checked by
    :func:`~pyprune.ops.checks.check_rbf_scan_arguments`; only the lower triangles of ``distances_kept``
    and ``target`` are read.
    """
    n, _, t, m = check_rbf_scan_arguments(distances_kept, values, candidates, inv_two_sigma_sq, target)
    device = check_on_cuda(distances_kept, "distances_kept")
    f64 = {"dtype": torch.float64, "device": device}
    with _OnTorchStream(device) as cupy:
        cross = torch.zeros(m, **f64)
        self_sq = torch.zeros(m, **f64)
        rows = torch.zeros((m, n), **f64)
        if m > 0 and n > 0:
            tiles_per_side = math.ceil(n / _TILE)
            num_tiles = tiles_per_side * (tiles_per_side + 1) // 2
            grid = (min(num_tiles, 2**31 - 1), min(m, _MAX_GRID))
            arrays = [cupy.from_dlpack(x.detach()) for x in (distances_kept, values)]
            args = (*arrays, np.int64(n), np.int64(t), cupy.from_dlpack(candidates.detach()), np.int64(m))
            args += (cupy.from_dlpack(inv_two_sigma_sq.detach()), cupy.from_dlpack(target.detach()))
            args += (np.int64(num_tiles), cupy.from_dlpack(cross), cupy.from_dlpack(self_sq))
            args += (cupy.from_dlpack(rows),)
            _function("cka_damage", "pyprune::cka_rbf_scan")(grid, (_THREADS,), args)
        total = rows.sum(dim=1)
        row_sq = rows.square().sum(dim=1)
    return {"cross": cross, "self_sq": self_sq, "row_sq": row_sq, "total": total}


_SENSITIVITY_COLUMNS = LAUNCH_CONSTANTS["PP_SENS_COLUMNS"]
_SENSITIVITY_FILTERS = LAUNCH_CONSTANTS["PP_SENS_FILTERS"]


def sensitivity_update_cuda(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    geometry: Geometry,
    z: torch.Tensor,
    s_mean: torch.Tensor,
    s_max: torch.Tensor,
) -> None:
    """CUDA version of ``pyprune._C.sensitivity_update``: folds one batch into ``s_mean``/``s_max`` in place.

    ``z`` ``(batch, 2, F, P)`` holds ``W+ A`` and ``W- A``. Checked by
    :func:`pyprune.ops.checks.check_kernel_arguments` (the messages of ``pyprune._C``): one dtype (float32 or
    float64), contiguous, on one CUDA device.
    """
    _, patches = check_kernel_arguments(weight, inputs, geometry, z, s_mean, s_max)
    check_on_cuda(weight, "weight")
    sensitivity_update_cuda_unchecked(weight, inputs, geometry, z, s_mean, s_max, patches)


def sensitivity_update_cuda_unchecked(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    geometry: Geometry,
    z: torch.Tensor,
    s_mean: torch.Tensor,
    s_max: torch.Tensor,
    patches: int,
) -> None:
    """:func:`sensitivity_update_cuda` for arguments already checked (``patches``: P), as the dispatcher has."""
    filters, columns = weight.shape
    batch = inputs.shape[0]
    if batch == 0 or filters == 0 or columns == 0:
        return
    if geometry.is_linear:
        window = (0,) * 8
        channels, height, width, out_w = columns, 1, 1, 1
    else:
        window = (*geometry.kernel_size, *geometry.stride, *geometry.padding, *geometry.dilation)
        channels, height, width = inputs.shape[1:]
        span = width + 2 * geometry.padding[1] - geometry.dilation[1] * (geometry.kernel_size[1] - 1) - 1
        out_w = span // geometry.stride[1] + 1
    device = weight.device
    with _OnTorchStream(device) as cupy:
        raw_mean = torch.zeros_like(s_mean)
        raw_max = torch.zeros_like(s_max)
        tiles = math.ceil(columns / _SENSITIVITY_COLUMNS) * math.ceil(filters / _SENSITIVITY_FILTERS)
        splits = max(1, min(batch, _MAX_GRID, math.ceil(4 * _sm_count(device.index) / tiles)))
        grid = (math.ceil(columns / _SENSITIVITY_COLUMNS), math.ceil(filters / _SENSITIVITY_FILTERS), splits)
        arrays = [cupy.from_dlpack(t.detach()) for t in (weight, inputs, z)]
        sizes = [np.int64(v) for v in (filters, columns, batch, channels, height, width)]
        args = (*arrays, *sizes, *(np.int32(v) for v in window), np.int64(out_w), np.int64(patches))
        args += (cupy.from_dlpack(raw_mean), cupy.from_dlpack(raw_max))
        _function("sensitivity", sensitivity_expression(weight.dtype))(grid, (_THREADS,), args)
        # As the C++ kernel: contributions within 4 ulps of 1 are 1 (see at_most_one in csrc/cpu/sensitivity.cpp).
        scale, limit = weight.abs(), 1 - 2 * torch.finfo(weight.dtype).eps
        for s, raw in ((s_mean, scale * raw_mean / patches), (s_max, scale * raw_max)):
            torch.maximum(s, raw.masked_fill_(raw >= limit, 1), out=s)


def permutation_hsic_cuda(a: torch.Tensor, b: torch.Tensor, permutations: torch.Tensor) -> torch.Tensor:
    """CUDA version of ``pyprune._C.permutation_hsic``: float64 ``(S,)`` with ``<A, P_s B P_s^T>_F``.

    Same arguments as :func:`~pyprune.ops.reference.permutation_hsic_reference`, checked by
    :func:`~pyprune.ops.checks.check_permutation_arguments`; only the lower triangle of ``a`` is read.
    """
    n, num_perms = check_permutation_arguments(a, b, permutations)
    device = check_on_cuda(a, "a")
    with _OnTorchStream(device) as cupy:
        out = torch.zeros(num_perms, dtype=torch.float64, device=device)
        if num_perms > 0 and n > 0:
            # Enough row chunks to fill the device several times over, each of at least one row.
            chunks = max(1, min(n, _MAX_GRID, math.ceil(8 * _sm_count(device.index) / num_perms)))
            rows_per_block = math.ceil(n / chunks)
            chunks = math.ceil(n / rows_per_block)
            kernel = _function("permutation_hsic", f"pyprune::permutation_hsic<{_CTYPES[a.dtype]}>")
            args = (cupy.from_dlpack(a.detach()), np.int64(a.stride(0)), cupy.from_dlpack(b.detach()))
            args += (np.int64(b.stride(0)), np.int64(n), cupy.from_dlpack(permutations.detach()))
            args += (np.int64(rows_per_block), cupy.from_dlpack(out))
            kernel((num_perms, chunks), (_THREADS,), args)
    return out


def nm_select_cuda(weight: torch.Tensor, norms: torch.Tensor | None, k: int, n: int, m: int) -> torch.Tensor:
    """The CUDA kernels of :func:`pyprune.ops.nm_select.nm_select` on checked operands: ``weight`` ``(rows,
    cols)`` contiguous float32/float64, ``norms`` ``(cols,)`` float64 or None (magnitude), and either ``k``
    (lowest-k per row, ``m = 0``) or ``n`` of every ``m`` columns kept. Returns bool ``(rows, cols)``, True
    where removed."""
    rows, cols = weight.shape
    removed = torch.zeros((rows, cols), dtype=torch.uint8, device=weight.device)
    suffix = "f64" if weight.dtype == torch.float64 else "f32"
    ones = norms if norms is not None else torch.ones(cols, dtype=torch.float64, device=weight.device)
    with _OnTorchStream(weight.device) as cupy:
        args = [cupy.from_dlpack(weight), cupy.from_dlpack(ones), np.int64(rows), np.int64(cols)]
        if m:
            groups = rows * (cols // m)
            kernel = module("nm_select").get_function(f"nm_select_groups_{suffix}")
            blocks = max(1, min(_MAX_GRID, math.ceil(groups / _THREADS)))
            kernel((blocks,), (_THREADS,), (*args, np.int64(n), np.int64(m), cupy.from_dlpack(removed)))
        elif k:
            kernel = module("nm_select").get_function(f"nm_select_rows_{suffix}")
            kernel(
                (max(1, min(rows, _MAX_GRID)),), (_THREADS,), (*args, np.int64(k), cupy.from_dlpack(removed))
            )
    return removed.bool()
