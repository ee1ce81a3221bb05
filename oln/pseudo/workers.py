"""The grouping side of extraction: the job a CPU worker runs per image, and the worker pool.

A job turns one image's affinity map into its top-k proposal records (RLE, bbox, score,
rank, best IoU with the annotated GT), at the image's original resolution.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from oln.data.coco import annotation_to_rle
from oln.grouping import GroupingOptions, affinity_to_proposals


def proposals_to_records(
    masks: np.ndarray, scores: np.ndarray, image_id: int, source: str, gt_rles: list[dict]
) -> list[dict]:
    """Encode ranked masks as proposal records (RLE, bbox xywh, area, score, rank, gt_iou, source)."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    if gt_rles:
        gt_iou = mask_utils.iou(rles, gt_rles, [0] * len(gt_rles)).max(axis=1)
    else:
        gt_iou = np.zeros(len(rles))
    records = []
    for rank, rle in enumerate(rles):
        records.append(
            {
                "image_id": int(image_id),
                "segmentation": {
                    "size": [int(v) for v in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "bbox": [float(v) for v in boxes[rank]],
                "area": int(areas[rank]),
                "score": float(scores[rank]),
                "rank": rank,
                "gt_iou": float(gt_iou[rank]),
                "source": source,
            }
        )
    return records


def group_image(
    affinity: np.ndarray,
    orig_hw: tuple[int, int],
    grouping: dict,
    top_k: int,
    image_id: int,
    source: str,
    gt_rles: list[dict],
) -> list[dict]:
    """Worker job: (H, W) affinity -> top-k proposal records at the original resolution."""
    options = GroupingOptions(**grouping)
    options.max_proposals = top_k
    masks, scores = affinity_to_proposals(affinity, options)
    if len(masks) and masks.shape[1:] != tuple(orig_hw):
        height, width = orig_hw
        masks = np.stack(
            [cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) for m in masks]
        ).astype(bool)
    return proposals_to_records(masks, scores, image_id, source, gt_rles)


def gt_rles(annotations: list[dict], height: int, width: int, category_ids: set[int] | None) -> list[dict]:
    """RLEs of an image's non-crowd annotations of `category_ids` (None = all), for `gt_iou`."""
    rles = []
    for ann in annotations:
        if ann.get("iscrowd", 0) or (category_ids is not None and ann["category_id"] not in category_ids):
            continue
        rles.append(annotation_to_rle(ann, height, width))
    return rles


class InlinePool:
    """Stand-in for a process pool when num_workers == 0: runs each job when it is submitted."""

    class _Done:
        def __init__(self, value: Any) -> None:
            self.value = value

        def get(self) -> Any:
            return self.value

    def apply_async(self, fn: Callable, args: tuple) -> _Done:
        return self._Done(fn(*args))

    def close(self) -> None:
        pass

    def join(self) -> None:
        pass


def start_pool(num_workers: int) -> Any:
    """A process pool of `num_workers` grouping workers, or an `InlinePool` for 0.

    Start it before CUDA is initialised: forking (cheap, modules already imported) is
    safe only then; otherwise the workers are spawned.
    """
    if num_workers <= 0:
        return InlinePool()
    fork_ok = "fork" in multiprocessing.get_all_start_methods() and not torch.cuda.is_initialized()
    return multiprocessing.get_context("fork" if fork_ok else "spawn").Pool(num_workers)
