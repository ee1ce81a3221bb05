"""ResNet backbones shared by the affinity network and the detectors, built without downloads.

Besides torchvision's `resnet18/34/50/101`, `resnet18_w<N>` is a ResNet-18 whose
stage widths are N, 2N, 4N, 8N instead of 64 ... 512 (`resnet18_w64` equals
`resnet18`). Compute falls with the square of the width, so `resnet18_w16` costs
about 1/16 of ResNet-18: the laptop-CPU setting of the embedded synthetic
experiment. Widened variants have no pretrained weights; they train from scratch.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
SLIM_PATTERN = re.compile(r"^resnet18_w(\d+)$")
BACKBONE_HELP = "resnet18 | resnet34 | resnet50 | resnet101 | resnet18_w<N> (ResNet-18 with base width N)"


class SlimResNet18(torchvision.models.ResNet):
    """ResNet-18 with base width `width` (stages width, 2x, 4x, 8x), torchvision layout and init."""

    def __init__(self, width: int, norm_layer: Callable[[int], nn.Module] | None = None) -> None:
        nn.Module.__init__(self)
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, width, 2)
        self.layer2 = self._make_layer(BasicBlock, width * 2, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, width * 4, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, width * 8, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8, 1000)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)


def is_backbone(name: str) -> bool:
    """Whether `name` names a supported backbone."""
    return name in TORCHVISION_RESNETS or bool(SLIM_PATTERN.match(name))


def build_resnet(name: str, norm_layer: Callable[[int], nn.Module] | None = None) -> torchvision.models.ResNet:
    """A randomly initialised ResNet by name (see module docstring); never downloads weights."""
    match = SLIM_PATTERN.match(name)
    if match:
        width = int(match.group(1))
        if width < 4:
            raise ValueError(f"backbone {name!r}: width must be >= 4")
        return SlimResNet18(width, norm_layer)
    if name not in TORCHVISION_RESNETS:
        raise ValueError(f"unknown backbone {name!r}; use {BACKBONE_HELP}")
    return getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)


def stage_channels(name: str) -> list[int]:
    """Output channels of the four ResNet stages (strides 4, 8, 16, 32)."""
    match = SLIM_PATTERN.match(name)
    base = int(match.group(1)) if match else 64
    expansion = 4 if name in ("resnet50", "resnet101") else 1
    return [base * 2**k * expansion for k in range(4)]
