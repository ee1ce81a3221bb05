"""AR@k evaluator throughput on seeded synthetic detections."""

from __future__ import annotations

import gc
import time

import numpy as np

from gpu_bench.common import NUM_CATEGORIES, SEEN_CATEGORIES, Context, run_case, skipped
from oln.evaluation import evaluate_recall

# ----------------------------------------------------------------------------- evaluation


def synthetic_recall_case(num_images: int, dets_per_image: int, seed: int, with_segm: bool) -> tuple[dict, list]:
    """Seeded GT (2-14 boxes per image, 80 categories, 3% crowd) and scored detections (40% near GT)."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        height, width = int(rng.integers(360, 481)), int(rng.integers(480, 641))
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id:06d}.png"})
        limit = np.array([width, height], np.float64)
        sizes = np.exp(rng.uniform(np.log(8), np.log(0.7 * min(height, width)), (int(rng.integers(2, 15)), 2)))
        gt = np.concatenate([rng.uniform(0, 1, sizes.shape) * (limit - sizes), sizes], axis=1)
        for box in gt.round(2).tolist():
            x, y, w, h = box
            ann = {"id": len(annotations) + 1, "image_id": image_id, "bbox": box, "area": w * h,
                   "category_id": int(rng.integers(1, NUM_CATEGORIES + 1)), "iscrowd": int(rng.random() < 0.03)}
            if with_segm:
                ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            annotations.append(ann)
        near = gt[rng.integers(0, len(gt), int(0.4 * dets_per_image))]
        near = near + rng.normal(0, 0.12, near.shape) * np.tile(near[:, 2:], 2)
        far = np.exp(rng.uniform(np.log(4), np.log(0.8 * min(height, width)), (dets_per_image - len(near), 2)))
        boxes = np.concatenate([near, np.concatenate([rng.uniform(0, 1, far.shape) * (limit - far), far], 1)])
        boxes[:, :2] = np.clip(boxes[:, :2], 0, limit - 2)
        boxes[:, 2:] = np.clip(boxes[:, 2:], 1, limit - boxes[:, :2])
        detections += _detection_records(image_id, boxes, rng.random(len(boxes)), (height, width), with_segm)
    categories = [{"id": c, "name": f"category{c}"} for c in range(1, NUM_CATEGORIES + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def _detection_records(image_id: int, boxes: np.ndarray, scores: np.ndarray, hw: tuple[int, int],
                       with_segm: bool) -> list[dict]:
    records = [{"image_id": image_id, "category_id": 1, "bbox": box, "score": score}
               for box, score in zip(boxes.round(2).tolist(), scores.round(6).tolist())]
    if with_segm:
        from pycocotools import mask as mask_utils

        for record, rle in zip(records, mask_utils.frPyObjects(boxes, hw[0], hw[1])):
            record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return records


def bench_evaluate(ctx: Context) -> list[dict]:
    """evaluate_recall (cross-category, 20 seen categories) on seeded synthetic data, bbox then segm."""
    cfg = ctx.cfg
    rows = [run_case(f"bbox {cfg.eval_images} images x {cfg.eval_dets} detections",
                     lambda: _evaluate_case(cfg.eval_images, "bbox", ctx))]
    name = f"segm {cfg.eval_segm_images} images x {cfg.eval_dets} detections"
    if cfg.eval_segm_images <= 0:
        return rows
    rows.append(skipped(name) if ctx.expired() else run_case(name, lambda: _evaluate_case(cfg.eval_segm_images,
                                                                                         "segm", ctx)))
    return rows


def _evaluate_case(num_images: int, iou_type: str, ctx: Context) -> dict:
    cfg = ctx.cfg
    start = time.perf_counter()
    gc.disable()  # millions of small dicts: the cyclic GC would take most of the build time
    try:
        gt, detections = synthetic_recall_case(num_images, cfg.eval_dets, seed=0, with_segm=iou_type == "segm")
    finally:
        gc.enable()
    build_s = time.perf_counter() - start
    times, result = [], {}
    for repeat in range(cfg.eval_repeats):
        if repeat and ctx.expired():
            break
        start = time.perf_counter()
        result = evaluate_recall(gt, detections, iou_type, SEEN_CATEGORIES, num_workers=cfg.eval_workers)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {"eval_s": round(seconds, 2), "images_per_s": round(num_images / seconds, 1), "repeats": len(times),
            "build_s": round(build_s, 2), "num_workers": cfg.eval_workers, "num_detections": len(detections),
            "num_gt": result.get("num_gt"), "AR@100": result.get("AR@100")}
