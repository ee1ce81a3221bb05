"""Pairwise-affinity network: torchvision ResNet backbone + UPerNet head.

The head follows UPerNet as used by GGN: a pyramid pooling module (bins 1, 2, 3, 6) on
the last stage, an FPN top-down path over the four stages, all levels upsampled to 1/4
and fused by a 3x3 conv, then a 1x1 classifier whose logits are bilinearly upsampled to
the input size. The network takes images in [0, 1] and normalises them itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from oln.backbones import BACKBONE_HELP, build_resnet, is_backbone, stage_channels
from oln.checkpoints import save_torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMS = ("bn", "gn")
POOL_SCALES = (1, 2, 3, 6)


@dataclass
class PAModelOptions:
    """Affinity network options.

    Attributes:
        backbone: resnet18 | resnet34 | resnet50 (GGN) | resnet101 | resnet18_w<N> (ResNet-18 of
            base width N, e.g. resnet18_w16 at 1/16 of the compute; see oln.backbones).
        norm: bn (BatchNorm, GGN) | gn (GroupNorm) in backbone and head.
        head_channels: UPerNet width of the FPN and fusion convs (GGN: 256).
        ppm_channels: width of each pyramid-pooling branch (GGN: 512; 0 = head_channels).
        pretrained_path: local torchvision ResNet state_dict to initialise the backbone
            ("" = random init; nothing is ever downloaded).
    """

    backbone: str = "resnet50"
    norm: str = "bn"
    head_channels: int = 256
    ppm_channels: int = 512
    pretrained_path: str = ""


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d or GroupNorm (up to 32 groups of at least 2 channels)."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(math.gcd(32, max(1, channels // 2)), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class PooledBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm for pyramid-pooling branches: with one value per channel (batch 1 on the 1x1
    pooled map, GGN's one image per GPU) batch statistics do not exist, so that case is
    normalised with the running statistics instead of failing; every other case is BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                self.eps)
        return super().forward(x)


def conv_norm_relu(in_ch: int, out_ch: int, kernel: int, norm: str, pooled: bool = False) -> nn.Sequential:
    """Conv (no bias) + norm + ReLU; `pooled` marks a pyramid-pooling branch (see PooledBatchNorm2d)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
        PooledBatchNorm2d(out_ch) if pooled and norm == "bn" else norm_layer(norm, out_ch),
        nn.ReLU(inplace=True),
    )


class ResNetStages(nn.Module):
    """torchvision ResNet returning the outputs of its four stages (strides 4, 8, 16, 32)."""

    def __init__(self, name: str, norm: str, pretrained_path: str = ""):
        super().__init__()
        if not is_backbone(name):
            raise ValueError(f"backbone must be {BACKBONE_HELP}, got {name!r}")
        net = build_resnet(name, norm_layer=lambda c: norm_layer(norm, c))
        if pretrained_path:
            state = torch.load(pretrained_path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise ValueError(
                    f"{pretrained_path}: not a {name} state_dict (missing {missing[:3]}, "
                    f"unexpected {unexpected[:3]})"
                )
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.out_channels = stage_channels(name)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class UPerNetHead(nn.Module):
    """Pyramid pooling on the last stage + FPN over all stages, fused at stride 4."""

    def __init__(self, in_channels: list[int], channels: int, out_channels: int, norm: str,
                 ppm_channels: int = 0):
        super().__init__()
        top = in_channels[-1]
        ppm_channels = ppm_channels or channels
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), conv_norm_relu(top, ppm_channels, 1, norm, pooled=True))
            for scale in POOL_SCALES
        )
        self.ppm_fuse = conv_norm_relu(top + len(POOL_SCALES) * ppm_channels, channels, 3, norm)
        self.lateral = nn.ModuleList(conv_norm_relu(c, channels, 1, norm) for c in in_channels[:-1])
        self.smooth = nn.ModuleList(conv_norm_relu(channels, channels, 3, norm) for _ in in_channels[:-1])
        self.fuse = conv_norm_relu(len(in_channels) * channels, channels, 3, norm)
        self.classifier = nn.Conv2d(channels, out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        top = features[-1]
        size = top.shape[-2:]
        pooled = [top] + [_upsample(branch(top), size) for branch in self.ppm]
        f = self.ppm_fuse(torch.cat(pooled, dim=1))
        levels = [f]
        for i in reversed(range(len(features) - 1)):
            lateral = self.lateral[i](features[i])
            f = lateral + _upsample(f, lateral.shape[-2:])
            levels.append(self.smooth[i](f))
        levels.reverse()  # finest first
        size = levels[0].shape[-2:]
        fused = torch.cat([levels[0]] + [_upsample(x, size) for x in levels[1:]], dim=1)
        return self.classifier(self.fuse(fused))


def _upsample(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PAModel(nn.Module):
    """Affinity network: images (B, 3, H, W) in [0, 1] -> logits (B, C, H, W)."""

    def __init__(self, options: PAModelOptions, out_channels: int):
        super().__init__()
        self.options = options
        self.backbone = ResNetStages(options.backbone, options.norm, options.pretrained_path)
        self.head = UPerNetHead(self.backbone.out_channels, options.head_channels, out_channels, options.norm,
                                options.ppm_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std
        logits = self.head(self.backbone(x))
        return _upsample(logits, images.shape[-2:])


def build_pa_model(options: PAModelOptions, out_channels: int) -> PAModel:
    """Build an affinity network predicting `out_channels` affinity logits per pixel."""
    return PAModel(options, out_channels)


def save_pa_model(path: str | Path, model: PAModel, meta: dict) -> None:
    """Write {"state_dict", "options", "meta"} atomically to `path`."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch(path, {"state_dict": state, "options": asdict(model.options), "meta": meta})


def load_pa_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[PAModel, dict]:
    """Load a model written by `save_pa_model`.

    Returns:
        (model in eval mode on `device`, meta dict: reduction, neighbor_distances,
        out_channels, mean/std, data options, ...).
    """
    blob = torch.load(path, map_location="cpu", weights_only=False)
    # Models saved before `ppm_channels` existed used head_channels for the PPM too (0).
    options = PAModelOptions(**{"ppm_channels": 0, **blob["options"], "pretrained_path": ""})
    meta = blob["meta"]
    model = build_pa_model(options, int(meta["out_channels"]))
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval(), meta
