"""GGN's two-tower detector on tiny 64x64 inputs (CPU, slim ResNet-18, a random grouping detector)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from oln.checkpoints import save_torch
from oln.detector.model import DetectorOptions, build_detector
from oln.detector.predict import PredictOptions, load_detector, predict
from oln.detector.train import DetectorTrainOptions, train_detector
from oln.detector.two_tower import TwoTowerRCNN, load_grouping_detector, recorded_outputs
from oln.engine import TrainOptions
from oln.io import read_json, read_jsonl, write_json

torch.set_num_threads(1)
SIZE = 64


def tiny_options(arch: str, **kw) -> DetectorOptions:
    return DetectorOptions(
        arch=arch, backbone="resnet18_w16", min_size=SIZE, max_size=SIZE, anchor_sizes=[8, 16, 32, 64, 128],
        fpn_channels=16, box_head_dim=32, mask_head_channels=8, rois_per_image=16, max_detections=20,
        rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50, **kw,
    )


@pytest.fixture(scope="module")
def grouping_path(tmp_path_factory) -> Path:
    """model.pt of an (untrained) Mask R-CNN grouping detector with trainable BN."""
    torch.manual_seed(0)
    options = tiny_options("mask_rcnn")
    path = tmp_path_factory.mktemp("grouping") / "model.pt"
    save_torch(path, {"state_dict": build_detector(options).state_dict(), "options": options.to_dict(), "meta": {}})
    return path


def two_tower(grouping_path: Path, **kw) -> TwoTowerRCNN:
    torch.manual_seed(1)
    return build_detector(tiny_options("two_tower", grouping_model=str(grouping_path), **kw))


def images(n: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [torch.rand(3, SIZE, SIZE, generator=generator) for _ in range(n)]


def targets(n: int = 2) -> list[dict]:
    masks = torch.zeros((2, SIZE, SIZE), dtype=torch.uint8)
    masks[0, 4:28, 4:34] = 1
    masks[1, 30:60, 30:60] = 1
    target = {"boxes": torch.tensor([[4.0, 4, 34, 28], [30, 30, 60, 60]]), "masks": masks,
              "labels": torch.ones(2, dtype=torch.int64)}
    return [dict(target) for _ in range(n)]


def train_steps(model: TwoTowerRCNN, steps: int = 3) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        sum(model(images(), targets()).values()).backward()
        optimizer.step()


@contextmanager
def recorded_inputs(module: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """First positional input of each forward call of `module` while the block runs."""
    inputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _module, args, _output: inputs.append(args[0]))
    try:
        yield inputs
    finally:
        handle.remove()


def prepared(model: TwoTowerRCNN, batch: list[torch.Tensor]):
    """(resized images, recognition features) as the model's forward computes them."""
    image_list, _ = model.transform(batch)
    return image_list, model.backbone(image_list.tensors)


@pytest.mark.parametrize("freeze", [True, False])
def test_grouping_tower_is_frozen(grouping_path, freeze):
    model = two_tower(grouping_path, freeze_grouping=freeze, use_group_mask=True, refine_grouping=True)
    before = {k: v.clone() for k, v in model.grouping.state_dict().items()}
    recognition = model.roi_heads.box_predictor.cls_score.weight.clone()
    train_steps(model)
    changed = {k for k, v in model.grouping.state_dict().items() if not torch.equal(v, before[k])}
    # BN buffers included: the grouping tower never leaves eval mode
    assert changed == (set() if freeze else {"rpn.head.cls_logits.weight", "rpn.head.cls_logits.bias"})
    assert not torch.equal(model.roi_heads.box_predictor.cls_score.weight, recognition)


def test_freeze_backbone_keeps_resnet_and_trains_fpn(grouping_path):
    model = two_tower(grouping_path, freeze_backbone=True)
    body = {k: v.clone() for k, v in model.backbone.body.state_dict().items()}
    fpn = {k: v.clone() for k, v in model.backbone.fpn.state_dict().items()}
    train_steps(model, 2)
    assert all(torch.equal(v, body[k]) for k, v in model.backbone.body.state_dict().items())
    assert not all(torch.equal(v, fpn[k]) for k, v in model.backbone.fpn.state_dict().items())


def test_output_is_grouping_detections_rescored_in_recognition_order(grouping_path):
    model = two_tower(grouping_path, use_group_mask=True).eval()
    batch = images(1)
    with torch.no_grad():
        grouped = model.grouping(batch)[0]  # the grouping detector on its own
        with recorded_outputs(model.roi_heads.box_predictor) as recognition:
            out = model(batch)[0]
    rec_scores = torch.softmax(recognition[0][0], -1)[:, 1]
    assert len(rec_scores) == len(grouped["boxes"]) and 0 < len(out["boxes"]) <= 20
    index = [int(torch.where((grouped["boxes"] == box).all(1))[0][0]) for box in out["boxes"]]
    assert torch.equal(out["boxes"], grouped["boxes"][index])
    assert torch.equal(out["masks"], grouped["masks"][index])
    assert torch.equal(out["scores"], rec_scores[index])
    assert bool((out["scores"][:-1] >= out["scores"][1:]).all())
    assert not torch.equal(out["scores"], grouped["scores"][index])  # re-scored
    assert index != sorted(index)  # reordered by the recognition tower


def test_group_mask_channel_reaches_the_roi_head(grouping_path):
    model = two_tower(grouping_path, use_group_mask=True).eval()
    batch = images(1)
    with torch.no_grad():
        image_list, features = prepared(model, batch)
        grouping = model.group(image_list, None)
        with recorded_inputs(model.roi_heads.box_head) as inputs:
            first = model.recognize(features, grouping, image_list.image_sizes)[0]
        shifted = replace(grouping, mask_logits=[m + 5.0 for m in grouping.mask_logits])
        second = model.recognize(features, shifted, image_list.image_sizes)[0]
    assert inputs[0].shape[1:] == (16 + 1, 7, 7)
    resized = torch.nn.functional.interpolate(grouping.mask_logits[0], size=(7, 7), mode="bilinear")
    assert torch.equal(inputs[0][:, -1], resized[:, 0])
    assert not torch.equal(first["scores"], second["scores"])


def test_without_group_mask_the_roi_head_sees_only_fpn_channels(grouping_path):
    model = two_tower(grouping_path).eval()
    with torch.no_grad(), recorded_inputs(model.roi_heads.box_head) as inputs:
        image_list, features = prepared(model, images(1))
        model.recognize(features, model.group(image_list, None), image_list.image_sizes)
    assert inputs[0].shape[1] == 16 and model.roi_heads.mask_head is None


def test_feed_in_rpn_uses_rpn_proposals(grouping_path):
    model = two_tower(grouping_path, feed_in_rpn=True).eval()
    batch = images(1)
    with torch.no_grad():
        image_list, _ = prepared(model, batch)
        grouping = model.group(image_list, None)
        proposals, _ = model.grouping.rpn(image_list, model.grouping.backbone(image_list.tensors))
        out = model(batch)[0]
    assert grouping.mask_logits is None and torch.equal(grouping.boxes[0], proposals[0])
    assert len(proposals[0]) > len(out["boxes"]) > 0 and "masks" not in out  # box-only: no grouping masks
    assert all(bool((proposals[0] == box).all(1).any()) for box in out["boxes"])
    assert not tiny_options("two_tower", feed_in_rpn=True).has_masks
    refined = two_tower(grouping_path, feed_in_rpn=True, refine_grouping=True, use_group_mask=True).eval()
    with torch.no_grad():
        assert refined(batch)[0]["masks"].shape[1:] == (1, SIZE, SIZE)


def test_oln_grouping_tower(tmp_path):
    torch.manual_seed(0)
    options = tiny_options("oln")
    path = tmp_path / "oln.pt"
    save_torch(path, {"state_dict": build_detector(options).state_dict(), "options": options.to_dict(), "meta": {}})
    model = two_tower(path, use_group_mask=True)
    assert {n for n, p in model.grouping.named_parameters() if p.requires_grad} == {
        "rpn.head.centerness.weight", "rpn.head.centerness.bias"}
    losses = model.train()(images(), targets())
    assert {"grouping_loss_rpn_centerness", "loss_classifier"} <= set(losses)
    with torch.no_grad():
        out = model.eval()(images(1))[0]
    assert 0 < len(out["boxes"]) <= 20 and out["masks"].shape[1:] == (1, SIZE, SIZE)


def test_training_losses(grouping_path):
    model = two_tower(grouping_path, use_group_mask=True, refine_grouping=True).train()
    losses = model(images(), targets())
    assert set(losses) == {"grouping_loss_objectness", "grouping_loss_rpn_box_reg", "loss_classifier",
                           "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    frozen = two_tower(grouping_path, freeze_grouping=True).train()
    assert set(frozen(images(), targets())) == {"loss_classifier", "loss_box_reg"}


def test_grouping_must_be_a_single_detector(grouping_path, tmp_path):
    model = two_tower(grouping_path)
    options = tiny_options("two_tower", grouping_model=str(grouping_path))
    save_torch(tmp_path / "tt.pt", {"state_dict": model.state_dict(), "options": options.to_dict()})
    with pytest.raises(ValueError, match="single detector"):
        load_grouping_detector(tmp_path / "tt.pt")
    with pytest.raises(ValueError, match="grouping_model"):
        build_detector(tiny_options("two_tower"))


@pytest.fixture()
def tiny_coco(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    images_, anns = [], []
    for image_id in (1, 2):
        pixels = (rng.random((SIZE, SIZE, 3)) * 60).astype(np.uint8)
        pixels[8:40, 10:42] = 200
        Image.fromarray(pixels).save(tmp_path / f"{image_id}.png")
        images_.append({"id": image_id, "file_name": f"{image_id}.png", "height": SIZE, "width": SIZE})
        anns.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [10, 8, 32, 32], "area": 1024,
                     "iscrowd": 0, "segmentation": [[10, 8, 42, 8, 42, 40, 10, 40]]})
    write_json(tmp_path / "train.json", {"images": images_, "annotations": anns,
                                         "categories": [{"id": 1, "name": "seen"}]})
    return tmp_path


def test_train_resume_and_predict_without_the_grouping_file(grouping_path, tiny_coco, tmp_path, caplog):
    local_grouping = tmp_path / "grouping.pt"
    local_grouping.write_bytes(grouping_path.read_bytes())
    train = TrainOptions(iterations=2, batch_size=2, lr=0.01, warmup_iters=0, amp=False, device="cpu",
                         checkpoint_every=1, log_every=1)
    options = DetectorTrainOptions(
        detector=tiny_options("two_tower", grouping_model=str(local_grouping), use_group_mask=True), train=train
    )
    out = tmp_path / "tt"
    train_detector(tiny_coco / "train.json", tiny_coco, [1], False, options, out)
    options.train = replace(train, iterations=3)
    with caplog.at_level(logging.INFO, logger="oln.engine"):
        model_path = train_detector(tiny_coco / "train.json", tiny_coco, [1], False, options, out)
    assert "resuming from" in caplog.text and "at iteration 2" in caplog.text
    assert [r["iter"] for r in read_jsonl(out / "log.jsonl")] == [1, 2, 3]
    checkpoint = torch.load(model_path, weights_only=False)
    grouping_state = torch.load(grouping_path, weights_only=False)["state_dict"]
    unchanged = {k for k, v in grouping_state.items() if torch.equal(checkpoint["state_dict"][f"grouping.{k}"], v)}
    assert set(grouping_state) - unchanged == {"rpn.head.cls_logits.weight", "rpn.head.cls_logits.bias"}
    local_grouping.unlink()  # the two-tower model.pt is self-contained
    model = load_detector(model_path)
    assert isinstance(model, TwoTowerRCNN) and model.detector_options.use_group_mask
    summary = predict(model_path, tiny_coco / "train.json", tiny_coco,
                      PredictOptions(num_workers=0, device="cpu"), tmp_path / "predictions.json")
    records = read_json(tmp_path / "predictions.json")
    assert summary["num_detections"] == len(records) > 0 and all("segmentation" in r for r in records)


@pytest.mark.parametrize("use_group_mask", [False, True])
def test_grouping_masks_are_computed_in_training_only_when_used(grouping_path, use_group_mask):
    """Without `use_group_mask` training needs only the grouping boxes: its mask head never runs
    (it would cost several times the rest of the step); at test time the masks are the output."""
    model = two_tower(grouping_path, use_group_mask=use_group_mask).train()
    with recorded_inputs(model.grouping.roi_heads.mask_head) as calls:
        model(images(), targets())
    assert bool(calls) == use_group_mask
    model.eval()
    with recorded_inputs(model.grouping.roi_heads.mask_head) as calls, torch.no_grad():
        detections = model(images(1))
    assert calls and "masks" in detections[0]
