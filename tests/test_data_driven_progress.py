"""Every data-driven method shows a progress bar with ``progress=True`` and none with ``progress=False``."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import pyprune

METHODS = ["taylor", "oracle", "cka_greedy", "cka_single", "sipp_det", "pfp", "wanda", "sparsegpt"]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3)
    ).eval()


@pytest.mark.parametrize("method", METHODS)
def test_progress_bar_follows_the_option(method: str, capsys: pytest.CaptureFixture) -> None:
    model = _model()
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SiPP/PFP warn that 12 samples are below their bound's sample size
        capsys.readouterr()
        pyprune.plan(model, method, 0.3, example_input=data[0][0], data=data, progress=True)
        shown = capsys.readouterr().err
        pyprune.plan(model, method, 0.3, example_input=data[0][0], data=data, progress=False)
        hidden = capsys.readouterr().err
    bar = re.compile(r"\d+/\d+ \[")  # tqdm's "done/total [elapsed": over batches, layers or blocks
    assert bar.search(shown), shown
    assert not bar.search(hidden), hidden
