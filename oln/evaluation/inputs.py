"""Load COCO ground truth and detections into per-image arrays for recall evaluation.

Ground truth of each image is ordered as pycocotools orders it for a
class-agnostic evaluation (by category id, then file order), and detections
best score first (ties keep file order), so tie-breaking matches COCOeval.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from oln.io import read_json

IOU_TYPES = ("bbox", "segm")


@dataclass
class ImageInputs:
    """One image's evaluation inputs.

    `gt_geometry` / `dt_geometry` are xywh float64 arrays (bbox) or lists of
    RLE dicts (segm); detections are sorted best first and already cut.
    """

    gt_geometry: Any
    gt_area: np.ndarray  # (G,) float64, the annotations' `area`
    gt_crowd: np.ndarray  # (G,) bool
    gt_seen: np.ndarray  # (G,) bool
    dt_geometry: Any


@dataclass
class EvaluationInputs:
    """All images of a ground-truth file with their detections."""

    images: list[ImageInputs]
    num_detections: int
    num_seen_gt: int


def load_gt(gt: str | os.PathLike | dict) -> dict:
    """Return the COCO ground-truth dict (`gt` is a json path or an already loaded dict)."""
    data = gt if isinstance(gt, dict) else read_json(gt)
    if "images" not in data or "annotations" not in data:
        raise ValueError("ground truth must be a COCO instances dict with 'images' and 'annotations'")
    return data


def load_detections(detections: str | os.PathLike | list) -> list[dict]:
    """Return the detection records (`detections` is a COCO results json path or a list)."""
    records = detections if isinstance(detections, list) else read_json(detections)
    if not isinstance(records, list):
        raise ValueError("detections must be a COCO results list (one record per detection)")
    return records


def to_rle(segmentation: Any, height: int, width: int) -> dict:
    """Convert a polygon list, uncompressed RLE or compressed RLE to a compressed RLE."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, *segmentation["size"])
    return segmentation


def prepare_inputs(
    gt_data: dict,
    detections: list[dict],
    iou_type: str,
    seen_category_ids: set[int],
    max_det: int,
) -> EvaluationInputs:
    """Group ground truth and detections by image, in evaluation order.

    Args:
        gt_data: COCO ground-truth dict.
        detections: COCO results records; `category_id` is not used.
        iou_type: `bbox` or `segm`.
        seen_category_ids: categories whose ground truth is ignored for recall.
        max_det: detections kept per image (best first).

    Returns:
        EvaluationInputs with one ImageInputs per image of `gt_data`, in file order.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    images = gt_data["images"]
    image_ids = np.array([img["id"] for img in images], dtype=np.int64)
    sizes = {img["id"]: (img.get("height"), img.get("width")) for img in images}
    index_of = {int(i): n for n, i in enumerate(image_ids)}
    gt_by_image = _group_gt(gt_data, index_of, len(images))
    dt_by_image = _group_detections(detections, image_ids, index_of, iou_type, max_det)
    prepared, num_seen = [], 0
    for n, img in enumerate(images):
        height, width = sizes[img["id"]]
        anns = gt_by_image[n]
        seen = np.array([a["category_id"] in seen_category_ids for a in anns], dtype=bool)
        num_seen += int(seen.sum())
        gt_geometry, gt_area = _gt_geometry(anns, iou_type, height, width)
        dt_geometry = dt_by_image[n]
        if iou_type == "segm":  # compressed RLE passes through; polygons / uncompressed RLE are converted
            dt_geometry = [s if type(s) is dict and type(s.get("counts")) is not list
                           else to_rle(s, height, width) for s in dt_geometry]
        prepared.append(
            ImageInputs(
                gt_geometry=gt_geometry,
                gt_area=gt_area,
                gt_crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
                gt_seen=seen,
                dt_geometry=dt_geometry,
            )
        )
    return EvaluationInputs(images=prepared, num_detections=len(detections), num_seen_gt=num_seen)


def _group_gt(gt_data: dict, index_of: dict[int, int], num_images: int) -> list[list[dict]]:
    """Annotations per image, ordered by category id then file order (as COCOeval with useCats=0)."""
    listed = {c["id"] for c in gt_data.get("categories", [])}
    by_image: list[list[dict]] = [[] for _ in range(num_images)]
    dropped = 0
    for ann in gt_data["annotations"]:
        n = index_of.get(int(ann["image_id"]))
        if n is None:
            continue  # pycocotools only evaluates listed images
        if listed and ann["category_id"] not in listed:
            dropped += 1
            continue
        by_image[n].append(ann)
    if dropped:
        warnings.warn(f"{dropped} ground-truth annotations have a category not in 'categories'; ignored",
                      stacklevel=3)
    return [sorted(anns, key=lambda a: a["category_id"]) for anns in by_image]


def _gt_geometry(anns: list[dict], iou_type: str, height: int | None, width: int | None):
    """Boxes or RLEs of one image's annotations, and their areas (`area` field, else measured)."""
    rles = None
    if iou_type == "segm" or any("bbox" not in a or "area" not in a for a in anns):
        if anns and (height is None or width is None) and any(
            isinstance(a.get("segmentation"), list) for a in anns
        ):
            raise ValueError("polygon ground truth needs image 'height' and 'width'")
        rles = [to_rle(a["segmentation"], height, width) if "segmentation" in a else None for a in anns]
        if iou_type == "segm" and any(r is None for r in rles):
            raise ValueError("segm evaluation needs a 'segmentation' on every ground-truth annotation")
    if iou_type == "segm":
        geometry = rles
    else:
        boxes = [a["bbox"] if "bbox" in a else mask_utils.toBbox(rles[i]).tolist()
                 for i, a in enumerate(anns)]
        geometry = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    areas = []
    for i, a in enumerate(anns):
        if "area" in a:
            areas.append(a["area"])
        elif rles is not None and rles[i] is not None:
            areas.append(float(mask_utils.area(rles[i])))
        else:
            areas.append(float(a["bbox"][2] * a["bbox"][3]))
    return geometry, np.array(areas, dtype=np.float64)


def _group_detections(
    detections: list[dict],
    image_ids: np.ndarray,
    index_of: dict[int, int],
    iou_type: str,
    max_det: int,
) -> list:
    """Per image: the best `max_det` detections' boxes (array) or segmentations (list), best first."""
    num = len(detections)
    num_images = len(image_ids)
    if num == 0:
        return [np.zeros((0, 4)) if iou_type == "bbox" else [] for _ in range(num_images)]
    try:
        image_index = np.fromiter((index_of[int(d["image_id"])] for d in detections), np.int64, num)
    except KeyError as err:
        raise ValueError(f"a detection refers to image_id {err.args[0]}, "
                         "which is not in the ground truth") from err
    scores = np.fromiter((d["score"] for d in detections), np.float64, num)
    order = np.lexsort((-scores, image_index))  # stable: equal scores keep file order
    starts = np.searchsorted(image_index[order], np.arange(num_images + 1))
    keep = [order[starts[n] : min(starts[n + 1], starts[n] + max_det)] for n in range(num_images)]
    if iou_type == "segm":
        if any("segmentation" not in d for d in detections):
            raise ValueError("segm evaluation needs a 'segmentation' on every detection")
        return [[detections[i]["segmentation"] for i in idx] for idx in keep]
    if all("bbox" in d for d in detections):
        boxes = np.array([d["bbox"] for d in detections], dtype=np.float64).reshape(-1, 4)
    else:
        boxes = np.array([d["bbox"] if "bbox" in d else mask_utils.toBbox(d["segmentation"]).tolist()
                          for d in detections], dtype=np.float64).reshape(-1, 4)
    return [boxes[idx] for idx in keep]

