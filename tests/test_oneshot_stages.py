"""One-shot methods on hierarchical models (one list of blocks per stage): every stage calibrated and pruned.

torchvision's ConvNeXt keeps its stages' blocks in ``features.1``, ``features.3``, ... with the downsampling
layers between them; only the list holding the most parameters used to be found, so the other stages stayed dense.
The references below count zeros in the applied weights and recompute Wanda's masks with full forwards of a
partly pruned copy, independently of pyprune's block-input capture.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import pyprune
from pyprune.pruning.oneshot.calibration import find_blocks

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

AMOUNT = 0.5


def _tv_convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    setting = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, 32, 2), CNBlockConfig(32, None, 1)]
    return ConvNeXt(setting, num_classes=5).eval()


def _timm_convnext(conv_mlp: bool) -> nn.Module:
    torch.manual_seed(0)
    return timm.models.convnext.ConvNeXt(
        depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=5, conv_mlp=conv_mlp
    ).eval()


def _data() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, 3, 32, 32, generator=g) for _ in range(2)]


def _stage_layers(model: nn.Module, stages: list[str]) -> dict[str, nn.Module]:
    """Every Linear and ungrouped Conv2d inside the given stages (grouped depthwise convs cannot be calibrated)."""
    return {
        f"{stage}.{name}": module
        for stage in stages
        for name, module in model.get_submodule(stage).named_modules()
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)
    }


def _zero_fraction(module: nn.Module) -> float:
    return float((module.weight == 0).sum()) / module.weight.numel()


TV_STAGES = ["features.1", "features.3", "features.5"]


def test_every_stage_is_found_in_forward_order() -> None:
    assert [name for name, _ in find_blocks(_tv_convnext())] == TV_STAGES
    # timm nests each stage's blocks in a ConvNeXtStage; the outer list of stages is taken whole.
    assert [name for name, _ in find_blocks(_timm_convnext(False))] == ["stages"]


@pytest.mark.parametrize(
    "options",
    [{}, {"n_m": (2, 4)}],
    ids=["unstructured", "2:4"],
)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize(
    ("build", "stages"),
    [
        (_tv_convnext, TV_STAGES),
        (lambda: _timm_convnext(False), ["stages.0", "stages.1", "stages.2", "stages.3"]),
        (lambda: _timm_convnext(True), ["stages.0", "stages.1", "stages.2", "stages.3"]),
    ],
    ids=["torchvision", "timm_linear_mlp", "timm_conv_mlp"],
)
def test_every_stage_reaches_the_sparsity(build, stages, method, options) -> None:
    model = build()
    pyprune.prune(model, method, AMOUNT, data=_data(), progress=False, block_size=8, **options)
    layers = _stage_layers(model, stages)
    assert len(layers) >= 2 * len(stages)
    for name, module in layers.items():
        assert _zero_fraction(module) == AMOUNT, name
        if "n_m" in options:
            groups = module.weight.detach().flatten(1).reshape(module.weight.shape[0], -1, 4)
            assert bool(((groups == 0).sum(-1) >= 2).all()), name
    assert torch.isfinite(model(_data()[0])).all()


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_owl_sparsities_span_every_stage(method) -> None:
    model = _tv_convnext()
    plan = pyprune.plan(model, method, AMOUNT, data=_data(), progress=False, owl=True, block_size=8)
    blocks = [
        f"{stage}.{child}" for stage in TV_STAGES for child, _ in model.get_submodule(stage).named_children()
    ]
    sparsity = plan.options["block_sparsity"]
    assert len(sparsity) == len(blocks) == 4
    assert math.isclose(sum(sparsity) / len(sparsity), AMOUNT, rel_tol=1e-12)
    pyprune.make_permanent(plan.apply(model))
    for index, block in enumerate(blocks):
        for name, module in _stage_layers(model, [block]).items():
            want = math.floor(sparsity[index] * module.weight.shape[1] + 0.5) / module.weight.shape[1]
            if method == "wanda":  # per output row: exact
                assert _zero_fraction(module) == want, name
            else:
                assert abs(_zero_fraction(module) - sparsity[index]) <= 1 / module.weight.shape[1], name


def test_wanda_matches_a_sequential_reference_across_stages() -> None:
    model, data = _tv_convnext(), _data()
    plan = pyprune.plan(model, "wanda", AMOUNT, data=data, progress=False)
    ref = copy.deepcopy(model)
    blocks = [
        f"{stage}.{child}" for stage in TV_STAGES for child, _ in ref.get_submodule(stage).named_children()
    ]
    for block in blocks:
        members = _stage_layers(ref, [block])
        seen: dict[str, list[torch.Tensor]] = {name: [] for name in members}
        handles = [
            module.register_forward_pre_hook(lambda m, a, store=seen[name]: store.append(a[0].clone()))
            for name, module in members.items()
        ]
        with torch.no_grad():
            for x in data:
                ref(x)  # the whole partly pruned copy: earlier stages and downsampling included
        for handle in handles:
            handle.remove()
        for name, module in members.items():
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen[name]]).double()
            w = module.weight.detach().double()
            score = w.abs() * (x * x).sum(0).sqrt()
            k = math.floor(AMOUNT * w.shape[1] + 0.5)
            lowest = torch.sort(score, dim=1, stable=True).indices[:, :k]
            mask = torch.zeros_like(w, dtype=torch.bool).scatter_(1, lowest, True)
            assert torch.equal(~plan.layer(name).keep_mask(module.weight.shape), mask), name
            with torch.no_grad():
                module.weight.masked_fill_(mask, 0)
    pruned = plan.apply(copy.deepcopy(model))
    torch.testing.assert_close(pruned(data[0]), ref(data[0]))


def test_explicit_lists_out_of_forward_order_are_refused() -> None:
    with pytest.raises(ValueError, match="blocks: the lists of blocks must be given in forward order"):
        pyprune.plan(
            _tv_convnext(), "wanda", AMOUNT, data=_data(), progress=False, blocks=["features.3", "features.1"]
        )
    with pytest.raises(TypeError, match="blocks: expected a module name"):
        pyprune.plan(_tv_convnext(), "wanda", AMOUNT, data=_data(), progress=False, blocks=[3])


def test_layers_outside_the_stages_are_listed_untouched() -> None:
    plan = pyprune.plan(_tv_convnext(), "wanda", AMOUNT, data=_data(), progress=False)
    untouched = plan.options["untouched"]
    assert plan.options["blocks"] == TV_STAGES
    assert untouched["features.2.1"].startswith("outside the blocks")  # downsampling between stages
    assert untouched["features.1.0.block.0"].startswith("grouped convolution (groups=8)")
