"""Empirical sensitivity of every weight to a batch (SiPP/PFP): the fused relative-contribution reduction.

Kernels: ``csrc/cpu/sensitivity.cpp`` and ``csrc/cuda/sensitivity.cu``; the reference
:func:`sensitivity_update_reference` defines what they compute. :func:`sensitivity_update` checks its
arguments (the same ``TypeError``/``ValueError`` messages on every backend, and those of ``pyprune._C``),
computes the denominators ``z+ = W+ A`` and ``z- = W- A`` with one torch convolution (or linear map) per block
of examples, and hands them to the kernel, which never forms the ``(batch, J, P)`` patches.

The kernels multiply by ``1/z`` where the reference divides by ``z`` and sum the positions in another order: they
agree with it to a few ulps (1e-12 in float64 in the tests), and report exactly 1 (as the reference does) where a
weight carries its whole denominator.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pyprune.ops.backend import cpu_kernels, num_threads, use_kernel

EPSILON = float(torch.finfo(torch.float32).eps)
"""Threshold of the denominators. The kernels and :func:`sensitivity_update_reference` count ``|z| <= EPSILON`` as
infinite (contribution 0); :func:`sensitivity_update` makes it relative, ``|z| <= EPSILON · scale(x)``, where
``scale(x) = 2^floor(log2 max |z(x)|)`` over the layer's denominators (both signs, all units and positions) for
the same example ``x`` (see :func:`denominator_scale`). The reference code (Baykal et al. 2019, Liebenwein et
al. 2020) compares ``|z|`` with float32's epsilon itself, which makes the result depend on the scale of the
activations: pre-activations of about 1e-8 (a randomly initialised deep network) turned every sensitivity to 0.
Relative to the example's own largest denominator, it depends only on the shape of the contributions."""

DENOMINATOR_BUDGET = 1 << 21
"""Entries of ``z`` (``examples x 2 x F x P``) per C++ kernel call: :func:`sensitivity_update` feeds a larger
batch in blocks of examples, so its extra memory does not grow with the batch."""

CUDA_DENOMINATOR_BUDGET = 1 << 25
"""The same for the CUDA kernel (fewer, larger launches; 128 MiB of float32 ``z``)."""

NEGATIVE_INPUTS_MESSAGE = (
    "inputs: has negative entries; relative contributions need inputs >= 0 (split a signed batch first with "
    "the batch-doubling rule, torch.cat([x.clamp_min(0), (-x).clamp_min(0)]), as SensitivityTracker does)"
)


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


def patches(inputs: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """The layer's input as ``(batch, J, P)`` patches: ``unfold`` for a conv, ``(batch, J, 1)`` for a Linear."""
    if geometry.is_linear:
        return inputs.unsqueeze(-1)
    return torch.nn.functional.unfold(
        inputs,
        geometry.kernel_size,
        dilation=geometry.dilation,
        padding=geometry.padding,
        stride=geometry.stride,
    )


def sensitivity_update_reference(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    geometry: Geometry,
    s_mean: torch.Tensor,
    s_max: torch.Tensor,
    *,
    filter_chunk: int = 16,
) -> None:
    """Fold one batch into the running maxima ``s_mean`` and ``s_max`` (both ``(F, J)``, updated in place).

    For output unit ``f``, input element ``j`` and patch ``p`` of example ``x``:
    ``g_fj(x, p) = W_fj A_jp(x) / z_f^{sign W_fj}(x, p)`` with ``z^+ = W^+ A``, ``z^- = W^- A`` (no bias) and
    ``g = 0`` where ``W_fj = 0`` or ``|z| <= EPSILON``. Then ``s_mean = max(s_mean, max_x mean_p g)`` and
    ``s_max = max(s_max, max_x max_p g)``.

    Args:
        weight: ``(F, J)``: the layer's weight flattened, ``J = C_in * kh * kw``.
        inputs: ``(batch, C_in, H, W)`` for a conv or ``(batch, J)`` for a Linear, all entries >= 0 (the caller
            applies the batch-doubling rule for negative inputs).
        geometry: the conv window, or ``Geometry()`` for a Linear.
        s_mean, s_max: ``(F, J)`` running maxima, same dtype as ``weight``.
        filter_chunk: output units per broadcast ``(batch, chunk, J, P)`` block (memory knob only).
    """
    a = patches(inputs, geometry).to(weight.dtype)  # (b, J, P)
    positive, negative = weight.clamp_min(0), weight.clamp_max(0)
    z_pos = _safe(torch.einsum("fj,bjp->bfp", positive, a))
    z_neg = _safe(torch.einsum("fj,bjp->bfp", negative, a))
    for start in range(0, weight.shape[0], filter_chunk):
        rows = slice(start, start + filter_chunk)
        contribution = a[:, None] * weight[rows, :, None]  # (b, f, J, P)
        ratio = torch.maximum(
            contribution.clamp_min(0) / z_pos[:, rows, None, :],
            contribution.clamp_max(0) / z_neg[:, rows, None, :],
        )
        s_mean[rows] = torch.maximum(s_mean[rows], ratio.mean(dim=3).amax(dim=0))
        s_max[rows] = torch.maximum(s_max[rows], ratio.amax(dim=3).amax(dim=0))


def _safe(z: torch.Tensor) -> torch.Tensor:
    return z.masked_fill(z.abs() <= EPSILON, torch.inf)


def denominator_scale(z: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` powers of two ``2^floor(log2 max |z(x)|)`` of ``z`` ``(batch, 2, F, P)``; 1 where ``z(x)`` is 0.

    A power of two, so that dividing an example's inputs (and so its denominators) by it is exact: the kernels
    and the reference, which compare with the absolute :data:`EPSILON`, then apply the relative threshold without
    a change to their arithmetic."""
    peak = z.detach().abs().amax(dim=tuple(range(1, z.ndim)))
    _, exponent = torch.frexp(peak)  # peak = m 2^exponent with m in [0.5, 1)
    return torch.where(peak > 0, torch.ldexp(torch.ones_like(peak), exponent - 1), torch.ones_like(peak))


# --------------------------------------------------------------------------------------------------------------
# Argument checks, shared by every backend (the compiled module raises the same messages)


def _dtype_name(dtype: torch.dtype) -> str:
    """``float64`` for ``torch.float64``: the spelling NumPy (and so ``pyprune._C``) uses."""
    return str(dtype).removeprefix("torch.")


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def window_positions(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output positions of a conv along one axis (0 when the window does not fit)."""
    return max(0, (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1)


def _geometry_pairs(geometry: Geometry) -> tuple[tuple[int, ...], ...]:
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


def _check_values(weight: torch.Tensor, inputs: torch.Tensor) -> None:
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
) -> tuple[int, int]:
    """Every check, in the order of ``pyprune._C.sensitivity_update``. ``kernel``: the kernels' stricter rules
    (contiguous arrays, inputs already in weight's dtype, ``z`` given); returns ``(batch, P)``."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"weight: expected float32 or float64, got {_dtype_name(weight.dtype)}")
    if weight.ndim != 2:
        raise ValueError(f"weight: expected a 2-D (F, J) matrix, got shape {_shape(weight)}")
    if kernel and not weight.is_contiguous():
        raise ValueError("weight: must be contiguous")
    filters, columns = weight.shape
    kernel_size, stride, padding, dilation = _geometry_pairs(geometry)
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
    _check_values(weight, inputs)
    return batch, positions


def check_sensitivity_arguments(
    weight: torch.Tensor, inputs: torch.Tensor, geometry: Geometry, s_mean: torch.Tensor, s_max: torch.Tensor
) -> tuple[int, int]:
    """Check the arguments of :func:`sensitivity_update` (any backend); return ``(batch, P)``.

    ``weight`` float32/float64 ``(F, J)``; ``geometry`` four ``(h, w)`` pairs with ``J`` a multiple of
    ``kh * kw`` (or four empty tuples); ``inputs`` floating ``(batch, J / (kh kw), H, W)`` with at least one
    output position (conv) or ``(batch, J)`` (Linear), finite and >= 0; ``s_mean``/``s_max`` ``(F, J)`` in
    ``weight``'s dtype; all on one device; ``weight`` finite. Raises ``TypeError``/``ValueError`` naming the
    argument, with the messages of ``pyprune._C``.
    """
    return _check_arguments(weight, inputs, geometry, s_mean, s_max, None, kernel=False)


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
    return _check_arguments(weight, inputs, geometry, s_mean, s_max, z, kernel=True)


# --------------------------------------------------------------------------------------------------------------
# Dispatch


def denominators(weight: torch.Tensor, inputs: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """``z`` ``(batch, 2, F, P)``: ``z[:, 0] = W+ A`` and ``z[:, 1] = W- A`` (no bias), with one convolution
    (or linear map) of the stacked ``[W+; W-]``; contiguous."""
    return _denominators(_split(weight), inputs, geometry)


def _split(weight: torch.Tensor) -> torch.Tensor:
    """``[W+; W-]`` ``(2F, J)``."""
    filters = weight.shape[0]
    split = weight.new_empty((2 * filters, *weight.shape[1:]))
    torch.clamp(weight, min=0, out=split[:filters])
    torch.clamp(weight, max=0, out=split[filters:])
    return split


def _denominators(split: torch.Tensor, inputs: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    if geometry.is_linear:
        out = F.linear(inputs, split)
    elif split.device.type == "cpu" and _pointwise(geometry):
        # A 1 x 1 unpadded conv is one batched GEMM over the strided pixels; oneDNN's strided 1 x 1 conv took
        # 2-5x longer on ResNet-56's downsampling layers (the worst layers of the whole update).
        picked = inputs[:, :, :: geometry.stride[0], :: geometry.stride[1]]
        out = torch.matmul(split, picked.reshape(inputs.shape[0], inputs.shape[1], -1))
    else:
        # cuDNN would take float32 convolutions in TF32 (10-bit mantissas): z must be as exact as the einsum of the
        # reference, so TF32 is off here.
        cudnn = torch.backends.cudnn
        with cudnn.flags(
            enabled=cudnn.enabled,
            benchmark=cudnn.benchmark,
            deterministic=cudnn.deterministic,
            allow_tf32=False,
        ):
            out = F.conv2d(
                inputs,
                split.view(split.shape[0], inputs.shape[1], *geometry.kernel_size),
                stride=tuple(geometry.stride),
                padding=tuple(geometry.padding),
                dilation=tuple(geometry.dilation),
            )
    return out.reshape(inputs.shape[0], 2, split.shape[0] // 2, -1)


def _pointwise(geometry: Geometry) -> bool:
    return tuple(geometry.kernel_size) == (1, 1) and tuple(geometry.padding) == (0, 0)


def sensitivity_update(
    weight: torch.Tensor, inputs: torch.Tensor, geometry: Geometry, s_mean: torch.Tensor, s_max: torch.Tensor
) -> None:
    """Fold one batch into the running maxima ``s_mean``/``s_max`` (in place), as
    :func:`sensitivity_update_reference` defines, with the C++ or CUDA kernel when one applies; each example's
    inputs are first divided by :func:`denominator_scale`, which makes the denominator threshold relative
    (:data:`EPSILON`) and leaves every other contribution exactly as it was.

    Args:
        weight: ``(F, J)`` float32 or float64, finite: the layer's weight flattened (``J = C_in * kh * kw``).
        inputs: ``(batch, C_in, H, W)`` for a conv or ``(batch, J)`` for a Linear, floating (converted to
            ``weight``'s dtype), finite and >= 0 (split a signed batch by the batch-doubling rule first).
        geometry: the conv window, or ``Geometry()`` for a Linear.
        s_mean, s_max: ``(F, J)`` running maxima in ``weight``'s dtype, on its device.

    The kernels take the batch in blocks of at most :data:`DENOMINATOR_BUDGET` denominator entries; every
    result is a maximum, so the blocks change nothing but the memory. An empty batch (or weight) changes
    nothing. Arithmetic is in ``weight``'s dtype: float32 sums over the output positions are two-level
    (chunks of about 64 positions), within about 5e-7 relative of float64 sums of the same values.

    Raises:
        TypeError, ValueError: a bad argument (see :func:`check_sensitivity_arguments`); nothing is updated.
    """
    batch, positions = check_sensitivity_arguments(weight, inputs, geometry, s_mean, s_max)
    if batch == 0 or weight.numel() == 0:
        return
    impl = use_kernel(weight.device)
    if impl == "reference":
        scale = denominator_scale(denominators(weight, inputs.to(weight.dtype), geometry))
        scaled = inputs.to(weight.dtype) / scale.view(-1, *([1] * (inputs.ndim - 1)))
        sensitivity_update_reference(weight, scaled, geometry, s_mean, s_max)
        return
    weight = weight.detach().contiguous()
    inputs = inputs.detach().to(weight.dtype).contiguous()
    mean_out = s_mean if s_mean.is_contiguous() else s_mean.contiguous()
    max_out = s_max if s_max.is_contiguous() else s_max.contiguous()
    pairs = _geometry_pairs(geometry)
    split = _split(weight)
    budget = DENOMINATOR_BUDGET if impl == "cpu" else CUDA_DENOMINATOR_BUDGET
    step = max(1, budget // (2 * weight.shape[0] * positions))
    for start in range(0, batch, step):
        block = inputs[start : start + step]
        z = _denominators(split, block, geometry)
        # The relative threshold (EPSILON): scale each example by its power of two, exactly; g is unchanged.
        scale = denominator_scale(z)
        block = block / scale.view(-1, *([1] * (block.ndim - 1)))
        z = z / scale.view(-1, 1, 1, 1)
        if impl == "cpu":
            cpu_kernels().sensitivity_update(
                weight.numpy(),
                block.numpy(),
                z.numpy(),
                mean_out.detach().numpy(),
                max_out.detach().numpy(),
                *pairs,
                num_threads(),
            )
        else:
            from pyprune.ops.cuda import sensitivity_update_cuda_unchecked

            sensitivity_update_cuda_unchecked(weight, block, geometry, z, mean_out, max_out, positions)
    if mean_out is not s_mean:
        s_mean.copy_(mean_out)
    if max_out is not s_max:
        s_max.copy_(max_out)
