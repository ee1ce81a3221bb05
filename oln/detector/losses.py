"""Box and mask losses of the standard RPN / ROI heads, as mmdetection v2 or torchvision compute them.

- `box_regression_loss`: "l1" (mmdet v2's default L1Loss, used by GGN's Mask R-CNN and
  OLN's ROI head) or "smooth_l1" (torchvision, beta 1/9); a sum the callers divide by the
  number of sampled anchors / RoIs (mmdet's avg_factor, torchvision's `numel`).
- `fast_rcnn_loss`: cross-entropy over the sampled RoIs + that box loss on the positives.
- `mask_rcnn_loss`: BCE of the GT mask cropped to each positive RoI. mmdet crops with
  RoIAlign(aligned=True, adaptive sampling) and binarises at 0.5 (`BitmapMasks.crop_and_resize`);
  torchvision crops with aligned=False and keeps the soft values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

BOX_LOSSES = ("l1", "smooth_l1")
SMOOTH_L1_BETA = 1.0 / 9.0  # torchvision's RPN and ROI heads
MASK_BINARY_THRESHOLD = 0.5  # mmdet's crop_and_resize binarisation


def box_regression_loss(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Summed "l1" or "smooth_l1" (beta 1/9) loss between box codes (N, 4); 0 for N = 0."""
    if kind == "l1":
        return (pred.float() - target.float()).abs().sum()
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred.float(), target.float(), beta=SMOOTH_L1_BETA, reduction="sum")
    raise ValueError(f"box loss must be one of {BOX_LOSSES}, got {kind!r}")


def fast_rcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: list[Tensor],
    regression_targets: list[Tensor],
    box_loss: str,
) -> tuple[Tensor, Tensor]:
    """ROI classification loss (mean CE) and box loss (sum over positives / sampled RoIs).

    Args:
        class_logits: (N, C) for the N sampled RoIs of all images.
        box_regression: (N, C * 4) class-specific deltas.
        labels / regression_targets: per image, (n_i,) int64 and (n_i, 4).
        box_loss: "l1" | "smooth_l1".
    """
    labels_all = torch.cat(labels)
    targets = torch.cat(regression_targets)
    classification = F.cross_entropy(class_logits.float(), labels_all)
    positive = torch.where(labels_all > 0)[0]
    deltas = box_regression.reshape(len(class_logits), -1, 4)[positive, labels_all[positive]]
    box = box_regression_loss(deltas, targets[positive], box_loss) / max(1, labels_all.numel())
    return classification, box


def mask_targets(
    gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor, size: int, aligned: bool, binary: bool
) -> Tensor:
    """GT masks (G, H, W) cropped to `boxes` (N, 4) of their matched GT and resized to (N, size, size)."""
    rois = torch.cat([matched_idxs[:, None].to(boxes), boxes], dim=1)
    crops = roi_align(gt_masks[:, None].to(rois), rois, (size, size), 1.0, sampling_ratio=0, aligned=aligned)[:, 0]
    return (crops >= MASK_BINARY_THRESHOLD).to(crops.dtype) if binary else crops


def mask_rcnn_loss(
    mask_logits: Tensor,
    proposals: list[Tensor],
    gt_masks: list[Tensor],
    gt_labels: list[Tensor],
    matched_idxs: list[Tensor],
    aligned: bool = True,
    binary: bool = True,
) -> Tensor:
    """Mean BCE between the mask logits of each positive RoI's class and its cropped GT mask."""
    size = mask_logits.shape[-1]
    labels = torch.cat([gl[idx] for gl, idx in zip(gt_labels, matched_idxs)])
    targets = torch.cat(
        [mask_targets(m, p, i, size, aligned, binary) for m, p, i in zip(gt_masks, proposals, matched_idxs)]
    )
    if targets.numel() == 0:
        return mask_logits.sum() * 0
    logits = mask_logits[torch.arange(len(labels), device=labels.device), labels]
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())
