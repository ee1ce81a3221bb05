"""Multi-scale RoIAlign with mmdetection's options (torchvision hard-codes aligned=False).

mmdet's `SingleRoIExtractor` (GGN, OLN) pools each RoI from one FPN level with mmcv's
RoIAlign(aligned=True, sampling_ratio=0): box corners are shifted by half a feature pixel
(x * scale - 0.5) and every bin averages ceil(bin size) x ceil(bin size) bilinear samples.
torchvision's `MultiScaleRoIAlign` uses aligned=False and our former default sampled 2 x 2.

Level of a box of sqrt-area s (`fpn_levels`, mmdet's `map_roi_levels`):
floor(log2(s / finest_scale + 1e-6)) clamped to the pooled levels, finest_scale 56, so
s < 112 -> stride 4, [112, 224) -> 8, [224, 448) -> 16, >= 448 -> 32. torchvision's
LevelMapper (floor(4 + log2(s / 224) + 1e-6) - 2) is the same map up to where the 1e-6 sits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from oln.detector.window_roi_align import roi_align_windows

FINEST_SCALE = 56  # mmdet SingleRoIExtractor: boxes below 2 * 56 px go to the finest level
LEVEL_EPS = 1e-6


def fpn_levels(boxes: Tensor, num_levels: int, finest_scale: int = FINEST_SCALE) -> Tensor:
    """Index (0 = finest) of the pooled FPN level of each xyxy box (N, 4), mmdet's rule."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(torch.log2(scale / finest_scale + LEVEL_EPS))
    return levels.clamp(min=0, max=num_levels - 1).long()


def feature_scales(features: list[Tensor], image_shapes: list[tuple[int, int]]) -> list[float]:
    """1 / stride of each feature map: the power of two nearest to its height / the largest image height."""
    height = max(shape[0] for shape in image_shapes)
    return [2.0 ** round(math.log2(feature.shape[-2] / height)) for feature in features]


class AlignedMultiScaleRoIAlign(nn.Module):
    """`MultiScaleRoIAlign` with `aligned` and mmdet's level mapping.

    Args:
        featmap_names: feature maps to pool from, finest first (stride 4 first).
        output_size: side of the pooled output.
        sampling_ratio: bilinear samples per bin side (0 = adaptive, mmdet).
        aligned: shift box corners by -0.5 feature pixel (mmdet / mmcv) or not (torchvision).
    """

    def __init__(self, featmap_names: list[str], output_size: int, sampling_ratio: int, aligned: bool) -> None:
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """Pooled features (N, C, S, S) of all images' boxes (image-pixel xyxy), in order."""
        features = [x[name] for name in self.featmap_names]
        scales = feature_scales(features, image_shapes)
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], k), b], dim=1) for k, b in enumerate(boxes)]
        )
        levels = fpn_levels(rois[:, 1:], len(features))
        first = features[0]
        result = first.new_zeros((len(rois), first.shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, scales)):
            index = torch.where(levels == level)[0]
            pooled = pool_function(feature)(
                feature,
                rois[index],
                self.output_size,
                spatial_scale=scale,
                sampling_ratio=self.sampling_ratio,
                aligned=self.aligned,
            )
            result[index] = pooled.to(result.dtype)
        return result


def pool_function(feature: Tensor):
    """RoIAlign for `feature`: by windows when training on the CPU (the same numbers up to float
    summation order, a 4-10x faster backward: `oln.detector.window_roi_align`), torchvision's
    kernel otherwise (CUDA, and inference, where its forward is as fast or faster)."""
    if feature.device.type == "cpu" and torch.is_grad_enabled() and feature.requires_grad:
        return roi_align_windows
    return roi_align
