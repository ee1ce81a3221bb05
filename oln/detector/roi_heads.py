"""torchvision's ROI heads with the box loss and mask targets of the recipe as options.

Sampling (IoU >= 0.5 positive, < 0.5 negative, no low-quality matches, GT added as
proposals, `batch_size_per_image` RoIs a quarter positive), post-processing and the
module layout are torchvision's; they equal mmdet v2's StandardRoIHead settings in GGN's
and OLN's configs. What differs is selectable:
    box_loss: "l1" (mmdet v2, GGN) | "smooth_l1" (torchvision, beta 1/9).
    mask_target_aligned / mask_target_binary: mmdet crops GT masks with aligned RoIAlign and
        binarises them at 0.5; torchvision uses aligned=False and soft targets.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference

from oln.detector.losses import fast_rcnn_loss, mask_rcnn_loss


class RecipeRoIHeads(RoIHeads):
    """RoIHeads with `box_loss`, `mask_target_aligned` and `mask_target_binary` (see the module)."""

    def __init__(
        self,
        *args,
        box_loss: str = "smooth_l1",
        mask_target_aligned: bool = False,
        mask_target_binary: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.box_loss = box_loss
        self.mask_target_aligned = mask_target_aligned
        self.mask_target_binary = mask_target_binary

    def forward(self, features, proposals, image_shapes, targets=None):
        result: list[dict[str, Tensor]] = []
        losses: dict[str, Tensor] = {}
        sampled = None
        if self.training:
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
            sampled = (proposals, matched_idxs, labels)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        if self.training:
            classifier, box = fast_rcnn_loss(class_logits, box_regression, labels, regression_targets, self.box_loss)
            losses = {"loss_classifier": classifier, "loss_box_reg": box}
        else:
            boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
            result = [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)]
        if self.has_mask():
            self.mask_forward(features, image_shapes, result, losses, sampled, targets)
        return result, losses

    def mask_forward(
        self,
        features: dict[str, Tensor],
        image_shapes: list[tuple[int, int]],
        result: list[dict[str, Tensor]],
        losses: dict[str, Tensor],
        sampled: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None,
        targets: list[dict] | None = None,
    ) -> None:
        """Mask branch: adds `loss_mask` (training, on the positive sampled RoIs) or
        `masks` to each result (test, on the detected boxes), in place.

        Args:
            sampled: (proposals, matched GT indices, labels) per image, in training.
        """
        if sampled is not None:
            proposals, matched_idxs, labels = sampled
            positives = [torch.where(lab > 0)[0] for lab in labels]
            mask_boxes = [p[i] for p, i in zip(proposals, positives)]
            mask_matched = [m[i] for m, i in zip(matched_idxs, positives)]
        else:
            mask_boxes = [r["boxes"] for r in result]
        mask_logits = self.mask_predictor(self.mask_head(self.mask_roi_pool(features, mask_boxes, image_shapes)))
        if sampled is not None:
            if targets is None:
                raise ValueError("targets are required in training mode")
            losses["loss_mask"] = mask_rcnn_loss(
                mask_logits,
                mask_boxes,
                [t["masks"] for t in targets],
                [t["labels"] for t in targets],
                mask_matched,
                aligned=self.mask_target_aligned,
                binary=self.mask_target_binary,
            )
        else:
            for probs, r in zip(maskrcnn_inference(mask_logits, [r["labels"] for r in result]), result):
                r["masks"] = probs
