"""`evaluate_run`: one evaluation file of the pipeline, written once."""

from __future__ import annotations

import json

import numpy as np

from oln.evaluation.recall import EvaluateOptions, evaluate_recall, evaluate_to_file
from oln.evaluation.run import evaluate_run, ignored_categories
from oln.rle import encode_mask

SIZE = 64


def box_record(image_id: int, box: tuple[int, int, int, int], **fields) -> dict:
    x, y, w, h = box
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y: y + h, x: x + w] = True
    return {"image_id": image_id, "bbox": [x, y, w, h], "segmentation": encode_mask(mask), **fields}


def make_case(tmp_path):
    """Categories 1, 2 seen, 3 unseen, 4 in neither split; detections near each object."""
    rng = np.random.default_rng(0)
    images, anns, dets = [], [], []
    for image_id in range(1, 5):
        images.append({"id": image_id, "height": SIZE, "width": SIZE, "file_name": f"{image_id}.png"})
        for category in (1, 2, 3, 3, 4):
            x, y = (int(v) for v in rng.integers(0, SIZE - 20, size=2))
            w, h = (int(v) for v in rng.integers(6, 20, size=2))
            anns.append(box_record(image_id, (x, y, w, h), id=len(anns) + 1, category_id=category,
                                   area=w * h, iscrowd=0))
            dets.append(box_record(image_id, (x + 1, y, w, h - 1), category_id=1, score=float(rng.random())))
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 5)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    return tmp_path / "gt.json", tmp_path / "dets.json", gt


def test_categories_outside_both_splits_are_ignored():
    categories = [{"id": c} for c in range(1, 5)]
    assert ignored_categories(categories, [1, 2], [3]) == [1, 2, 4]
    assert ignored_categories(categories, [], [1, 2, 3, 4]) == []


def test_evaluate_run_writes_unseen_metrics_and_the_seen_reference_once(tmp_path):
    gt_json, dets_json, gt = make_case(tmp_path)
    options = EvaluateOptions(num_workers=1)
    results = evaluate_run(gt_json, dets_json, tmp_path / "eval.json", [1, 2], [3], options)
    # the same numbers as the evaluation of unseen categories plus AR@100 on the seen ones
    expected = evaluate_to_file(gt_json, dets_json, tmp_path / "plain.json", [1, 2, 4], options.iou_types, options)
    expected["seen_reference"] = {
        t: {"AR@100": evaluate_recall(gt_json, dets_json, t, [3, 4], max_dets=(100,), num_workers=1,
                                      seen_removal=options.seen_removal)["AR@100"]} for t in ("bbox", "segm")}
    assert results == expected
    assert (tmp_path / "eval.json").read_text() == json.dumps(expected, indent=2)


def test_no_seen_categories_no_reference_and_no_masks_no_segm(tmp_path):
    gt_json, dets_json, _ = make_case(tmp_path)
    boxes = [{k: v for k, v in d.items() if k != "segmentation"} for d in json.loads(dets_json.read_text())]
    dets_json.write_text(json.dumps(boxes))
    results = evaluate_run(gt_json, dets_json, tmp_path / "eval.json", [], [1, 2, 3, 4], EvaluateOptions(num_workers=1))
    assert set(results) == {"bbox"}
