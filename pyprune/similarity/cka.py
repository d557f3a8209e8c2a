"""Centred kernel alignment (CKA) and HSIC, for one pair of layers or a whole layer-by-layer matrix.

Definitions (Kornblith et al. 2019; Song et al. 2012): for Gram matrices ``K`` of ``X`` and ``L`` of ``Y``
(``n`` samples each) and ``H = I - 11^T/n``,

* biased: ``HSIC0(K, L) = <HKH, HLH>_F / (n-1)^2``;
* unbiased: ``HSIC1(K, L)``, the U-statistic of Song et al. (``n >= 4``; may be negative);
* ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``.

Kernels: ``"linear"`` (``K = X X^T``) and ``"rbf"`` (``K_ab = exp(-|x_a - x_b|^2 / (2 t^2 m))``, ``m`` the
median squared distance over all ``n^2`` pairs, zero diagonal included, ``t = threshold``: the Google /
Kornblith convention, "bandwidth = threshold x median distance").

How it is computed. Every layer's Gram statistics are formed once and all pairs are scored in one fused pass:

* ``"gram"`` method: centred features, Gram matrices by BLAS ``syrk`` (half a GEMM), RBF transform in place,
  then the fused kernel :func:`pyprune.ops.gram_hsic_terms` reads each Gram's lower triangle once and returns
  all ``<K_i, L_j>`` plus row sums and diagonals in float64, from which biased and unbiased HSIC follow
  exactly (``<HKH, HLH> = <K, L> - 2/n (K1)^T(L1) + (1^T K 1)(1^T L 1)/n^2``).
* ``"feature"`` method (linear kernel only): ``<HKH, HLH> = |Xc^T Yc|_F^2``, and the unbiased statistic from
  the same cross-covariances plus row norms, which is cheaper when features are fewer than samples.

``method="auto"`` picks the one with fewer multiply-adds.

Magnitudes: CKA is invariant to scaling either layer, so each layer is multiplied by an exact power of two
that brings its largest entry into [0.5, 1) before anything is centred or multiplied. Products of activations
of any finite magnitude (float32 1e19 or 1e-30, float64 1e200) then stay inside the floating range, and the
result is bit-identical under power-of-two rescaling of the inputs. :class:`HsicTerms` records the exponents
so that :func:`hsic` still reports the statistic of the inputs as given. An RBF bandwidth so wide that
``exp(-d / (2 t^2 m))`` rounds to 1 (``threshold`` above ~22) is handled through ``(K - 1) / u`` with
``u = 1 / (2 t^2)`` (centring removes the constant), whose limit for ``t -> inf`` is ``-d / m``: CKA then
tends to the CKA of the centred distance matrices instead of dividing 0 by 0.

Memory, with ``n`` samples and ``P`` features over all layers: the ``"feature"`` method reads the inputs in
row chunks (at least 512 rows, at most a quarter of the largest layer) and keeps only the ``P x P``
covariance of all layers side by side, never a centred copy of a whole layer. For the usual case of a few
wide layers with many samples this is within 2x of the floor of one covariance plus one centred layer
(measured by ``benchmarks/bench_cka_memory.py``: three float32 layers of 20,000 x 2,048 needed 1.7 GiB
extra when every layer was centred and concatenated first, 0.17 GiB now). ``cka`` on one pair holds three
``p x p`` covariances. The ``"gram"`` method keeps one ``n x n`` Gram per layer (the fused pass reads all Grams at
once) plus one centred layer per thread (:func:`pyprune.ops.gram.linear_grams` forms several Grams at once).

Degenerate inputs: a layer whose samples are all identical (zero variance) has no defined CKA; pyprune
returns 0 for every pair involving it. With ``unbiased=True`` a non-constant layer can still get a
non-positive self-HSIC on very few samples; its CKA is NaN and a ``RuntimeWarning`` names it.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from pyprune.ops import gram_hsic_terms, rbf_from_linear_gram
from pyprune.ops.gram import column_stats, linear_grams
from pyprune.ops.rbf_gram import WIDE_RBF_THRESHOLD, rbf_deviation_from_linear_gram
from pyprune.similarity._inputs import (
    Flatten,
    as_representation,
    check_same_samples,
    is_constant,
    power_of_two_factors,
)

Kernel = Literal["linear", "rbf"]
CKAAlgorithm = Literal["auto", "gram", "feature"]
KERNELS = ("linear", "rbf")
CKA_ALGORITHMS = ("auto", "gram", "feature")
Activations = Sequence[Any] | Mapping[str, Any]


@dataclass(frozen=True)
class HsicTerms:
    """Unnormalised HSIC statistics of all layer pairs, for layers rescaled by exact powers of two.

    ``cross[i, j]`` is ``<HK_iH, HL_jH>_F`` (biased) or ``n(n-3) HSIC1(K_i, L_j)`` (unbiased) of the rescaled
    layers; ``self_x`` and ``self_y`` hold the same statistic of each layer with itself. Constant layers have
    all-zero entries. The Gram (kernel) matrix of layer ``i`` as given is ``2^log2_scale_x[i]`` times the one
    used here, so its statistics are ``cross[i, j] * 2^(log2_scale_x[i] + log2_scale_y[j])``; CKA does not
    depend on these factors (they cancel), :meth:`hsic` applies them.
    """

    cross: torch.Tensor  # (L1, L2) float64
    self_x: torch.Tensor  # (L1,) float64
    self_y: torch.Tensor  # (L2,) float64
    constant_x: torch.Tensor  # (L1,) bool
    constant_y: torch.Tensor  # (L2,) bool
    n: int
    unbiased: bool
    log2_scale_x: torch.Tensor | None = None  # (L1,) float64; None means all 0
    log2_scale_y: torch.Tensor | None = None  # (L2,) float64

    def hsic(self) -> torch.Tensor:
        """The normalised HSIC matrix ``(L1, L2)`` of the inputs as given: ``HSIC0`` or ``HSIC1``.

        Entries whose magnitude exceeds float64's range are ``±inf`` (e.g. float64 activations of 1e200).
        """
        scale = self.n * (self.n - 3) if self.unbiased else (self.n - 1) ** 2
        exponent = _outer_sum(self.log2_scale_x, self.log2_scale_y, self.cross)
        # Two half-steps: 2^exponent alone can overflow where the product with cross does not.
        half = torch.exp2(exponent / 2)
        return self.cross / scale * half * half

    def cka(self, names_x: Sequence[str] | None = None, names_y: Sequence[str] | None = None) -> torch.Tensor:
        """CKA matrix ``(L1, L2)`` float64, with the degenerate-layer rules of the module docstring."""
        return normalise_hsic(
            self.cross, self.self_x, self.self_y, self.constant_x, self.constant_y, names_x, names_y
        )


def _outer_sum(a: torch.Tensor | None, b: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    zeros_a = like.new_zeros(like.shape[0])
    zeros_b = like.new_zeros(like.shape[1])
    a = zeros_a if a is None else a.to(like.device)
    b = zeros_b if b is None else b.to(like.device)
    return a[:, None] + b[None, :]


def normalise_hsic(
    cross: torch.Tensor,
    self_x: torch.Tensor,
    self_y: torch.Tensor,
    constant_x: torch.Tensor,
    constant_y: torch.Tensor,
    names_x: Sequence[str] | None = None,
    names_y: Sequence[str] | None = None,
) -> torch.Tensor:
    """``cross[i, j] / sqrt(self_x[i] self_y[j])``; 0 where a side is constant, NaN (with a warning) where a
    non-constant side has a non-positive self-HSIC (possible only for the unbiased estimator)."""
    bad_x = (self_x <= 0) & ~constant_x
    bad_y = (self_y <= 0) & ~constant_y
    if bool(bad_x.any()) or bool(bad_y.any()):
        labels = [f"x[{_label(names_x, i)}]" for i in bad_x.nonzero().flatten().tolist()]
        labels += [f"y[{_label(names_y, j)}]" for j in bad_y.nonzero().flatten().tolist()]
        warnings.warn(
            "unbiased HSIC of a layer with itself is <= 0 for "
            + ", ".join(labels)
            + "; its CKA is undefined "
            "and returned as NaN (use more samples or unbiased=False)",
            RuntimeWarning,
            stacklevel=3,
        )
    denominator = torch.sqrt(self_x.clamp(min=0)[:, None] * self_y.clamp(min=0)[None, :])
    result = cross / denominator
    result[bad_x[:, None] | bad_y[None, :]] = math.nan
    result[constant_x[:, None] | constant_y[None, :]] = 0.0
    return result


def _label(names: Sequence[str] | None, index: int) -> str:
    return str(index) if names is None else repr(names[index])


def check_options(kernel: str, threshold: float, method: str) -> None:
    """Check the ``kernel``, RBF ``threshold`` and ``method`` arguments shared by every CKA entry point."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    if method not in CKA_ALGORITHMS:
        raise ValueError(f"method: expected one of {CKA_ALGORITHMS}, got {method!r}")
    if kernel == "rbf" and method == "feature":
        raise ValueError("method: 'feature' needs kernel='linear' (the RBF kernel has no feature-space form)")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold: expected a finite number > 0, got {threshold!r}")


def as_layer_list(layers: Activations, name: str, flatten: Flatten) -> tuple[list[torch.Tensor], list[str]]:
    """Validate a list or dict of activations; returns the ``(n, p)`` tensors and their names."""
    if isinstance(layers, Mapping):
        names = [str(k) for k in layers]
        values = list(layers.values())
    elif (
        isinstance(layers, Sequence) and not isinstance(layers, (str, bytes)) and not hasattr(layers, "shape")
    ):
        names = [str(i) for i in range(len(layers))]
        values = list(layers)
    else:
        raise TypeError(f"{name}: expected a list or dict of activation tensors, got {type(layers).__name__}")
    if not values:
        raise ValueError(f"{name}: expected at least one layer, got none")
    tensors = [as_representation(v, f"{name}[{k!r}]", flatten) for k, v in zip(names, values, strict=True)]
    for k, t in zip(names[1:], tensors[1:], strict=True):
        check_same_samples(tensors[0], t, f"{name}[{names[0]!r}]", f"{name}[{k!r}]")
    return tensors, names


def _compute_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# Elements of all layers' row chunks together in the "feature" method: a few MiB.
_CHUNK_ELEMENTS = 1 << 21

# Layers whose largest entry lies within 2^+-32 of 1 cannot overflow or underflow in any product formed later
# (float32 Gram entries stay below n * 2^64, float64 fourth-order sums below n^2 * 2^128), so they are not
# rescaled: the scaling pass would only cost memory traffic (a fifth of a GEMM-bound heatmap at n = 1,024).
_UNSCALED_EXPONENTS = 32


def _layer_scaling(x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """``(e, mean)`` of a layer ``x`` ``(n, p)`` from one pass over it (:func:`pyprune.ops.gram.column_stats`): the
    ``e`` it is scaled by (``x * 2^-e``: its peak exponent, or 0 when no scaling is needed) and the float64 column
    means ``(p,)`` of ``x * 2^-e``. Separate passes for the peak (max, min) and the mean read the layer three times;
    at n = 1,024 a pass costs about a tenth of the layer's Gram product."""
    sums, low, high = column_stats(x)
    peak = max(high, -low)
    exponent = math.frexp(peak)[1] if peak > 0 else 0
    exponent = 0 if abs(exponent) <= _UNSCALED_EXPONENTS else exponent
    if exponent > 960:  # the float64 sums of the unscaled values may have overflowed
        return exponent, _scaled_mean(x, exponent)
    mean = sums.to(x.device) / x.shape[0]
    for f in power_of_two_factors(exponent):
        mean = mean * f
    return exponent, mean


def _scaled_mean(x: torch.Tensor, exponent: int) -> torch.Tensor:
    """Column means ``(p,)`` float64 of ``x * 2^-exponent``."""
    if exponent > 960:  # the float64 sum of unscaled values could overflow
        scaled = x.to(torch.float64)
        for f in power_of_two_factors(exponent):
            scaled = scaled * f
        return scaled.mean(dim=0)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        mean = torch.from_numpy(x.numpy().mean(axis=0, dtype=np.float64))
    else:
        mean = x.mean(dim=0, dtype=torch.float64)
    for f in power_of_two_factors(exponent):
        mean = mean * f
    return mean


def _scaled_centred(
    x: torch.Tensor,
    exponent: int,
    dtype: torch.dtype,
    out: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(x * 2^-exponent - mean)`` in ``dtype``, ``mean`` (float64 ``(p,)``) defaulting to the column means.

    The power-of-two scaling is exact and, with ``exponent`` from :func:`_scaling_exponent`, keeps the largest
    entry near 1, so the products formed later cannot overflow or underflow however large or small the
    activations are. Centring first removes the
    large common offset of post-ReLU features, which would otherwise cancel catastrophically in float32
    Gram entries; a rounding error in the mean leaves the same small offset on every row, which the HSIC
    formulas' double centring cancels exactly.
    """
    factors = power_of_two_factors(exponent)
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        # NumPy, not torch: torch's OpenMP workers keep spinning after a parallel op and steal both cores
        # from the BLAS threads of the syrk that follows (a 1.5x slowdown of the whole heatmap measured on
        # 2 cores). These passes are memory-bound, so one thread loses nothing.
        a = x.numpy()
        o = np.empty(a.shape, dtype=np.float64 if dtype == torch.float64 else np.float32)
        o = o if out is None else out.numpy()
        source = a
        if factors or a.dtype != o.dtype:
            if len(factors) == 2 and a.dtype != o.dtype:
                a = a * np.float64(factors.pop(0))  # rare (subnormal float64 peak): keep float64's range
            # float64 scalars: each product is formed in float64 and rounded once into o.
            np.multiply(a, np.float64(factors[0]) if factors else 1.0, out=o, casting="unsafe")
            for f in factors[1:]:
                np.multiply(o, np.float64(f), out=o, casting="unsafe")
            source = o
        # The mean in the working dtype (SIMD, and a power-of-two scaling commutes with it bit for bit): its
        # rounding error is the same offset on every row, which double centring cancels exactly.
        centre_of = source.mean(axis=0, keepdims=True) if mean is None else mean.numpy().astype(o.dtype)
        np.subtract(source, centre_of, out=o, casting="unsafe")
        return torch.from_numpy(o) if out is None else out
    scaled = x
    for f in factors:  # in x's own dtype, where every factor is exact
        scaled = scaled * f
    scaled = scaled.to(dtype)
    centre_of = scaled.mean(dim=0, dtype=torch.float64) if mean is None else mean
    if out is None:
        return (scaled - centre_of.to(dtype)).contiguous()
    return torch.sub(scaled, centre_of.to(dtype), out=out)


def _choose_method(method: str, kernel: str, n: int, px: list[int], py: list[int] | None) -> str:
    if method != "auto":
        return method
    if kernel != "linear":
        return "gram"
    if py is None:
        # Half-GEMM Grams plus the fused pair pass vs one covariance of all features.
        gram_cost = n * n * sum(px) / 2 + n * n * len(px) ** 2
        feature_cost = n * sum(px) ** 2
    else:
        gram_cost = n * n * (sum(px) + sum(py)) / 2 + 2 * n * n * len(px) * len(py)
        feature_cost = n * sum(px) * sum(py) + n * (sum(p * p for p in px) + sum(p * p for p in py))
    return "feature" if feature_cost < gram_cost else "gram"


def _square_sum(matrix: torch.Tensor) -> torch.Tensor:
    """Sum of squares in float64, by row chunks: a float64 copy of a whole covariance would cost as much
    memory as the covariance itself."""
    total = torch.zeros((), dtype=torch.float64, device=matrix.device)
    for rows in matrix.split(256):
        total += torch.sum(rows.double().square())
    return total


def _feature_terms(
    xs: list[torch.Tensor], ys: list[torch.Tensor] | None, unbiased: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], list[int]]:
    """HSIC terms from the cross-covariances ``Xc_i^T Yc_j``, accumulated over row chunks of the inputs.

    Returns ``(cross, self_x, self_y, exponents_x, exponents_y)``; layer ``i`` was scaled by
    ``2^-exponents_x[i]``. Only the covariances and one row chunk of every layer are held in memory.
    """
    same = ys is None
    ys_ = xs if same else ys
    n, device = xs[0].shape[0], xs[0].device
    exp_x, mean_x = map(list, zip(*(_layer_scaling(x) for x in xs), strict=True))
    exp_y, mean_y = (
        (exp_x, mean_x) if same else map(list, zip(*(_layer_scaling(y) for y in ys_), strict=True))
    )
    px, py = [x.shape[1] for x in xs], [y.shape[1] for y in ys_]
    cols_x = [slice(a - b, a) for a, b in zip(itertools.accumulate(px), px, strict=True)]
    cols_y = [slice(a - b, a) for a, b in zip(itertools.accumulate(py), py, strict=True)]
    # One GEMM per chunk on all layers side by side (full BLAS efficiency); for two lists, the diagonal
    # blocks each side needs for its self-HSIC as well.
    cov = torch.zeros(sum(px), sum(py), dtype=dtype, device=device)
    self_covs_x = [] if same else [torch.zeros(p, p, dtype=dtype, device=device) for p in px]
    self_covs_y = [] if same else [torch.zeros(p, p, dtype=dtype, device=device) for p in py]
    rows_x = torch.zeros(len(xs), n, dtype=torch.float64, device=device)
    rows_y = rows_x if same else torch.zeros(len(ys_), n, dtype=torch.float64, device=device)
    # Rows per chunk: the chunks of all layers together stay below a quarter of the largest layer (and a few
    # MiB), so that the transient memory is dominated by the covariances; at least 512 rows keep the GEMMs
    # efficient.
    layers = xs if same else [*xs, *ys_]
    budget = min(_CHUNK_ELEMENTS, max(t.numel() for t in layers) // 4)
    step = min(n, max(512, budget // sum(t.shape[1] for t in layers)))
    buffer_x = torch.empty(step, sum(px), dtype=dtype, device=device)
    buffer_y = buffer_x if same else torch.empty(step, sum(py), dtype=dtype, device=device)
    sides = [(xs, exp_x, mean_x, cols_x, buffer_x, self_covs_x, rows_x)]
    if not same:
        sides.append((ys_, exp_y, mean_y, cols_y, buffer_y, self_covs_y, rows_y))
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        for tensors, exponents, means, cols, buffer, self_covs, row_norms in sides:
            chunk = buffer[: rows.stop - start]
            for k, (t, e, m, c) in enumerate(zip(tensors, exponents, means, cols, strict=True)):
                block = _scaled_centred(t[rows], e, dtype, out=chunk[:, c], mean=m)
                if self_covs:
                    self_covs[k].addmm_(block.T, block)
                if unbiased:
                    row_norms[k, rows] = torch.sum(block.square(), dim=1, dtype=torch.float64)
        cov.addmm_(buffer_x[: rows.stop - start].T, buffer_y[: rows.stop - start])
    cross = torch.stack([torch.stack([_square_sum(cov[cx, cy]) for cy in cols_y]) for cx in cols_x])
    if same:
        self_x = self_y = cross.diagonal().clone()
    else:
        self_x = torch.stack([_square_sum(c) for c in self_covs_x])
        self_y = torch.stack([_square_sum(c) for c in self_covs_y])
    if unbiased:
        # n(n-3) HSIC1 = |Xc^T Yc|^2 - n/(n-2) r_x^T r_y + s_x s_y / ((n-1)(n-2)), r = row sums of squares.
        s_x, s_y = rows_x.sum(dim=1), rows_y.sum(dim=1)
        a, b = n / (n - 2), 1.0 / ((n - 1) * (n - 2))
        cross = cross - a * (rows_x @ rows_y.T) + b * torch.outer(s_x, s_y)
        self_x = self_x - a * rows_x.square().sum(dim=1) + b * s_x.square()
        self_y = self_y - a * rows_y.square().sum(dim=1) + b * s_y.square()
    return cross, self_x, self_y, exp_x, exp_y


def _grams(
    xs: list[torch.Tensor], kernel: str, threshold: float, dtype: torch.dtype
) -> tuple[list[torch.Tensor], list[float]]:
    """Gram (kernel) matrices of the rescaled, centred layers and the log2 of each one's scale factor."""
    n, device = xs[0].shape[0], xs[0].device
    stack = torch.empty(len(xs), n, n, dtype=dtype, device=device)
    exponents = [0] * len(xs)

    def centred(k: int, buffer: torch.Tensor) -> torch.Tensor:
        # The centred copy goes into a buffer reused across layers: fresh multi-megabyte allocations are
        # page-faulted in on every call, which costs a third of a GEMM-bound heatmap at n = 1024.
        x = xs[k]
        exponents[k], mean = _layer_scaling(x)
        return _scaled_centred(x, exponents[k], dtype, out=buffer[: x.numel()].view(x.shape), mean=mean)

    linear_grams(xs, centred, stack)
    log2_scales = [2.0 * e for e in exponents]
    # A separate loop, not one per layer: BLAS workers keep spinning for a while after each syrk and would
    # compete with the RBF kernel's threads for the same cores.
    if kernel == "rbf":
        wide = threshold > WIDE_RBF_THRESHOLD
        for k, gram in enumerate(stack):
            # The RBF kernel does not depend on the layer's scale; a very wide one is stored as (K - 1) / u.
            log2_scales[k] = rbf_deviation_from_linear_gram(gram, threshold) if wide else 0.0
            if not wide:
                rbf_from_linear_gram(gram, threshold)
    return list(stack), log2_scales


def _gram_terms(
    grams_x: list[torch.Tensor], grams_y: list[torch.Tensor] | None, unbiased: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = grams_x[0].shape[0]
    t = gram_hsic_terms(grams_x, grams_y)
    cross, self_x, self_y = t["cross"], t["self_a"], t["self_b"]
    rows_x, rows_y, diag_x, diag_y = t["row_sums_a"], t["row_sums_b"], t["diag_a"], t["diag_b"]
    if not unbiased:
        sums_x, sums_y = rows_x.sum(dim=1), rows_y.sum(dim=1)
        cross = cross - 2.0 / n * (rows_x @ rows_y.T) + torch.outer(sums_x, sums_y) / n**2
        self_x = self_x - 2.0 / n * rows_x.square().sum(dim=1) + sums_x.square() / n**2
        self_y = self_y - 2.0 / n * rows_y.square().sum(dim=1) + sums_y.square() / n**2
        return cross, self_x, self_y
    # Song et al.'s HSIC1 on diagonal-free Grams K~: tr(K~L~) + (1'K~1)(1'L~1)/((n-1)(n-2)) - 2/(n-2) 1'K~L~1.
    off_x, off_y = rows_x - diag_x, rows_y - diag_y
    sums_x, sums_y = off_x.sum(dim=1), off_y.sum(dim=1)
    a, b = 2.0 / (n - 2), 1.0 / ((n - 1) * (n - 2))
    cross = cross - diag_x @ diag_y.T + b * torch.outer(sums_x, sums_y) - a * (off_x @ off_y.T)
    self_x = self_x - diag_x.square().sum(dim=1) + b * sums_x.square() - a * off_x.square().sum(dim=1)
    self_y = self_y - diag_y.square().sum(dim=1) + b * sums_y.square() - a * off_y.square().sum(dim=1)
    return cross, self_x, self_y


def hsic_terms(
    xs: Activations,
    ys: Activations | None = None,
    *,
    kernel: Kernel = "linear",
    threshold: float = 0.5,
    unbiased: bool = False,
    method: CKAAlgorithm = "auto",
    dtype: torch.dtype | None = None,
) -> HsicTerms:
    """HSIC statistics of every pair ``(xs[i], ys[j])`` of representations ``(n, p, ...)``.

    ``xs`` and ``ys`` are lists or dicts of activations of the same ``n`` samples, checked like
    :func:`cka_matrix`'s (floating point, finite, non-empty; inputs with more than two dimensions are
    flattened per example). ``ys=None`` compares ``xs`` with itself (half the work). ``dtype`` is the working
    precision of Gram and covariance products (default: float64 if any input is float64, else float32);
    reductions are float64. See :class:`HsicTerms` for the power-of-two scale factors it carries.
    """
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype: expected None, torch.float32 or torch.float64, got {dtype!r}")
    x_list, _ = as_layer_list(xs, "xs", "example")
    y_list = None if ys is None else as_layer_list(ys, "ys", "example")[0]
    if y_list is not None:
        check_same_samples(x_list[0], y_list[0], "xs", "ys")
    return hsic_terms_of_tensors(
        x_list, y_list, kernel=kernel, threshold=threshold, unbiased=unbiased, method=method, dtype=dtype
    )


def hsic_terms_of_tensors(
    xs: list[torch.Tensor],
    ys: list[torch.Tensor] | None,
    *,
    kernel: str,
    threshold: float,
    unbiased: bool,
    method: str = "auto",
    dtype: torch.dtype | None = None,
) -> HsicTerms:
    """:func:`hsic_terms` of validated ``(n, p)`` tensors."""
    check_options(kernel, threshold, method)
    n = xs[0].shape[0]
    if unbiased and n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples, got {n}")
    if n < 2:
        raise ValueError(f"CKA needs at least 2 samples, got {n}")
    dtype = dtype or _compute_dtype(list(xs) + list(ys or []))
    constant_x = torch.tensor([is_constant(x) for x in xs])
    constant_y = constant_x if ys is None else torch.tensor([is_constant(y) for y in ys])
    chosen = _choose_method(
        method, kernel, n, [x.shape[1] for x in xs], None if ys is None else [y.shape[1] for y in ys]
    )
    if chosen == "feature":
        cross, self_x, self_y, exp_x, exp_y = _feature_terms(xs, ys, unbiased, dtype)
        log2_x = [2.0 * e for e in exp_x]
        log2_y = [2.0 * e for e in exp_y]
    else:
        grams_x, log2_x = _grams(xs, kernel, threshold, dtype)
        grams_y, log2_y = (None, log2_x) if ys is None else _grams(ys, kernel, threshold, dtype)
        cross, self_x, self_y = _gram_terms(grams_x, grams_y, unbiased)
    device = cross.device
    constant_x, constant_y = constant_x.to(device), constant_y.to(device)
    # Constant layers give exactly zero statistics in exact arithmetic; remove the round-off.
    cross = cross.masked_fill(constant_x[:, None] | constant_y[None, :], 0.0)
    self_x = self_x.masked_fill(constant_x, 0.0)
    self_y = self_y.masked_fill(constant_y, 0.0)
    scale_x = torch.tensor(log2_x, dtype=torch.float64, device=device)
    scale_y = torch.tensor(log2_y, dtype=torch.float64, device=device)
    return HsicTerms(cross, self_x, self_y, constant_x, constant_y, n, unbiased, scale_x, scale_y)


def cka(
    x: Any,
    y: Any,
    *,
    kernel: Kernel = "linear",
    threshold: float = 0.5,
    unbiased: bool = False,
    flatten: Flatten = "example",
    method: CKAAlgorithm = "auto",
) -> float:
    """CKA between two representations of the same samples, computed in float64.

    Peak extra memory with the ``"feature"`` method: three ``p x p`` float64 covariances plus a row chunk,
    below one centred copy of either input; activations of any finite magnitude are handled (exact
    power-of-two rescaling, see the module docstring).

    Args:
        x: ``(n, p1, ...)`` activations (torch, NumPy or CuPy), floating point.
        y: ``(n, p2, ...)`` activations of the same ``n`` samples.
        kernel: ``"linear"`` or ``"rbf"``.
        threshold: RBF bandwidth as a fraction of the median pairwise distance (ignored for linear).
        unbiased: use the unbiased HSIC1 estimator (debiased CKA; needs ``n >= 4``, may be negative).
        flatten: how inputs with more than 2 dimensions become ``(samples, features)``: ``"example"``
            ``(n, C*H*W)`` or ``"channel"`` ``(n*H*W, C)``; see :func:`pyprune.flatten_activations`.
        method: ``"auto"``, ``"gram"`` (sample space) or ``"feature"`` (linear only).

    Returns:
        CKA in [0, 1] (biased) or a real number (unbiased); 0 if either representation is constant.

    Example:
        >>> import torch, pyprune
        >>> x = torch.randn(100, 10, dtype=torch.float64)
        >>> round(pyprune.cka(x, 2 * x), 6)
        1.0
    """
    xt = as_representation(x, "x", flatten)
    yt = as_representation(y, "y", flatten)
    check_same_samples(xt, yt)
    terms = hsic_terms_of_tensors(
        [xt], [yt], kernel=kernel, threshold=threshold, unbiased=unbiased, method=method, dtype=torch.float64
    )
    return float(terms.cka()[0, 0])


def hsic(
    x: Any,
    y: Any,
    *,
    kernel: Kernel = "linear",
    threshold: float = 0.5,
    unbiased: bool = False,
    flatten: Flatten = "example",
) -> float:
    """Normalised HSIC between two representations: ``HSIC0`` (biased, ``/(n-1)^2``) or ``HSIC1`` (unbiased).

    Arguments as for :func:`cka`. HSIC is not scale-invariant: the value is that of the inputs as given,
    ``±inf`` where it exceeds float64's range (float64 activations of 1e200) and 0 where it underflows.
    """
    xt = as_representation(x, "x", flatten)
    yt = as_representation(y, "y", flatten)
    check_same_samples(xt, yt)
    terms = hsic_terms_of_tensors(
        [xt], [yt], kernel=kernel, threshold=threshold, unbiased=unbiased, dtype=torch.float64
    )
    return float(terms.hsic()[0, 0])


def cka_matrix(
    xs: Activations,
    ys: Activations | None = None,
    *,
    kernel: Kernel = "linear",
    threshold: float = 0.5,
    unbiased: bool = False,
    flatten: Flatten = "example",
    method: CKAAlgorithm = "auto",
) -> torch.Tensor:
    """Layer-by-layer CKA between two lists (or dicts) of activations of the same samples.

    Each layer's Gram statistics are computed once and every pair is scored in one fused pass; see the module
    docstring. Working precision follows the inputs (float32 activations give float32 Gram products),
    accumulation is float64. Peak extra memory (``"feature"`` method, chosen when features are fewer than
    samples): the covariance of all layers plus one row chunk, within 2x of one covariance plus one centred
    layer for a few wide layers; ``"gram"``: one ``n x n`` Gram per layer. Any finite magnitude is fine:
    each layer is rescaled by an exact power of two first.

    Args:
        xs: L1 activations ``(n, ...)``; a list or a ``{name: tensor}`` dict (e.g. from :func:`pyprune.capture`).
        ys: L2 activations of the same ``n`` samples, or None for ``xs`` against itself.
        kernel, threshold, unbiased, flatten, method: as for :func:`cka`.

    Returns:
        float64 tensor ``(L1, L2)`` on the activations' device; ``[i, j]`` is CKA(xs[i], ys[j]).
    """
    x_list, x_names = as_layer_list(xs, "xs", flatten)
    y_list, y_names = (None, x_names) if ys is None else as_layer_list(ys, "ys", flatten)
    if y_list is not None:
        check_same_samples(x_list[0], y_list[0], "xs", "ys")
    terms = hsic_terms_of_tensors(
        x_list, y_list, kernel=kernel, threshold=threshold, unbiased=unbiased, method=method
    )
    return terms.cka(x_names, y_names)
