"""Input checking and conversion shared by every similarity metric.

Activations arrive as torch tensors, NumPy arrays or CuPy arrays shaped ``(n_samples, ...)``. They leave as
2-D floating torch tensors ``(n, p)`` on their original device (CuPy arrays cross zero-copy by DLPack), or a
``TypeError``/``ValueError`` naming the argument and what was expected.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch

Flatten = Literal["example", "channel"]
FLATTEN_MODES = ("example", "channel")


def to_tensor(x: Any, name: str) -> torch.Tensor:
    """``x`` as a floating torch tensor without copying where possible; half precisions become float32."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x)) if x.dtype != object else None
    elif hasattr(x, "__dlpack__"):  # CuPy and other array libraries
        t = torch.from_dlpack(x)
    else:
        t = None
    if t is None:
        raise TypeError(
            f"{name}: expected a torch.Tensor, numpy.ndarray or cupy.ndarray, got {type(x).__name__}"
        )
    if not t.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point dtype, got {t.dtype}; convert with .float() first"
        )
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    return t


def flatten_activations(x: torch.Tensor, flatten: Flatten = "example") -> torch.Tensor:
    """Reshape activations ``(n, C, *spatial)`` into a 2-D representation.

    ``"example"``: one row per example, ``(n, C*H*W)``: every position of every channel is a neuron (the
    convention of Kornblith et al. for CKA). ``"channel"``: channels are the neurons and every spatial position
    of every example is a sample, ``(n*H*W, C)`` (the SVCCA convention for conv layers). Both are the identity
    on 2-D input.
    """
    if flatten not in FLATTEN_MODES:
        raise ValueError(f"flatten: expected one of {FLATTEN_MODES}, got {flatten!r}")
    if x.ndim == 2:
        return x
    if flatten == "example":
        return x.reshape(x.shape[0], -1)
    channels = x.shape[1]
    return x.movedim(1, -1).reshape(-1, channels)


def as_representation(
    x: Any, name: str, flatten: Flatten = "example", check_finite: bool = True
) -> torch.Tensor:
    """Validate one layer's activations and return them as ``(n, p)``."""
    t = to_tensor(x, name)
    if t.ndim < 2:
        raise ValueError(
            f"{name}: expected activations shaped (n_samples, n_features, ...), got a {t.ndim}-D tensor of shape "
            f"{tuple(t.shape)}; use x.reshape(-1, 1) for a single feature"
        )
    if t.shape[0] == 0 or t[0].numel() == 0:
        raise ValueError(f"{name}: empty activations of shape {tuple(t.shape)}")
    t = flatten_activations(t, flatten)
    if check_finite and not _all_finite(t):
        raise ValueError(f"{name}: contains NaN or Inf values")
    return t


def _all_finite(t: torch.Tensor) -> bool:
    # A finite sum proves every element finite (NaN and Inf propagate) at the cost of one read; only an
    # overflowing sum needs the elementwise test. On CPU NumPy reads it: see `_scaled_centred` in cka.py for why
    # these memory-bound passes stay off torch's OpenMP pool.
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        a = t.detach().numpy()
        return bool(np.isfinite(a.sum())) or bool(np.isfinite(a).all())
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_same_samples(x: torch.Tensor, y: torch.Tensor, x_name: str = "x", y_name: str = "y") -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{x_name} and {y_name}: expected the same number of samples (rows), got {x.shape[0]} and {y.shape[0]}"
        )
    if x.device != y.device:
        raise ValueError(f"{x_name} and {y_name}: expected the same device, got {x.device} and {y.device}")


def as_pair(
    x: Any, y: Any, flatten: Flatten = "example", min_samples: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two representations of the same samples; both returned as float64 ``(n, p)`` tensors.

    Fewer than ``min_samples`` samples raise ``ValueError``: with one sample every feature is constant and
    no similarity is defined (a silent 0 would look like a measurement).
    """
    xt = as_representation(x, "x", flatten)
    yt = as_representation(y, "y", flatten)
    check_same_samples(xt, yt)
    if xt.shape[0] < min_samples:
        raise ValueError(
            f"x and y: expected at least {min_samples} samples (rows), got {xt.shape[0]}; similarity between "
            "representations is undefined for fewer"
        )
    return xt.double(), yt.double()


def input_eps(x: Any) -> float:
    """Machine epsilon of the dtype ``x`` arrived in (before any conversion): the resolution of its values.

    Rank decisions use it, so that float32 or float16 data are not credited with float64's digits.
    """
    dtype = getattr(x, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return torch.finfo(dtype).eps
    try:
        return float(np.finfo(np.dtype(dtype)).eps)
    except (TypeError, ValueError):
        return torch.finfo(torch.float64).eps


def peak_exponent(x: torch.Tensor) -> int:
    """``e`` with ``max|x|`` in ``[2^(e-1), 2^e)``; 0 for an all-zero or empty ``x``."""
    if x.numel() == 0:
        return 0
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        # NumPy, not torch: see `_all_finite`.
        a = x.numpy()
        peak = max(float(a.max()), -float(a.min()))
    else:
        low, high = torch.aminmax(x)
        peak = max(float(high), -float(low))
    return math.frexp(peak)[1] if peak > 0 else 0


def power_of_two_factors(exponent: int) -> list[float]:
    """Powers of two whose product is ``2^-exponent``, each a normal float32, so that multiplying by them is
    exact in any float dtype (``2^-exponent`` alone overflows for subnormal peaks)."""
    half = exponent // 2
    return [f for f in (math.ldexp(1.0, -half), math.ldexp(1.0, half - exponent)) if f != 1.0]


def to_unit_peak(x: torch.Tensor) -> torch.Tensor:
    """``x`` times the power of two that puts ``max|x|`` in [0.5, 1): exact, and safe to square and multiply
    for activations of any finite magnitude (scale-invariant measures only)."""
    for f in power_of_two_factors(peak_exponent(x)):
        x = x * f
    return x


def centre(x: torch.Tensor) -> torch.Tensor:
    """Column-centred copy of ``x`` (n, p), computed in float64."""
    x = x.double()
    return x - x.mean(dim=0, keepdim=True)


def is_constant(x: torch.Tensor) -> bool:
    """True when every sample has exactly the same representation (zero variance in every feature)."""
    # Almost every real layer differs between its first two samples, so test them before reading all rows.
    if x.shape[0] > 1 and not bool((x[1] == x[0]).all()):
        return False
    return bool((x == x[:1]).all())
