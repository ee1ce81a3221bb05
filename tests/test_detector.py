"""Detector unit tests on tiny 64x64 images (CPU, ResNet-18, slim heads)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from oln.detector.components import annotated_only
from oln.detector.model import ARCHS, DetectorOptions, build_detector
from oln.detector.oln_heads import (
    centerness_targets,
    combine_oln_scores,
    decode_side_distances,
    encode_side_distances,
)
from oln.detector.predict import PredictOptions, load_detector, predict
from oln.detector.train import DetectorTrainOptions, build_train_dataset, train_detector
from oln.engine import TrainOptions
from oln.io import read_json, read_jsonl, write_json

torch.set_num_threads(1)
SIZE = 64
# the defaults are the paper's widths; these tests only need the heads to run
SLIM_HEADS = dict(fpn_channels=32, box_head_dim=64, mask_head_convs=2, mask_head_channels=16, rois_per_image=64)


def tiny_options(arch: str, **kw) -> DetectorOptions:
    return DetectorOptions(
        arch=arch,
        backbone="resnet18",
        min_size=SIZE,
        max_size=SIZE,
        anchor_sizes=[8, 16, 32, 64, 128],
        max_detections=20,
        **{**SLIM_HEADS, **kw},
    )


def box_mask_target(boxes: list[list[float]], pseudo: list[int]) -> dict:
    n = len(boxes)
    masks = torch.zeros((n, SIZE, SIZE), dtype=torch.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        masks[k, int(y0) : int(y1), int(x0) : int(x1)] = 1
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "masks": masks,
        "labels": torch.ones(n, dtype=torch.int64),
        "pseudo": torch.tensor(pseudo, dtype=torch.uint8),
    }


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """3 images; categories 1 (seen), 2 (unseen), 9 (pseudo); one crowd box; one broken image file."""
    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(0)
    images, anns = [], []
    layout = {
        1: [(1, [4, 4, 30, 24], 0, 0), (2, [34, 30, 24, 28], 0, 0), (9, [10, 36, 20, 20], 0, 1)],
        2: [(1, [20, 10, 30, 40], 0, 0), (1, [0, 0, 64, 64], 1, 0)],
        3: [(2, [8, 8, 40, 40], 0, 0)],
    }
    for image_id, objects in layout.items():
        pixels = (rng.random((SIZE, SIZE, 3)) * 60).astype(np.uint8)
        for cat, (x, y, w, h), crowd, _ in objects:
            if not crowd:
                pixels[y : y + h, x : x + w] = (cat * 70) % 256
        Image.fromarray(pixels).save(root / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": SIZE, "width": SIZE})
        for cat, (x, y, w, h), crowd, pseudo in objects:
            ann = {
                "id": len(anns) + 1,
                "image_id": image_id,
                "category_id": cat,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": crowd,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            }
            if pseudo:
                ann["pseudo"] = 1
            anns.append(ann)
    cats = [{"id": 1, "name": "seen"}, {"id": 2, "name": "unseen"}, {"id": 9, "name": "pseudo"}]
    write_json(root / "train.json", {"images": images, "annotations": anns, "categories": cats})
    (root / "broken.png").write_bytes(b"not an image")
    with_broken = images + [{"id": 4, "file_name": "broken.png", "height": SIZE, "width": SIZE}]
    write_json(
        root / "val.json",
        {
            "images": with_broken,
            "annotations": [a for a in anns if not a.get("pseudo")],
            "categories": cats[:2],
        },
    )
    return root


def test_centerness_targets_hand_values():
    anchors = torch.tensor([[6.0, 6, 14, 14], [6, 6, 14, 14], [16, 11, 24, 19], [50, 50, 58, 58]])
    gt = torch.tensor([[0.0, 5, 40, 25], [0, 0, 20, 20], [0, 5, 40, 25], [0, 5, 40, 25]])
    # anchor centre (10, 10): l=10 r=30 t=5 b=15 -> sqrt(1/3 * 1/3); centred -> 1; outside -> 0
    expected = torch.tensor([1 / 3, 1.0, 1.0, 0.0])
    torch.testing.assert_close(centerness_targets(anchors, gt), expected)


def test_side_distance_codes_round_trip():
    anchors = torch.tensor([[6.0, 6, 14, 14], [0, 0, 32, 16]])
    boxes = torch.tensor([[0.0, 5, 40, 25], [4, 2, 20, 30]])
    codes = encode_side_distances(anchors, boxes)
    torch.testing.assert_close(codes[0], torch.tensor([10 / 8, 5 / 8, 30 / 8, 15 / 8]))
    torch.testing.assert_close(decode_side_distances(codes, anchors), boxes)


def test_oln_score_is_geometric_mean():
    rpn = torch.tensor([0.9, 0.25, 1.0])
    iou_logits = torch.tensor([math.log(0.4 / 0.6), 0.0, 20.0])
    torch.testing.assert_close(
        combine_oln_scores(rpn, iou_logits), torch.tensor([0.6, math.sqrt(0.125), 1.0])
    )


def test_annotated_only_drops_pseudo_instances():
    target = box_mask_target([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 30, 30]], [0, 1, 0])
    kept = annotated_only(target)
    assert kept["boxes"].tolist() == [[0, 0, 10, 10], [1, 1, 30, 30]]
    assert kept["masks"].shape == (2, SIZE, SIZE) and kept["pseudo"].tolist() == [0, 0]


def test_train_dataset_class_agnostic_and_pseudo_flag(tiny_coco):
    baseline = build_train_dataset(tiny_coco / "train.json", tiny_coco, [1], use_pseudo=False, flip=False)
    with_pseudo = build_train_dataset(tiny_coco / "train.json", tiny_coco, [1], use_pseudo=True, flip=False)
    base_targets = [baseline[i][1] for i in range(len(baseline))]
    pseudo_targets = [with_pseudo[i][1] for i in range(len(with_pseudo))]
    # image 1: seen box only (unseen dropped, pseudo dropped); image 2: crowd dropped; image 3: empty
    assert [len(t["boxes"]) for t in base_targets] == [1, 1, 0]
    assert all(int(t["pseudo"].sum()) == 0 for t in base_targets)
    assert [len(t["boxes"]) for t in pseudo_targets] == [2, 1, 0]
    assert pseudo_targets[0]["pseudo"].tolist() == [0, 1]
    assert pseudo_targets[0]["category_ids"].tolist() == [1, 9]  # pseudo kept despite the category filter
    for t in base_targets + pseudo_targets:
        assert t["labels"].dtype == torch.int64 and bool((t["labels"] == 1).all())
        assert t["masks"].shape[0] == len(t["boxes"])


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "two_tower"])  # two_tower: tests/test_two_tower.py
def test_arch_train_step_and_eval(arch):
    torch.manual_seed(0)
    model = build_detector(tiny_options(arch))
    images = [torch.rand(3, SIZE, SIZE), torch.rand(3, SIZE, SIZE)]
    targets = [box_mask_target([[4, 4, 34, 28], [30, 30, 60, 60]], [0, 1]), box_mask_target([], [])]
    model.train()
    losses = model(images, targets)
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values()) and total.requires_grad
    total.backward()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    has_masks = arch != "faster_rcnn"
    for out in outputs:
        n = len(out["boxes"])
        assert 0 < n <= 20 and out["scores"].shape == (n,) and bool((out["labels"] == 1).all())
        assert ("masks" in out) == has_masks
        if has_masks:
            assert out["masks"].shape == (n, 1, SIZE, SIZE) and out["masks"].dtype == torch.bool


def test_train_then_predict_writes_coco_results(tiny_coco, tmp_path, caplog):
    options = DetectorTrainOptions(
        detector=tiny_options("oln"),
        train=TrainOptions(
            iterations=2,
            batch_size=2,
            lr=0.001,
            warmup_iters=0,
            log_every=1,
            amp=False,
            device="cpu",
            checkpoint_every=100,
        ),
    )
    model_path = train_detector(tiny_coco / "train.json", tiny_coco, [1], True, options, tmp_path / "det")
    assert model_path.exists() and (tmp_path / "det" / "curve.png").exists()
    log = read_jsonl(tmp_path / "det" / "log.jsonl")
    assert [r["iter"] for r in log] == [1, 2] and "loss_rpn_centerness" in log[0]
    checkpoint = torch.load(model_path, weights_only=False)
    assert checkpoint["options"]["arch"] == "oln" and checkpoint["meta"]["num_pseudo"] == 1
    assert load_detector(model_path).detector_options.arch == "oln"

    out_json = tmp_path / "results.json"
    with caplog.at_level("INFO", logger="oln.progress"):
        summary = predict(
            model_path,
            tiny_coco / "val.json",
            tiny_coco,
            PredictOptions(batch_size=2, num_workers=0, device="cpu"),
            out_json,
        )
    assert summary["num_images"] == 3 and summary["num_skipped"] == 1
    progress = [r.getMessage() for r in caplog.records
                if r.name == "oln.progress" and r.getMessage().startswith("predict ")]
    assert progress[0].startswith("predict 2/4 (50%)") and progress[-1].startswith("predict 4/4 (100%)")
    assert all(" img/s elapsed " in line and " eta " in line for line in progress)
    results = read_json(out_json)
    assert len(results) == summary["num_detections"] > 0
    per_image = {}
    for r in results:
        assert r["category_id"] == 1 and len(r["bbox"]) == 4 and 0.0 <= r["score"] <= 1.0
        assert isinstance(r["segmentation"]["counts"], str) and r["segmentation"]["size"] == [SIZE, SIZE]
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert set(per_image) == {1, 2, 3} and max(per_image.values()) <= 20
    gt = COCO(str(tiny_coco / "val.json"))
    assert len(gt.loadRes(str(out_json)).getAnnIds()) == len(results)


def test_training_is_bit_exact_for_a_seed(tiny_coco, tmp_path):
    """Same seed -> identical weights (initial weights included); another seed -> different."""

    def weights(seed: int, name: str) -> dict:
        torch.manual_seed(1000 + len(name))  # the global RNG state before training must not matter
        options = DetectorTrainOptions(
            detector=tiny_options("mask_rcnn"),
            train=TrainOptions(iterations=2, batch_size=2, lr=0.001, warmup_iters=0, amp=False, device="cpu",
                               checkpoint_every=100, seed=seed),
        )
        path = train_detector(tiny_coco / "train.json", tiny_coco, [1], True, options, tmp_path / name)
        return torch.load(path, weights_only=False)["state_dict"]

    first, second, other = weights(0, "a"), weights(0, "bb"), weights(1, "c")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
