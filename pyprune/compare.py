"""Layer-by-layer similarity of two models (or one model with itself) on the same data: CKA heatmaps.

:func:`compare_models` runs both models over ``data`` in one pass, batch by batch, so that a shuffled
``DataLoader`` or a one-shot iterator feeds both models the same samples. Without ``streaming`` the
activations are concatenated and scored exactly with :func:`pyprune.cka_matrix`; with ``streaming`` each
batch goes into a :class:`pyprune.similarity.MinibatchCKA` accumulator and is dropped, so memory does not
grow with the data set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from pyprune.activations import LayerRecorder, LayerSelector, batch_size_of, count_samples, input_batches
from pyprune.similarity._inputs import Flatten
from pyprune.similarity.cka import Kernel, cka_matrix

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


# eq=False: a generated __eq__ would compare the tensors elementwise and fail on bool().
@dataclass(frozen=True, eq=False)
class LayerSimilarity:
    """The similarity of every layer of model A (rows) with every layer of model B (columns).

    Attributes:
        values: float64 tensor ``(L1, L2)`` on the CPU; ``values[i, j]`` compares ``names_a[i]`` with
            ``names_b[j]``. NaN where the metric is undefined (see :func:`pyprune.cka_matrix`).
        names_a: model A's layer names, rows.
        names_b: model B's layer names, columns.
        metric: what ``values`` holds, e.g. ``"linear CKA"`` or ``"minibatch linear CKA (unbiased)"``.
        n_samples: how many input samples the values were computed from.
        p_values: optional float64 ``(L1, L2)`` permutation p-values (from :func:`pyprune.cka_matrix_test`);
            :meth:`plot` marks the cells that are not significant.
    """

    values: torch.Tensor
    names_a: list[str]
    names_b: list[str]
    metric: str
    n_samples: int
    p_values: torch.Tensor | None = None

    def plot(
        self,
        path: str | os.PathLike[str] | None = None,
        ax: Axes | None = None,
        title: str | None = None,
        annotate: bool | None = None,
        *,
        xlabel: str = "model B",
        ylabel: str = "model A",
        alpha: float = 0.05,
    ) -> Figure:
        """Heatmap of :attr:`values` (rows model A, columns model B); see :func:`pyprune.plot_similarity`.

        The default title names the metric and sample count. With :attr:`p_values`, cells with ``p > alpha``
        are dotted as not significant. Needs matplotlib.
        """
        from pyprune.plot import plot_similarity

        return plot_similarity(
            self.values,
            self.names_a,
            self.names_b,
            path=path,
            ax=ax,
            title=title if title is not None else f"{self.metric} ({self.n_samples} samples)",
            annotate=annotate,
            xlabel=xlabel,
            ylabel=ylabel,
            colorbar_label=self.metric,
            p_values=self.p_values,
            alpha=alpha,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: ``values`` as nested lists of floats with NaN written as None."""
        return {
            "metric": self.metric,
            "n_samples": self.n_samples,
            "names_a": list(self.names_a),
            "names_b": list(self.names_b),
            "values": [[None if math.isnan(v) else v for v in row] for row in self.values.tolist()],
        }


def metric_name(kernel: str, threshold: float, unbiased: bool, streaming: bool) -> str:
    """Human-readable name of a CKA variant, e.g. ``"RBF CKA (threshold 0.5, unbiased)"``."""
    base = "linear CKA" if kernel == "linear" else "RBF CKA"
    details = [f"threshold {threshold:g}"] if kernel == "rbf" else []
    if unbiased:
        details.append("unbiased")
    name = f"minibatch {base}" if streaming else base
    return f"{name} ({', '.join(details)})" if details else name


def compare_models(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    *,
    layers_a: LayerSelector,
    layers_b: LayerSelector | None = None,
    kernel: Kernel = "linear",
    threshold: float = 0.5,
    unbiased: bool | None = None,
    flatten: Flatten = "example",
    streaming: bool = False,
    max_samples: int | None = None,
    batch_size: int = 256,
    progress: bool = True,
    input_key: str | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> LayerSimilarity:
    """CKA between every chosen layer of ``model_a`` and every chosen layer of ``model_b`` on ``data``.

    Both models run in eval mode without gradients on the same batches, each on its own device; see
    :func:`pyprune.capture` for how layers and data are given and how activations are taken.

    Args:
        model_a: the model whose layers are the rows.
        model_b: the model whose layers are the columns; may be ``model_a`` itself (then each batch runs
            once, and if the layers match the symmetric self-comparison is computed at half the cost).
        data: a tensor of inputs ``(n, ...)``, a ``DataLoader`` or an iterable of batches, read once.
        layers_a: model A's layers: names, a predicate ``(name, module) -> bool``, or module type(s).
        layers_b: model B's layers (default: ``layers_a``).
        kernel: ``"linear"`` or ``"rbf"``.
        threshold: RBF bandwidth as a fraction of the median distance.
        unbiased: debiased CKA (HSIC1). Defaults to False for the exact computation; streaming is always
            unbiased (that is what makes per-batch sums consistent), so ``streaming=True`` with
            ``unbiased=False`` is an error.
        flatten: ``"example"`` ``(n, C*H*W)`` or ``"channel"`` ``(n*H*W, C)`` for conv activations.
        streaming: accumulate minibatch CKA (Nguyen et al. 2021) batch by batch instead of holding every
            activation; batches under 4 samples are skipped with a warning.
        max_samples: use at most this many samples of ``data``.
        batch_size: batch size when ``data`` is a tensor (with ``streaming`` it is also the CKA minibatch).
        progress: show a tqdm progress bar (on stderr).
        input_key, forward: how a batch is fed, as in :func:`pyprune.capture` (dict batches of Hugging Face
            models: the whole dict as keyword arguments by default, or one entry by ``input_key``).

    Returns:
        A :class:`LayerSimilarity` with the ``(L1, L2)`` float64 matrix on the CPU.

    Example:
        >>> sim = compare_models(net, net, x_test, layers_a=torch.nn.Conv2d)  # doctest: +SKIP
        >>> sim.plot("self_similarity.png")                                    # doctest: +SKIP
    """
    if unbiased is None:
        unbiased = streaming
    elif streaming and not unbiased:
        raise ValueError(
            "unbiased: streaming (minibatch) CKA is always unbiased; leave unbiased=None or True"
        )
    same_model = model_b is model_a
    recorder_a = LayerRecorder(model_a, layers_a, to_cpu=False, forward=forward)
    recorder_b = LayerRecorder(
        model_b, layers_a if layers_b is None else layers_b, to_cpu=False, forward=forward
    )
    names_a, names_b = recorder_a.names, recorder_b.names
    symmetric = same_model and names_a == names_b
    if same_model:
        # One forward pass per batch records the union of both layer lists.
        union = list(dict.fromkeys(names_a + names_b))
        recorder_a = recorder_b = LayerRecorder(model_a, union, to_cpu=False, forward=forward)
    # Activations meet on model A's device, where the similarity is computed.
    device = recorder_a.device
    batches = input_batches(data, batch_size, max_samples, input_key)

    accumulator = None
    if streaming:
        from pyprune.similarity.streaming import MinibatchCKA

        accumulator = MinibatchCKA(kernel=kernel, threshold=threshold, flatten=flatten)
    parts_x: dict[str, list[torch.Tensor]] = {name: [] for name in names_a}
    parts_y: dict[str, list[torch.Tensor]] = {name: [] for name in names_b}
    n_samples = 0
    total = count_samples(data, max_samples)
    with tqdm(total=total, unit="sample", desc="comparing layers", disable=not progress) as bar:
        for x in batches:
            acts_a = recorder_a(x)
            acts_b = acts_a if same_model else recorder_b(x)
            xs = {name: acts_a[name] for name in names_a}
            ys = None if symmetric else {name: acts_b[name].to(device) for name in names_b}
            if accumulator is not None:
                accumulator.update(xs, ys)
            else:
                _append(parts_x, xs)
                _append(parts_y, ys or {})
            n_samples += batch_size_of(x)
            bar.update(batch_size_of(x))
    if n_samples == 0:
        raise ValueError("data: contains no samples")
    if accumulator is not None:
        values, n_samples = accumulator.compute(), accumulator.num_samples
    else:
        xs_all = {name: torch.cat(parts) for name, parts in parts_x.items()}
        ys_all = None if symmetric else {name: torch.cat(parts) for name, parts in parts_y.items()}
        values = cka_matrix(
            xs_all, ys_all, kernel=kernel, threshold=threshold, unbiased=unbiased, flatten=flatten
        )
    return LayerSimilarity(
        values=values.cpu(),
        names_a=names_a,
        names_b=names_b,
        metric=metric_name(kernel, threshold, unbiased, streaming),
        n_samples=n_samples,
    )


def _append(parts: dict[str, list[torch.Tensor]], acts: dict[str, torch.Tensor]) -> None:
    for name, tensor in acts.items():
        parts[name].append(tensor)
