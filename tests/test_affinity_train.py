"""Affinity training, prediction and evaluation end to end on a tiny COCO set."""

import json

import cv2
import numpy as np
import pytest
import torch

from oln.affinity.evaluate import PAEvalOptions, evaluate_pa, image_sums, summarize
from oln.affinity.model import PAModelOptions, load_pa_model
from oln.affinity.predict import predict_affinity
from oln.affinity.targets import affinity_targets
from oln.affinity.train import PADataOptions, PATargetOptions, PATrainOptions, pad_batch, train_pa
from oln.engine import TrainOptions
from oln.io import read_json, read_jsonl
from oln.rle import encode_mask


def write_tiny_coco(root, n_images=4, h=30, w=40):
    """Images with one seen (category 1) and one unseen (category 2) rectangle."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    (root / "images").mkdir(parents=True)
    for i in range(n_images):
        pixels = np.full((h, w, 3), 40, dtype=np.uint8)
        masks = []
        for cat, (y0, x0) in ((1, (3 + i, 4)), (2, (14, 20 + i))):
            mask = np.zeros((h, w), dtype=bool)
            mask[y0 : y0 + 10, x0 : x0 + 12] = True
            pixels[mask] = rng.integers(100, 255, 3)
            masks.append((cat, mask))
        cv2.imwrite(str(root / "images" / f"{i}.png"), pixels[:, :, ::-1])
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        for cat, mask in masks:
            ys, xs = np.nonzero(mask)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                         "segmentation": encode_mask(mask), "area": int(mask.sum()),
                         "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]})
    cats = [{"id": 1, "name": "seen_thing"}, {"id": 2, "name": "unseen_thing"}]
    path = root / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_pad_batch_multiple_of_32():
    batch = pad_batch([torch.ones(3, 30, 40), torch.ones(3, 33, 20)])
    assert batch.shape == (2, 3, 64, 64)
    assert batch[1, :, 33:].abs().sum() == 0 and batch[1, :, :, 20:].abs().sum() == 0


def test_perfect_prediction_scores_perfectly():
    labels = torch.zeros(12, 12, dtype=torch.int64)
    labels[2:7, 2:8] = 1
    labels[7:11, 4:10] = 2
    target, _ = affinity_targets(labels[None], [1], "none")
    region = labels == 1
    perfect = summarize(image_sums(target[0], labels, region, [1], "none", 0.5, 0))
    assert perfect["boundary_precision"] == 1.0 and perfect["boundary_recall"] == 1.0
    assert perfect["inner_l1"] == pytest.approx(0.0, abs=1e-5)
    assert perfect["outer_l1"] == pytest.approx(0.0, abs=1e-5)
    blind = summarize(image_sums(torch.ones_like(target[0]), labels, region, [1], "none", 0.5, 1))
    assert blind["boundary_recall"] == 0.0 and blind["boundary_f"] == 0.0
    assert blind["outer_l1"] == pytest.approx(1.0)


def test_train_predict_evaluate(tmp_path):
    torch.set_num_threads(1)
    train_json = write_tiny_coco(tmp_path / "data")
    options = PATrainOptions(
        model=PAModelOptions(backbone="resnet18", head_channels=16),
        target=PATargetOptions(neighbor_distances=[1], reduction="mean"),
        data=PADataOptions(max_size=0, flip=True, scale_range=[0.8, 1.2], crop_size=28),
        train=TrainOptions(iterations=3, batch_size=2, optimizer="adamw", lr=1e-3, warmup_iters=1,
                           log_every=1, checkpoint_every=2, device="cpu"),
    )
    out = tmp_path / "pa"
    model_path = train_pa(train_json, tmp_path / "data" / "images", [1], options, out)
    assert model_path == out / "model.pt" and model_path.exists()
    assert (out / "curve.png").stat().st_size > 0
    log = read_jsonl(out / "log.jsonl")
    assert [r["iter"] for r in log] == [1, 2, 3] and all(np.isfinite(r["loss_pa"]) for r in log)

    model, meta = load_pa_model(model_path, "cpu")
    assert meta["out_channels"] == 1 and meta["reduction"] == "mean"
    probs = predict_affinity(model, [torch.rand(3, 30, 45), torch.rand(3, 17, 20)], meta, "cpu", batch_size=2)
    assert [p.shape for p in probs] == [(1, 30, 45), (1, 17, 20)]
    assert all(0 <= p.min() and p.max() <= 1 for p in probs)

    eval_options = PAEvalOptions(grid_images=2, device="cpu")
    result = evaluate_pa(model_path, train_json, tmp_path / "data" / "images", [1], [2], eval_options,
                         tmp_path / "eval.json", tmp_path / "grid.png")
    assert read_json(tmp_path / "eval.json")["num_images"] == 4
    for group in ("seen", "unseen", "all"):
        for key in ("inner_ce", "outer_ce", "inner_l1", "outer_l1", "boundary_precision", "boundary_recall",
                    "boundary_f"):
            assert key in result[group]
        assert result[group]["num_gt_boundary_pixels"] > 0
    assert (tmp_path / "grid.png").stat().st_size > 0
