"""Open-world AR@k evaluator: hand-checked cases and agreement with pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from oln.evaluation import DEFAULT_MAX_DETS, EvaluateOptions, ar_auc, evaluate_recall, evaluate_to_file

SEEN, UNSEEN = 1, 2


def make_gt(annotations: list[dict], num_images: int = 1, size: int = 200) -> dict:
    images = [{"id": i, "height": size, "width": size, "file_name": f"{i}.png"}
              for i in range(1, num_images + 1)]
    anns = []
    for n, ann in enumerate(annotations, start=1):
        x, y, w, h = ann["bbox"]
        anns.append({"id": n, "image_id": ann.get("image_id", 1), "category_id": ann["category_id"],
                     "bbox": [x, y, w, h], "area": ann.get("area", w * h), "iscrowd": ann.get("iscrowd", 0),
                     "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    return {"images": images, "annotations": anns,
            "categories": [{"id": SEEN, "name": "seen"}, {"id": UNSEEN, "name": "unseen"}]}


def det(bbox: list[float], score: float, image_id: int = 1) -> dict:
    return {"image_id": image_id, "category_id": 1, "bbox": bbox, "score": score}


def recall_bbox(gt: dict, dets: list[dict], seen=None, **kwargs) -> dict:
    return evaluate_recall(gt, dets, "bbox", seen, num_workers=1, **kwargs)


# --------------------------------------------------------------------------- budget rule


def test_seen_detection_ranked_first_does_not_use_the_budget():
    gt = make_gt([{"bbox": [0, 0, 10, 10], "category_id": SEEN},
                  {"bbox": [50, 50, 10, 10], "category_id": UNSEEN}])
    dets = [det([0, 0, 10, 10], 0.9), det([50, 50, 10, 10], 0.8)]
    cross = recall_bbox(gt, dets, [SEEN])
    assert cross["AR@1"] == 1.0
    assert cross["num_gt"] == 1 and cross["num_seen_gt"] == 1
    assert cross["protocol"] == "cross_category_seen_removed"
    assert cross["seen_category_ids"] == [SEEN]
    plain = recall_bbox(gt, dets)  # class-agnostic: the seen object is a target and uses k=1
    assert plain["AR@1"] == 0.5 and plain["AR@10"] == 1.0
    assert plain["protocol"] == "class_agnostic" and plain["num_gt"] == 2


@pytest.mark.parametrize("seen_removal", ["rematch", "oln"])
def test_duplicate_detection_on_a_seen_object_uses_the_budget(seen_removal):
    gt = make_gt([{"bbox": [0, 0, 10, 10], "category_id": SEEN},
                  {"bbox": [50, 50, 10, 10], "category_id": UNSEEN}])
    dets = [det([0, 0, 10, 10], 0.9), det([0, 0, 10, 10], 0.85), det([50, 50, 10, 10], 0.8)]
    result = recall_bbox(gt, dets, [SEEN], seen_removal=seen_removal)
    assert result["AR@1"] == 0.0  # the duplicate is not matched to the (taken) seen GT: it stays, at rank 0
    assert result["AR@10"] == 1.0


def test_detection_on_unseen_and_seen_object_matches_the_unseen_one():
    # IoU with the unseen GT 100/110 = 0.909 < IoU with the seen GT 110/120 = 0.917, but COCOeval
    # prefers a non-ignored GT, so the detection is kept and finds the unseen object up to t = 0.90.
    gt = make_gt([{"bbox": [0, 0, 10, 10], "category_id": UNSEEN},
                  {"bbox": [0, 0, 10, 12], "category_id": SEEN}])
    result = recall_bbox(gt, [det([0, 0, 10, 11], 0.9)], [SEEN])
    assert result["AR@1"] == pytest.approx(0.9, abs=1e-12)


def test_rematch_lets_a_later_detection_find_what_a_removed_one_would_hide():
    # d0: IoU .62 with U (found at t <= .60). d1: U taken at .5, so it matches seen S (IoU .70) and is
    # removed; at t = .65-.75 it would take U (IoU .78) in OLN's single pass. d2 is exactly on U.
    gt = make_gt([{"bbox": [0, 0, 100, 100], "category_id": UNSEEN},
                  {"bbox": [0, 0, 100, 54.6], "category_id": SEEN}])
    dets = [det([0, 0, 100, 62], 0.9), det([0, 0, 100, 78], 0.8), det([0, 0, 100, 100], 0.7)]
    rematch = recall_bbox(gt, dets, [SEEN])
    oln = recall_bbox(gt, dets, [SEEN], seen_removal="oln")
    assert rematch["AR@1"] == pytest.approx(0.3) and oln["AR@1"] == pytest.approx(0.3)
    assert rematch["AR@10"] == pytest.approx(1.0)
    assert oln["AR@10"] == pytest.approx(0.7)  # .5-.6 by d0, .8-.95 by d2
    assert oln["protocol"] == "cross_category_seen_removed_oln"


# --------------------------------------------------------------------------- crowd, area, images


def test_crowd_gt_is_ignored_and_absorbs_detections():
    unseen = {"bbox": [0, 0, 10, 10], "category_id": UNSEEN}
    dets = [det([55, 55, 10, 10], 0.9), det([60, 60, 10, 10], 0.85), det([0, 0, 10, 10], 0.8)]
    crowd_unseen = make_gt([unseen, {"bbox": [50, 50, 40, 40], "category_id": UNSEEN, "iscrowd": 1}])
    result = recall_bbox(crowd_unseen, dets)
    assert result["num_gt"] == 1
    assert result["AR@1"] == 0.0 and result["AR@10"] == 1.0  # crowd matches are kept, they use the budget
    # A seen crowd region removes every detection inside it (crowd GT match any number of detections).
    crowd_seen = make_gt([unseen, {"bbox": [50, 50, 40, 40], "category_id": SEEN, "iscrowd": 1}])
    assert recall_bbox(crowd_seen, dets, [SEEN])["AR@1"] == 1.0


def test_area_ranges_use_the_area_field_with_inclusive_bounds():
    gt = make_gt([
        {"bbox": [0, 0, 10, 10], "category_id": UNSEEN},  # 100: small
        {"bbox": [20, 20, 32, 32], "category_id": UNSEEN},  # 1024: small and medium (bounds inclusive)
        {"bbox": [60, 0, 50, 50], "category_id": UNSEEN},  # 2500: medium, not found
        {"bbox": [100, 100, 100, 100], "category_id": UNSEEN},  # 10000: large
        {"bbox": [0, 150, 20, 20], "category_id": UNSEEN, "area": 9000.0},  # box 400, area field: medium
    ])
    dets = [det([0, 0, 10, 10], 0.9), det([20, 20, 32, 32], 0.8), det([100, 100, 100, 100], 0.7),
            det([0, 150, 20, 20], 0.6)]
    result = recall_bbox(gt, dets)
    assert result["AR@100"] == pytest.approx(4 / 5)
    assert result["AR_s@100"] == 1.0
    assert result["AR_m@100"] == pytest.approx(2 / 3)
    assert result["AR_l@100"] == 1.0
    assert result["AR@100_iou50"] == pytest.approx(4 / 5) and result["AR@100_iou75"] == pytest.approx(4 / 5)
    only_small = make_gt([{"bbox": [0, 0, 10, 10], "category_id": UNSEEN}])
    result = recall_bbox(only_small, dets[:1])
    assert result["AR_s@100"] == 1.0 and result["AR_m@100"] is None and result["AR_l@100"] is None


def test_images_without_gt_or_detections_count():
    gt = make_gt([{"bbox": [0, 0, 10, 10], "category_id": UNSEEN, "image_id": 1},
                  {"bbox": [0, 0, 10, 10], "category_id": UNSEEN, "image_id": 2}], num_images=3)
    dets = [det([0, 0, 10, 10], 0.9, image_id=1), det([50, 50, 10, 10], 0.9, image_id=3)]
    result = recall_bbox(gt, dets)
    assert result["num_images"] == 3 and result["num_gt"] == 2 and result["num_detections"] == 2
    assert result["max_detections_per_image"] == 1
    assert all(result[f"AR@{k}"] == 0.5 for k in DEFAULT_MAX_DETS)
    assert recall_bbox(gt, [])["AR@1000"] == 0.0
    assert recall_bbox(gt, dets + [det([20, 20, 5, 5], 0.5, image_id=1)])["max_detections_per_image"] == 2


def test_errors_are_clear():
    gt = make_gt([{"bbox": [0, 0, 10, 10], "category_id": SEEN}])
    with pytest.raises(ValueError, match="no evaluable ground truth"):
        recall_bbox(gt, [det([0, 0, 10, 10], 0.9)], [SEEN])
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_recall(gt, [], "keypoints")


# --------------------------------------------------------------------------- broken inputs


def _box_and_mask(bbox: list[float], score: float, image_id: int = 1, size: int = 200) -> dict:
    x, y, w, h = (int(v) for v in bbox)
    mask = np.zeros((size, size), bool)
    mask[y: y + h, x: x + w] = True
    return {**det(bbox, score, image_id), "segmentation": _rle_str(mask)}


def _break_score_missing(d: dict) -> None:
    del d["score"]


def _break_score_nan(d: dict) -> None:
    d["score"] = float("nan")


def _break_score_inf(d: dict) -> None:
    d["score"] = float("inf")


def _break_score_text(d: dict) -> None:
    d["score"] = "high"


def _break_box_negative(d: dict) -> None:
    d["bbox"] = [10, 10, -5, 8]


def _break_box_nan(d: dict) -> None:
    d["bbox"] = [10, float("nan"), 5, 8]


def _break_box_short(d: dict) -> None:
    d["bbox"] = [10, 10, 5]


def _break_mask_size(d: dict) -> None:
    d["segmentation"] = _rle_str(np.ones((100, 200), bool))


def _break_mask_missing(d: dict) -> None:
    del d["segmentation"]


BROKEN_DETECTIONS = [
    (_break_score_missing, "bbox", r"detections\[1\] \(image_id 1\): no 'score'"),
    (_break_score_nan, "segm", r"detections\[1\] \(image_id 1\): score is not a finite number \(nan\)"),
    (_break_score_inf, "bbox", r"detections\[1\] .*score is not a finite number \(inf\)"),
    (_break_score_text, "bbox", r"detections\[1\] .*score is not a finite number \('high'\)"),
    (_break_box_negative, "bbox", r"detections\[1\] .*bbox \[10, 10, -5, 8\] has a negative width or height"),
    (_break_box_nan, "bbox", r"detections\[1\] .*bbox .* is not 4 finite numbers"),
    (_break_box_short, "bbox", r"detections\[1\] .*bbox \[10, 10, 5\] is not 4 finite numbers"),
    (_break_mask_size, "segm", r"detections\[1\] .*mask size \[100, 200\] differs from the image's \[200, 200\]"),
    (_break_mask_missing, "segm", r"detections\[1\] .*no 'segmentation'"),
]


@pytest.mark.parametrize(("breaker", "iou_type", "message"), BROKEN_DETECTIONS,
                         ids=[b[0].__name__[7:] for b in BROKEN_DETECTIONS])
def test_broken_detection_is_named(tmp_path, breaker, iou_type, message):
    gt = make_gt([{"bbox": [0, 0, 10, 10], "category_id": UNSEEN}])
    dets = [_box_and_mask([0, 0, 10, 10], 0.9), _box_and_mask([10, 10, 5, 8], 0.5)]
    breaker(dets[1])
    with pytest.raises(ValueError, match=message):
        evaluate_recall(gt, dets, iou_type, num_workers=1)
    path = tmp_path / "run.json"  # the file is named when detections come from a file
    path.write_text(json.dumps(dets, allow_nan=True))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + message):
        evaluate_recall(gt, path, iou_type, num_workers=1)


def test_ground_truth_on_an_unknown_image_is_an_error():
    gt = make_gt([{"bbox": [0, 0, 10, 10], "category_id": UNSEEN},
                  {"bbox": [0, 0, 10, 10], "category_id": UNSEEN, "image_id": 9}])
    with pytest.raises(ValueError, match=r"annotation id 2 refers to image_id 9, which is not in 'images'"):
        recall_bbox(gt, [det([0, 0, 10, 10], 0.9)])


def test_ground_truth_mask_of_another_size_is_an_error():
    gt = make_gt([{"bbox": [0, 0, 10, 10], "category_id": UNSEEN}])
    gt["annotations"][0]["segmentation"] = _rle_str(np.ones((20, 20), bool))
    with pytest.raises(ValueError, match=r"annotation id 1 .*mask size \[20, 20\] differs from the image's"):
        evaluate_recall(gt, [_box_and_mask([0, 0, 10, 10], 0.9)], "segm", num_workers=1)


def test_detections_on_unknown_images_are_dropped_and_counted(tmp_path, caplog):
    gt = make_gt([{"bbox": [0, 0, 10, 10], "category_id": UNSEEN}])
    dets = [det([0, 0, 10, 10], 0.9), det([0, 0, 5, 5], 0.5, 7), det([0, 0, 5, 5], 0.4, 7),
            det([0, 0, 5, 5], 0.4, 8)]
    with caplog.at_level("WARNING", logger="oln"):
        result = recall_bbox(gt, dets)
    assert result["AR@1"] == 1.0 and result["num_detections"] == 1
    assert result["warnings"] == ["3 detections on 2 image ids not in the ground truth (e.g. 7, 8) were dropped"]
    assert result["warnings"][0] in caplog.text
    gt_path, dt_path, out = tmp_path / "gt.json", tmp_path / "dt.json", tmp_path / "eval.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(dets))
    evaluate_to_file(gt_path, dt_path, out, [], iou_types=["bbox"])
    assert json.loads(out.read_text())["bbox"]["warnings"] == [
        f"{dt_path}: 3 detections on 2 image ids not in the ground truth (e.g. 7, 8) were dropped"]
    assert recall_bbox(gt, dets[:1])["warnings"] == []


# --------------------------------------------------------------------------- AUC


def test_auc_of_oln_published_row():
    published = {10: 18.0, 30: 26.5, 50: 29.6, 100: 33.4, 300: 39.0, 500: 41.5, 1000: 45.0}
    assert ar_auc(published) == pytest.approx(24.85, abs=0.005)
    assert ar_auc({k: 1.0 for k in published}) == pytest.approx(1 - 0.5 / 3)  # first segment is a triangle
    with pytest.raises(ValueError, match="1000"):
        ar_auc({10: 0.1})


def test_result_auc_uses_the_result_ar():
    gt = make_gt([{"bbox": [0, 0, 10, 10], "category_id": UNSEEN},
                  {"bbox": [50, 50, 10, 10], "category_id": UNSEEN}])
    result = recall_bbox(gt, [det([0, 0, 10, 10], 0.9), det([50, 50, 10, 10], 0.8)])
    curve = {k: result[f"AR@{k}"] for k in (10, 30, 50, 100, 300, 500, 1000)}
    assert result["AUC"] == pytest.approx(ar_auc(curve))
    assert result["AUC"] == pytest.approx(1 - 0.5 / 3)


# --------------------------------------------------------------------------- agreement with pycocotools


def _rle_str(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(np.int64)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def random_case(seed: int, num_images: int = 6, num_cats: int = 4) -> tuple[dict, list[dict]]:
    """Random GT (polygon / RLE / uncompressed RLE, some crowd) and box+mask detections near them."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for image_id in range(1, num_images + 1):
        height, width = int(rng.integers(40, 160)), int(rng.integers(40, 160))
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.png"})
        boxes = []
        for _ in range(int(rng.integers(0, 9))):
            w, h = rng.uniform(3, 0.8 * width), rng.uniform(3, 0.8 * height)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            mask = np.zeros((height, width), bool)
            mask[int(y): int(y + h) + 1, int(x): int(x + w) + 1] = True
            kind = rng.integers(3)
            seg = ([[x, y, x + w, y, x + w, y + h, x, y + h]] if kind == 0
                   else _rle_str(mask) if kind == 1 else _uncompressed(mask))
            anns.append({"id": len(anns) + 1, "image_id": image_id,
                         "category_id": int(rng.integers(1, num_cats + 1)),
                         "bbox": [x, y, w, h], "area": float(mask.sum() if rng.random() < 0.8 else w * h),
                         "iscrowd": int(rng.random() < 0.1), "segmentation": seg})
            boxes.append((x, y, w, h))
        for _ in range(int(rng.integers(0, 50))):
            if boxes and rng.random() < 0.6:
                x, y, w, h = boxes[rng.integers(len(boxes))]
                x, y = max(0.0, x + rng.normal(0, 0.1) * w), max(0.0, y + rng.normal(0, 0.1) * h)
                w, h = w * rng.uniform(0.7, 1.3), h * rng.uniform(0.7, 1.3)
            else:
                w, h = rng.uniform(2, 0.7 * width), rng.uniform(2, 0.7 * height)
                x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            mask = np.zeros((height, width), bool)
            mask[int(y): int(y + h) + 1, int(x): int(x + w) + 1] = True
            # Varied categories with distinct scores: COCOeval (useCats=0) orders detections as we do.
            dets.append({"image_id": image_id, "category_id": int(rng.integers(1, num_cats + 1)),
                         "bbox": [x, y, w, h], "score": float(rng.random()), "segmentation": _rle_str(mask)})
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, num_cats + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def coco_recall(gt: dict, dets: list[dict], iou_type: str) -> dict:
    """pycocotools' class-agnostic AR values for our keys (None where an area range has no GT)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.useCats = 0
        evaluator.params.maxDets = list(DEFAULT_MAX_DETS)
        evaluator.evaluate()
        evaluator.accumulate()
    recall = evaluator.eval["recall"]  # (T, K=1, A, M)
    m100 = DEFAULT_MAX_DETS.index(100)
    values = {f"AR@{k}": np.mean(recall[:, 0, 0, m]) for m, k in enumerate(DEFAULT_MAX_DETS)}
    for name, area in (("s", 1), ("m", 2), ("l", 3)):
        column = recall[:, 0, area, m100]
        values[f"AR_{name}@100"] = None if (column == -1).all() else np.mean(column)
    values["AR@100_iou50"] = recall[0, 0, 0, m100]
    values["AR@100_iou75"] = recall[5, 0, 0, m100]
    return values


def assert_same_as_coco(ours: dict, reference: dict) -> None:
    for key, value in reference.items():
        if value is None:
            assert ours[key] is None, key
        else:
            assert abs(ours[key] - value) <= 1e-12, (key, ours[key], value)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", range(6))
def test_class_agnostic_equals_cocoeval(seed, iou_type):
    gt, dets = random_case(seed)
    assert_same_as_coco(evaluate_recall(gt, dets, iou_type, num_workers=1), coco_recall(gt, dets, iou_type))


def test_class_agnostic_equals_cocoeval_with_score_ties_and_small_budgets():
    gt, dets = random_case(11)
    for d in dets:  # equal scores keep file order (pycocotools: same, given one category)
        d["score"] = round(d["score"] * 3) / 3
        d["category_id"] = 1
    for iou_type in ("bbox", "segm"):
        ours = evaluate_recall(gt, dets, iou_type, num_workers=1)
        assert_same_as_coco(ours, coco_recall(gt, dets, iou_type))


def test_worker_pool_gives_the_same_numbers():
    gt, dets = random_case(3, num_images=40)
    serial = evaluate_recall(gt, dets, "segm", [1, 2], num_workers=1)
    pooled = evaluate_recall(gt, dets, "segm", [1, 2], num_workers=2)
    assert serial == pooled
    assert serial["num_images"] == 40 and serial["num_gt"] > 0


def test_bytes_counts_and_missing_boxes():
    gt, dets = random_case(4)
    as_bytes = copy.deepcopy(dets)
    for d in as_bytes:
        d["segmentation"]["counts"] = d["segmentation"]["counts"].encode("ascii")
        del d["bbox"]  # bbox evaluation falls back to the mask's box
    as_str = evaluate_recall(gt, dets, "segm", num_workers=1)
    assert evaluate_recall(gt, as_bytes, "segm", num_workers=1) == as_str
    from_masks = copy.deepcopy(dets)
    for d in from_masks:
        d["bbox"] = mask_utils.toBbox(d["segmentation"]).tolist()
    assert evaluate_recall(gt, as_bytes, "bbox", num_workers=1) == evaluate_recall(gt, from_masks, "bbox",
                                                                                  num_workers=1)


# --------------------------------------------------------------------------- files


def test_evaluate_to_file(tmp_path, caplog):
    gt, dets = random_case(5)
    gt_path, dt_path, out_path = tmp_path / "gt.json", tmp_path / "dt.json", tmp_path / "eval" / "run.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(dets))
    written = evaluate_to_file(gt_path, dt_path, out_path, [1])
    on_disk = json.loads(out_path.read_text())
    assert set(on_disk) == {"bbox", "segm"}
    assert on_disk["segm"]["AR@100"] == pytest.approx(written["segm"]["AR@100"])
    assert on_disk["bbox"] == evaluate_recall(gt_path, dt_path, "bbox", [1], num_workers=1,
                                              seen_removal=EvaluateOptions().seen_removal)
    boxes_only = [{k: v for k, v in d.items() if k != "segmentation"} for d in dets]
    dt_path.write_text(json.dumps(boxes_only))
    with caplog.at_level("WARNING", logger="oln"):
        evaluate_to_file(gt_path, dt_path, out_path, [1])
    assert "segm evaluation skipped" in caplog.text
    assert set(json.loads(out_path.read_text())) == {"bbox"}
