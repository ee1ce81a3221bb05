"""One evaluation file of the pipeline: AR@k on the unseen categories, plus AR@100 on the seen ones."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from oln.evaluation.inputs import load_detections, load_gt
from oln.evaluation.recall import EvaluateOptions, evaluate_recall
from oln.io import write_json

log = logging.getLogger(__name__)


def ignored_categories(categories: list[dict], seen: Sequence[int], unseen: Sequence[int]) -> list[int]:
    """Category ids an evaluation of `unseen` ignores: the seen ones and any outside both splits
    (none in the standard splits), which are never counted for recall and never use up the budget."""
    evaluated = set(seen) | set(unseen)
    return sorted(set(seen) | {int(c["id"]) for c in categories if int(c["id"]) not in evaluated})


def evaluate_run(
    gt_json: str | os.PathLike,
    detections_json: str | os.PathLike,
    out_json: str | os.PathLike,
    seen: Sequence[int],
    unseen: Sequence[int],
    options: EvaluateOptions,
) -> dict:
    """Evaluate one detections file on the unseen categories of `gt_json` and write it once.

    Writes `{iou_type: metrics}` for `options.iou_types` (`segm` skipped with a warning when no
    detection has a mask) and, when `seen` is not empty, `seen_reference`: `{iou_type:
    {"AR@100": ...}}` on the seen categories (the others then ignored), for reference.

    Returns:
        The dict written.
    """
    gt = load_gt(gt_json)
    records = load_detections(detections_json)
    ignored = ignored_categories(gt.get("categories", []), seen, unseen)
    results = _recall_by_iou_type(gt, records, ignored, options, options.max_dets, gt_json, detections_json)
    if seen:
        others = sorted({int(c["id"]) for c in gt.get("categories", [])} - set(seen))
        seen_options = EvaluateOptions(iou_types=list(results), max_dets=[100], num_workers=options.num_workers,
                                       seen_removal=options.seen_removal)
        reference = _recall_by_iou_type(gt, records, others, seen_options, (100,), gt_json, detections_json)
        results["seen_reference"] = {t: {"AR@100": metrics["AR@100"]} for t, metrics in reference.items()}
    write_json(out_json, results, indent=2)
    return results


def _recall_by_iou_type(gt: dict, records: list[dict], ignored: list[int], options: EvaluateOptions,
                        max_dets: Sequence[int], gt_name: str | os.PathLike,
                        detections_name: str | os.PathLike) -> dict:
    """`evaluate_recall` per iou type of `options`; `segm` is skipped when no detection has a mask."""
    results = {}
    for iou_type in options.iou_types:
        if iou_type == "segm" and records and not any("segmentation" in r for r in records):
            log.warning("%s: detections have no 'segmentation'; segm evaluation skipped", detections_name)
            continue
        results[iou_type] = evaluate_recall(gt, records, iou_type, ignored, max_dets=max_dets,
                                            num_workers=options.num_workers, seen_removal=options.seen_removal,
                                            gt_name=gt_name, detections_name=detections_name)
    return results
