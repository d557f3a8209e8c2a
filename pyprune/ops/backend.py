"""Backend selection: compiled kernels (C++ on CPU, CUDA through CuPy) or the plain-torch references.

Every kernel in :mod:`pyprune.ops` has a reference implementation written with ordinary torch operations.
``set_backend("reference")`` (or ``PYPRUNE_BACKEND=reference`` in the environment) forces those everywhere,
which is how the kernels are tested and how a user rules them out when chasing a numerical question.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from types import ModuleType

import torch

BACKENDS = ("auto", "reference")
_ENV_VAR = "PYPRUNE_BACKEND"

_backend: str | None = None
_cpu_module: ModuleType | None = None
_cpu_import_error: str | None = None
_warned: set[str] = set()


def _validate(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {name!r}")
    return name


def get_backend() -> str:
    """The active backend: ``"auto"`` (kernels where available) or ``"reference"`` (plain torch)."""
    global _backend
    if _backend is None:
        env = os.environ.get(_ENV_VAR, "auto").strip().lower() or "auto"
        try:
            _backend = _validate(env)
        except ValueError:
            raise ValueError(
                f"environment variable {_ENV_VAR}: expected one of {BACKENDS}, got {env!r}"
            ) from None
    return _backend


def set_backend(name: str) -> None:
    """Choose ``"auto"`` (compiled kernels where they apply, the default) or ``"reference"`` (plain torch)."""
    global _backend
    _backend = _validate(name)


@contextmanager
def use_backend(name: str):
    """Context manager form of :func:`set_backend`; restores the previous backend on exit."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def cpu_kernels() -> ModuleType | None:
    """The compiled module ``pyprune._C``, or None if it failed to import (the reason is in :func:`info`)."""
    global _cpu_module, _cpu_import_error
    if _cpu_module is None and _cpu_import_error is None:
        try:
            from pyprune import _C

            _cpu_module = _C
        except ImportError as exc:
            _cpu_import_error = str(exc)
            warn_once(
                "cpu-missing", f"pyprune._C could not be imported ({exc}); using the torch reference on CPU"
            )
    return _cpu_module


def cpu_import_error() -> str | None:
    cpu_kernels()
    return _cpu_import_error


def num_threads() -> int:
    """Threads the C++ kernels use: the same as ``torch.get_num_threads()``, so one setting governs both."""
    return max(1, torch.get_num_threads())


def warn_once(key: str, message: str) -> None:
    """Emit ``message`` as a RuntimeWarning the first time ``key`` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def use_kernel(device: torch.device) -> str:
    """Which implementation runs for tensors on ``device``: ``"cpu"``, ``"cuda"`` or ``"reference"``."""
    if get_backend() == "reference":
        return "reference"
    if device.type == "cpu":
        return "cpu" if cpu_kernels() is not None else "reference"
    if device.type == "cuda":
        from pyprune.ops import cuda

        if cuda.available():
            return "cuda"
        warn_once(
            "cupy-missing",
            f"CuPy is not usable ({cuda.unavailable_reason()}); CUDA tensors use the torch reference "
            "implementations. Install pyprune[cuda] for the CUDA kernels.",
        )
    return "reference"
