from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from matplotlib.figure import Figure

from pyprune.compare import LayerSimilarity
from pyprune.plot import plot_similarity

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cell_texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.axes[0].texts]


def test_png_written(tmp_path):
    path = tmp_path / "heatmap.png"
    matrix = torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fig = plot_similarity(matrix, ["a", "b", "c"], ["w", "x", "y", "z"], path=path, title="t")
    assert isinstance(fig, Figure)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 5000
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["w", "x", "y", "z"]
    assert len(cell_texts(fig)) == 12
    assert fig.axes[0].get_legend() is None


def test_nan_cells_are_marked(tmp_path):
    path = tmp_path / "nan.png"
    matrix = np.array([[1.0, math.nan], [-0.2, 0.5]])
    fig = plot_similarity(matrix, ["a", "b"], ["x", "y"], path=path)
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert cell_texts(fig) == ["1.00", "NaN", "-0.20", "0.50"]
    legend = fig.axes[0].get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["NaN (undefined)"]
    assert len(fig.axes[0].patches) == 1  # the hatched cell


def test_annotation_default_depends_on_size():
    big = torch.rand(13, 2, generator=torch.Generator().manual_seed(0))
    names = [f"l{i}" for i in range(13)]
    assert cell_texts(plot_similarity(big, names, ["x", "y"])) == []
    assert len(cell_texts(plot_similarity(big, names, ["x", "y"], annotate=True))) == 26
    assert cell_texts(plot_similarity(torch.eye(2), ["a", "b"], ["c", "d"], annotate=False)) == []


def test_draws_into_given_axes():
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_similarity([[0.5]], ["a"], ["b"], ax=ax) is fig
    assert len(ax.images) == 1


def test_shape_mismatch():
    with pytest.raises(ValueError, match="does not match"):
        plot_similarity(torch.eye(2), ["a"], ["b", "c"])
    with pytest.raises(ValueError, match="2-D"):
        plot_similarity(torch.ones(2), ["a", "b"], ["c"])


def test_layer_similarity_plot(tmp_path):
    result = LayerSimilarity(torch.eye(2, dtype=torch.float64), ["a", "b"], ["c", "d"], "linear CKA", 7)
    fig = result.plot(tmp_path / "sim.png")
    assert (tmp_path / "sim.png").read_bytes().startswith(PNG_MAGIC)
    assert fig.axes[0].get_title() == "linear CKA (7 samples)"


def test_missing_matplotlib_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(ImportError, match=r"pip install pyprune\[demo\]"):
        plot_similarity(torch.eye(2), ["a", "b"], ["c", "d"])
