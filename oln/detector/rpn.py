"""Region proposal network with the options of GGN's and OLN's recipes (mmdetection v2).

torchvision's `RegionProposalNetwork` differs from the references in four places,
each a named option of `RecipeRPN` (and of `DetectorOptions`):

- Proposal filtering: both keep the top `pre_nms_top_n` anchors per FPN level, then
  torchvision always runs NMS per level and keeps `post_nms_top_n` per image. GGN does
  the same (0.7, 2000); OLN returns the per-level top 2000 without NMS and without a
  per-image cap, in training and at test (`nms_thresh=None`, `post_nms_top_n=None`).
- Anchors used for targets (`allowed_border`): mmdet first drops anchors centred in
  an image's own padding (the image padded to a multiple of 32; "valid flags"), and with
  `allowed_border >= 0` also anchors reaching more than that many pixels past the image
  (x1 >= -b, y1 >= -b, x2 < W + b, y2 < H + b). Dropped anchors get no label: they are
  neither matched nor sampled. GGN: -1 (valid flags only), OLN: 0. `None` keeps every
  anchor (torchvision).
- Low-quality matches (`min_pos_iou`): mmdet's MaxIoUAssigner makes every anchor whose
  IoU equals a GT's best IoU positive for that GT only if that IoU >= min_pos_iou (later
  GTs win ties); torchvision accepts any IoU and keeps the anchor's own best GT.
  `None` = torchvision's Matcher.
- Box loss (`box_loss`): "l1" (mmdet v2 default, GGN) or "smooth_l1" (torchvision,
  beta 1/9); both summed over the sampled positives and divided by the number of
  sampled anchors, as both libraries do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import boxes as box_ops

from oln.detector.losses import box_regression_loss

IGNORE = -1.0  # anchor label: not sampled


class MaxIoUMatcher(det_utils.Matcher):
    """torchvision Matcher whose low-quality matches follow mmdet's MaxIoUAssigner.

    For each GT whose best IoU is >= `min_pos_iou`, every prediction with exactly that IoU
    is matched to that GT (a later GT overrides an earlier one, as mmdet's loop does).
    """

    def __init__(self, high_threshold: float, low_threshold: float, min_pos_iou: float) -> None:
        super().__init__(high_threshold, low_threshold, allow_low_quality_matches=True)
        self.min_pos_iou = min_pos_iou

    def set_low_quality_matches_(self, matches: Tensor, all_matches: Tensor, match_quality_matrix: Tensor) -> None:
        best = match_quality_matrix.max(dim=1, keepdim=True).values
        eligible = (match_quality_matrix == best) & (best >= self.min_pos_iou)
        columns = torch.where(eligible.any(dim=0))[0]
        gt_index = torch.arange(len(match_quality_matrix), device=matches.device)[:, None]
        matches[columns] = torch.where(eligible[:, columns], gt_index, -1).max(dim=0).values


def build_matcher(fg_iou_thresh: float, bg_iou_thresh: float, min_pos_iou: float | None) -> det_utils.Matcher:
    """Anchor matcher with low-quality matches: mmdet's rule, or torchvision's when `min_pos_iou` is None."""
    if min_pos_iou is None:
        return det_utils.Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
    return MaxIoUMatcher(fg_iou_thresh, bg_iou_thresh, min_pos_iou)


def usable_anchors(
    anchors: Tensor, image_size: tuple[int, int], allowed_border: int | None, size_divisible: int = 32
) -> Tensor:
    """Anchors that take part in target assignment (mmdet's valid and inside flags).

    Args:
        anchors: (N, 4) xyxy anchors of one image, centred on stride multiples.
        image_size: (height, width) of the resized image before batch padding.
        allowed_border: None = all anchors (torchvision); < 0 = anchors centred inside the
            image padded to `size_divisible` (mmdet's valid flags); >= 0 = also inside the
            image grown by this many pixels (x2 < W + b strictly, as mmdet).
        size_divisible: padding multiple of the image.
    Returns:
        (N,) bool.
    """
    if allowed_border is None:
        return torch.ones(len(anchors), dtype=torch.bool, device=anchors.device)
    height, width = image_size
    pad_h = math.ceil(height / size_divisible) * size_divisible
    pad_w = math.ceil(width / size_divisible) * size_divisible
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    usable = (cx < pad_w) & (cy < pad_h)
    if allowed_border >= 0:
        b = allowed_border
        usable &= (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b)
        usable &= (anchors[:, 2] < width + b) & (anchors[:, 3] < height + b)
    return usable


def label_anchors(
    anchors: Tensor, gt_boxes: Tensor, matcher: det_utils.Matcher, usable: Tensor
) -> tuple[Tensor, Tensor]:
    """Labels (1 fg, 0 bg, -1 ignored; float) and matched GT boxes of one image's anchors.

    Anchors outside `usable` are left out of the matching (they cannot be any GT's best
    anchor) and labelled -1.
    """
    if gt_boxes.numel() == 0:
        labels = anchors.new_zeros(len(anchors))
        labels[~usable] = IGNORE
        return labels, torch.zeros_like(anchors)
    iou = box_ops.box_iou(gt_boxes, anchors)
    iou[:, ~usable] = -1.0
    matched = matcher(iou)
    labels = (matched >= 0).to(anchors.dtype)
    labels[matched == matcher.BETWEEN_THRESHOLDS] = IGNORE
    labels[~usable] = IGNORE
    return labels, gt_boxes[matched.clamp(min=0)]


class RecipeRPN(RegionProposalNetwork):
    """torchvision's RPN with the recipe options of the module docstring.

    Args: those of RegionProposalNetwork, where `nms_thresh` may be None (no NMS) and the
    values of `post_nms_top_n` may be None (no per-image cap), plus
        allowed_border: see `usable_anchors`.
        min_pos_iou: see `build_matcher`.
        box_loss: "l1" | "smooth_l1".
        size_divisible: padding multiple of the batched images (GeneralizedRCNNTransform's).
    """

    def __init__(
        self,
        *args,
        allowed_border: int | None = None,
        min_pos_iou: float | None = None,
        box_loss: str = "smooth_l1",
        size_divisible: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.allowed_border = allowed_border
        self.min_pos_iou = min_pos_iou
        self.box_loss = box_loss
        self.size_divisible = size_divisible
        matcher = self.proposal_matcher
        self.proposal_matcher = build_matcher(matcher.high_threshold, matcher.low_threshold, min_pos_iou)

    def forward(
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        feature_list = list(features.values())
        objectness, deltas = self.head(feature_list)
        anchors = self.anchor_generator(images, feature_list)
        num_anchors_per_level = [int(level[0].numel()) for level in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            labels, matched = self.assign_targets(anchors, targets, images.image_sizes)
            regression_targets = self.box_coder.encode(matched, anchors)
            loss_objectness, loss_box = self.compute_loss(objectness, deltas, labels, regression_targets)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}
        return boxes, losses

    def assign_targets(
        self, anchors: list[Tensor], targets: list[dict], image_sizes: list[tuple[int, int]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: anchor labels (1 / 0 / -1) and matched GT boxes."""
        labels, matched = [], []
        for anchors_i, target, size in zip(anchors, targets, image_sizes):
            usable = usable_anchors(anchors_i, size, self.allowed_border, self.size_divisible)
            gt_boxes = target["boxes"].to(anchors_i.dtype)
            labels_i, matched_i = label_anchors(anchors_i, gt_boxes, self.proposal_matcher, usable)
            labels.append(labels_i)
            matched.append(matched_i)
        return labels, matched

    def compute_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Objectness BCE over the sampled anchors and box loss over the sampled positives,
        both divided by the number of sampled anchors."""
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg))[0]])
        num_sampled = max(1, sampled.numel())
        targets = torch.cat(regression_targets)
        box_loss = box_regression_loss(pred_bbox_deltas[pos], targets[pos], self.box_loss) / num_sampled
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], torch.cat(labels)[sampled], reduction="sum"
        ) / num_sampled
        return objectness_loss, box_loss

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_shapes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Top `pre_nms_top_n` per level, clip, drop tiny boxes, NMS per level unless
        `nms_thresh` is None, then the best `post_nms_top_n` (all when None).

        Returns:
            per image, boxes (K, 4) and their sigmoid scores (K,), best first.
        """
        num_images = proposals.shape[0]
        device = proposals.device
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat(
            [torch.full((n,), k, dtype=torch.int64, device=device) for k, n in enumerate(num_anchors_per_level)]
        ).expand_as(objectness)
        top = self._get_top_n_idx(objectness, num_anchors_per_level)
        batch = torch.arange(num_images, device=device)[:, None]
        scores_all, levels, proposals = objectness[batch, top].sigmoid(), levels[batch, top], proposals[batch, top]
        post_top_n = self.post_nms_top_n()
        final_boxes, final_scores = [], []
        for boxes, scores, level, shape in zip(proposals, scores_all, levels, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            keep = box_ops.remove_small_boxes(boxes, self.min_size)
            keep = keep[scores[keep] >= self.score_thresh]
            boxes, scores, level = boxes[keep], scores[keep], level[keep]
            if self.nms_thresh is None:
                keep = torch.sort(scores, descending=True, stable=True).indices
            else:
                keep = box_ops.batched_nms(boxes, scores, level, self.nms_thresh)
            if post_top_n is not None:
                keep = keep[:post_top_n]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores
