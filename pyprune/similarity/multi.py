"""CKA between many models at once: every pair of models, every pair of layers, each layer's Gram once.

:func:`cka_matrix_models` puts the layers of all ``M`` models into one list and scores it against itself with
:func:`pyprune.similarity.cka.hsic_terms`: every layer's Gram matrix is formed once (``sum_m L_m`` of them, not
``2 L`` per model pair as a loop over pairs of :func:`pyprune.cka_matrix` calls forms), and one fused pass of
the HSIC kernel scores all pairs, the symmetric half only. Memory: one ``(n, n)`` Gram per layer of every model,
in the activations' precision.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pyprune.similarity._inputs import Flatten, check_same_samples
from pyprune.similarity.cka import Activations, CKAAlgorithm, Kernel, as_layer_list, hsic_terms

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True, eq=False)
class ModelsCKA:
    """Layer-by-layer CKA of every pair of ``M`` models.

    Attributes:
        values: float64 ``(T, T)`` with ``T = sum_m L_m``: CKA of every layer with every layer, models in order,
            each model's layers contiguous (symmetric; NaN where undefined, see :func:`pyprune.cka_matrix`).
        model_names: the ``M`` model names.
        layer_names: ``M`` lists, the layer names of each model.
        metric: e.g. ``"linear CKA"``.
        n_samples: number of samples the values come from.
    """

    values: torch.Tensor
    model_names: list[str]
    layer_names: list[list[str]]
    metric: str
    n_samples: int

    @property
    def offsets(self) -> list[int]:
        """Start row of each model's block in :attr:`values`, plus the total ``T`` at the end."""
        starts = [0]
        for names in self.layer_names:
            starts.append(starts[-1] + len(names))
        return starts

    def block(self, a: int | str, b: int | str) -> torch.Tensor:
        """The ``(L_a, L_b)`` CKA matrix of model ``a``'s layers (rows) with model ``b``'s (columns)."""
        i, j = self._index(a, "a"), self._index(b, "b")
        o = self.offsets
        return self.values[o[i] : o[i + 1], o[j] : o[j + 1]]

    def corresponding_layers(self) -> torch.Tensor:
        """``(M, M)``: the mean CKA of layer ``k`` of one model with layer ``k`` of the other, over ``k``.

        Meaningful for models of one architecture; raises ``ValueError`` if the layer counts differ.
        """
        counts = {len(names) for names in self.layer_names}
        if len(counts) != 1:
            raise ValueError(f"models: corresponding layers need equal layer counts, got {sorted(counts)}")
        m = len(self.model_names)
        out = torch.empty(m, m, dtype=torch.float64)
        for i in range(m):
            for j in range(m):
                out[i, j] = self.block(i, j).diagonal().mean()
        return out

    def plot(self, path: str | os.PathLike[str] | None = None, title: str | None = None) -> Figure:
        """The whole ``(T, T)`` heatmap, models separated by white lines and labelled ``model/layer``."""
        from pyprune.plot import plot_similarity

        labels = [
            f"{m}/{layer}"
            for m, names in zip(self.model_names, self.layer_names, strict=True)
            for layer in names
        ]
        fig = plot_similarity(
            self.values,
            labels,
            labels,
            title=title
            if title is not None
            else f"{self.metric}, {len(self.model_names)} models ({self.n_samples} samples)",
            annotate=False,
            colorbar_label=self.metric,
        )
        ax = fig.axes[0]
        for edge in self.offsets[1:-1]:
            ax.axhline(edge - 0.5, color="white", linewidth=1.5)
            ax.axvline(edge - 0.5, color="white", linewidth=1.5)
        if path is not None:
            fig.savefig(path, dpi=150)
        return fig

    def _index(self, model: int | str, name: str) -> int:
        if isinstance(model, str):
            if model not in self.model_names:
                raise KeyError(f"{name}: unknown model {model!r}; models are {self.model_names}")
            return self.model_names.index(model)
        if not (isinstance(model, int) and -len(self.model_names) <= model < len(self.model_names)):
            raise IndexError(f"{name}: model index {model!r} out of range for {len(self.model_names)} models")
        return model % len(self.model_names)


def cka_matrix_models(
    models: Sequence[Activations] | Mapping[str, Activations],
    *,
    kernel: Kernel = "linear",
    threshold: float = 0.5,
    unbiased: bool = False,
    flatten: Flatten = "example",
    method: CKAAlgorithm = "auto",
) -> ModelsCKA:
    """Layer-by-layer CKA between every pair of ``M`` models (and each model with itself).

    Args:
        models: ``M >= 1`` activation sets of the same ``n`` samples, as a list or ``{model name: activations}``;
            each is a list or ``{layer name: tensor}`` dict as :func:`pyprune.cka_matrix` takes (e.g. from
            :func:`pyprune.capture`).
        kernel, threshold, unbiased, flatten, method: as for :func:`pyprune.cka`.

    Returns:
        A :class:`ModelsCKA`; ``result.block(a, b)`` equals ``pyprune.cka_matrix(models[a], models[b])``.
    """
    if isinstance(models, Mapping):
        model_names = [str(k) for k in models]
        sets = list(models.values())
    elif isinstance(models, Sequence) and not isinstance(models, (str, bytes)):
        model_names = [f"model {i}" for i in range(len(models))]
        sets = list(models)
    else:
        raise TypeError(f"models: expected a list or dict of activation sets, got {type(models).__name__}")
    if not sets:
        raise ValueError("models: expected at least one model, got none")
    tensors: list[torch.Tensor] = []
    layer_names: list[list[str]] = []
    for model, acts in zip(model_names, sets, strict=True):
        layers, names = as_layer_list(acts, f"models[{model!r}]", flatten)
        if tensors:
            check_same_samples(tensors[0], layers[0], f"models[{model_names[0]!r}]", f"models[{model!r}]")
        tensors += layers
        layer_names.append(names)
    terms = hsic_terms(tensors, None, kernel=kernel, threshold=threshold, unbiased=unbiased, method=method)
    labels = [f"{m}/{layer}" for m, names in zip(model_names, layer_names, strict=True) for layer in names]
    metric = "linear CKA" if kernel == "linear" else f"RBF CKA (threshold {threshold:g})"
    metric += " (unbiased)" if unbiased else ""
    return ModelsCKA(terms.cka(labels, labels).cpu(), model_names, layer_names, metric, tensors[0].shape[0])
