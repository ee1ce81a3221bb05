"""OLN: object proposals scored by localisation quality instead of a class.

Kim et al., "Learning Open-World Object Proposals without Learning to Classify"
(RA-L 2022). Written from the paper and the behaviour of its reference code, on
top of torchvision's RPN and ROI heads:

- RPN (`OLNRegionProposalNetwork`, one anchor per location): no foreground
  classifier. A centerness branch predicts sigmoid(logit) ~ centerness of the
  anchor centre inside its matched GT box,
  sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)), trained with L1 on
  anchors sampled by a loose matcher (IoU >= 0.3 positive, < 0.1 negative;
  up to 256 positives per image, negatives with target 0 fill the rest of the
  256 as in the reference sampler). Boxes are regressed as distances from the
  anchor centre to the four box sides (in anchor widths/heights) with an IoU
  loss (1 - IoU, weight 10) on the standard RPN samples (IoU >= 0.7 / < 0.3,
  256 per image, half positive). Both losses are divided by the number of
  anchors the box branch sampled, as OLN's. Both matchers follow mmdet's
  low-quality rule with `min_pos_iou` 0.3 and use only the anchors that
  `allowed_border` (OLN: 0) keeps (see `oln.detector.rpn`). The regression bias
  starts at 0.5 so the initial prediction is the anchor box itself (the
  reference starts at 0). Proposals: the top `pre_nms_top_n` per FPN level by
  centerness; OLN runs no NMS and keeps them all (`nms_thresh=None`,
  `post_nms_top_n=None`), in training and at test.
- ROI head (`OLNRoIHeads`): two shared FC layers, then box deltas (L1) and a
  box-IoU logit trained with L1 between sigmoid(logit) and the IoU of each
  positive proposal with its GT (torchvision sampling: IoU >= 0.5 positive,
  512 per image, a quarter positive, GT added as proposals). No classifier.
- Score of a detection: sqrt(rpn_centerness * roi_iou) (`combine_oln_scores`),
  then NMS and the top `detections_per_img`. OLN-Mask adds the mask head of
  `RecipeRoIHeads`, trained on the positive proposals.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import boxes as box_ops

from oln.detector.components import DetectorBase, no_autocast
from oln.detector.roi_heads import RecipeRoIHeads
from oln.detector.rpn import RecipeRPN, build_matcher, label_anchors, usable_anchors

RPN_BOX_LOSS_WEIGHT = 10.0  # IoU loss weight of the OLN-RPN box branch (reference config)


def anchor_side_distances(anchors: Tensor, boxes: Tensor) -> Tensor:
    """Distances (left, top, right, bottom) from each anchor centre to its box's sides, in pixels.

    Args:
        anchors: (N, 4) xyxy.
        boxes: (N, 4) xyxy, aligned with `anchors`.
    Returns:
        (N, 4); all positive iff the anchor centre lies strictly inside the box.
    """
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    return torch.stack([cx - boxes[:, 0], cy - boxes[:, 1], boxes[:, 2] - cx, boxes[:, 3] - cy], dim=1)


def centerness_targets(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """OLN-RPN centerness of each anchor centre inside its matched GT box.

    sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)); 0 when the centre is
    not strictly inside the box.

    Args:
        anchors: (N, 4) xyxy.
        gt_boxes: (N, 4) xyxy matched boxes.
    Returns:
        (N,) float in [0, 1].
    """
    d = anchor_side_distances(anchors.float(), gt_boxes.float())
    inside = d.min(dim=1).values > 0
    d = d.clamp(min=0)
    left_right = torch.minimum(d[:, 0], d[:, 2]) / torch.maximum(d[:, 0], d[:, 2]).clamp(min=1e-12)
    top_bottom = torch.minimum(d[:, 1], d[:, 3]) / torch.maximum(d[:, 1], d[:, 3]).clamp(min=1e-12)
    return torch.where(inside, torch.sqrt(left_right * top_bottom), torch.zeros_like(left_right))


def combine_oln_scores(rpn_scores: Tensor, iou_logits: Tensor) -> Tensor:
    """Final OLN score: geometric mean of the RPN centerness and the ROI box-IoU score."""
    return torch.sqrt(rpn_scores.float().clamp(min=0) * torch.sigmoid(iou_logits.float()))


def encode_side_distances(anchors: Tensor, boxes: Tensor) -> Tensor:
    """Box -> (l, t, r, b) distances from the anchor centre in units of anchor width/height."""
    d = anchor_side_distances(anchors, boxes)
    wh = (anchors[:, 2:] - anchors[:, :2]).clamp(min=1e-6)
    return d / torch.cat([wh, wh], dim=1)


def decode_side_distances(codes: Tensor, anchors: Tensor) -> Tensor:
    """Inverse of `encode_side_distances`: (N, 4) codes + anchors -> xyxy boxes."""
    wh = anchors[:, 2:] - anchors[:, :2]
    d = codes * torch.cat([wh, wh], dim=1)
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    return torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], dim=1)


def aligned_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of row-aligned xyxy boxes (N, 4) x (N, 4) -> (N,); inverted boxes count as empty."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


class OLNRPNHead(nn.Module):
    """3x3 conv + ReLU + L2-normalisation, then a centerness logit and 4 side distances per anchor."""

    def __init__(self, in_channels: int, num_anchors: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.centerness, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, 0.0)
        nn.init.constant_(self.bbox_pred.bias, 0.5)  # start from the anchor box

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, distances = [], []
        for feature in features:
            t = F.normalize(F.relu(self.conv(feature)), p=2, dim=1)
            with no_autocast(t.device.type):
                t = t.float()
                logits.append(self.centerness(t))
                distances.append(self.bbox_pred(t))
        return logits, distances


class OLNRegionProposalNetwork(RecipeRPN):
    """RPN scored by predicted centerness; see the module docstring.

    Extra args beyond RecipeRPN's:
        centerness_fg_iou_thresh / centerness_bg_iou_thresh: matcher of the centerness branch
            (its low-quality matches use the same `min_pos_iou` as the box branch, as in OLN).
        centerness_batch_size_per_image: anchors sampled per image for the centerness loss.
    `propose` returns the proposal scores too (the ROI head needs them); `forward`
    keeps torchvision's (boxes, losses) signature.
    """

    def __init__(
        self,
        *args,
        centerness_fg_iou_thresh: float = 0.3,
        centerness_bg_iou_thresh: float = 0.1,
        centerness_batch_size_per_image: int = 256,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.centerness_matcher = build_matcher(
            centerness_fg_iou_thresh, centerness_bg_iou_thresh, self.min_pos_iou
        )
        self.centerness_sampler = det_utils.BalancedPositiveNegativeSampler(
            centerness_batch_size_per_image, 1.0
        )

    def propose(
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict] | None = None
    ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        """Returns (proposal boxes per image, their centerness scores, losses)."""
        feature_list = list(features.values())
        logits, distances = self.head(feature_list)
        anchors = self.anchor_generator(images, feature_list)
        num_images = len(anchors)
        num_anchors_per_level = [int(level[0].numel()) for level in logits]
        logits, distances = concat_box_prediction_layers(logits, distances)
        all_anchors = torch.cat(anchors, dim=0)
        proposals = decode_side_distances(distances.detach(), all_anchors).view(num_images, -1, 4)
        boxes, scores = self.filter_proposals(proposals, logits, images.image_sizes, num_anchors_per_level)
        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            losses = self.oln_losses(logits.flatten(), distances, anchors, targets, images.image_sizes)
        return boxes, scores, losses

    def forward(self, images, features, targets=None):
        boxes, _, losses = self.propose(images, features, targets)
        return boxes, losses

    def oln_losses(
        self,
        logits: Tensor,
        distances: Tensor,
        anchors: list[Tensor],
        targets: list[dict],
        image_sizes: list[tuple[int, int]],
    ) -> dict[str, Tensor]:
        """Centerness L1 loss and box IoU loss over the images' concatenated anchors.

        Both are divided by the number of anchors the box branch sampled (OLN's avg_factor).
        """
        all_anchors = torch.cat(anchors, dim=0)
        box_labels, box_gt, c_labels, c_gt = [], [], [], []
        for anchors_i, target, size in zip(anchors, targets, image_sizes):
            gt = target["boxes"].to(anchors_i.dtype)
            usable = usable_anchors(anchors_i, size, self.allowed_border, self.size_divisible)
            labels, matched = label_anchors(anchors_i, gt, self.proposal_matcher, usable)
            box_labels.append(labels)
            box_gt.append(matched)
            labels, matched = label_anchors(anchors_i, gt, self.centerness_matcher, usable)
            c_labels.append(labels)
            c_gt.append(matched)

        # box branch: IoU loss on positives whose centre lies inside their GT
        pos, neg = self.fg_bg_sampler(box_labels)
        pos = torch.where(torch.cat(pos))[0]
        num_sampled = max(1, pos.numel() + int(torch.cat(neg).sum()))
        gt_pos = torch.cat(box_gt)[pos]
        valid = anchor_side_distances(all_anchors[pos], gt_pos).min(dim=1).values > 0
        pred_boxes = decode_side_distances(distances[pos][valid].float(), all_anchors[pos][valid])
        box_loss = (1.0 - aligned_iou(pred_boxes, gt_pos[valid])).sum() / num_sampled

        # centerness branch: L1 on sampled anchors (positives: centerness, negatives: 0)
        c_pos, c_neg = self.centerness_sampler(c_labels)
        c_pos = torch.where(torch.cat(c_pos))[0]
        c_neg = torch.where(torch.cat(c_neg))[0]
        target_pos = centerness_targets(all_anchors[c_pos], torch.cat(c_gt)[c_pos])
        sampled = torch.cat([c_pos, c_neg])
        target = torch.cat([target_pos, target_pos.new_zeros(len(c_neg))])
        pred = torch.sigmoid(logits[sampled].float())
        centerness_loss = (pred - target).abs().sum() / num_sampled
        return {"loss_rpn_centerness": centerness_loss, "loss_rpn_box_iou": RPN_BOX_LOSS_WEIGHT * box_loss}


class OLNBoxPredictor(nn.Module):
    """Class-agnostic box deltas (4) and a box-IoU logit (1), computed in float32."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.bbox_pred = nn.Linear(in_channels, 4)
        self.iou_score = nn.Linear(in_channels, 1)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.normal_(self.iou_score.weight, std=0.01)
        nn.init.constant_(self.bbox_pred.bias, 0.0)
        nn.init.constant_(self.iou_score.bias, 0.0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with no_autocast(x.device.type):
            x = x.flatten(1).float()
            return self.bbox_pred(x), self.iou_score(x).squeeze(1)


class OLNRoIHeads(RecipeRoIHeads):
    """ROI heads with OLN's box-IoU scoring in place of classification.

    The box losses are OLN's L1 whatever `box_loss` says; the mask branch (OLN-Mask) is
    `RecipeRoIHeads.mask_forward`.
    """

    def forward(self, features, proposals, image_shapes, targets=None, proposal_scores=None):
        result: list[dict[str, Tensor]] = []
        losses: dict[str, Tensor] = {}
        sampled = None
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
                proposals, targets
            )
            sampled = (proposals, matched_idxs, labels)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        box_deltas, iou_logits = self.box_predictor(box_features)

        if self.training:
            losses = self.box_losses(
                proposals, matched_idxs, labels, regression_targets, targets, box_deltas, iou_logits
            )
        else:
            if proposal_scores is None:
                raise ValueError("OLN ROI heads need the RPN proposal scores at test time")
            result = self.postprocess_oln(box_deltas, iou_logits, proposals, proposal_scores, image_shapes)
        if self.has_mask():
            self.mask_forward(features, image_shapes, result, losses, sampled, targets)
        return result, losses

    def box_losses(
        self, proposals, matched_idxs, labels, regression_targets, targets, box_deltas, iou_logits
    ):
        """L1 on box deltas and on sigmoid(IoU logit) vs proposal-GT IoU, positives only / all samples."""
        labels = torch.cat(labels)
        positive = torch.where(labels > 0)[0]
        num_samples = max(1, labels.numel())
        gt_matched = []
        for props, idxs, target in zip(proposals, matched_idxs, targets):
            gt = target["boxes"].to(props.dtype)
            gt_matched.append(gt[idxs] if gt.numel() else torch.zeros_like(props))
        iou_target = aligned_iou(torch.cat(proposals)[positive], torch.cat(gt_matched)[positive])
        deltas = box_deltas[positive]
        box_loss = (deltas - torch.cat(regression_targets)[positive].float()).abs().sum() / num_samples
        iou_loss = (torch.sigmoid(iou_logits[positive]) - iou_target).abs().sum() / num_samples
        return {"loss_box_reg": box_loss, "loss_box_iou": iou_loss}

    def postprocess_oln(self, box_deltas, iou_logits, proposals, proposal_scores, image_shapes):
        """Decode, score by the geometric mean, drop tiny boxes, NMS, keep the top detections."""
        counts = [len(p) for p in proposals]
        boxes_all = self.box_coder.decode(box_deltas, proposals).reshape(-1, 4)
        results = []
        for boxes, iou, rpn_score, shape in zip(
            boxes_all.split(counts), iou_logits.split(counts), proposal_scores, image_shapes
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            scores = combine_oln_scores(rpn_score, iou)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores = boxes[keep], scores[keep]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores = boxes[keep], scores[keep]
            keep = box_ops.nms(boxes, scores, self.nms_thresh)[: self.detections_per_img]
            results.append(
                {
                    "boxes": boxes[keep],
                    "scores": scores[keep],
                    "labels": torch.ones(len(keep), dtype=torch.int64, device=boxes.device),
                }
            )
        return results


class OLNRCNN(DetectorBase):
    """OLN-Box / OLN-Mask: `OLNRegionProposalNetwork` + `OLNRoIHeads` on a shared FPN backbone."""

    def detect(self, images, features, targets):
        proposals, proposal_scores, rpn_losses = self.rpn.propose(images, features, targets)
        detections, roi_losses = self.roi_heads(
            features, proposals, images.image_sizes, targets, proposal_scores
        )
        return detections, {**rpn_losses, **roi_losses}
