"""Test-session set-up shared by every test module."""

from __future__ import annotations

import os

import torch
from hypothesis import settings


def _declare_torchvision_ops() -> None:
    """Let torchvision's Python models import beside a CPU-only torch wheel.

    torchvision's wheels on PyPI link their compiled ops (``nms``, ``roi_align``) against a CUDA build of torch;
    beside the CPU wheel this project's CI uses, that library fails to load, and ``import torchvision`` then
    stops at registering a fake kernel for ``torchvision::nms``. pyprune needs only the model definitions, so
    when the ops are missing the two schemas that import needs are declared (their kernels stay absent).
    """
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute lookup is the test
    except (AttributeError, RuntimeError):
        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _declare_torchvision_ops.library = library  # keep the registration alive


_declare_torchvision_ops()

# CI draws the same hypothesis examples on every run, so a red build can be reproduced and a green one is not luck;
# local runs keep drawing new examples (and remember failing ones in .hypothesis/).
if os.environ.get("CI"):
    settings.register_profile("ci", derandomize=True)
    settings.load_profile("ci")
