"""Argument checks of every op in :mod:`pyprune.ops`, the one place they are written.

Each op's implementations (C++ through ``pyprune._C``, CUDA through CuPy, the torch reference) run its checker on
entry, so every backend rejects the same inputs with the same ``TypeError``/``ValueError``, naming the argument
and the expected vs received value. ``csrc/bindings.cpp`` re-checks what protects memory (dtypes, shapes,
strides, overflow-safe sizes) with the same words, for callers of ``pyprune._C`` itself.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

NEGATIVE_INPUTS_MESSAGE = (
    "inputs: has negative entries; relative contributions need inputs >= 0 (split a signed batch first with "
    "the batch-doubling rule, torch.cat([x.clamp_min(0), (-x).clamp_min(0)]), as SensitivityTracker does)"
)

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _dtype_name(dtype: torch.dtype) -> str:
    """``float64`` for ``torch.float64``: the spelling NumPy (and so ``pyprune._C``) uses."""
    return str(dtype).removeprefix("torch.")


def check_on_cuda(tensor: torch.Tensor, name: str) -> torch.device:
    """``tensor``'s device, which must be a CUDA device (the CUDA implementations take nothing else)."""
    if tensor.device.type != "cuda":
        raise ValueError(f"{name}: expected a CUDA tensor, got one on {tensor.device}")
    return tensor.device


@dataclass(frozen=True)
class Geometry:
    """How a layer reads its input: a Linear (``kernel_size == ()``) or a Conv2d's window.

    Attributes:
        kernel_size, stride, padding, dilation: the Conv2d's ``(h, w)`` pairs; empty tuples for a Linear.
    """

    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()

    @property
    def is_linear(self) -> bool:
        return not self.kernel_size


def check_grams(
    grams: Sequence[torch.Tensor],
    name: str,
    *,
    n: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
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
            raise TypeError(f"{where}: expected float32 or float64, got {_dtype_name(g.dtype)}")
        if g.ndim != 2 or g.shape[0] != g.shape[1]:
            raise ValueError(f"{where}: expected a square 2-D matrix, got shape {tuple(g.shape)}")
        if g.shape[1] > 1 and g.stride(1) != 1:
            raise ValueError(f"{where}: rows must be contiguous (column stride 1), got strides {g.stride()}")
        if g.stride(0) < g.shape[1]:
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


def check_linear_gram_arguments(x: torch.Tensor, out: torch.Tensor | None) -> None:
    """``out``, when given, must be a contiguous ``(n, n)`` tensor of ``x``'s dtype, ``x`` being ``(n, p)``."""
    if out is not None and (
        out.shape != (x.shape[0], x.shape[0]) or out.dtype != x.dtype or not out.is_contiguous()
    ):
        raise ValueError(
            f"out: expected a contiguous {tuple(x.shape[:1]) * 2} tensor of dtype {x.dtype}, got "
            f"{tuple(out.shape)} {out.dtype}"
        )


def check_gram_hsic_arguments(
    grams_a: Sequence[torch.Tensor], grams_b: Sequence[torch.Tensor] | None = None
) -> tuple[int, torch.dtype]:
    """Check the arguments of ``gram_hsic_terms``: ``grams_a`` and (unless None) ``grams_b`` lists of ``(n, n)``
    matrices of one size, dtype (float32/float64) and device, rows contiguous. Returns ``(n, dtype)``."""
    n, dtype = check_grams(grams_a, "grams_a")
    if grams_b is not None:
        check_grams(grams_b, "grams_b", n=n, dtype=dtype, device=grams_a[0].device)
    return n, dtype


def check_rbf_gram_arguments(gram: torch.Tensor, threshold: float) -> int:
    """Check the arguments of ``rbf_from_linear_gram``: ``gram`` one ``(n, n)`` float32/float64 matrix with rows
    contiguous and ``n >= 2``, ``threshold > 0``. Returns ``n``."""
    n, _ = check_grams([gram], "gram", single=True)
    check_rbf_arguments(n, threshold)
    return n


def check_rbf_arguments(n: int, threshold: float) -> None:
    """``n >= 2`` samples and a bandwidth fraction ``threshold > 0`` (NaN refused)."""
    if n < 2:
        raise ValueError(f"rbf_from_linear_gram needs at least 2 samples, got {n}")
    if not threshold > 0.0:
        raise ValueError("threshold must be > 0")


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


def check_greedy_arguments(interaction: torch.Tensor, active: torch.Tensor | None = None) -> int:
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


# --------------------------------------------------------------------------------------------------------------
# Sensitivity (SiPP/PFP)


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def window_positions(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output positions of a conv along one axis (0 when the window does not fit)."""
    return max(0, (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1)


def geometry_pairs(geometry: Geometry) -> tuple[tuple[int, ...], ...]:
    """``(kernel_size, stride, padding, dilation)`` as tuples of ints, checked: four pairs or four empties."""
    if not isinstance(geometry, Geometry):
        raise TypeError(
            f"geometry: expected a pyprune.ops.sensitivity.Geometry, got {type(geometry).__name__}"
        )
    fields = []
    for name in ("kernel_size", "stride", "padding", "dilation"):
        value = getattr(geometry, name)
        try:
            fields.append(tuple(operator.index(v) for v in value))
        except TypeError:
            raise TypeError(f"geometry: {name} must be a tuple of ints, got {value!r}") from None
    kernel, stride, padding, dilation = fields
    described = f"kernel_size={kernel}, stride={stride}, padding={padding}, dilation={dilation}"
    lengths = {len(f) for f in fields}
    if lengths not in ({0}, {2}):
        raise ValueError(
            "geometry: expected kernel_size, stride, padding and dilation as (h, w) pairs (all four empty for a "
            f"Linear layer), got {described}"
        )
    if kernel and (min(kernel) < 1 or min(stride) < 1 or min(padding) < 0 or min(dilation) < 1):
        raise ValueError(
            f"geometry: expected kernel_size >= 1, stride >= 1, padding >= 0 and dilation >= 1, got {described}"
        )
    return kernel, stride, padding, dilation


def check_sensitivity_values(weight: torch.Tensor, inputs: torch.Tensor) -> None:
    """The value rules of :func:`check_sensitivity_arguments`: ``weight`` finite, ``inputs`` finite and >= 0.

    One pass over each (``pyprune._C.check_sensitivity_values`` is the same pass in C++, without the GIL)."""
    for name, t in (("weight", weight), ("inputs", inputs)):
        if t.numel() == 0:
            continue
        low, high = torch.aminmax(t.detach())
        if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
            raise ValueError(f"{name}: contains NaN or inf")
        if name == "inputs" and float(low) < 0:
            raise ValueError(NEGATIVE_INPUTS_MESSAGE)


def _check_arguments(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    geometry: Geometry,
    s_mean: torch.Tensor,
    s_max: torch.Tensor,
    z: torch.Tensor | None,
    kernel: bool,
    values: bool,
) -> tuple[int, int]:
    """Every check, in the order of ``pyprune._C.sensitivity_update``. ``kernel``: the kernels' stricter rules
    (contiguous arrays, inputs already in weight's dtype, ``z`` given); ``values``: also scan the values
    (:func:`check_sensitivity_values`). Returns ``(batch, P)``."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"weight: expected float32 or float64, got {_dtype_name(weight.dtype)}")
    if weight.ndim != 2:
        raise ValueError(f"weight: expected a 2-D (F, J) matrix, got shape {_shape(weight)}")
    if kernel and not weight.is_contiguous():
        raise ValueError("weight: must be contiguous")
    filters, columns = weight.shape
    kernel_size, stride, padding, dilation = geometry_pairs(geometry)
    taps = kernel_size[0] * kernel_size[1] if kernel_size else 1
    if columns % taps:
        raise ValueError(
            f"weight: expected J = C_in * {kernel_size[0]} * {kernel_size[1]} columns, got {columns}"
        )
    device, wanted = weight.device, _dtype_name(weight.dtype)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs: expected a torch.Tensor, got {type(inputs).__name__}")
    if kernel and inputs.dtype != weight.dtype:
        raise TypeError(f"inputs: expected {wanted} (the dtype of weight), got {_dtype_name(inputs.dtype)}")
    if not kernel and not inputs.dtype.is_floating_point:
        raise TypeError(f"inputs: expected a floating-point tensor, got {_dtype_name(inputs.dtype)}")
    if kernel_size:
        ok = inputs.ndim == 4 and inputs.shape[1] == columns // taps
        expected = f"(batch, {columns // taps}, H, W)"
    else:
        ok = inputs.ndim == 2 and inputs.shape[1] == columns
        expected = f"(batch, {columns})"
    if not ok:
        raise ValueError(f"inputs: expected shape {expected}, got shape {_shape(inputs)}")
    if kernel and not inputs.is_contiguous():
        raise ValueError("inputs: must be contiguous")
    if inputs.device != device:
        raise ValueError(f"inputs: expected every tensor on {device}, got {inputs.device}")
    batch, positions = inputs.shape[0], 1
    if kernel_size:
        height, width = inputs.shape[2], inputs.shape[3]
        out = [
            window_positions(size, *args)
            for size, args in zip(
                (height, width), zip(kernel_size, stride, padding, dilation, strict=True), strict=True
            )
        ]
        if min(out) < 1:
            raise ValueError(
                f"inputs: a {height} x {width} input leaves no output position for kernel_size={kernel_size}, "
                f"stride={stride}, padding={padding}, dilation={dilation}"
            )
        positions = out[0] * out[1]
    if kernel:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z: expected a torch.Tensor, got {type(z).__name__}")
        if z.dtype != weight.dtype:
            raise TypeError(f"z: expected {wanted} (the dtype of weight), got {_dtype_name(z.dtype)}")
        if tuple(z.shape) != (batch, 2, filters, positions):
            raise ValueError(
                f"z: expected shape (batch, 2, F, P) = {(batch, 2, filters, positions)}, got shape {_shape(z)}"
            )
        if not z.is_contiguous():
            raise ValueError("z: must be contiguous")
        if z.device != device:
            raise ValueError(f"z: expected every tensor on {device}, got {z.device}")
    for name, s in (("s_mean", s_mean), ("s_max", s_max)):
        if not isinstance(s, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(s).__name__}")
        if s.dtype != weight.dtype:
            raise TypeError(f"{name}: expected {wanted} (the dtype of weight), got {_dtype_name(s.dtype)}")
        if tuple(s.shape) != (filters, columns):
            raise ValueError(f"{name}: expected shape {(filters, columns)}, got shape {_shape(s)}")
        if kernel and not s.is_contiguous():
            raise ValueError(f"{name}: must be contiguous")
        if s.device != device:
            raise ValueError(f"{name}: expected every tensor on {device}, got {s.device}")
    if values:
        check_sensitivity_values(weight, inputs)
    return batch, positions


def check_sensitivity_arguments(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    geometry: Geometry,
    s_mean: torch.Tensor,
    s_max: torch.Tensor,
    *,
    values: bool = True,
) -> tuple[int, int]:
    """Check the arguments of ``sensitivity_update`` (any backend); return ``(batch, P)``.

    ``weight`` float32/float64 ``(F, J)``; ``geometry`` four ``(h, w)`` pairs with ``J`` a multiple of
    ``kh * kw`` (or four empty tuples); ``inputs`` floating ``(batch, J / (kh kw), H, W)`` with at least one
    output position (conv) or ``(batch, J)`` (Linear), finite and >= 0; ``s_mean``/``s_max`` ``(F, J)`` in
    ``weight``'s dtype; all on one device; ``weight`` finite. Raises ``TypeError``/``ValueError`` naming the
    argument, with the messages of ``pyprune._C``. ``values=False`` leaves out the value rules, for a caller that
    scans the values itself (:func:`check_sensitivity_values`).
    """
    return _check_arguments(weight, inputs, geometry, s_mean, s_max, None, kernel=False, values=values)


def check_split(split: object, weight: torch.Tensor) -> None:
    """``split`` of ``sensitivity_update``: None, or ``[W+; W-]`` ``(2F, J)`` in ``weight``'s dtype, on its device,
    contiguous (its values are the caller's: :func:`pyprune.ops.sensitivity.split_weight` of ``weight``)."""
    if split is None:
        return
    _check_tensor(split, "split", weight.dtype)
    _check_device(split, "split", weight.device)
    wanted = (2 * weight.shape[0], *weight.shape[1:])
    _check_shape(split, "split", tuple(split.shape) == wanted, f"shape {wanted} ([W+; W-] of the weight)")
    _check_contiguous(split, "split")


def check_kernel_arguments(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    geometry: Geometry,
    z: torch.Tensor,
    s_mean: torch.Tensor,
    s_max: torch.Tensor,
) -> tuple[int, int]:
    """The checks of the kernels themselves (``pyprune._C.sensitivity_update``, the CUDA kernel): those of
    :func:`check_sensitivity_arguments`, plus ``inputs`` in ``weight``'s dtype, ``z`` of shape
    ``(batch, 2, F, P)`` and every array contiguous. Returns ``(batch, P)``."""
    return _check_arguments(weight, inputs, geometry, s_mean, s_max, z, kernel=True, values=True)


def check_nm_select_arguments(
    weight: torch.Tensor,
    norms: torch.Tensor | None = None,
    k: int | None = None,
    n_m: tuple[int, int] | None = None,
) -> tuple[int | None, tuple[int, int] | None]:
    """Validate ``nm_select``'s arguments; returns ``(k, n_m)`` as Python ints. Raises TypeError/ValueError."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype not in _FLOATS:
        raise TypeError(f"weight: expected a floating dtype {[str(d) for d in _FLOATS]}, got {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D (rows, cols) matrix, got shape {tuple(weight.shape)}")
    if not torch.isfinite(weight).all():
        raise ValueError("weight: contains NaN or inf")
    cols = weight.shape[1]
    if norms is not None:
        if not isinstance(norms, torch.Tensor):
            raise TypeError(f"norms: expected a torch.Tensor or None, got {type(norms).__name__}")
        if norms.dtype not in _FLOATS:
            raise TypeError(f"norms: expected a floating dtype, got {norms.dtype}")
        if tuple(norms.shape) != (cols,):
            raise ValueError(
                f"norms: expected shape ({cols},) (one per weight column), got {tuple(norms.shape)}"
            )
        if norms.device != weight.device:
            raise ValueError(f"norms: expected a tensor on {weight.device}, got one on {norms.device}")
        if not torch.isfinite(norms).all() or bool((norms < 0).any()):
            raise ValueError("norms: expected finite, non-negative input-feature norms")
    if (k is None) == (n_m is None):
        raise ValueError(f"k, n_m: pass exactly one of them, got k={k!r}, n_m={n_m!r}")
    if k is not None:
        try:
            k = operator.index(k)
        except TypeError:
            raise TypeError(f"k: expected an int, got {type(k).__name__}") from None
        if not 0 <= k <= cols:
            raise ValueError(f"k: expected 0 <= k <= {cols} (the number of columns), got {k}")
        return k, None
    n, m = check_n_m(n_m)
    if cols % m:
        raise ValueError(f"n_m: {cols} columns do not split into groups of m={m}")
    return None, (n, m)


def check_n_m(n_m: object) -> tuple[int, int]:
    """``n_m`` as a pair of ints ``(n, m)`` with ``0 < n < m``; TypeError/ValueError otherwise."""
    try:
        n, m = (operator.index(v) for v in n_m)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise TypeError(f"n_m: expected a pair of ints (n, m) such as (2, 4), got {n_m!r}") from None
    if not 0 < n < m:
        raise ValueError(f"n_m: expected 0 < n < m (keep n of every m weights), got ({n}, {m})")
    return n, m
