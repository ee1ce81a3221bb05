"""Load COCO ground truth and detections into per-image arrays for recall evaluation.

Ground truth of each image is ordered as pycocotools orders it for a
class-agnostic evaluation (by category id, then file order), and detections
best score first (ties keep file order), so tie-breaking matches COCOeval.

Broken inputs are refused with a `ValueError` that names the file and the record
(`run.json: detections[12] (image_id 3): score is not a finite number (nan)`): a
detection without a finite `score`, a box that is not 4 finite numbers or has a
negative width or height, an RLE mask whose size differs from its image's, ground
truth on an image id not in `images`. What can be dropped without changing the
numbers on the ground truth's images (detections on other image ids, annotations of
categories not in `categories`) is dropped with a counted warning, logged and
returned in `EvaluationInputs.warnings`.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from oln.io import read_json

IOU_TYPES = ("bbox", "segm")
log = logging.getLogger(__name__)


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
    num_detections: int  # evaluated (after dropping those on unknown image ids)
    num_seen_gt: int
    warnings: list[str] = field(default_factory=list)


def source_prefix(source: Any) -> str:
    """`"<path>: "` for an input given as a file path, "" for an in-memory one (for messages)."""
    return f"{source}: " if isinstance(source, str | os.PathLike) else ""


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
    gt_prefix: str = "",
    detections_prefix: str = "",
) -> EvaluationInputs:
    """Check inputs, then group ground truth and detections by image, in evaluation order.

    Args:
        gt_data: COCO ground-truth dict.
        detections: COCO results records; `category_id` is not used.
        iou_type: `bbox` or `segm`.
        seen_category_ids: categories whose ground truth is ignored for recall.
        max_det: detections kept per image (best first).
        gt_prefix, detections_prefix: start of error messages, naming the files (`source_prefix`).

    Returns:
        EvaluationInputs with one ImageInputs per image of `gt_data`, in file order.

    Raises:
        ValueError: naming the file and record of a broken detection or annotation.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    images = gt_data["images"]
    image_ids = np.array([img["id"] for img in images], dtype=np.int64)
    sizes = [(img.get("height"), img.get("width")) for img in images]
    index_of = {int(i): n for n, i in enumerate(image_ids)}
    gt_by_image, warnings = _group_gt(gt_data, index_of, len(images), gt_prefix)
    checked = check_detections(detections, index_of, sizes, iou_type, detections_prefix)
    warnings += checked.warnings
    for message in warnings:
        log.warning(message)
    dt_by_image = _group_detections(checked, len(images), iou_type, max_det)
    prepared, num_seen = [], 0
    for n, anns in enumerate(gt_by_image):
        height, width = sizes[n]
        seen = np.array([a["category_id"] in seen_category_ids for a in anns], dtype=bool)
        num_seen += int(seen.sum())
        gt_geometry, gt_area = _gt_geometry(anns, iou_type, height, width, gt_prefix)
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
    return EvaluationInputs(images=prepared, num_detections=len(checked.records), num_seen_gt=num_seen,
                            warnings=warnings)


def _group_gt(gt_data: dict, index_of: dict[int, int], num_images: int,
              prefix: str = "") -> tuple[list[list[dict]], list[str]]:
    """Annotations per image, ordered by category id then file order (as COCOeval with useCats=0),
    and warnings about dropped annotations."""
    listed = {c["id"] for c in gt_data.get("categories", [])}
    by_image: list[list[dict]] = [[] for _ in range(num_images)]
    dropped = 0
    for number, ann in enumerate(gt_data["annotations"]):
        n = index_of.get(int(ann["image_id"]))
        if n is None:
            count = sum(int(a["image_id"]) not in index_of for a in gt_data["annotations"])
            raise ValueError(f"{prefix}annotation id {ann.get('id', f'#{number}')} refers to image_id "
                             f"{ann['image_id']}, which is not in 'images' ({count} such annotations)")
        if listed and ann["category_id"] not in listed:
            dropped += 1
            continue
        by_image[n].append(ann)
    warnings = []
    if dropped:
        warnings.append(f"{prefix}{dropped} ground-truth annotations have a category not in 'categories'; "
                        "ignored")
    return [sorted(anns, key=lambda a: a["category_id"]) for anns in by_image], warnings


def _check_gt_mask_size(ann: dict, height: int | None, width: int | None, prefix: str) -> None:
    segmentation = ann.get("segmentation")
    if height is None or width is None or not isinstance(segmentation, dict) or "size" not in segmentation:
        return
    if [int(v) for v in segmentation["size"]] != [int(height), int(width)]:
        raise ValueError(f"{prefix}annotation id {ann.get('id')} (image_id {ann.get('image_id')}): mask size "
                         f"{list(segmentation['size'])} differs from the image's [{height}, {width}]")


def _gt_geometry(anns: list[dict], iou_type: str, height: int | None, width: int | None, prefix: str = ""):
    """Boxes or RLEs of one image's annotations, and their areas (`area` field, else measured)."""
    rles = None
    if iou_type == "segm" or any("bbox" not in a or "area" not in a for a in anns):
        if anns and (height is None or width is None) and any(
            isinstance(a.get("segmentation"), list) for a in anns
        ):
            raise ValueError(f"{prefix}polygon ground truth needs image 'height' and 'width'")
        for ann in anns:
            _check_gt_mask_size(ann, height, width, prefix)
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


@dataclass
class CheckedDetections:
    """Detections that passed `check_detections`, in file order, with their arrays."""

    records: list[dict]
    image_index: np.ndarray  # (N,) index of each record's image in the ground truth's `images`
    scores: np.ndarray  # (N,) float64, finite
    boxes: np.ndarray | None  # (N, 4) xywh, finite, w and h >= 0 (bbox evaluation only)
    warnings: list[str]


def check_detections(
    detections: list[dict],
    index_of: dict[int, int],
    sizes: list[tuple[int | None, int | None]],
    iou_type: str,
    prefix: str = "",
) -> CheckedDetections:
    """Refuse broken detections and drop those on image ids the ground truth does not list.

    Args:
        detections: COCO results records.
        index_of: ground-truth image id -> its index in `images`.
        sizes: (height, width) of each ground-truth image (None where unknown).
        iou_type: `bbox` (boxes are checked) or `segm` (masks are checked).
        prefix: start of every message (the file, see `source_prefix`).

    Raises:
        ValueError: `<file>: detections[i] (image_id n): <what is wrong>` for the first broken record.
    """
    image_index = _image_indices(detections, index_of, prefix)
    known = np.flatnonzero(image_index >= 0)
    warnings = []
    if len(known) < len(detections):
        unknown = sorted({int(detections[i]["image_id"]) for i in np.flatnonzero(image_index < 0)})
        warnings.append(f"{prefix}{len(detections) - len(known)} detections on {len(unknown)} image ids not in "
                        f"the ground truth (e.g. {', '.join(map(str, unknown[:5]))}) were dropped")
        detections, image_index = [detections[i] for i in known], image_index[known]

    def describe(k: int) -> str:
        return f"{prefix}detections[{int(known[k])}] (image_id {detections[k].get('image_id')})"

    scores = _scores(detections, describe)
    boxes = None
    if iou_type == "segm":
        for k in range(len(detections)):
            _check_mask(detections[k].get("segmentation"), sizes[image_index[k]], lambda k=k: describe(k))
    else:
        boxes = _boxes(detections, image_index, sizes, describe)
    return CheckedDetections(detections, image_index, scores, boxes, warnings)


def _image_indices(detections: list[dict], index_of: dict[int, int], prefix: str) -> np.ndarray:
    """Index in the ground truth's `images` of each detection's image (-1: not listed)."""
    try:
        return np.fromiter((index_of.get(int(d["image_id"]), -1) for d in detections), np.int64, len(detections))
    except (KeyError, TypeError, ValueError):
        for i, d in enumerate(detections):
            if not isinstance(d, dict) or "image_id" not in d:
                raise ValueError(f"{prefix}detections[{i}]: no 'image_id'") from None
            try:
                int(d["image_id"])
            except (TypeError, ValueError):
                raise ValueError(f"{prefix}detections[{i}]: image_id {d['image_id']!r} is not an integer") from None
        raise


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _scores(records: list[dict], describe) -> np.ndarray:
    """(N,) scores; the first record without a finite number as `score` is an error."""
    try:
        scores = np.fromiter((r["score"] for r in records), np.float64, len(records))
        bad = np.flatnonzero(~np.isfinite(scores))
        if not bad.size:
            return scores
        k = int(bad[0])
    except (KeyError, TypeError, ValueError):
        k = next(k for k, r in enumerate(records) if not _is_finite_number(r.get("score")))
    if "score" not in records[k]:
        raise ValueError(f"{describe(k)}: no 'score'")
    raise ValueError(f"{describe(k)}: score is not a finite number ({records[k]['score']!r})")


def _check_mask(segmentation: Any, size: tuple[int | None, int | None], describe) -> None:
    """A detection's mask must exist and, as RLE, have its image's size."""
    if segmentation is None:
        raise ValueError(f"{describe()}: no 'segmentation'")
    if isinstance(segmentation, list):
        return  # polygons are rasterised at the image's size
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise ValueError(f"{describe()}: segmentation is neither an RLE with 'size' and 'counts' nor polygons")
    height, width = size
    mask_size = list(segmentation["size"])
    if height is not None and width is not None and mask_size != [height, width]:
        raise ValueError(f"{describe()}: mask size {mask_size} differs from the image's [{height}, {width}]")


def _boxes(records: list[dict], image_index: np.ndarray, sizes: list, describe) -> np.ndarray:
    """(N, 4) xywh boxes (from the mask where a record has no `bbox`); broken ones are errors."""
    rows = []
    for k, r in enumerate(records):
        if "bbox" in r:
            rows.append(r["bbox"])
            continue
        size = sizes[image_index[k]]
        _check_mask(r.get("segmentation"), size, lambda k=k: describe(k) + " (no 'bbox')")
        rows.append(mask_utils.toBbox(to_rle(r["segmentation"], *size)).tolist())
    if not rows:
        return np.zeros((0, 4))
    try:
        boxes = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
    except (TypeError, ValueError):
        boxes = None
    if boxes is None or boxes.shape[1:] != (4,) or not np.isfinite(boxes).all():
        k = next(k for k, row in enumerate(rows) if not _is_box(row))
        raise ValueError(f"{describe(k)}: bbox {rows[k]!r} is not 4 finite numbers")
    negative = np.flatnonzero((boxes[:, 2] < 0) | (boxes[:, 3] < 0))
    if negative.size:
        k = int(negative[0])
        raise ValueError(f"{describe(k)}: bbox {rows[k]!r} has a negative width or height")
    return boxes


def _is_box(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 4 and all(_is_finite_number(v) for v in value)


def _group_detections(checked: CheckedDetections, num_images: int, iou_type: str, max_det: int) -> list:
    """Per image: the best `max_det` detections' boxes (array) or segmentations (list), best first."""
    if not checked.records:
        return [np.zeros((0, 4)) if iou_type == "bbox" else [] for _ in range(num_images)]
    order = np.lexsort((-checked.scores, checked.image_index))  # stable: equal scores keep file order
    starts = np.searchsorted(checked.image_index[order], np.arange(num_images + 1))
    keep = [order[starts[n] : min(starts[n + 1], starts[n] + max_det)] for n in range(num_images)]
    if iou_type == "segm":
        return [[checked.records[i]["segmentation"] for i in idx] for idx in keep]
    return [checked.boxes[idx] for idx in keep]
