"""One specification per op: its argument checker and its three implementations, from which the rest is derived.

An :class:`OpSpec` names the op's checker (:mod:`pyprune.ops.checks`), its C++ entry (an adapter to
``pyprune._C``), its CUDA entry (:mod:`pyprune.ops.cuda`) and its torch reference (:mod:`pyprune.ops.reference`).
Calling the spec dispatches: :func:`pyprune.ops.backend.use_kernel` picks the implementation for the device of
the arguments and that implementation checks them on entry, once. :data:`pyprune.ops.registry.OPS` lists every
spec; ``pyprune info`` and ``tests/test_ops_spec.py`` (each kernel against its reference on the spec's random
inputs) are derived from that list.

To add an op: write its checker in ``checks.py``, its reference in ``reference.py``, the kernels in
``csrc/cpu/<op>.cpp`` (bound in ``csrc/bindings.cpp``) and ``csrc/cuda/<op>.cu`` (launched from ``cuda.py``),
then an ``OpSpec`` in ``pyprune/ops/<op>.py`` and one line in ``registry.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from pyprune.ops.backend import use_kernel

#: ``(args, kwargs)`` of one call.
Call = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class OpSpec:
    """An op of the kernel layer.

    Attributes:
        name: the op's public name (``pyprune.ops.<module>.<name>``).
        check: the argument checker every implementation runs on entry (raises ``TypeError``/``ValueError``).
        cpu: the C++ implementation (through ``pyprune._C``), same signature as the op.
        cuda: the CUDA implementation (through CuPy), same signature.
        reference: the plain-torch implementation, same signature; runs on any device and defines the result.
        source: the stem of its kernels, ``csrc/cpu/<source>.cpp`` and ``csrc/cuda/<source>.cu``.
        dtypes: the floating dtypes the op computes in (what the kernel tests cover).
        example: ``example(generator, dtype, device)``: random valid ``(args, kwargs)`` for the kernel tests.
    """

    name: str
    check: Callable[..., Any]
    cpu: Callable[..., Any]
    cuda: Callable[..., Any]
    reference: Callable[..., Any]
    source: str
    dtypes: tuple[torch.dtype, ...]
    example: Callable[[torch.Generator, torch.dtype, torch.device], Call]

    @property
    def cpu_kernel(self) -> str:
        """The C++ kernel, as ``pyprune info`` names it."""
        return f"C++ csrc/cpu/{self.source}.cpp"

    @property
    def cuda_kernel(self) -> str:
        """The CUDA kernel, as ``pyprune info`` names it."""
        return f"CUDA csrc/cuda/{self.source}.cu"

    def implementation(self, device: torch.device) -> Callable[..., Any]:
        """What runs for arguments on ``device`` under the current backend."""
        return {"cpu": self.cpu, "cuda": self.cuda, "reference": self.reference}[use_kernel(device)]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.implementation(_argument_device(args))(*args, **kwargs)


def _argument_device(args: Iterable[Any]) -> torch.device:
    """The device of the first tensor among ``args`` (looking inside lists and tuples); CPU if there is none, so
    that the checker of whichever implementation runs names the argument that is not a tensor."""
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device
        if isinstance(arg, (list, tuple)):
            for item in arg:
                if isinstance(item, torch.Tensor):
                    return item.device
    return torch.device("cpu")
