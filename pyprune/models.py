"""Reference models: MLPs, LeNet-5, VGG with batch norm and CIFAR-style ResNets.

Every factory returns a plain :class:`torch.nn.Module` built from standard layers (``nn.Linear``,
``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.ReLU``, ...) with named submodules, so ``torch.nn.utils.prune``,
Torch-Pruning and :func:`pyprune.capture` can address every layer by name. ReLUs are separate, non-inplace
modules: an inplace ReLU would overwrite the output a forward hook captured from the layer before it.

Initialisation is He et al. (2015) normal (fan-in, ReLU gain) for every conv and linear weight, zero biases,
and BN scale 1 / shift 0, so two models built after the same ``torch.manual_seed`` have identical weights.

Look a model up by name with :func:`create` (``create("resnet20", num_classes=100)``); :data:`MODELS` lists
the names.
"""

from __future__ import annotations

import functools
import itertools
import numbers
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn

from pyprune.arguments import check_positive_int, is_positive_int, unknown_name_message

_ModuleT = TypeVar("_ModuleT", bound=nn.Module)

# fmt: off
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
    # Three poolings so that 8x8 digits end at 1x1; 65k parameters on digits, 98k on 28x28 MNIST.
    "vgg_small": [16, "M", 32, "M", 64, 64, "M"],
}
"""VGG layouts (Simonyan & Zisserman 2015, configurations A, B, D, E): an int is a 3x3 conv with that many
output channels (followed by BN and ReLU), ``"M"`` a 2x2 max-pooling with stride 2."""
# fmt: on


def mlp(widths: Sequence[int], *, bias: bool = True) -> nn.Sequential:
    """A fully connected ReLU network: ``Flatten`` then ``Linear(widths[i], widths[i+1])`` layers.

    Input: any ``(N, ...)`` tensor whose trailing dimensions hold ``widths[0]`` values (flattened first).
    Output: logits ``(N, widths[-1])``. Layers are named ``flatten``, ``fc1``, ``relu1``, ..., ``fcK`` (no ReLU
    after the last).

    Args:
        widths: layer widths including input and output, e.g. ``[784, 300, 100, 10]``; at least two.
        bias: give every linear layer a bias.
    """
    widths = list(widths)
    if len(widths) < 2 or not all(is_positive_int(w) for w in widths):
        raise ValueError(f"widths: expected at least two positive ints, got {widths!r}")
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for i, (n_in, n_out) in enumerate(itertools.pairwise(widths), start=1):
        layers[f"fc{i}"] = nn.Linear(n_in, n_out, bias=bias)
        if i < len(widths) - 1:
            layers[f"relu{i}"] = nn.ReLU()
    return _init(nn.Sequential(layers))


def lenet_300_100(*, in_features: int = 784, num_classes: int = 10) -> nn.Sequential:
    """LeNet-300-100 (LeCun et al. 1998): 784-300-100-10 ReLU MLP with biases, the classic pruning baseline
    (Han et al. 2015). Input ``(N, 1, 28, 28)`` or ``(N, 784)``; output logits ``(N, num_classes)``."""
    return mlp([in_features, 300, 100, num_classes])


def mlp_512(*, in_features: int = 784, num_classes: int = 10) -> nn.Sequential:
    """784-512-512-10 ReLU MLP with biases. Input ``(N, 1, 28, 28)`` or ``(N, 784)``; output logits
    ``(N, num_classes)``."""
    return mlp([in_features, 512, 512, num_classes])


def mlp_1000_1000_500_200(*, in_features: int = 784, num_classes: int = 10) -> nn.Sequential:
    """784-1000-1000-500-200-10 ReLU MLP without biases, the network of the FOR.ai weight/unit pruning
    exercise. Input ``(N, 1, 28, 28)`` or ``(N, 784)``; output logits ``(N, num_classes)``."""
    return mlp([in_features, 1000, 1000, 500, 200, num_classes], bias=False)


def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Sequential:
    """LeNet-5 (LeCun et al. 1998) in its modern form: ReLU and max-pooling instead of tanh and subsampling.

    ``conv1`` 5x5 -> 6 channels (padding 2, the usual way to feed 28x28 MNIST to a network designed for 32x32),
    ReLU, 2x2 max-pool, ``conv2`` 5x5 -> 16 channels, ReLU, 2x2 max-pool, then ``fc1`` (120), ``fc2`` (84) and
    ``fc3`` (``num_classes``) with ReLUs between. ``conv2`` has no padding when its input is large enough to
    leave at least 2x2 after it (``image_size >= 12``; 28x28 gives the classic 16x5x5 = 400 features) and
    padding 2 otherwise, so 8x8 digits work too (8 -> 8 -> 4 -> 4 -> 2: 16x2x2 = 64 features).

    Input ``(N, in_channels, image_size, image_size)``; output logits ``(N, num_classes)``.

    Args:
        in_channels: input channels (1 for MNIST and digits).
        num_classes: output logits.
        image_size: side of the square input in pixels, at least 4.
    """
    check_positive_int(in_channels, "in_channels")
    check_positive_int(num_classes, "num_classes")
    if not is_positive_int(image_size) or image_size < 4:
        raise ValueError(f"image_size: expected an int >= 4, got {image_size!r}")
    after_pool1 = image_size // 2
    conv2_padding = 0 if after_pool1 - 4 >= 2 else 2
    after_pool2 = (after_pool1 + 2 * conv2_padding - 4) // 2
    return _init(
        nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 6, 5, padding=2),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(6, 16, 5, padding=conv2_padding),
                relu2=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
                flatten=nn.Flatten(),
                fc1=nn.Linear(16 * after_pool2 * after_pool2, 120),
                relu3=nn.ReLU(),
                fc2=nn.Linear(120, 84),
                relu4=nn.ReLU(),
                fc3=nn.Linear(84, num_classes),
            )
        )
    )


def vgg_bn(
    config: str | Sequence[int | str] = "vgg11",
    in_channels: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
) -> nn.Sequential:
    """A VGG-style CNN with batch norm, as used for CIFAR: ``features`` then a small ``classifier``.

    ``features`` holds, for each int ``c`` of the configuration, a 3x3 conv (padding 1, no bias: BN follows)
    with ``c`` output channels, ``BatchNorm2d`` and ReLU; for each ``"M"`` a 2x2 max-pool with stride 2.
    ``classifier`` is ``Flatten``, ``Linear(c_last * s * s, c_last)``, ReLU, ``Linear(c_last, num_classes)``
    where ``s = image_size // 2**n_pools`` (1 for VGG-11 on 32x32, 3 for ``"vgg_small"`` on 28x28).

    Input ``(N, in_channels, image_size, image_size)``; output logits ``(N, num_classes)``.

    Args:
        config: a name from :data:`VGG_CONFIGS` (``"vgg11"``, ``"vgg13"``, ``"vgg16"``, ``"vgg19"``,
            ``"vgg_small"``) or a list of ints and ``"M"``.
        in_channels: input channels (3 for CIFAR, 1 for MNIST and digits).
        num_classes: output logits.
        image_size: side of the square input in pixels; every pooling must leave at least 1 pixel.
    """
    if isinstance(config, str):
        if config not in VGG_CONFIGS:
            raise ValueError(unknown_name_message("config", config, list(VGG_CONFIGS)))
        layout = VGG_CONFIGS[config]
    else:
        layout = list(config)
        if not any(is_positive_int(v) for v in layout) or not all(
            is_positive_int(v) or v == "M" for v in layout
        ):
            raise ValueError(
                f"config: expected a VGG name or a list of positive ints and 'M' with at least one int, "
                f"got {layout!r}"
            )
    check_positive_int(in_channels, "in_channels")
    check_positive_int(num_classes, "num_classes")
    check_positive_int(image_size, "image_size")
    n_pools = layout.count("M")
    if image_size < 2**n_pools:
        raise ValueError(
            f"image_size: expected at least {2**n_pools} for a config with {n_pools} poolings, got {image_size}"
        )
    features: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    n_conv = 0
    for i, v in enumerate(layout):
        if v == "M":
            features[f"pool{i}"] = nn.MaxPool2d(2)
            continue
        n_conv += 1
        features[f"conv{n_conv}"] = nn.Conv2d(channels, v, 3, padding=1, bias=False)
        features[f"bn{n_conv}"] = nn.BatchNorm2d(v)
        features[f"relu{n_conv}"] = nn.ReLU()
        channels = v
    side = image_size // 2**n_pools
    classifier = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc1=nn.Linear(channels * side * side, channels),
            relu=nn.ReLU(),
            fc2=nn.Linear(channels, num_classes),
        )
    )
    return _init(nn.Sequential(OrderedDict(features=nn.Sequential(features), classifier=classifier)))


class BasicBlock(nn.Module):
    """The ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus a shortcut, then ReLU.

    The shortcut is the identity when shape is kept, else ``downsample``: a 1x1 conv with ``stride`` and BN
    (He et al. 2016, option B), which dependency-graph pruners such as Torch-Pruning can follow.

    Input ``(N, in_channels, H, W)``; output ``(N, out_channels, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


class CifarResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016, section 4.2); build it with :func:`cifar_resnet`.

    ``conv1`` (3x3, 16w channels), ``bn1``, ``relu``, then ``layer1``/``layer2``/``layer3`` of ``n`` basic blocks
    with 16w/32w/64w channels (stride 2 at the first block of ``layer2`` and ``layer3``), global average pooling
    (``avgpool``), ``flatten`` and ``fc``. Input ``(N, in_channels, H, W)``, any ``H, W >= 1`` (32x32 for
    CIFAR); output logits ``(N, num_classes)``.
    """

    def __init__(self, blocks_per_stage: int, in_channels: int, num_classes: int, width: float) -> None:
        super().__init__()
        channels = [max(1, round(base * width)) for base in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.relu = nn.ReLU()
        stages = []
        previous = channels[0]
        for stage, out in enumerate(channels):
            blocks = []
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(previous, out, stride=2 if stage > 0 and b == 0 else 1))
                previous = out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def cifar_resnet(depth: int, in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """A CIFAR-style ResNet of ``depth = 6n + 2`` weighted layers: the stem conv, ``3n`` basic blocks of two
    3x3 convs, and ``fc`` (the two 1x1 projection shortcuts are not counted, as in He et al. 2016).

    ResNet-20/32/44/56/110 have ``n`` = 3/5/7/9/18 and about 0.27M/0.46M/0.66M/0.85M/1.7M parameters at
    ``width=1``. Input ``(N, in_channels, H, W)`` (``(N, 3, 32, 32)`` for CIFAR); output ``(N, num_classes)``.

    Args:
        depth: ``6n + 2`` for some ``n >= 1`` (8, 14, 20, 26, ...).
        in_channels: input channels.
        num_classes: output logits.
        width: multiplies the 16/32/64 stage widths (rounded, at least 1 channel).
    """
    if not is_positive_int(depth) or depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"depth: expected 6n + 2 for an int n >= 1 (8, 14, 20, 26, ...), got {depth!r}")
    check_positive_int(in_channels, "in_channels")
    check_positive_int(num_classes, "num_classes")
    if not (isinstance(width, numbers.Real) and not isinstance(width, bool) and width > 0):
        raise ValueError(f"width: expected a positive number, got {width!r}")
    return _init(CifarResNet((depth - 2) // 6, in_channels, num_classes, float(width)))


def resnet20(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """ResNet-20 for CIFAR (3 blocks per stage, about 0.27M parameters); see :func:`cifar_resnet`."""
    return cifar_resnet(20, in_channels, num_classes, width)


def resnet56(in_channels: int = 3, num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """ResNet-56 for CIFAR (9 blocks per stage, about 0.85M parameters); see :func:`cifar_resnet`."""
    return cifar_resnet(56, in_channels, num_classes, width)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet_300_100": lenet_300_100,
    "mlp_512": mlp_512,
    "mlp_1000_1000_500_200": mlp_1000_1000_500_200,
    "lenet5": lenet5,
    "vgg_bn": vgg_bn,
    **{name: functools.partial(vgg_bn, name) for name in VGG_CONFIGS},
    "cifar_resnet": cifar_resnet,
    "resnet20": resnet20,
    "resnet56": resnet56,
}
"""Model factories by name; the VGG names are :func:`vgg_bn` with that configuration."""


def create(name: str, **kwargs: object) -> nn.Module:
    """Build the model registered in :data:`MODELS` as ``name``, passing ``kwargs`` to its factory.

    Example: ``create("vgg_small", in_channels=1, image_size=8)`` for the 8x8 digits.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a model name (str), got {type(name).__name__}")
    if name not in MODELS:
        raise ValueError(unknown_name_message("name", name, list(MODELS)))
    return MODELS[name](**kwargs)


def _init(model: _ModuleT) -> _ModuleT:
    # PyTorch's default layer init (uniform, a=sqrt(5)) shrinks activations by ~sqrt(3) per layer; He init keeps
    # their variance through ReLUs, as the papers these architectures come from assume.
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
