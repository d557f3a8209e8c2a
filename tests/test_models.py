from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch_pruning as tp
from torch import nn

from pyprune import models
from pyprune.data import loaders
from pyprune.models import MODELS, cifar_resnet, create, lenet5, resnet20, vgg_bn

# (registry name, factory kwargs, documented input shape, expected number of logits)
CASES = [
    ("mlp", {"widths": [64, 32, 10]}, (3, 1, 8, 8), 10),
    ("lenet_300_100", {}, (3, 1, 28, 28), 10),
    ("mlp_512", {}, (3, 784), 10),
    ("mlp_1000_1000_500_200", {}, (3, 1, 28, 28), 10),
    ("lenet5", {}, (3, 1, 28, 28), 10),
    ("vgg_bn", {"config": [8, "M", 16, "M"], "in_channels": 1, "image_size": 8}, (3, 1, 8, 8), 10),
    ("vgg11", {}, (3, 3, 32, 32), 10),
    ("vgg13", {"num_classes": 100}, (3, 3, 32, 32), 100),
    ("vgg16", {}, (3, 3, 32, 32), 10),
    ("vgg19", {}, (3, 3, 32, 32), 10),
    ("vgg_small", {"in_channels": 1, "image_size": 8}, (3, 1, 8, 8), 10),
    ("cifar_resnet", {"depth": 8}, (3, 3, 32, 32), 10),
    ("resnet20", {}, (3, 3, 32, 32), 10),
    ("resnet56", {"num_classes": 100}, (3, 3, 32, 32), 100),
]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linear_params(widths: list[int], bias: bool) -> int:
    return sum(a * b + (b if bias else 0) for a, b in itertools.pairwise(widths))


def test_cases_cover_the_registry():
    assert {name for name, *_ in CASES} == set(MODELS)


@pytest.mark.parametrize(("name", "kwargs", "shape", "classes"), CASES, ids=[c[0] for c in CASES])
def test_output_shape(name, kwargs, shape, classes):
    model = create(name, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (shape[0], classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_lenet_300_100_parameter_count():
    model = create("lenet_300_100")
    assert n_params(model) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [300, 100, 10]


def test_mlp_512_parameter_count():
    assert n_params(create("mlp_512")) == 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10


def test_mlp_1000_1000_500_200_has_no_biases():
    model = create("mlp_1000_1000_500_200")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [1000, 1000, 500, 200, 10]
    assert all(m.bias is None for m in linears)
    assert n_params(model) == 784 * 1000 + 1000 * 1000 + 1000 * 500 + 500 * 200 + 200 * 10


def test_mlp_layers_and_bias_flag():
    widths = [20, 7, 5, 3]
    model = models.mlp(widths, bias=False)
    assert n_params(model) == linear_params(widths, bias=False)
    assert n_params(models.mlp(widths)) == linear_params(widths, bias=True)
    # ReLU between linear layers, none after the last: the output is raw logits.
    assert isinstance(model[-1], nn.Linear)
    assert sum(isinstance(m, nn.ReLU) for m in model) == len(widths) - 2


@pytest.mark.parametrize("widths", [[10], [], [10, 0], [10, 2.5], [10, True]])
def test_mlp_rejects_bad_widths(widths):
    with pytest.raises(ValueError, match="widths"):
        models.mlp(widths)


def test_lenet5_classic_layout_on_28x28():
    # conv1 5x5x1->6, conv2 5x5x6->16 leaving 16x5x5, then 400-120-84-10.
    expected = (25 * 6 + 6) + (25 * 6 * 16 + 16) + linear_params([16 * 5 * 5, 120, 84, 10], bias=True)
    assert n_params(lenet5()) == expected


def test_lenet5_on_8x8_digits():
    model = lenet5(image_size=8)
    # 8 -> conv1 (pad 2) 8 -> pool 4 -> conv2 (pad 2) 4 -> pool 2: 16 x 2 x 2 features.
    assert model.fc1.in_features == 16 * 2 * 2
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("size", [4, 5, 7, 10, 11, 12, 13, 32])
def test_lenet5_any_size_from_4(size):
    model = lenet5(in_channels=3, num_classes=4, image_size=size)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 4)


@pytest.mark.parametrize(
    ("kwargs", "argument"), [({"image_size": 3}, "image_size"), ({"in_channels": 0}, "in_channels")]
)
def test_lenet5_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        lenet5(**kwargs)


def test_vgg11_structure():
    model = vgg_bn("vgg11")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert len(bns) == len(convs)
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    # 32 / 2**5 = 1 pixel left: the classifier sees 512 features.
    assert model.classifier.fc1.in_features == 512


def test_vgg_small_on_28x28():
    model = vgg_bn("vgg_small", in_channels=1, image_size=28)
    # Three poolings: 28 -> 14 -> 7 -> 3.
    assert model.classifier.fc1.in_features == 64 * 3 * 3
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"config": "vgg12"}, "config"),
        ({"config": ["M", "M"]}, "config"),
        ({"config": [8, "A"]}, "config"),
        ({"config": [8, 0]}, "config"),
        ({"config": "vgg11", "image_size": 16}, "image_size"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_vgg_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        vgg_bn(**kwargs)


def resnet_params(n: int, in_channels: int = 3, num_classes: int = 10, widths=(16, 32, 64)) -> int:
    """Parameters of a CIFAR ResNet with option-B shortcuts, from the architecture (He et al. 2016)."""
    bn = 2  # scale and shift per channel
    total = 9 * in_channels * widths[0] + bn * widths[0]
    previous = widths[0]
    for out in widths:
        for _ in range(n):
            total += 9 * previous * out + bn * out + 9 * out * out + bn * out
            if previous != out:
                total += previous * out + bn * out
            previous = out
    return total + widths[-1] * num_classes + num_classes


def test_resnet20_layers_and_parameters():
    model = resnet20()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    # 20 weighted layers: 19 3x3 convs and the fc; the two 1x1 projections are the option-B shortcuts.
    assert sum(c.kernel_size == (3, 3) for c in convs) == 19
    assert sum(c.kernel_size == (1, 1) for c in convs) == 2
    assert len(linears) == 1
    assert n_params(model) == resnet_params(3)
    assert 0.26e6 < n_params(model) < 0.28e6


def test_resnet56_parameters():
    model = models.resnet56()
    assert sum(m.kernel_size == (3, 3) for m in model.modules() if isinstance(m, nn.Conv2d)) == 55
    assert n_params(model) == resnet_params(9)


def test_resnet_downsampling_is_projection():
    model = resnet20()
    for stage in (model.layer2, model.layer3):
        conv, bn = stage[0].downsample
        assert isinstance(conv, nn.Conv2d)
        assert conv.kernel_size == (1, 1)
        assert conv.stride == (2, 2)
        assert isinstance(bn, nn.BatchNorm2d)
    assert all(block.downsample is None for block in model.layer1)


def test_resnet_width_and_channels():
    model = cifar_resnet(14, in_channels=1, num_classes=7, width=0.5)
    assert n_params(model) == resnet_params(2, in_channels=1, num_classes=7, widths=(8, 16, 32))
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)


@pytest.mark.parametrize("depth", [0, 2, 7, 19, 21, 110.0, "20", True])
def test_cifar_resnet_validates_depth(depth):
    with pytest.raises(ValueError, match="depth"):
        cifar_resnet(depth)


@pytest.mark.parametrize("width", [0, -1.0, "1"])
def test_cifar_resnet_validates_width(width):
    with pytest.raises(ValueError, match="width"):
        cifar_resnet(20, width=width)


def test_create_unknown_name_suggests_and_lists():
    with pytest.raises(ValueError, match="name") as info:
        create("resnet2O")
    message = str(info.value)
    assert "did you mean 'resnet20'" in message
    assert all(repr(known) in message for known in MODELS)


def test_create_rejects_non_string():
    with pytest.raises(TypeError, match="name"):
        create(resnet20)


def test_create_passes_kwargs():
    assert create("resnet20", num_classes=3).fc.out_features == 3


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("lenet_300_100", {}), ("lenet5", {}), ("vgg_small", {}), ("resnet20", {})],
)
def test_seeded_initialisation_is_deterministic(name, kwargs):
    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return create(name, **kwargs).state_dict()

    first, again, other = weights(0), weights(0), weights(1)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_he_initialisation():
    torch.manual_seed(0)
    model = create("mlp_1000_1000_500_200")
    # 1e6 draws: the sample std's relative error is about 1 / sqrt(2e6) = 0.07 %, far inside 1 %.
    assert model.fc2.weight.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.01)
    bns = [m for m in create("vgg_small").modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in bns)


def test_torch_pruning_handles_resnet20():
    torch.manual_seed(0)
    model = resnet20().eval()
    example = torch.randn(1, 3, 32, 32)
    pruner = tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[model.fc],
    )
    pruner.step()
    assert model.conv1.out_channels == 8
    assert n_params(model) < 0.3 * resnet_params(3)
    assert model(example).shape == (1, 10)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kwargs", "image"),
    [
        ("lenet_300_100", {"in_features": 64}, False),
        ("lenet5", {"image_size": 8}, True),
        ("vgg_small", {"in_channels": 1, "image_size": 8}, True),
        ("resnet20", {"in_channels": 1}, True),
    ],
)
def test_learns_the_digits(name, kwargs, image):
    torch.manual_seed(0)
    model = create(name, **kwargs)
    train, test = loaders("digits", batch_size=64, seed=0, image=image)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        model.train()
        for x, y in train:
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(dim=1) == y).sum().item() for x, y in test)
    # Chance is 10 %; after four epochs these reach 90-97 %, so 85 % catches a model that cannot learn.
    assert correct / len(test.dataset) > 0.85
