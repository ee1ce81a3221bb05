"""GGN's OLN ranker: re-score pseudo-mask candidates with a detector trained on seen GT.

GGN (`pa_lib/oln_ranker.py`, used when `oln_ranker_path` is set) scores each grouped mask's
box with a class-agnostic detector trained on the annotated classes: the ROI head's score of
the box taken as a proposal (`roi`) and the RPN's score at the anchor that overlaps the box
most (`rpn`), and ranks the masks by

    pa_score / 2 + roi + roi * rpn

where `pa_score` is the grouping's own score (1 - rank value, our records' `score`).
Background segments, which the grouping alone ranks as high as objects, get low detector
scores; unseen objects keep high ones as long as the detector generalises to them.

Scores by architecture: Mask R-CNN / Faster R-CNN: softmax object probability of the box
classifier and sigmoid of the RPN objectness; OLN: sigmoid of the box-IoU head and of the
RPN centerness. A two-tower model is not a ranker (its first tower is already a ranker's
product).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import box_iou

from oln.data.coco import UnreadableImage, load_image
from oln.detector.oln_heads import OLNBoxPredictor
from oln.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class RankerScores:
    """Detector scores of boxes of one image (each (N,) float64)."""

    roi: np.ndarray
    rpn: np.ndarray


def combined_score(pa_score: np.ndarray, scores: RankerScores) -> np.ndarray:
    """GGN's ranking score: pa_score / 2 + roi + roi * rpn (higher is better)."""
    return pa_score / 2.0 + scores.roi + scores.roi * scores.rpn


def check_ranker(model: nn.Module, path: str | os.PathLike) -> None:
    """Raise ValueError naming `path` when `model` cannot score boxes (a two-tower model)."""
    arch = getattr(getattr(model, "detector_options", None), "arch", "")
    if arch == "two_tower":
        raise ValueError(f"{path}: a two_tower model cannot rank pseudo masks; give a mask_rcnn, faster_rcnn "
                         f"or oln run trained on seen GT (merge.ranker)")


@torch.inference_mode()
def score_boxes(model: nn.Module, image: Tensor, boxes: Tensor) -> RankerScores:
    """ROI-head and RPN scores of xyxy `boxes` (N, 4, image pixels) on a float (3, H, W) image in [0, 1].

    Args:
        model: detector in eval mode (`oln.detector.predict.load_detector`).
        image: on the model's device.
        boxes: float boxes on the same device.
    """
    if len(boxes) == 0:
        return RankerScores(np.zeros(0), np.zeros(0))
    images, targets = model.transform([image], [{"boxes": boxes.float()}])
    scaled = targets[0]["boxes"]
    features = model.backbone(images.tensors)
    levels = list(features.values())
    roi_features = model.roi_heads.box_head(model.roi_heads.box_roi_pool(features, [scaled], images.image_sizes))
    predictor = model.roi_heads.box_predictor
    if isinstance(predictor, OLNBoxPredictor):
        roi = torch.sigmoid(predictor(roi_features)[1].float())
    else:
        roi = torch.softmax(predictor(roi_features)[0].float(), dim=1)[:, 1:].sum(dim=1)
    logits = model.rpn.head(levels)[0]
    flat = torch.cat([level[0].permute(1, 2, 0).reshape(-1) for level in logits])
    anchors = model.rpn.anchor_generator(images, levels)[0]
    best_anchor = box_iou(scaled, anchors).argmax(dim=1)
    rpn = torch.sigmoid(flat[best_anchor].float())
    return RankerScores(roi.double().cpu().numpy(), rpn.double().cpu().numpy())


def rerank_records(records_by_image: dict[int, list[dict]], file_names: dict[int, str],
                   image_root: str | os.PathLike, model: nn.Module) -> int:
    """Set every record's `score` to GGN's ranker score, keeping the grouping's as `grouping_score`.

    Args:
        records_by_image: proposal records (xywh `bbox`, `score`) by image id; changed in place.
        file_names: image id -> file name under `image_root`.
        image_root: folder of the images.
        model: the ranker detector in eval mode.
    Returns:
        the number of images skipped as unreadable (their records are dropped).
    """
    device = next(model.parameters()).device
    skipped = 0
    bar = Progress("rank pseudo masks", total=len(records_by_image), unit="img")
    for n, image_id in enumerate(sorted(records_by_image)):
        records = records_by_image[image_id]
        try:
            pixels = load_image(os.path.join(image_root, file_names[image_id]))
        except UnreadableImage as err:
            log.warning("ranker: skipping unreadable image (its %d pseudo masks are dropped): %s", len(records), err)
            records_by_image[image_id] = []
            skipped += 1
            continue
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).to(device).float().div_(255.0)
        xywh = torch.tensor([r["bbox"] for r in records], dtype=torch.float32, device=device).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        scores = score_boxes(model, image, boxes)
        pa_scores = np.array([r["score"] for r in records], dtype=np.float64)
        for record, value, roi, rpn in zip(records, combined_score(pa_scores, scores), scores.roi, scores.rpn):
            record.update(grouping_score=record["score"], score=float(value), ranker_roi=float(roi),
                          ranker_rpn=float(rpn))
        bar.update(n + 1)
    bar.close()
    return skipped
