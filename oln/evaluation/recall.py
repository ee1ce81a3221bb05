"""Open-world average recall (AR@k, AUC) for boxes and masks.

Protocol (class-agnostic, cross-category, as OLN/GGN evaluate):

- All categories are one class; detections' `category_id` is not used.
- Ground truth (GT) of seen categories is ignored for recall, like crowd GT and
  GT outside the area range.
- Per image, detections are sorted by score (equal scores keep file order) and
  cut to the largest k. Then COCOeval's greedy matching runs at the lowest IoU
  threshold (0.5); every detection whose match there is a seen-category GT is
  removed from the list, so seen objects never use up the budget k. As in
  COCOeval, a detection prefers an unseen (not ignored) GT over any ignored GT,
  and a non-crowd GT matches one detection only, so a second detection on the
  same seen object is not removed and does count towards k.
- The remaining detections are matched again (COCOeval rules, seen GT
  ignored) at every threshold of 0.50:0.05:0.95; recall at a threshold is the
  number of found unseen, non-crowd, in-range GT over all such GT, pooled over
  all images of the GT file; AR@k is the mean over thresholds.
- With no seen categories this is exactly pycocotools' COCOeval with
  useCats=0 (same maxDets and area ranges): the plain class-agnostic protocol.

Where we deliberately differ from OLN's `COCOEvalXclassWrapper` (also used by GGN):

- OLN does not re-match: removed detections still take part in matching at
  thresholds above 0.5, where they can take an unseen GT whose match is then
  thrown away. We re-match the remaining list, so a removed detection never
  hides an unseen object. `seen_removal="oln"` reproduces OLN's single pass.
- OLN's summary labels stats by position and mislabels them (its "AR@50" is
  AR@30, its "AR@100" is AR@50, ..., its "AR@100_s" is AR@1500); our keys are
  computed by k and named for it.
- Like OLN, the removal is decided per area range (out-of-range GT are
  ignored there too), so AR_s/m/l use their own removal.

Inherited COCOeval behaviour: an annotation's own `ignore` field is replaced
by its `iscrowd` flag (so it has no effect); the GT `area` field (not the
mask) decides the area range. We differ from pycocotools only in that a GT
with annotation id 0 can be found (pycocotools uses 0 for "no match"), a
missing `area`/`iscrowd` falls back to the measured area / 0 instead of failing,
and detections are never dropped for their category.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from oln.evaluation.inputs import ImageInputs, load_detections, load_gt, prepare_inputs, source_prefix
from oln.evaluation.matching import compute_ious, found_counts, match_ranks
from oln.io import write_json
from oln.progress import Progress

log = logging.getLogger(__name__)

DEFAULT_MAX_DETS = (1, 10, 20, 30, 50, 100, 300, 500, 1000, 1500)
AUC_KS = (1, 10, 30, 50, 100, 300, 500, 1000)
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2),
               "large": (96.0**2, 1e10)}
SEEN_REMOVAL_RULES = ("rematch", "oln")
_PARALLEL_MIN_IMAGES = 32


@dataclass
class EvaluateOptions:
    """Options of the evaluate stage.

    Attributes:
        iou_types: which of `bbox`, `segm` to evaluate.
        max_dets: budgets k reported as `AR@k`.
        num_workers: processes over images (0 = min(4, cpu count); 1 = no pool).
        seen_removal: `rematch` (re-match after removing seen detections) or `oln` (OLN's single pass).
    """

    iou_types: list[str] = field(default_factory=lambda: ["bbox", "segm"])
    max_dets: list[int] = field(default_factory=lambda: list(DEFAULT_MAX_DETS))
    num_workers: int = 0
    seen_removal: str = "oln"


def default_iou_thresholds() -> np.ndarray:
    """0.50:0.05:0.95, built as pycocotools builds it."""
    return np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)


def ar_auc(ar_by_k: dict[int, float]) -> float:
    """OLN's AUC: trapezoidal area under AR@k against log(k)/log(1000).

    Uses k = 1, 10, 30, 50, 100, 300, 500, 1000 with the k=1 point taken as 0,
    so the curve starts at (0, 0). The result has the unit of the inputs.

    Args:
        ar_by_k: AR value per k; needs every k of 10, 30, 50, 100, 300, 500, 1000.

    Returns:
        The area (0..1 for recall fractions, 0..100 for percent).
    """
    missing = [k for k in AUC_KS[1:] if k not in ar_by_k]
    if missing:
        raise ValueError(f"AUC needs AR@k for k = {missing}")
    xs = [math.log(k) / math.log(1000) for k in AUC_KS]
    ys = [0.0] + [float(ar_by_k[k]) for k in AUC_KS[1:]]
    return float(sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1)))


def evaluate_recall(
    gt: str | os.PathLike | dict,
    detections: str | os.PathLike | list,
    iou_type: str,
    seen_category_ids: Iterable[int] | None = None,
    max_dets: Sequence[int] = DEFAULT_MAX_DETS,
    iou_thrs: Sequence[float] | None = None,
    num_workers: int = 0,
    seen_removal: str = "rematch",
    gt_name: str | os.PathLike | None = None,
    detections_name: str | os.PathLike | None = None,
) -> dict:
    """Class-agnostic average recall of `detections` on the unseen objects of `gt`.

    Args:
        gt: COCO instances json path or dict; every listed image is evaluated.
        detections: COCO results json path or list (bbox xywh and/or RLE `segmentation`).
        iou_type: `bbox` or `segm`.
        seen_category_ids: categories ignored for recall whose detections do not use the
            budget; None or empty gives the plain class-agnostic COCOeval numbers.
        max_dets: budgets k reported as `AR@k` (AUC's k are always computed).
        iou_thrs: IoU thresholds averaged in AR (default 0.50:0.05:0.95).
        num_workers: processes over images; 0 = min(4, cpu count), 1 = in-process.
        seen_removal: `rematch` (default) or `oln` (see module docstring).
        gt_name, detections_name: files named in errors and warnings when `gt` / `detections`
            were loaded already (default: the paths given, nothing for in-memory inputs).

    Returns:
        Dict with `AR@{k}` per k, `AR_s@100`, `AR_m@100`, `AR_l@100` (None when the
        range has no evaluable GT), `AR@100_iou50`, `AR@100_iou75`, `AUC` (fractions),
        and `iou_type`, `protocol`, `seen_category_ids`, `num_images`, `num_gt`
        (evaluable GT, all areas), `num_seen_gt`, `num_detections` (evaluated),
        `max_detections_per_image` (the most any image has, up to the largest k), `max_dets`,
        `iou_thrs`, and `warnings` (what was dropped, e.g. detections on image ids not in `gt`).

    Raises:
        ValueError: naming the file and record of a broken detection or annotation (a
            missing or non-finite score, a negative-size box, a mask of another size than
            its image, ground truth on an image not in `images`; see `oln.evaluation.inputs`).
    """
    seen, max_dets, thresholds = _check_arguments(seen_category_ids, max_dets, iou_thrs, seen_removal)
    lane_thresholds, report_index = _lane_thresholds(thresholds)
    ks = np.array(sorted(set(max_dets) | set(AUC_KS) | {100}), dtype=np.int64)
    inputs = prepare_inputs(load_gt(gt), load_detections(detections), iou_type, set(seen), int(ks.max()),
                            gt_prefix=source_prefix(gt if gt_name is None else gt_name),
                            detections_prefix=source_prefix(detections if detections_name is None
                                                            else detections_name))
    task = _Task(inputs.images, lane_thresholds, float(thresholds.min()), ks, seen_removal == "rematch")
    found, num_gt = _run(task, _resolve_workers(num_workers), Progress(f"evaluate {iou_type}", len(inputs.images),
                                                                       unit="img"))
    if num_gt[0] == 0:
        raise ValueError(
            f"no evaluable ground truth: {sum(len(i.gt_area) for i in inputs.images)} annotations in "
            f"{len(inputs.images)} images are all seen-category ({len(seen)} seen ids) or crowd"
        )
    result: dict = {"iou_type": iou_type, "protocol": _protocol_name(seen, seen_removal), "seen_category_ids": seen}
    result.update(_recall_metrics(found, num_gt, ks, max_dets, report_index))
    result.update(num_images=len(inputs.images), num_gt=int(num_gt[0]), num_seen_gt=inputs.num_seen_gt,
                  num_detections=inputs.num_detections,
                  max_detections_per_image=max((len(image.dt_geometry) for image in inputs.images), default=0),
                  max_dets=max_dets,
                  iou_thrs=[float(t) for t in thresholds], warnings=inputs.warnings)
    return result


def _check_arguments(seen_category_ids: Iterable[int] | None, max_dets: Sequence[int],
                     iou_thrs: Sequence[float] | None, seen_removal: str) -> tuple[list[int], list[int], np.ndarray]:
    """Validated (sorted seen ids, sorted unique budgets k, IoU thresholds) of `evaluate_recall`."""
    if seen_removal not in SEEN_REMOVAL_RULES:
        raise ValueError(f"seen_removal must be one of {SEEN_REMOVAL_RULES}, got {seen_removal!r}")
    seen = sorted({int(c) for c in seen_category_ids or ()})
    max_dets = sorted({int(k) for k in max_dets})
    if not max_dets or max_dets[0] < 1:
        raise ValueError("max_dets must be positive integers")
    thresholds = default_iou_thresholds() if iou_thrs is None else np.asarray(iou_thrs, dtype=np.float64)
    return seen, max_dets, thresholds


def _recall_metrics(found: np.ndarray, num_gt: np.ndarray, ks: np.ndarray, max_dets: list[int],
                    report_index: dict[str, object]) -> dict:
    """AR@k, AR_s/m/l@100, AR@100_iou50/75 and AUC from summed found-GT counts.

    Args:
        found: (A, T, K) GT found within each budget, per area range and threshold lane.
        num_gt: (A,) evaluable GT per area range.
        ks: (K,) budgets of `found`.
        max_dets: budgets reported as `AR@k`.
        report_index: lanes of the requested thresholds (`all`), of 0.5 and of 0.75.
    """
    recall = found / np.maximum(num_gt, 1)[:, None, None]  # (A, T, K)
    k_index = {int(k): n for n, k in enumerate(ks)}
    reported = recall[:, report_index["all"], :]

    def mean_ar(area: int, k: int) -> float | None:
        return float(np.mean(reported[area, :, k_index[k]])) if num_gt[area] > 0 else None

    metrics: dict = {f"AR@{k}": mean_ar(0, k) for k in max_dets}
    for name, area in (("s", 1), ("m", 2), ("l", 3)):
        metrics[f"AR_{name}@100"] = mean_ar(area, 100)
    metrics["AR@100_iou50"] = float(recall[0, report_index["iou50"], k_index[100]])
    metrics["AR@100_iou75"] = float(recall[0, report_index["iou75"], k_index[100]])
    metrics["AUC"] = ar_auc({k: mean_ar(0, k) for k in AUC_KS[1:]})
    return metrics


def evaluate_to_file(
    gt_json: str | os.PathLike,
    detections_json: str | os.PathLike,
    out_json: str | os.PathLike,
    seen_category_ids: Iterable[int] | None,
    iou_types: Sequence[str] = ("bbox", "segm"),
    options: EvaluateOptions | None = None,
) -> dict:
    """Evaluate one detections file and write `{iou_type: metrics}` to `out_json` atomically.

    `segm` is skipped with a logged warning when no detection has a `segmentation`.
    `options` supplies max_dets, num_workers and seen_removal (its iou_types is not used).
    Errors and warnings name the files (see `evaluate_recall`).

    Returns:
        The dict written.
    """
    options = options or EvaluateOptions()
    gt_data = load_gt(gt_json)
    records = load_detections(detections_json)
    results = {}
    for iou_type in iou_types:
        if iou_type == "segm" and records and not any("segmentation" in r for r in records):
            log.warning("%s: detections have no 'segmentation'; segm evaluation skipped", detections_json)
            continue
        results[iou_type] = evaluate_recall(gt_data, records, iou_type, seen_category_ids,
                                            max_dets=options.max_dets, num_workers=options.num_workers,
                                            seen_removal=options.seen_removal, gt_name=gt_json,
                                            detections_name=detections_json)
    write_json(out_json, results, indent=2)
    return results


def _protocol_name(seen: list[int], seen_removal: str) -> str:
    if not seen:
        return "class_agnostic"
    return "cross_category_seen_removed" + ("" if seen_removal == "rematch" else "_oln")


def _lane_thresholds(thresholds: np.ndarray) -> tuple[np.ndarray, dict[str, object]]:
    """Thresholds to match at: the requested ones, plus 0.5 and 0.75 if absent (for AR@100_iouXX)."""
    lanes = list(thresholds)
    index: dict[str, object] = {"all": np.arange(len(thresholds))}
    for name, value in (("iou50", 0.5), ("iou75", 0.75)):
        close = np.flatnonzero(np.isclose(thresholds, value))
        if close.size:
            index[name] = int(close[0])
        else:
            index[name] = len(lanes)
            lanes.append(value)
    return np.asarray(lanes, dtype=np.float64), index


@dataclass
class _Task:
    images: list[ImageInputs]
    thresholds: np.ndarray
    removal_threshold: float
    ks: np.ndarray
    rematch: bool


_AREA_BOUNDS = np.array(list(AREA_RANGES.values()), dtype=np.float64)  # (A, 2)
_TASK: _Task | None = None  # set before forking workers, read by _evaluate_chunk


def _evaluate_image(task: _Task, image: ImageInputs) -> tuple[np.ndarray, np.ndarray]:
    """Found-GT counts (A, T, K) and evaluable-GT counts (A,) of one image."""
    area = image.gt_area
    out_of_range = (area[None, :] < _AREA_BOUNDS[:, :1]) | (area[None, :] > _AREA_BOUNDS[:, 1:])
    ignore = out_of_range | image.gt_crowd[None, :] | image.gt_seen[None, :]
    num_gt = (~ignore).sum(axis=1)
    if not num_gt.any() or len(image.dt_geometry) == 0:
        return np.zeros((len(_AREA_BOUNDS), len(task.thresholds), len(task.ks)), np.int64), num_gt
    ious = compute_ious(image.dt_geometry, image.gt_geometry, image.gt_crowd)
    ranks = match_ranks(ious, image.gt_crowd, image.gt_seen, ignore, task.thresholds,
                        task.removal_threshold, task.rematch)
    return found_counts(ranks, task.ks), num_gt


def _evaluate_chunk(indices: list[int], progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    task = _TASK
    found = np.zeros((len(_AREA_BOUNDS), len(task.thresholds), len(task.ks)), np.int64)
    num_gt = np.zeros(len(_AREA_BOUNDS), np.int64)
    for done, i in enumerate(indices, start=1):
        image_found, image_gt = _evaluate_image(task, task.images[i])
        found += image_found
        num_gt += image_gt
        if progress is not None:
            progress.update(done)
    return found, num_gt


def _resolve_workers(num_workers: int) -> int:
    return num_workers if num_workers > 0 else min(4, os.cpu_count() or 1)


def _run(task: _Task, num_workers: int, progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Sum per-image counts, in a pool of forked workers when it pays off; `progress` counts images."""
    global _TASK
    num_images = len(task.images)
    parallel = (num_workers > 1 and num_images >= _PARALLEL_MIN_IMAGES
                and "fork" in multiprocessing.get_all_start_methods())
    _TASK = task
    try:
        if not parallel:
            return _evaluate_chunk(list(range(num_images)), progress)
        num_chunks = min(num_images, num_workers * 8)
        chunks = [list(range(c, num_images, num_chunks)) for c in range(num_chunks)]
        found = np.zeros((len(_AREA_BOUNDS), len(task.thresholds), len(task.ks)), np.int64)
        num_gt = np.zeros(len(_AREA_BOUNDS), np.int64)
        with multiprocessing.get_context("fork").Pool(num_workers) as pool:
            done = 0
            for chunk, (chunk_found, chunk_gt) in zip(chunks, pool.imap_unordered(_evaluate_chunk, chunks)):
                found += chunk_found
                num_gt += chunk_gt
                done += len(chunk)  # chunks finish out of order, but all chunks have about one size
                progress.update(done)
        return found, num_gt
    finally:
        _TASK = None
