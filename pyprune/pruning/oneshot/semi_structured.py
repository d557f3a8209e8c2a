"""2:4 semi-structured sparsity on NVIDIA sparse tensor cores (``torch.sparse.to_sparse_semi_structured``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune


def satisfies_n_m(weight: torch.Tensor, n: int, m: int) -> bool:
    """True if every group of ``m`` consecutive entries of each row of ``weight`` (``(out, in)``) has at most
    ``n`` nonzeros."""
    if weight.dim() != 2 or weight.shape[1] % m:
        return False
    groups = weight.reshape(weight.shape[0], -1, m)
    return bool(((groups != 0).sum(dim=-1) <= n).all())


def semi_structured_unsupported(device: torch.device | str | None = None) -> str:
    """Why 2:4 sparse tensor-core kernels cannot run on ``device`` (default: the current CUDA device), or ``""``."""
    if not torch.cuda.is_available():
        return (
            "no CUDA device: 2:4 semi-structured kernels need an NVIDIA GPU with sparse tensor cores (compute "
            "capability 8.0 or newer, e.g. A100, H100) and a CUDA build of torch; the 2:4 masks still apply as "
            "ordinary masks here"
        )
    device = torch.device("cuda") if device is None else torch.device(device)
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return (
            f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor}; 2:4 sparse tensor cores "
            "need 8.0 or newer"
        )
    return ""


def to_semi_structured(model: nn.Module, *, layers: list[str] | None = None) -> dict[str, str]:
    """Replace the weight of every 2:4-sparse ``nn.Linear`` (or of ``layers``) by a semi-structured sparse tensor.

    Masks are folded first (``prune.remove``). Needs CUDA, float16/bfloat16 weights and the shape limits of
    torch's kernels (both dimensions multiples of 64 for cuSPARSELt/CUTLASS).

    Returns:
        ``{layer name: "converted" or the reason it was left dense}``.

    Raises:
        RuntimeError: when this machine cannot run the kernels (the message says why).
    """
    reason = semi_structured_unsupported()
    if reason:
        raise RuntimeError(f"to_semi_structured: {reason}")
    from torch.sparse import to_sparse_semi_structured

    result: dict[str, str] = {}
    for name, module in model.named_modules():
        if (layers is not None and name not in layers) or not isinstance(module, nn.Linear):
            continue
        if hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
        weight = module.weight.detach()
        if weight.device.type != "cuda" or weight.dtype not in (torch.float16, torch.bfloat16):
            result[name] = f"needs a float16/bfloat16 CUDA weight, got {weight.dtype} on {weight.device}"
        elif not satisfies_n_m(weight, 2, 4):
            result[name] = "the weight is not 2:4 sparse"
        elif weight.shape[0] % 64 or weight.shape[1] % 64:
            result[name] = f"shape {tuple(weight.shape)} is not a multiple of 64 in both dimensions"
        else:
            module.weight = nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
            result[name] = "converted"
    return result
