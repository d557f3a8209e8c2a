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

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pyprune.ops import cuda
from pyprune.ops.backend import cpu_kernels, num_threads
from pyprune.ops.checks import (
    Geometry,
    check_sensitivity_arguments,
    check_sensitivity_values,
    check_split,
    geometry_pairs,
)
from pyprune.ops.spec import Call, OpSpec

EPSILON = float(torch.finfo(torch.float32).eps)
"""Threshold of the denominators. The kernels and :func:`sensitivity_update_reference` count ``|z| <= EPSILON`` as
infinite (contribution 0); :func:`sensitivity_update` makes it relative, ``|z| <= EPSILON · scale(x)``, where
``scale(x) = 2^floor(log2 max |z(x)|)`` over the layer's denominators (both signs, all units and positions) for
the same example ``x`` (see :func:`denominator_scale`). The reference code (Baykal et al. 2019, Liebenwein et
al. 2020) compares ``|z|`` with float32's epsilon itself, which makes the result depend on the scale of the
activations: pre-activations of about 1e-8 (a randomly initialised deep network) turned every sensitivity to 0.
Relative to the example's own largest denominator, it depends only on the shape of the contributions."""

DENOMINATOR_BUDGET = 1 << 22
"""Entries of ``z`` (``examples x 2 x F x P``) per C++ kernel call: :func:`sensitivity_update` feeds a larger
batch in blocks of examples, so its extra memory does not grow with the batch (16 MiB of float32 ``z``). Each
block costs a torch convolution and a kernel launch of its own: with 2^21, ResNet-56's 16-channel layers took 4
blocks at 256 examples, and the blocks' products 1.1-1.4x the time of one product over the whole batch (2 cores,
loaded machine)."""

CUDA_DENOMINATOR_BUDGET = 1 << 25
"""The same for the CUDA kernel (fewer, larger launches; 128 MiB of float32 ``z``)."""


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
# Dispatch


def denominators(weight: torch.Tensor, inputs: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """``z`` ``(batch, 2, F, P)``: ``z[:, 0] = W+ A`` and ``z[:, 1] = W- A`` (no bias), with one convolution
    (or linear map) of the stacked ``[W+; W-]``; contiguous."""
    return _denominators(split_weight(weight), inputs, geometry)


def split_weight(weight: torch.Tensor) -> torch.Tensor:
    """``[W+; W-]`` ``(2F, J)`` of a ``(F, J)`` weight (contiguous): what :func:`sensitivity_update` multiplies the
    inputs by to form ``z``. Pass it as ``split=`` to reuse it across the batches of one weight (a pass over twice
    the weight's size per call otherwise: 0.6x the layer's GEMM on a 4,096 x 4,096 Linear at 256 examples)."""
    weight = weight.detach()
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
    weight: torch.Tensor,
    inputs: torch.Tensor,
    geometry: Geometry,
    s_mean: torch.Tensor,
    s_max: torch.Tensor,
    *,
    split: torch.Tensor | None = None,
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
        split: ``split_weight(weight)``, kept by a caller that folds many batches into one weight (its values are
            not checked: a stale split gives wrong denominators); default: formed here.

    The kernels take the batch in blocks of at most :data:`DENOMINATOR_BUDGET` denominator entries; every
    result is a maximum, so the blocks change nothing but the memory. An empty batch (or weight) changes
    nothing. Arithmetic is in ``weight``'s dtype: float32 sums over the output positions are two-level
    (chunks of about 64 positions), within about 5e-7 relative of float64 sums of the same values.

    Raises:
        TypeError, ValueError: a bad argument (see :func:`pyprune.ops.checks.check_sensitivity_arguments`);
            nothing is updated.
    """
    SPEC(weight, inputs, geometry, s_mean, s_max, split=split)


def _scaled(inputs: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Each example of ``inputs`` divided by its :func:`denominator_scale` (a power of two: exact)."""
    return inputs / scale.view(-1, *([1] * (inputs.ndim - 1)))


def _reference(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    geometry: Geometry,
    s_mean: torch.Tensor,
    s_max: torch.Tensor,
    *,
    split: torch.Tensor | None = None,
) -> None:
    """:func:`sensitivity_update` with the plain-torch reference (which splits the weight itself)."""
    batch, _ = check_sensitivity_arguments(weight, inputs, geometry, s_mean, s_max)
    check_split(split, weight)
    if batch == 0 or weight.numel() == 0:
        return
    inputs = inputs.to(weight.dtype)
    scaled = _scaled(inputs, denominator_scale(denominators(weight, inputs, geometry)))
    sensitivity_update_reference(weight, scaled, geometry, s_mean, s_max)


#: ``(weight, block, geometry, z, s_mean, s_max, P)``: one block of examples into the contiguous maxima.
BlockKernel = Callable[
    [torch.Tensor, torch.Tensor, Geometry, torch.Tensor, torch.Tensor, torch.Tensor, int], None
]


def _in_blocks(
    kernel: BlockKernel,
    budget: int,
    weight: torch.Tensor,
    inputs: torch.Tensor,
    geometry: Geometry,
    s_mean: torch.Tensor,
    s_max: torch.Tensor,
    positions: int,
    split: torch.Tensor | None,
) -> None:
    """Run ``kernel`` on blocks of at most ``budget`` denominator entries and their ``z``, with contiguous
    operands; the kernel applies the relative threshold (:func:`denominator_scale`)."""
    mean_out = s_mean if s_mean.is_contiguous() else s_mean.contiguous()
    max_out = s_max if s_max.is_contiguous() else s_max.contiguous()
    split = split_weight(weight) if split is None else split
    step = max(1, budget // (2 * weight.shape[0] * positions))
    for start in range(0, inputs.shape[0], step):
        block = inputs[start : start + step]
        kernel(weight, block, geometry, _denominators(split, block, geometry), mean_out, max_out, positions)
    if mean_out is not s_mean:
        s_mean.copy_(mean_out)
    if max_out is not s_max:
        s_max.copy_(max_out)


def _cpu(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    geometry: Geometry,
    s_mean: torch.Tensor,
    s_max: torch.Tensor,
    *,
    split: torch.Tensor | None = None,
) -> None:
    """:func:`sensitivity_update` with the C++ kernel. The values are scanned once, by
    ``pyprune._C.check_sensitivity_values`` without the GIL, before any block updates the maxima."""
    batch, positions = check_sensitivity_arguments(weight, inputs, geometry, s_mean, s_max, values=False)
    check_split(split, weight)
    if inputs.dtype != weight.dtype:
        # The rules hold for the inputs as given: a negative float64 entry may round to -0.0 in float32.
        check_sensitivity_values(weight, inputs)
    weight = weight.detach().contiguous()
    inputs = inputs.detach().to(weight.dtype).contiguous()
    kernels = cpu_kernels()
    # Also catches float64 inputs that overflowed to inf in a float32 weight's dtype.
    kernels.check_sensitivity_values(weight.numpy(), inputs.numpy())
    if batch == 0 or weight.numel() == 0:
        return
    pairs = geometry_pairs(geometry)

    def launch(
        weight: torch.Tensor,
        block: torch.Tensor,
        geometry: Geometry,
        z: torch.Tensor,
        s_mean: torch.Tensor,
        s_max: torch.Tensor,
        positions: int,
    ) -> None:
        arrays = [t.detach().numpy() for t in (weight, block, z, s_mean, s_max)]
        # The kernel scales each example as it reads it (no scaled copies of the block and of z).
        kernels.sensitivity_update(
            *arrays, *pairs, num_threads(), check_values=False, relative_threshold=True
        )

    _in_blocks(launch, DENOMINATOR_BUDGET, weight, inputs, geometry, s_mean, s_max, positions, split)


def _cuda(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    geometry: Geometry,
    s_mean: torch.Tensor,
    s_max: torch.Tensor,
    *,
    split: torch.Tensor | None = None,
) -> None:
    """:func:`sensitivity_update` with the CUDA kernel (values scanned on the device, by torch)."""
    batch, positions = check_sensitivity_arguments(weight, inputs, geometry, s_mean, s_max)
    check_split(split, weight)
    if batch == 0 or weight.numel() == 0:
        return
    weight = weight.detach().contiguous()
    inputs = inputs.detach().to(weight.dtype).contiguous()
    _in_blocks(
        _cuda_block,
        CUDA_DENOMINATOR_BUDGET,
        weight,
        inputs,
        geometry,
        s_mean,
        s_max,
        positions,
        split,
    )


def _cuda_block(
    weight: torch.Tensor,
    block: torch.Tensor,
    geometry: Geometry,
    z: torch.Tensor,
    s_mean: torch.Tensor,
    s_max: torch.Tensor,
    positions: int,
) -> None:
    """One block through the CUDA kernel, which compares with the absolute threshold: each example's inputs and
    denominators are divided by its :func:`denominator_scale` first (exact: a power of two)."""
    scale = denominator_scale(z)
    cuda.sensitivity_update_cuda_unchecked(
        weight, _scaled(block, scale), geometry, z / scale.view(-1, 1, 1, 1), s_mean, s_max, positions
    )


def _example(generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> Call:
    """A strided, padded, dilated 3 x 3 conv of 5 filters on a batch of 3 non-negative 2 x 9 x 8 inputs, some
    of them zero (denominators below the threshold), into running maxima that already hold values."""
    geometry = Geometry((3, 3), (2, 1), (1, 1), (1, 2))
    weight = torch.randn(5, 18, generator=generator, dtype=torch.float64)
    inputs = torch.rand(3, 2, 9, 8, generator=generator, dtype=torch.float64).mul(2).sub(0.5).clamp_min(0)
    s_mean = torch.rand(5, 18, generator=generator, dtype=torch.float64) * 0.1
    s_max = s_mean * 2
    tensors = (weight, inputs, s_mean, s_max)
    weight, inputs, s_mean, s_max = (t.to(dtype).to(device) for t in tensors)
    return (weight, inputs, geometry, s_mean, s_max), {}


SPEC = OpSpec(
    name="sensitivity_update",
    check=check_sensitivity_arguments,
    cpu=_cpu,
    cuda=_cuda,
    reference=_reference,
    source="sensitivity",
    dtypes=(torch.float32, torch.float64),
    example=_example,
)
