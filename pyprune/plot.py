"""Heatmaps of layer-by-layer similarity matrices (needs matplotlib: ``pip install pyprune[demo]``).

Figures are built with the object-oriented API (``matplotlib.figure.Figure``) rather than ``pyplot``, so
nothing is registered with a GUI backend: saving works headless (PNG through Agg) and repeated calls do not
accumulate open figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ANNOTATE_MAX = 12
"""Cells get their value written in them by default when both sides have at most this many layers."""

_NAN_COLOUR = "#d9d9d9"


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, or an ImportError that says how to install it (it is an optional dependency)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            "pyprune's plotting needs matplotlib, which is not installed: pip install pyprune[demo]"
        ) from exc
    return matplotlib


def plot_similarity(
    matrix: Any,
    names_x: Sequence[str],
    names_y: Sequence[str],
    *,
    path: str | os.PathLike[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    annotate: bool | None = None,
    cmap: str = "magma",
    vmin: float = 0.0,
    vmax: float = 1.0,
    xlabel: str | None = None,
    ylabel: str | None = None,
    colorbar_label: str | None = None,
    p_values: Any = None,
    alpha: float = 0.05,
) -> Figure:
    """Draw a labelled heatmap of a similarity matrix.

    Rows are ``names_x`` (model A's layers, first layer at the top), columns ``names_y`` (model B's). NaN
    cells (undefined similarity) are drawn hatched grey and noted in a legend; values outside
    ``[vmin, vmax]`` (possible for unbiased CKA) saturate and the colourbar gets an arrow end.

    Args:
        matrix: ``(L1, L2)`` torch tensor, NumPy array or nested lists of numbers.
        names_x: L1 row labels.
        names_y: L2 column labels.
        path: if given, save the figure there (PNG unless the suffix says otherwise) at 150 dpi.
        ax: draw into these axes (of any figure) instead of a new figure.
        title: axes title.
        annotate: write each value in its cell; default when ``L1, L2 <= 12``.
        cmap: matplotlib colormap name.
        vmin, vmax: colour scale limits.
        xlabel, ylabel: axis titles.
        colorbar_label: colourbar title.
        p_values: optional ``(L1, L2)`` p-values (e.g. :func:`pyprune.cka_matrix_test`); cells with
            ``p > alpha`` (not significant) get a grey dot pattern and a legend entry.
        alpha: significance level for ``p_values``.

    Returns:
        The ``matplotlib.figure.Figure`` drawn on (``ax.figure`` when ``ax`` is given).

    Raises:
        ImportError: matplotlib is missing.
        ValueError: ``matrix`` is not 2-D or its shape does not match the names.
    """
    mpl = require_matplotlib()
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    values = np.asarray(matrix.cpu() if hasattr(matrix, "cpu") else matrix, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"matrix: expected a 2-D (L1, L2) matrix, got shape {values.shape}")
    if values.shape != (len(names_x), len(names_y)):
        raise ValueError(
            f"matrix: shape {values.shape} does not match {len(names_x)} row and {len(names_y)} column names"
        )
    rows, cols = values.shape
    if ax is None:
        # Size grows with the number of layers so labels stay legible, within screen-friendly bounds.
        size = (min(max(3.5 + 0.45 * cols, 4.5), 16.0), min(max(2.5 + 0.45 * rows, 3.5), 14.0))
        fig = Figure(figsize=size, layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure

    colormap = mpl.colormaps[cmap].with_extremes(bad=_NAN_COLOUR)
    norm = Normalize(vmin=vmin, vmax=vmax)
    image = ax.imshow(values, cmap=colormap, norm=norm, aspect="auto", interpolation="nearest")
    finite = values[np.isfinite(values)]
    below = finite.size > 0 and finite.min() < vmin
    above = finite.size > 0 and finite.max() > vmax
    extend = "both" if below and above else "min" if below else "max" if above else "neither"
    colorbar = fig.colorbar(image, ax=ax, extend=extend, fraction=0.05)
    if colorbar_label:
        colorbar.set_label(colorbar_label)

    fontsize = max(5.0, min(10.0, 240.0 / max(rows, cols)))
    ax.set_xticks(range(cols), labels=list(names_y), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(rows), labels=list(names_x))
    ax.tick_params(labelsize=fontsize)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)

    nan_cells = np.argwhere(np.isnan(values))
    for i, j in nan_cells:
        ax.add_patch(
            Rectangle(
                (j - 0.5, i - 0.5), 1, 1, facecolor="none", edgecolor="#808080", hatch="///", linewidth=0
            )
        )
    handles = []
    if len(nan_cells):
        nan_label = "NaN (undefined)"
        handles.append(Patch(facecolor=_NAN_COLOUR, edgecolor="#808080", hatch="///", label=nan_label))
    if p_values is not None:
        handles += _mark_not_significant(ax, p_values, values.shape, alpha)
    if handles:
        ax.legend(
            handles=handles,
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            frameon=False,
            fontsize=fontsize,
            borderaxespad=0.2,
        )

    if annotate if annotate is not None else max(rows, cols) <= ANNOTATE_MAX:
        _annotate(ax, values, colormap, norm, fontsize)
    if title:
        ax.set_title(title, loc="left" if handles else "center")
    if path is not None:
        fig.savefig(path, dpi=150)
    return fig


def _annotate(ax: Axes, values: np.ndarray, colormap: Any, norm: Any, fontsize: float) -> None:
    """Write each value in its cell, in black or white, whichever contrasts with the cell colour."""
    for (i, j), value in np.ndenumerate(values):
        if math.isnan(value):
            ax.text(j, i, "NaN", ha="center", va="center", fontsize=fontsize, color="#404040")
            continue
        red, green, blue, _ = colormap(norm(value))
        luminance = 0.299 * red + 0.587 * green + 0.114 * blue
        colour = "black" if luminance > 0.5 else "white"
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=fontsize, color=colour)


def _mark_not_significant(ax: Axes, p_values: Any, shape: tuple[int, ...], alpha: float) -> list[Any]:
    """Dot the cells whose p-value exceeds ``alpha``; returns the legend handle (none if every cell passes)."""
    from matplotlib.patches import Patch, Rectangle

    p = np.asarray(p_values.cpu() if hasattr(p_values, "cpu") else p_values, dtype=np.float64)
    if p.shape != shape:
        raise ValueError(f"p_values: expected shape {shape} like the matrix, got {p.shape}")
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha: expected a significance level in (0, 1), got {alpha!r}")
    cells = np.argwhere(p > alpha)
    for i, j in cells:
        rectangle = Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="none", edgecolor="#9a9a9a", hatch="..")
        ax.add_patch(rectangle)
    if not len(cells):
        return []
    label = f"not significant (p > {alpha:g})"
    return [Patch(facecolor="white", edgecolor="#9a9a9a", hatch="..", label=label)]
