"""Minibatch CKA (Nguyen, Raghu & Kornblith 2021): layer-by-layer CKA over data that does not fit in memory.

For minibatches ``i = 1..k`` with Gram matrices ``K_i`` (one layer) and ``L_i`` (another),

    CKA_mb = sum_i HSIC1(K_i, L_i) / sqrt(sum_i HSIC1(K_i, K_i) * sum_i HSIC1(L_i, L_i))

with Song et al.'s unbiased ``HSIC1``, each normalised by its own batch size (``1 / (b (b - 3))``), so
unequal batch sizes are weighted correctly (Google's ``efficient_CKA.py`` omits that factor, which is only
exact for equal batches). Unbiasedness is what makes the sum converge to the population CKA as ``k`` grows;
averaging per-batch biased CKAs does not.

Memory is one ``b x b`` Gram matrix per layer per batch plus ``L1 x L2`` float64 sums. Under
``torch.distributed`` each rank feeds its own batches and :meth:`MinibatchCKA.compute` all-reduces the sums.
"""

from __future__ import annotations

import torch

from pyprune.ops.backend import warn_once
from pyprune.similarity._inputs import Flatten, check_same_samples
from pyprune.similarity.cka import (
    Activations,
    CKAAlgorithm,
    Kernel,
    as_layer_list,
    check_options,
    hsic_terms_of_tensors,
    normalise_hsic,
)

_MIN_BATCH = 4


class MinibatchCKA:
    """Accumulates unbiased HSIC statistics batch by batch and returns the ``(L1, L2)`` minibatch CKA matrix.

    Example:
        >>> acc = MinibatchCKA()
        >>> for batch in loader:                                   # doctest: +SKIP
        ...     acc.update(capture(model_a, batch, layers), capture(model_b, batch, layers))
        >>> heatmap = acc.compute()                                # doctest: +SKIP

    Args:
        kernel: ``"linear"`` or ``"rbf"`` (the RBF bandwidth is re-derived per batch from its median distance).
        threshold: RBF bandwidth as a fraction of the median distance.
        flatten: ``"example"`` or ``"channel"``, see :func:`pyprune.flatten_activations`.
        method: ``"auto"``, ``"gram"`` or ``"feature"``, see :func:`pyprune.cka`.
    """

    def __init__(
        self,
        *,
        kernel: Kernel = "linear",
        threshold: float = 0.5,
        flatten: Flatten = "example",
        method: CKAAlgorithm = "auto",
    ) -> None:
        check_options(kernel, threshold, method)
        self.kernel, self.threshold, self.flatten, self.method = kernel, threshold, flatten, method
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated batches."""
        self.names_x: list[str] | None = None
        self.names_y: list[str] | None = None
        self._self_comparison: bool | None = None
        self._cross: torch.Tensor | None = None
        self._self_x: torch.Tensor | None = None
        self._self_y: torch.Tensor | None = None
        self._constant_x: torch.Tensor | None = None
        self._constant_y: torch.Tensor | None = None
        self._log2_x: torch.Tensor | None = None
        self._log2_y: torch.Tensor | None = None
        self.num_batches = 0
        self.num_samples = 0
        self.num_skipped_samples = 0

    def update(self, xs: Activations, ys: Activations | None = None) -> None:
        """Add one minibatch.

        Args:
            xs: activations of this batch for the L1 layers, list or dict of ``(b, ...)`` tensors; the same
                layers (names and order) on every call.
            ys: activations of the same ``b`` samples for the L2 layers, or None to compare ``xs`` with itself
                (must be None on every call then).

        Batches with fewer than 4 samples carry no unbiased HSIC; they are skipped with a warning.
        """
        x_list, names_x = as_layer_list(xs, "xs", self.flatten)
        y_list, names_y = (None, names_x) if ys is None else as_layer_list(ys, "ys", self.flatten)
        if y_list is not None:
            check_same_samples(x_list[0], y_list[0], "xs", "ys")
        self._check_layout(names_x, names_y, ys is None)
        b = x_list[0].shape[0]
        if b < _MIN_BATCH:
            warn_once(
                "minibatch-too-small",
                f"MinibatchCKA.update: a batch of {b} samples was skipped (unbiased HSIC needs at least "
                f"{_MIN_BATCH}); see num_skipped_samples",
            )
            self.num_skipped_samples += b
            return
        terms = hsic_terms_of_tensors(
            x_list, y_list, kernel=self.kernel, threshold=self.threshold, unbiased=True, method=self.method
        )
        scale = 1.0 / (b * (b - 3))
        if self._cross is None:
            self._cross = torch.zeros_like(terms.cross)
            self._self_x = torch.zeros_like(terms.self_x)
            self._self_y = torch.zeros_like(terms.self_y)
            self._constant_x = torch.ones_like(terms.constant_x)
            self._constant_y = torch.ones_like(terms.constant_y)
            # Every batch's statistics are brought to the power-of-two scale of the first batch's layers,
            # so that the sums add like with like whatever the activations' magnitude.
            self._log2_x, self._log2_y = terms.log2_scale_x, terms.log2_scale_y
        shift_x = terms.log2_scale_x - self._log2_x
        shift_y = terms.log2_scale_y - self._log2_y
        self._cross += terms.cross * torch.exp2(shift_x[:, None] + shift_y[None, :]) * scale
        self._self_x += terms.self_x * torch.exp2(2 * shift_x) * scale
        self._self_y += terms.self_y * torch.exp2(2 * shift_y) * scale
        self._constant_x &= terms.constant_x
        self._constant_y &= terms.constant_y
        self.num_batches += 1
        self.num_samples += b

    def _check_layout(self, names_x: list[str], names_y: list[str], self_comparison: bool) -> None:
        if self.names_x is None:
            self.names_x, self.names_y, self._self_comparison = names_x, names_y, self_comparison
            return
        if names_x != self.names_x:
            raise ValueError(f"xs: expected layers {self.names_x} as in earlier batches, got {names_x}")
        if self_comparison != self._self_comparison:
            raise ValueError("ys: pass ys on every call or on none (self-comparison), not only on some")
        if names_y != self.names_y:
            raise ValueError(f"ys: expected layers {self.names_y} as in earlier batches, got {names_y}")

    def compute(self) -> torch.Tensor:
        """The minibatch CKA matrix ``(L1, L2)``, float64, over every batch seen (on every rank).

        Constant layers give 0; a non-positive accumulated self-HSIC gives NaN with a warning.
        """
        if self._cross is None:
            raise ValueError("MinibatchCKA.compute: no batch with at least 4 samples was added")
        cross, self_x, self_y = self._cross, self._self_x, self._self_y
        constant_x, constant_y = self._constant_x, self._constant_y
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            cross, self_x, self_y, constant_x, constant_y = _all_reduce(
                cross, self_x, self_y, constant_x, constant_y
            )
        return normalise_hsic(cross, self_x, self_y, constant_x, constant_y, self.names_x, self.names_y)


def _all_reduce(
    cross: torch.Tensor,
    self_x: torch.Tensor,
    self_y: torch.Tensor,
    constant_x: torch.Tensor,
    constant_y: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Sum the statistics over ranks (on copies, so calling compute twice does not double-count)."""
    dist = torch.distributed
    sums = torch.cat([cross.flatten(), self_x, self_y])
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    # A layer is constant overall only if it is constant on every rank: count the ranks where it is not.
    varying = torch.cat([~constant_x, ~constant_y]).to(torch.float64)
    dist.all_reduce(varying, op=dist.ReduceOp.SUM)
    l1, l2 = cross.shape
    cross_sum = sums[: l1 * l2].reshape(l1, l2)
    return (
        cross_sum,
        sums[l1 * l2 : l1 * l2 + l1],
        sums[l1 * l2 + l1 :],
        varying[:l1] == 0,
        varying[l1:] == 0,
    )
