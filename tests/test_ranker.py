"""GGN's OLN ranker (`oln.pseudo.ranker`): the score formula, box scores of a detector, re-ranking records."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import oln.pseudo.ranker as ranker
from oln.detector.model import DetectorOptions, build_detector
from oln.pseudo.ranker import RankerScores, check_ranker, combined_score, rerank_records, score_boxes

torch.set_num_threads(1)
SIZE = 64
ANCHOR_SIZES = [8, 16, 32, 64, 128]


def tiny_detector(arch: str) -> torch.nn.Module:
    """A randomly initialised detector whose resize is the identity on SIZE x SIZE images."""
    torch.manual_seed(0)
    options = DetectorOptions(arch=arch, backbone="resnet18", min_size=SIZE, max_size=SIZE, anchor_sizes=ANCHOR_SIZES,
                              fpn_channels=16, box_head_dim=32, mask_head_convs=1, mask_head_channels=8,
                              max_detections=20)
    model = build_detector(options).eval()
    model.detector_options = options
    return model


def image() -> torch.Tensor:
    return torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def test_combined_score_is_ggns_formula():
    # pa / 2 + roi + roi * rpn: 1.2 / 2 + 0.5 + 0.5 * 0.4 = 1.3; 1.0 / 2 + 0.1 + 0.1 * 0.9 = 0.69
    scores = RankerScores(roi=np.array([0.5, 0.1]), rpn=np.array([0.4, 0.9]))
    assert combined_score(np.array([1.2, 1.0]), scores) == pytest.approx([1.3, 0.69])


@pytest.mark.parametrize("arch", ["mask_rcnn", "oln"])
def test_each_box_is_scored_on_its_own(arch):
    model = tiny_detector(arch)
    boxes = torch.tensor([[4.0, 4.0, 30.0, 20.0], [10.0, 12.0, 60.0, 63.0], [0.0, 0.0, 64.0, 64.0]])
    together = score_boxes(model, image(), boxes)
    reversed_order = score_boxes(model, image(), boxes.flip(0))
    alone = [score_boxes(model, image(), boxes[k : k + 1]) for k in range(3)]
    for scores in (together.roi, together.rpn):
        assert scores.shape == (3,) and np.all((scores > 0) & (scores < 1))
    np.testing.assert_allclose(reversed_order.roi[::-1], together.roi, rtol=1e-5)
    np.testing.assert_allclose(reversed_order.rpn[::-1], together.rpn, rtol=1e-6)
    np.testing.assert_allclose([a.roi[0] for a in alone], together.roi, rtol=1e-5)
    assert len(score_boxes(model, image(), torch.zeros((0, 4))).roi) == 0


def test_rpn_score_is_the_objectness_of_the_anchor_the_box_equals():
    model = tiny_detector("mask_rcnn")
    img = image()
    # the stride-4 level's anchor of size 8 centred on feature cell (y=5, x=7): centre (28, 20)
    box = torch.tensor([[28.0 - 4, 20.0 - 4, 28.0 + 4, 20.0 + 4]])
    with torch.inference_mode():
        images, _ = model.transform([img])
        features = list(model.backbone(images.tensors).values())
        logits = model.rpn.head(features)[0]
    expected = torch.sigmoid(logits[0][0, 0, 5, 7]).item()
    assert score_boxes(model, img, box).rpn[0] == pytest.approx(expected, rel=1e-6)


def test_mask_rcnn_roi_score_is_the_object_probability_of_the_box_classifier():
    model = tiny_detector("mask_rcnn")
    img = image()
    box = torch.tensor([[10.0, 12.0, 40.0, 50.0]])
    with torch.inference_mode():
        images, _ = model.transform([img])
        features = model.backbone(images.tensors)
        heads = model.roi_heads
        logits = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, [box], images.image_sizes)))[0]
    expected = torch.softmax(logits, dim=1)[0, 1].item()
    assert score_boxes(model, img, box).roi[0] == pytest.approx(expected, rel=1e-5)


def test_a_two_tower_model_is_refused_naming_the_file():
    with pytest.raises(ValueError, match="two_tower.pt: a two_tower model cannot rank"):
        check_ranker(SimpleNamespace(detector_options=SimpleNamespace(arch="two_tower")), "two_tower.pt")
    check_ranker(SimpleNamespace(detector_options=SimpleNamespace(arch="oln")), "oln.pt")


def test_rerank_records_sets_ggns_score_and_drops_unreadable_images(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    records = {
        1: [{"bbox": [0, 0, 10, 10], "score": 1.2}, {"bbox": [5, 5, 20, 10], "score": 1.0}],
        2: [{"bbox": [0, 0, 5, 5], "score": 1.1}],
    }
    seen_boxes = []

    def fake_scores(model, img, boxes):
        seen_boxes.append(boxes.tolist())
        return RankerScores(roi=np.array([0.5, 0.1]), rpn=np.array([0.4, 0.9]))

    monkeypatch.setattr(ranker, "score_boxes", fake_scores)
    skipped = rerank_records(records, {1: "a.png", 2: "broken.png"}, tmp_path, torch.nn.Linear(1, 1))
    assert skipped == 1 and records[2] == []
    assert seen_boxes == [[[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 15.0]]]  # xywh -> xyxy
    assert [r["score"] for r in records[1]] == pytest.approx([1.3, 0.69])
    assert [r["grouping_score"] for r in records[1]] == [1.2, 1.0]
    assert records[1][0]["ranker_roi"] == 0.5 and records[1][1]["ranker_rpn"] == 0.9
