"""Building blocks shared by the detector architectures.

- `DetectorBase`: a torchvision `GeneralizedRCNN` whose proposal + ROI stage is
  one overridable method (`detect`), so OLN and the two-tower model only replace
  that part and keep torchvision's transform, backbone and post-processing.
- `PastingTransform`: `GeneralizedRCNNTransform` that pastes ROI masks back into
  the image in chunks and thresholds them, so 1000 detections per image do not
  need 1000 float full-size masks at once.
- `Float32RPNHead`, `Float32FastRCNNPredictor`: the stock heads with their last
  layers computed in float32 under autocast, so scores used for ranking and box
  deltas keep full precision with bf16 AMP (same parameter names as torchvision).
- `select_instances`, `annotated_only`: per-instance filtering of target dicts.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from oln.detector.paste import paste_binary_masks

# Per-instance entries of a target dict, filtered together.
INSTANCE_KEYS = ("boxes", "masks", "labels", "category_ids", "iscrowd", "pseudo", "area", "scores")


def no_autocast(device_type: str):
    """Context manager that switches autocast off for `device_type`."""
    return torch.autocast(device_type=device_type, enabled=False)


class Float32RPNHead(RPNHead):
    """torchvision's RPN head with the 1x1 objectness / box layers run in float32."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, bbox_reg = [], []
        for feature in x:
            t = self.conv(feature)
            with no_autocast(t.device.type):
                t = t.float()
                logits.append(self.cls_logits(t))
                bbox_reg.append(self.bbox_pred(t))
        return logits, bbox_reg


class Float32FastRCNNPredictor(FastRCNNPredictor):
    """torchvision's box predictor (class logits + deltas) run in float32."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with no_autocast(x.device.type):
            return super().forward(x.float())


def select_instances(target: dict, keep: Tensor) -> dict:
    """Copy of `target` keeping the instances where the bool vector `keep` is True."""
    out = dict(target)
    for key in INSTANCE_KEYS:
        value = out.get(key)
        if isinstance(value, Tensor) and value.dim() > 0 and len(value) == len(keep):
            out[key] = value[keep]
    return out


def annotated_only(target: dict) -> dict:
    """Target restricted to annotated instances (drops those with `pseudo` == 1)."""
    if "pseudo" not in target:
        return target
    return select_instances(target, target["pseudo"] == 0)


class PastingTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform with separate train/test sizes and binary eval masks.

    Args (beyond GeneralizedRCNNTransform's):
        train_min_sizes: shorter sides drawn at random in train mode (empty = `min_size`).
        mask_threshold: pasted-probability threshold for the returned bool masks.
    """

    def __init__(
        self,
        min_size: int,
        max_size: int,
        image_mean: list[float],
        image_std: list[float],
        train_min_sizes: tuple[int, ...] = (),
        mask_threshold: float = 0.5,
    ):
        super().__init__(min_size, max_size, image_mean, image_std)
        self.test_min_size = int(min_size)
        self.train_min_sizes = tuple(int(s) for s in train_min_sizes) or (self.test_min_size,)
        self.mask_threshold = mask_threshold
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        self.min_size = self.train_min_sizes if mode else (self.test_min_size,)
        return self

    def postprocess(
        self,
        result: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        if self.training:
            return result
        for pred, resized_size, original_size in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], resized_size, original_size)
            if "masks" in pred:
                pred["masks"] = paste_binary_masks(
                    pred["masks"], pred["boxes"], original_size, self.mask_threshold
                )
        return result


class DetectorBase(GeneralizedRCNN):
    """GeneralizedRCNN with the proposal + ROI stage in `detect` (override it).

    Train mode returns the loss dict, eval mode the per-image detections
    (`boxes` xyxy in input-image pixels, `scores`, `labels`, `masks` bool
    (N, 1, H, W) when the model has a mask head), like torchvision.
    """

    def detect(
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict] | None
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Proposals + ROI heads on resized images; returns (detections, losses)."""
        proposals, rpn_losses = self.rpn(images, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, images.image_sizes, targets)
        return detections, {**rpn_losses, **roi_losses}

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.transform(images, targets)
        features = self.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = {"0": features}
        detections, losses = self.detect(image_list, features, targets)
        if self.training:
            return losses
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
