"""Backbones by name, including the width-scaled ResNet-18."""

import pytest
import torch
import torchvision

from oln.backbones import build_resnet, is_backbone, stage_channels


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_width_64_is_torchvision_resnet18():
    assert count(build_resnet("resnet18_w64")) == count(torchvision.models.resnet18()) == 11_689_512


def test_slim_stage_channels_and_shapes():
    net = build_resnet("resnet18_w16")
    assert stage_channels("resnet18_w16") == [16, 32, 64, 128]
    assert stage_channels("resnet50") == [256, 512, 1024, 2048]
    x = net.maxpool(net.relu(net.bn1(net.conv1(torch.zeros(1, 3, 64, 64)))))
    shapes = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
    # compute falls with the square of the width: 1/16 of the conv weights of ResNet-18 (+ fc)
    assert count(net) < count(torchvision.models.resnet18()) / 12


def test_unknown_backbones_are_rejected():
    assert is_backbone("resnet101") and is_backbone("resnet18_w8") and not is_backbone("vgg16")
    with pytest.raises(ValueError, match="unknown backbone 'vgg16'"):
        build_resnet("vgg16")
    with pytest.raises(ValueError, match="width must be >= 4"):
        build_resnet("resnet18_w2")
