"""The CKA heatmap's fixtures, shared by ``bench_cka_matrix.py`` and ``gpu_suite.py``: the two CNNs (a VGG-like
and an all-conv net), their inputs and activations, and the plain-torch CKA implementations they are timed against."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

INPUT_SHAPE = (3, 32, 32)
INPUT_SEED = 0
MODEL_SEEDS = {"vgg": 1, "allconv": 2}


# ------------------------------------------------------------------------------------------------ models


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)


def vgg_net() -> nn.Sequential:
    """VGG-like, max pooling: flattened features 4096, 4096, 4096, 2048, 2048, 1024, 1024, 512, 64, 10."""
    layers: list[tuple[str, nn.Module]] = []
    plan = [(3, 4, True), (4, 16, False), (16, 16, True), (16, 32, False), (32, 32, True)]
    plan += [(32, 64, False), (64, 64, True), (64, 128, False)]
    for i, (c_in, c_out, pool) in enumerate(plan, start=1):
        layers += [(f"conv{i}", _conv(c_in, c_out)), (f"relu{i}", nn.ReLU())]
        if pool:
            layers.append((f"pool{i}", nn.MaxPool2d(2)))
    layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten())]
    layers += [("fc1", nn.Linear(128, 64)), ("relu_fc1", nn.ReLU()), ("fc2", nn.Linear(64, 10))]
    return nn.Sequential(OrderedDict(layers))


def allconv_net() -> nn.Sequential:
    """All-convolutional, strided downsampling: features 2048, 4096, 1024, 2048, 512, 1024, 256, 512, 128, 10."""
    layers: list[tuple[str, nn.Module]] = []
    plan = [
        (3, 8, 2),
        (8, 16, 1),
        (16, 16, 2),
        (16, 32, 1),
        (32, 32, 2),
        (32, 64, 1),
        (64, 64, 2),
        (64, 128, 1),
    ]
    for i, (c_in, c_out, stride) in enumerate(plan, start=1):
        layers += [(f"conv{i}", _conv(c_in, c_out, stride)), (f"relu{i}", nn.ReLU())]
    layers += [("flatten", nn.Flatten())]
    layers += [("fc1", nn.Linear(512, 128)), ("relu_fc1", nn.ReLU()), ("fc2", nn.Linear(128, 10))]
    return nn.Sequential(OrderedDict(layers))


def deep_mlp(depth: int = 20, width: int = 256) -> nn.Sequential:
    """Untrained deep ReLU MLP with PyTorch's default init and no normalisation (deep features collapse)."""
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    d_in = math.prod(INPUT_SHAPE)
    for i in range(1, depth + 1):
        layers += [(f"fc{i}", nn.Linear(d_in, width)), (f"relu{i}", nn.ReLU())]
        d_in = width
    return nn.Sequential(OrderedDict(layers))


def build_model(name: str, seed: int, device: str = "cpu") -> nn.Module:
    """The benchmark nets use He init with zero biases, so their deep features are not degenerate."""
    torch.manual_seed(seed)
    if name == "vgg":
        model = vgg_net()
    elif name == "allconv":
        model = allconv_net()
    elif name.startswith("mlp"):
        return deep_mlp(depth=int(name[3:])).to(device).eval()  # default init on purpose
    else:
        raise ValueError(f"unknown model {name!r}")
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return model.to(device).eval()


def layer_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def make_inputs(n: int, seed: int = INPUT_SEED) -> torch.Tensor:
    return torch.randn(n, *INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))


def capture(model: nn.Module, names: Sequence[str], inputs: torch.Tensor, batch_size: int, device: str):
    """Flattened ``(n, p)`` float32 outputs of the named modules, gathered with forward hooks."""
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: chunks[name].append(out.flatten(1))
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            for start in range(0, inputs.shape[0], batch_size):
                model(inputs[start : start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
    return [torch.cat(chunks[name]) for name in names]


# ------------------------------------------------------------------------------ CKA implementations


def _median(values: torch.Tensor) -> torch.Tensor:
    """Median of all entries, NumPy convention (mean of the two middle values for an even count)."""
    flat = values.reshape(-1)
    k = flat.numel()
    upper = flat.kthvalue(k // 2 + 1).values
    return upper if k % 2 else 0.5 * (flat.kthvalue(k // 2).values + upper)


def plain_grams(
    layers: Sequence[torch.Tensor], kernel: str, threshold: float, dtype: torch.dtype, unbiased: bool = False
) -> torch.Tensor:
    """Stacked Gram matrices ``(L, n, n)``: centred (biased CKA) or with a zero diagonal (unbiased HSIC)."""
    grams = []
    for x in layers:
        x = x.to(dtype)
        xc = x - x.mean(dim=0, keepdim=True)
        k = xc @ xc.T
        if kernel == "rbf":
            sq_norms = k.diagonal()
            sq_dist = sq_norms[:, None] + sq_norms[None, :] - 2 * k
            k = torch.exp(sq_dist / (-2 * threshold**2 * _median(sq_dist)))
            if not unbiased:
                k = k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()
        if unbiased:
            k.fill_diagonal_(0)
        grams.append(k)
    return torch.stack(grams)


def plain_cka_matrix(
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    kernel: str = "linear",
    threshold: float = 0.5,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Biased CKA matrix the vectorised way: ``<K_i, L_j>`` for all pairs by one matmul of flattened Grams."""
    kx = plain_grams(xs, kernel, threshold, dtype).flatten(1)
    ky = plain_grams(ys, kernel, threshold, dtype).flatten(1)
    cross = kx @ ky.T
    norms_x, norms_y = torch.linalg.vector_norm(kx, dim=1), torch.linalg.vector_norm(ky, dim=1)
    return (cross / (norms_x[:, None] * norms_y[None, :])).double()


def unbiased_hsic_terms(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], dtype=torch.float64):
    """``n(n-3) HSIC_1`` (Song et al. 2012, linear kernel) of all pairs and of each layer with itself.

    HSIC_1 is invariant to centring the features, which is done first so float64 keeps every digit even
    for the near-constant features of the correctness case.
    """
    n = xs[0].shape[0]
    kx = plain_grams(xs, "linear", 0.0, dtype, unbiased=True)
    ky = plain_grams(ys, "linear", 0.0, dtype, unbiased=True)
    rows_x, rows_y = kx.sum(dim=2), ky.sum(dim=2)
    sums_x, sums_y = rows_x.sum(dim=1), rows_y.sum(dim=1)
    a, b = 2.0 / (n - 2), 1.0 / ((n - 1) * (n - 2))
    cross = kx.flatten(1) @ ky.flatten(1).T + b * torch.outer(sums_x, sums_y) - a * rows_x @ rows_y.T
    self_x = kx.flatten(1).square().sum(1) + b * sums_x.square() - a * rows_x.square().sum(1)
    self_y = ky.flatten(1).square().sum(1) + b * sums_y.square() - a * rows_y.square().sum(1)
    return cross, self_x, self_y


def unbiased_cka_reference(xs, ys, batch_size: int | None = None) -> torch.Tensor:
    """Float64 (minibatch) unbiased CKA: mean HSIC_1 over batches, then normalised (torch-cka's estimator);
    NaN where a self-HSIC is negative, as in torch-cka."""
    n = xs[0].shape[0]
    batch_size = batch_size or n
    totals = None
    for start in range(0, n, batch_size):
        bx = [x[start : start + batch_size] for x in xs]
        by = [y[start : start + batch_size] for y in ys]
        nb = bx[0].shape[0]
        terms = [t / (nb * (nb - 3)) for t in unbiased_hsic_terms(bx, by)]
        totals = terms if totals is None else [a + t for a, t in zip(totals, terms, strict=True)]
    cross, self_x, self_y = totals
    return (cross / (torch.sqrt(self_x)[:, None] * torch.sqrt(self_y)[None, :])).cpu()


def gemm_floor(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
    for x in (*xs, *ys):
        torch.mm(x, x.T)


def syrk_floor(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
    """pyprune's own floor: only the Gram products as :func:`pyprune.cka_matrix` forms them (lower triangles by
    ``syrk``, :func:`pyprune.ops.gram.linear_grams`), of the layers as given (no centring, no HSIC pass)."""
    from pyprune.ops.gram import linear_grams

    for layers in (xs, ys):
        out = torch.empty(len(layers), layers[0].shape[0], layers[0].shape[0], device=layers[0].device)
        linear_grams(layers, lambda k, _buffer, layers=layers: layers[k], out)
