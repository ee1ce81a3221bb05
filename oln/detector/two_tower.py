"""Two-tower Mask R-CNN: one detector that learns from annotations and from pseudo-GT separately.

Design:
- One ResNet-FPN backbone and one RPN are shared. Two ROI towers sit on the
  same proposals, each a complete class-agnostic torchvision ROI stage (box
  head + box predictor + mask head + mask predictor, same widths).
- Tower A is supervised by the annotated ground truth only: boxes whose target
  `pseudo` flag is 1 are removed from its targets, so proposals on pseudo-GT
  objects are sampled as background for tower A exactly as in a baseline
  detector trained without pseudo-GT.
- Tower B is supervised by annotated + pseudo ground truth (the GGN recipe).
- The RPN is trained on annotated + pseudo boxes: the proposals must cover the
  pseudo-GT objects for tower B to get positive samples there, and GGN trains
  its RPN on the same union. Tower A then sees those extra proposals as
  additional background samples.
- Loss = RPN losses + tower A ROI losses (suffix `_a`) + tower B ROI losses
  (suffix `_b`), all with weight 1.
- Test time: each tower post-processes the shared proposals on its own (score
  threshold, NMS, top `detections_per_img`, masks for the kept boxes). The
  output is tower A only, tower B only, or both pooled (`output_tower` =
  "a" | "b" | "pooled"): pooled detections are concatenated, de-duplicated by
  class-agnostic NMS (IoU 0.7 by default) and cut to the top
  `detections_per_img` by score; each kept detection carries `tower` (0 = A,
  1 = B) and its own tower's mask.
Images whose targets carry no `pseudo` entry are treated as fully annotated.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

from oln.detector.components import DetectorBase, annotated_only

TOWERS = ("a", "b", "pooled")


def pool_detections(
    per_tower: list[list[dict[str, Tensor]]], nms_thresh: float, max_detections: int
) -> list[dict[str, Tensor]]:
    """Merge per-image detections of several towers by NMS; adds `tower` (index into `per_tower`).

    Args:
        per_tower: for each tower, one detections dict per image (same keys across towers).
        nms_thresh: IoU above which the lower-scored of two detections is dropped.
        max_detections: detections kept per image after NMS.
    Returns:
        one detections dict per image.
    """
    pooled = []
    for image_dets in zip(*per_tower):
        merged: dict[str, Tensor] = {}
        for key in image_dets[0]:
            merged[key] = torch.cat([d[key] for d in image_dets])
        merged["tower"] = torch.cat(
            [
                torch.full((len(d["boxes"]),), t, dtype=torch.int64, device=d["boxes"].device)
                for t, d in enumerate(image_dets)
            ]
        )
        keep = box_ops.nms(merged["boxes"].float(), merged["scores"].float(), nms_thresh)[:max_detections]
        pooled.append({key: value[keep] for key, value in merged.items()})
    return pooled


class TwoTowerRCNN(DetectorBase):
    """Shared backbone + RPN, ROI tower A (annotated GT) and tower B (annotated + pseudo GT).

    Args:
        backbone, rpn, transform: as for torchvision's GeneralizedRCNN.
        tower_a, tower_b: torchvision RoIHeads (with mask branches).
        nms_thresh: IoU of the NMS that pools the towers' detections.
        detections_per_img: detections kept per image after pooling.
        output_tower: "a" | "b" | "pooled" (test-time output; can be changed later).
    """

    def __init__(
        self,
        backbone,
        rpn,
        tower_a,
        tower_b,
        transform,
        nms_thresh: float = 0.7,
        detections_per_img: int = 1000,
        output_tower: str = "pooled",
    ) -> None:
        super().__init__(backbone, rpn, nn.ModuleDict({"a": tower_a, "b": tower_b}), transform)
        self.pool_nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.output_tower = output_tower

    @property
    def output_tower(self) -> str:
        return self._output_tower

    @output_tower.setter
    def output_tower(self, tower: str) -> None:
        if tower not in TOWERS:
            raise ValueError(f"output_tower must be one of {TOWERS}, got {tower!r}")
        self._output_tower = tower

    def detect(self, images, features, targets):
        proposals, losses = self.rpn(images, features, targets)
        towers = self.roi_heads
        if self.training:
            _, losses_a = towers["a"](
                features, proposals, images.image_sizes, [annotated_only(t) for t in targets]
            )
            _, losses_b = towers["b"](features, proposals, images.image_sizes, targets)
            losses = dict(losses)
            losses.update({f"{k}_a": v for k, v in losses_a.items()})
            losses.update({f"{k}_b": v for k, v in losses_b.items()})
            return [], losses
        if self.output_tower in ("a", "b"):
            detections, _ = towers[self.output_tower](features, proposals, images.image_sizes)
            return detections, {}
        dets_a, _ = towers["a"](features, proposals, images.image_sizes)
        dets_b, _ = towers["b"](features, proposals, images.image_sizes)
        return pool_detections([dets_a, dets_b], self.pool_nms_thresh, self.detections_per_img), {}
