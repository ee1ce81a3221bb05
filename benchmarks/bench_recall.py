"""Speed and agreement of `oln.evaluation.evaluate_recall` against pycocotools' COCOeval.

Builds a seeded synthetic case (images with seen- and unseen-category ground
truth, many detections per image with boxes and RLE masks), then for each IoU
type times our class-agnostic evaluation (no seen categories, so it must equal
COCOeval with useCats=0) against COCOeval's evaluate()+accumulate() on the same
data, and prints the largest absolute difference over all reported AR values.
Our cross-category evaluation (seen categories removed) is timed as well.

    PYTHONPATH=. python3 benchmarks/bench_recall.py                      # 2000 images x 1000 dets
    PYTHONPATH=. python3 benchmarks/bench_recall.py --images 200 --dets 300
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from oln.evaluation import DEFAULT_MAX_DETS, evaluate_recall

NUM_CATEGORIES = 12
SEEN_CATEGORIES = list(range(1, 7))


def _shape_polygon(x: float, y: float, w: float, h: float, octagon: bool) -> list[float]:
    """A box or an octagon inscribed in it, as a flat COCO polygon."""
    if not octagon:
        return [x, y, x + w, y, x + w, y + h, x, y + h]
    a, b = w * 0.3, h * 0.3
    return [x + a, y, x + w - a, y, x + w, y + b, x + w, y + h - b,
            x + w - a, y + h, x + a, y + h, x, y + h - b, x, y + b]


def make_case(num_images: int, dets_per_image: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """Synthetic GT (polygons, some crowd, 12 categories) and detections (boxes + RLE masks)."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    ann_id = 1
    for image_id in range(1, num_images + 1):
        height, width = int(rng.integers(240, 481)), int(rng.integers(240, 481))
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id:06d}.png"})
        num_gt = int(rng.integers(2, 15))
        sizes = np.exp(rng.uniform(np.log(8), np.log(0.7 * min(height, width)), (num_gt, 2)))
        corners = rng.uniform(0, 1, (num_gt, 2)) * (np.array([width, height]) - sizes)
        gt_boxes = np.concatenate([corners, sizes], axis=1)
        polygons = [_shape_polygon(*box, octagon=bool(rng.random() < 0.5)) for box in gt_boxes]
        rles = mask_utils.frPyObjects(polygons, height, width)
        for box, polygon, rle in zip(gt_boxes, polygons, rles):
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": int(rng.integers(1, NUM_CATEGORIES + 1)),
                "bbox": [float(v) for v in box], "area": float(mask_utils.area(rle)),
                "iscrowd": int(rng.random() < 0.03), "segmentation": [polygon],
            })
            ann_id += 1
        # 40% of detections jitter a GT box (several per object), the rest are anywhere.
        num_near = int(0.4 * dets_per_image)
        picks = gt_boxes[rng.integers(0, num_gt, num_near)]
        jitter = rng.normal(0, 0.12, (num_near, 4)) * np.concatenate([picks[:, 2:], picks[:, 2:]], axis=1)
        near = picks + jitter
        num_far = dets_per_image - num_near
        far_size = np.exp(rng.uniform(np.log(4), np.log(0.8 * min(height, width)), (num_far, 2)))
        far_xy = rng.uniform(0, 1, far_size.shape) * (np.array([width, height]) - far_size)
        boxes = np.concatenate([near, np.concatenate([far_xy, far_size], axis=1)])
        boxes[:, :2] = np.clip(boxes[:, :2], 0, [width - 2, height - 2])
        boxes[:, 2:] = np.clip(boxes[:, 2:], 1, None)
        boxes[:, 2] = np.minimum(boxes[:, 2], width - boxes[:, 0])
        boxes[:, 3] = np.minimum(boxes[:, 3], height - boxes[:, 1])
        octagons = rng.random(len(boxes)) < 0.5
        det_polygons = [_shape_polygon(*box, octagon=bool(o)) for box, o in zip(boxes, octagons)]
        det_rles = mask_utils.frPyObjects(det_polygons, height, width)
        scores = rng.random(len(boxes))
        for box, rle, score in zip(boxes, det_rles, scores):
            detections.append({
                "image_id": image_id, "category_id": 1, "score": float(score),
                "bbox": [float(v) for v in box],
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
            })
    categories = [{"id": c, "name": f"category{c}"} for c in range(1, NUM_CATEGORIES + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def coco_reference(gt: dict, detections: list[dict], iou_type: str) -> tuple[dict, float, float]:
    """pycocotools' class-agnostic AR values, load time and evaluate()+accumulate() time."""
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        load_time = time.perf_counter() - start
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.useCats = 0
        evaluator.params.maxDets = list(DEFAULT_MAX_DETS)
        start = time.perf_counter()
        evaluator.evaluate()
        evaluator.accumulate()
        eval_time = time.perf_counter() - start
    recall = evaluator.eval["recall"]  # (T, K=1, A, M)
    m100 = DEFAULT_MAX_DETS.index(100)
    values = {f"AR@{k}": float(np.mean(recall[:, 0, 0, m])) for m, k in enumerate(DEFAULT_MAX_DETS)}
    for name, area in (("s", 1), ("m", 2), ("l", 3)):
        values[f"AR_{name}@100"] = float(np.mean(recall[:, 0, area, m100]))
    values["AR@100_iou50"] = float(recall[0, 0, 0, m100])
    values["AR@100_iou75"] = float(recall[5, 0, 0, m100])
    return values, load_time, eval_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--dets", type=int, default=1000, help="detections per image")
    parser.add_argument("--iou-types", nargs="+", default=["bbox", "segm"])
    parser.add_argument("--workers", type=int, default=0, help="0 = min(4, cpu count)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-coco", action="store_true", help="only time our evaluator")
    args = parser.parse_args()

    start = time.perf_counter()
    gt, detections = make_case(args.images, args.dets, args.seed)
    print(f"case: {args.images} images, {len(gt['annotations'])} GT, {len(detections)} detections "
          f"(built in {time.perf_counter() - start:.1f}s)")
    for iou_type in args.iou_types:
        start = time.perf_counter()
        ours = evaluate_recall(gt, detections, iou_type, num_workers=args.workers)
        ours_time = time.perf_counter() - start
        start = time.perf_counter()
        cross = evaluate_recall(gt, detections, iou_type, SEEN_CATEGORIES, num_workers=args.workers)
        cross_time = time.perf_counter() - start
        print(f"[{iou_type}] ours class-agnostic: {ours_time:.2f}s  AR@100={ours['AR@100']:.4f} "
              f"AR@1000={ours['AR@1000']:.4f} AUC={ours['AUC']:.4f}")
        print(f"[{iou_type}] ours cross-category (seen {SEEN_CATEGORIES}): {cross_time:.2f}s  "
              f"AR@100={cross['AR@100']:.4f} AR@1000={cross['AR@1000']:.4f} AUC={cross['AUC']:.4f}")
        if args.skip_coco:
            continue
        reference, load_time, eval_time = coco_reference(gt, detections, iou_type)
        max_diff = max(abs(ours[key] - value) for key, value in reference.items())
        print(f"[{iou_type}] pycocotools evaluate+accumulate: {eval_time:.2f}s (loadRes {load_time:.2f}s)  "
              f"speed-up {eval_time / ours_time:.1f}x  "
              f"max |diff| over {len(reference)} values: {max_diff:.3g}")


if __name__ == "__main__":
    main()
