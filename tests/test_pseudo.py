"""Tests for oln.pseudo: shard extraction (with resume) and merge into a training json."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from oln.grouping import GroupingOptions
from oln.io import read_json, write_json
from oln.pseudo import ExtractOptions, MergeOptions, extract_shard, merge_pseudo
from oln.pseudo import extract as extract_module
from oln.pseudo.extract import shard_images
from oln.rle import decode_rle

HEIGHT, WIDTH = 64, 96
BOX_SEEN = (8, 10, 28, 30)  # x0, y0, x1, y1 (inclusive) of the seen-category object, outline included
BOX_UNSEEN = (50, 20, 80, 50)


def fake_load_pa_model(path, device):
    return None, {"out_channels": 2}


def fake_predict_affinity(model, images, meta, device, batch_size=1):
    """Affinity = grey level (objects bright, outlines black, background mid-grey), two channels."""
    return [torch.stack([img.mean(0), img.mean(0).clamp(max=0.99)]) for img in images]


@pytest.fixture(autouse=True)
def fake_model(monkeypatch):
    monkeypatch.setattr(extract_module, "load_pa_model", fake_load_pa_model)
    monkeypatch.setattr(extract_module, "predict_affinity", fake_predict_affinity)


def box_mask(box) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def write_image(path: Path, shift: int) -> None:
    image = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    for box in (BOX_SEEN, BOX_UNSEEN):
        x0, y0, x1, y1 = box
        cv2.rectangle(image, (x0 + shift, y0), (x1 + shift, y1), (240, 240, 240), -1)
        cv2.rectangle(image, (x0 + shift, y0), (x1 + shift, y1), (0, 0, 0), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def polygon(box, shift: int) -> list[list[float]]:
    x0, y0, x1, y1 = box
    x0, x1 = x0 + shift, x1 + shift + 1
    return [[x0, y0, x1, y0, x1, y1 + 1, x0, y1 + 1]]


@pytest.fixture()
def dataset(tmp_path):
    """Annotated 'train' source (5 images, one unreadable) and an unlabeled source under another root."""
    root = tmp_path / "images"
    images, annotations = [], []
    for i in range(1, 6):
        name = f"train/{i:03d}.png"
        if i == 4:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"not an image")
        else:
            write_image(root / name, shift=i)
        images.append({"id": i, "file_name": name, "height": HEIGHT, "width": WIDTH})
        for cat, box in ((1, BOX_SEEN), (2, BOX_UNSEEN)):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "iscrowd": 0,
                    "segmentation": polygon(box, i),
                    "area": 1.0,
                    "bbox": [0, 0, 1, 1],
                }
            )
    categories = [{"id": 1, "name": "seen_thing"}, {"id": 2, "name": "unseen_thing"}]
    train_json = tmp_path / "train.json"
    write_json(train_json, {"images": images, "annotations": annotations, "categories": categories})
    other_root = tmp_path / "other_root"
    write_image(other_root / "u1.png", shift=2)
    write_image(other_root / "u2.png", shift=3)
    unlabeled_json = tmp_path / "unlabeled.json"
    write_json(
        unlabeled_json,
        {
            "images": [
                {"id": 1, "file_name": "u1.png", "height": HEIGHT, "width": WIDTH},
                {"id": 2, "file_name": "u2.png", "height": HEIGHT, "width": WIDTH},
            ],
            "categories": [],
        },
    )
    return dict(root=root, train_json=train_json, other_root=other_root, unlabeled_json=unlabeled_json)


OPTIONS = ExtractOptions(
    top_k=5,
    batch_size=2,
    num_workers=0,
    device="cpu",
    grouping=GroupingOptions(orientation=False, globalization=0.0),
)


def test_shard_split_is_deterministic():
    images = [{"id": i} for i in (5, 3, 1, 2, 4)]
    assert [im["id"] for im in shard_images(images, 0, 2)] == [1, 3, 5]
    assert [im["id"] for im in shard_images(images, 1, 2)] == [2, 4]
    with pytest.raises(ValueError):
        shard_images(images, 2, 2)


def test_extract_records_and_skipped_images(dataset, tmp_path):
    out = tmp_path / "shard0.json"
    stats = extract_shard(
        "unused.pt", dataset["train_json"], dataset["root"], "train", 0, 1, OPTIONS, out, gt_category_ids=[1]
    )
    assert stats["num_images"] == 5 and stats["num_skipped"] == 1
    assert stats["skipped_files"] == ["train/004.png"]
    shard = read_json(out)
    assert not Path(str(out) + ".partial.jsonl").exists()
    records = shard["records"]
    assert stats["num_proposals"] == len(records) > 0
    assert {r["image_id"] for r in records} == {1, 2, 3, 5}
    for image_id in (1, 2, 3, 5):
        mine = [r for r in records if r["image_id"] == image_id]
        assert [r["rank"] for r in mine] == list(range(len(mine))) and len(mine) <= 5
        assert all(a["score"] >= b["score"] for a, b in zip(mine, mine[1:]))
        seen = box_mask(BOX_SEEN)
        seen = np.roll(seen, image_id, axis=1)
        best = max(mine, key=lambda r: (decode_rle(r["segmentation"]) & seen).sum())
        assert best["gt_iou"] == pytest.approx(1.0)  # the seen object is found exactly and matched to its GT
        unseen = [r for r in mine if decode_rle(r["segmentation"])[35, 65 + image_id]]
        assert unseen and min(r["gt_iou"] for r in unseen) == 0.0  # the unseen object does not count as GT
    r = records[0]
    assert set(r) == {"image_id", "segmentation", "bbox", "area", "score", "rank", "gt_iou", "source"}
    assert r["source"] == "train" and r["segmentation"]["size"] == [HEIGHT, WIDTH]
    assert r["area"] == decode_rle(r["segmentation"]).sum()


class Interrupt(RuntimeError):
    pass


def extract_killed_after_two_images(dataset, out: Path, monkeypatch) -> None:
    """Extract the train shard into `out`, interrupted while grouping its third image."""
    real = extract_module.group_image
    calls = {"n": 0}

    def failing(*args):
        calls["n"] += 1
        if calls["n"] > 2:
            raise Interrupt("killed")
        return real(*args)

    monkeypatch.setattr(extract_module, "group_image", failing)
    with pytest.raises(Interrupt):
        extract_shard("m.pt", dataset["train_json"], dataset["root"], "train", 0, 1, OPTIONS, out)


def test_resume_after_kill_is_byte_identical(dataset, tmp_path, monkeypatch):
    reference = tmp_path / "reference.json"
    extract_shard("m.pt", dataset["train_json"], dataset["root"], "train", 0, 1, OPTIONS, reference)

    real = extract_module.group_image
    out = tmp_path / "resumed.json"
    extract_killed_after_two_images(dataset, out, monkeypatch)
    partial = Path(str(out) + ".partial.jsonl")
    assert not out.exists() and len(partial.read_text().splitlines()) >= 2
    with open(partial, "a") as f:
        f.write('{"image_id": 99, "torn')  # a line torn by the kill
    monkeypatch.setattr(extract_module, "group_image", real)
    extract_shard("m.pt", dataset["train_json"], dataset["root"], "train", 0, 1, OPTIONS, out)
    assert out.read_bytes() == reference.read_bytes()
    assert not partial.exists()


def test_worker_pool_matches_inline(dataset, tmp_path):
    inline = tmp_path / "inline.json"
    pooled = tmp_path / "pooled.json"
    extract_shard("m.pt", dataset["unlabeled_json"], dataset["other_root"], "u", 0, 1, OPTIONS, inline)
    options = ExtractOptions(**{**OPTIONS.__dict__, "num_workers": 1})
    extract_shard("m.pt", dataset["unlabeled_json"], dataset["other_root"], "u", 0, 1, options, pooled)
    assert inline.read_bytes() == pooled.read_bytes()


def test_merge_pseudo(dataset, tmp_path):
    shards = []
    for shard in range(2):
        path = tmp_path / f"train_{shard}.json"
        extract_shard(
            "m.pt",
            dataset["train_json"],
            dataset["root"],
            "train",
            shard,
            2,
            OPTIONS,
            path,
            gt_category_ids=[1],
        )
        shards.append(str(path))
    path = tmp_path / "unlabeled_0.json"
    extract_shard("m.pt", dataset["unlabeled_json"], dataset["other_root"], "unlabeled", 0, 1, OPTIONS, path)
    shards.append(str(path))
    out, stats_path, gallery = tmp_path / "merged.json", tmp_path / "stats.json", tmp_path / "gallery.png"
    stats = merge_pseudo(
        dataset["train_json"],
        shards,
        [1],
        MergeOptions(top_k=2),
        out,
        stats_path,
        gallery,
        dataset["root"],
        full_gt_json=dataset["train_json"],
    )
    merged = read_json(out)
    assert merged["categories"][-1] == {"id": 3, "name": "pseudo", "supercategory": "pseudo"}
    gt_anns = [a for a in merged["annotations"] if not a.get("pseudo")]
    pseudo = [a for a in merged["annotations"] if a.get("pseudo")]
    assert {a["category_id"] for a in gt_anns} == {1} and len(gt_anns) == 5
    assert {a["category_id"] for a in pseudo} == {3}
    ids = [a["id"] for a in merged["annotations"]]
    assert len(set(ids)) == len(ids) and min(a["id"] for a in pseudo) > 10
    per_image = {}
    for a in pseudo:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    assert max(per_image.values()) <= 2
    # unlabeled images get new ids and file names that resolve against the output root
    added = [im for im in merged["images"] if im["id"] > 5]
    assert len(added) == 2 and len(merged["images"]) == 7
    for im in added:
        assert (Path(dataset["root"]) / im["file_name"]).resolve() == (
            dataset["other_root"] / Path(im["file_name"]).name
        ).resolve()
        assert im["id"] in per_image
    # no kept pseudo mask overlaps the seen GT; the unseen objects are recovered
    assert all(a["score"] is not None for a in pseudo)
    assert stats["dropped"]["overlaps_gt"] >= 4
    assert stats["unseen_recall"]["num_objects"] == 4 and stats["unseen_recall"]["recall"] == 1.0
    assert stats["num_pseudo_kept"] == len(pseudo)
    assert sum(stats["score_histogram"]["counts"]) == len(pseudo)
    assert sum(stats["kept_per_image"].values()) == 6
    assert json.loads(stats_path.read_text()) == stats
    image = cv2.imread(str(gallery))
    assert image is not None and image.shape[1] == 4 * 256


def test_progress_of_other_settings_is_discarded(dataset, tmp_path):
    reference = tmp_path / "reference.json"
    extract_shard("m.pt", dataset["train_json"], dataset["root"], "train", 0, 1, OPTIONS, reference)
    out = tmp_path / "out.json"
    stale = {"image_id": 1, "skipped": False, "records": [{"bogus": True}], "seconds": 0.0}
    Path(str(out) + ".partial.jsonl").write_text('{"settings": "other"}\n' + json.dumps(stale) + "\n")
    extract_shard("m.pt", dataset["train_json"], dataset["root"], "train", 0, 1, OPTIONS, out)
    assert out.read_bytes() == reference.read_bytes()


def test_extract_with_a_wrong_image_root_fails_naming_the_root_and_a_file(dataset, tmp_path):
    """Issue 15: every image unreadable must not give an empty shard and exit 0."""
    wrong = tmp_path / "nowhere"
    out = tmp_path / "shard.json"
    with pytest.raises(ValueError, match=rf"5 of 5 images under {wrong} could not be read \(more than "
                                         rf"extract.max_skipped_fraction = 0.5\); first: {wrong}/train/001.png"):
        extract_shard("m.pt", dataset["train_json"], wrong, "train", 0, 1, OPTIONS, out)
    assert not out.exists()
    # the same output path with the right root: skipped images are read again, not resumed as skipped
    reference = tmp_path / "reference.json"
    extract_shard("m.pt", dataset["train_json"], dataset["root"], "train", 0, 1, OPTIONS, reference)
    extract_shard("m.pt", dataset["train_json"], dataset["root"], "train", 0, 1, OPTIONS, out)
    assert out.read_bytes() == reference.read_bytes()


def test_extract_skipped_fraction_is_configurable(dataset, tmp_path, caplog):
    out = tmp_path / "shard.json"
    strict = ExtractOptions(**{**OPTIONS.__dict__, "max_skipped_fraction": 0.1})
    with pytest.raises(ValueError, match=r"1 of 5 images .* extract.max_skipped_fraction = 0.1\); first: .*004.png"):
        extract_shard("m.pt", dataset["train_json"], dataset["root"], "train", 0, 1, strict, out)
    assert not out.exists()
    with caplog.at_level("WARNING"):
        stats = extract_shard("m.pt", dataset["train_json"], dataset["root"], "train", 0, 1, OPTIONS, out)
    assert stats["num_skipped"] == 1 and out.exists()
    assert f"skipped 1 of 5 unreadable images under {dataset['root']}" in caplog.text


def test_extract_logs_progress_with_rate_and_eta(dataset, tmp_path, caplog):
    with caplog.at_level("INFO", logger="oln.progress"):
        extract_shard("m.pt", dataset["train_json"], dataset["root"], "train", 0, 1, OPTIONS, tmp_path / "s.json")
    lines = [r.getMessage() for r in caplog.records if r.name == "oln.progress"]
    assert lines[0].startswith("extract train shard 0/1 1/5 (20%)")
    assert lines[-1].startswith("extract train shard 0/1 5/5 (100%)")
    assert all(" img/s elapsed " in line and " eta " in line for line in lines)


def test_extract_progress_of_a_resumed_shard_starts_at_the_images_done(dataset, tmp_path, monkeypatch, caplog):
    real = extract_module.group_image
    out = tmp_path / "resumed.json"
    extract_killed_after_two_images(dataset, out, monkeypatch)
    monkeypatch.setattr(extract_module, "group_image", real)
    caplog.clear()
    with caplog.at_level("INFO", logger="oln.progress"):
        extract_shard("m.pt", dataset["train_json"], dataset["root"], "train", 0, 1, OPTIONS, out)
    lines = [r.getMessage() for r in caplog.records if r.name == "oln.progress"]
    assert lines[0].startswith("extract train shard 0/1 3/5 (60%)")  # 2 grouped before the kill; 004 retried
    assert lines[-1].startswith("extract train shard 0/1 5/5 (100%)")


def merge_args(dataset, tmp_path, image_root):
    path = tmp_path / "shard.json"
    if not path.exists():
        extract_shard("m.pt", dataset["train_json"], dataset["root"], "train", 0, 1, OPTIONS, path,
                      gt_category_ids=[1])
    outputs = tmp_path / "merged.json", tmp_path / "stats.json", tmp_path / "gallery.png"
    return (dataset["train_json"], [str(path)], [1], MergeOptions(), *outputs, image_root)


def test_merge_with_a_wrong_image_root_fails_naming_the_root_and_a_file(dataset, tmp_path):
    """A wrong --image-root used to give a json whose annotated images all fail to load."""
    wrong = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=rf"5 of 5 images under {wrong} could not be read \(more than "
                                         rf"merge.max_skipped_fraction = 0.5\); first: {wrong}/train/001.png"):
        merge_pseudo(*merge_args(dataset, tmp_path, wrong))
    assert not (tmp_path / "merged.json").exists()


def test_merge_with_an_unlabeled_shard_whose_images_moved_fails(dataset, tmp_path):
    args = merge_args(dataset, tmp_path, dataset["root"])
    path = tmp_path / "unlabeled_0.json"
    extract_shard("m.pt", dataset["unlabeled_json"], dataset["other_root"], "unlabeled", 0, 1, OPTIONS, path)
    write_json(path, {**read_json(path), "image_root": str(tmp_path / "moved")})
    with pytest.raises(ValueError, match=r"2 of 2 images under .*moved could not be read"):
        merge_pseudo(*args[:1], [*args[1], str(path)], *args[2:])


def test_train_shard_of_a_copied_results_folder_merges_onto_the_annotated_images(dataset, tmp_path, caplog):
    """A results folder copied elsewhere keeps shards whose image_root names the old place:
    the pseudo masks must land on the annotated images, not on 4 added images without GT."""
    args = merge_args(dataset, tmp_path, dataset["root"])
    merge_pseudo(*args)
    expected = read_json(tmp_path / "merged.json")
    shard = read_json(args[1][0])
    write_json(args[1][0], {**shard, "image_root": str(tmp_path / "elsewhere" / "images")})
    with caplog.at_level("WARNING"):
        merge_pseudo(*args)
    assert "matched by file name" in caplog.text
    merged = read_json(tmp_path / "merged.json")
    assert merged == expected and len(merged["images"]) == 5
    assert any(a.get("pseudo") for a in merged["annotations"])


def test_train_shard_of_another_dataset_fails_naming_the_image(dataset, tmp_path):
    args = merge_args(dataset, tmp_path, dataset["root"])
    shard = read_json(args[1][0])
    shard["images"][0]["file_name"] = "train/999.png"
    write_json(args[1][0], shard)
    with pytest.raises(ValueError, match=r"image 'train/999.png' of source 'train' is not in the annotated json"):
        merge_pseudo(*args)


def test_merge_with_a_few_missing_images_warns_and_writes(dataset, tmp_path, caplog):
    args = merge_args(dataset, tmp_path, dataset["root"])
    (dataset["root"] / "train" / "002.png").unlink()
    with caplog.at_level("WARNING"):
        stats = merge_pseudo(*args)
    assert f"skipped 1 of 5 unreadable images under {dataset['root']}" in caplog.text
    assert stats["num_images"] == 5 and (tmp_path / "merged.json").exists()


def test_finished_file_of_another_model_is_extracted_again(dataset, tmp_path, monkeypatch):
    """A finished shard (or PA-proposal records file, which Snakemake does not delete) is reused
    only for the model file it was extracted with: a retrained PA model gives new records."""
    from oln.pseudo.proposals import extract_proposals

    model = tmp_path / "pa.pt"
    model.write_bytes(b"first model")
    out = tmp_path / "val_proposals.json"
    extract_proposals(model, dataset["train_json"], dataset["root"], OPTIONS, 5, out)
    first = read_json(out)
    assert first and extract_proposals(model, dataset["train_json"], dataset["root"], OPTIONS, 5, out)
    assert read_json(out) == first  # same model file: the finished records are reused

    def flat_affinity(model, images, meta, device, batch_size=1):  # the "retrained" model: no outlines
        return [torch.full((2, *img.shape[1:]), 0.9) for img in images]

    monkeypatch.setattr(extract_module, "predict_affinity", flat_affinity)
    model.write_bytes(b"retrained model")
    extract_proposals(model, dataset["train_json"], dataset["root"], OPTIONS, 5, out)
    fresh = tmp_path / "fresh.json"
    extract_proposals(model, dataset["train_json"], dataset["root"], OPTIONS, 5, fresh)
    assert read_json(out) == read_json(fresh) != first
