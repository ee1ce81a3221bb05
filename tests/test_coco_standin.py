"""The COCO stand-in looks like COCO 2017 to our code and to pycocotools, and is deterministic."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from oln.data.coco import CocoInstances, load_image
from oln.data.filtering import images_with_training_annotations
from oln.data.splits import COCO_NAMES, resolve_split
from oln.data.standin import COCO_IDS, UNLABELED_MODES, make_coco_standin, mask_to_polygons
from oln.io import read_json

COUNTS = {"num_train": 10, "num_val": 5, "num_unlabeled": 8}


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> dict:
    started = time.perf_counter()
    paths = make_coco_standin(tmp_path_factory.mktemp("standin"), **COUNTS)
    paths["seconds"] = time.perf_counter() - started
    return paths


def _coco(path: str) -> COCO:
    return COCO(path)


def test_fast(standin):
    assert standin["seconds"] < 10


def test_categories_are_cocos(standin):
    for split in ("train", "val"):
        cats = read_json(standin[f"{split}_json"])["categories"]
        assert [c["name"] for c in cats] == list(COCO_NAMES)
        ids = [c["id"] for c in cats]
        assert ids == list(COCO_IDS) and len(ids) == 80 and ids[-1] == 90
        assert {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}.isdisjoint(ids)
        by_id = {c["id"]: c for c in cats}
        assert by_id[1]["name"] == "person" and by_id[1]["supercategory"] == "person"
        assert (by_id[13]["name"], by_id[13]["supercategory"]) == ("stop sign", "outdoor")
        assert (by_id[67]["name"], by_id[67]["supercategory"]) == ("dining table", "furniture")
        assert (by_id[90]["name"], by_id[90]["supercategory"]) == ("toothbrush", "indoor")


def test_images_are_varied_resolvable_jpegs(standin):
    sizes = set()
    for split in ("train", "val"):
        data = read_json(standin[f"{split}_json"])
        assert len(data["images"]) == COUNTS[f"num_{split}"]
        for info in data["images"]:
            path = Path(standin[f"{split}_images"]) / info["file_name"]
            assert info["file_name"] == f"{info['id']:012d}.jpg"
            with Image.open(path) as img:
                assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (info["width"], info["height"]))
            assert 200 <= min(info["height"], info["width"]) and max(info["height"], info["width"]) <= 500
            assert info["height"] != info["width"]
            sizes.add((info["height"], info["width"]))
    assert len(sizes) >= 10
    assert any(h > w for h, w in sizes) and any(h < w for h, w in sizes)
    train_ids = {im["id"] for im in read_json(standin["train_json"])["images"]}
    assert train_ids.isdisjoint(im["id"] for im in read_json(standin["val_json"])["images"])


def test_pycocotools_loads_polygons_and_crowd_rle(standin):
    for split in ("train", "val"):
        coco = _coco(standin[f"{split}_json"])
        anns = coco.loadAnns(coco.getAnnIds())
        polygons = [a for a in anns if isinstance(a["segmentation"], list)]
        crowd = [a for a in anns if a["iscrowd"]]
        assert polygons and crowd
        assert all(a["iscrowd"] == 0 for a in polygons)
        assert all(isinstance(a["segmentation"]["counts"], list) for a in crowd)  # COCO's uncompressed RLE
        for ann in anns:
            info = coco.imgs[ann["image_id"]]
            mask = coco.annToMask(ann)
            assert mask.shape == (info["height"], info["width"])
            assert abs(mask.sum() - ann["area"]) <= 1
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= info["width"] + 0.5 and y + h <= info["height"] + 0.5


def test_voc_and_nonvoc_annotated_and_filter_has_work(standin):
    for split in ("train", "val"):
        data = read_json(standin[f"{split}_json"])
        for name in ("voc", "nonvoc"):
            ids = set(resolve_split(name, data["categories"]))
            assert any(a["category_id"] in ids for a in data["annotations"]), (split, name)
    train = read_json(standin["train_json"])
    voc = resolve_split("voc", train["categories"])
    kept = images_with_training_annotations(train["images"], train["annotations"], voc)
    dropped = {im["id"] for im in train["images"]} - {im["id"] for im in kept}
    annotated = {a["image_id"] for a in train["annotations"]}
    assert len(dropped) == 3
    assert len(dropped - annotated) == 1  # one image without any annotation, two with only non-VOC ones
    dataset = CocoInstances(standin["train_json"], standin["train_images"], category_ids=voc, filter_empty_gt=True)
    assert len(dataset) == COUNTS["num_train"] - 3
    image, target = dataset[0]
    assert image.shape[1:] == target["masks"].shape[1:] and len(target["boxes"]) > 0


def test_unlabeled_modes(standin):
    folder = Path(standin["unlabeled_images"])
    modes = {}
    for path in sorted(folder.iterdir()):
        with Image.open(path) as img:
            modes[path.stem.split("_", 1)[1]] = (img.format, img.mode, img.getexif().get(0x0112))
    assert set(modes) == set(UNLABELED_MODES)
    assert modes["gray"][:2] == ("JPEG", "L") and modes["cmyk"][:2] == ("JPEG", "CMYK")
    assert modes["rgba"][:2] == ("PNG", "RGBA") and modes["palette"][:2] == ("PNG", "P")
    assert modes["gray16"][0] == "PNG" and modes["gray16"][1] in ("I;16", "I")
    assert modes["exif_rotated"][2] == 6
    index = read_json(standin["unlabeled_json"])
    assert len(index["images"]) == COUNTS["num_unlabeled"] and index["annotations"] == []
    for info in index["images"]:
        pixels = load_image(folder / info["file_name"], (info["height"], info["width"]))
        assert pixels.shape == (info["height"], info["width"], 3) and pixels.dtype == np.uint8
        assert 20 < pixels.mean() < 235  # a scene, not a saturated or empty decode


def test_deterministic(standin, tmp_path):
    again = make_coco_standin(tmp_path, **COUNTS)
    for key in ("train_json", "val_json", "unlabeled_json"):
        assert Path(again[key]).read_bytes() == Path(standin[key]).read_bytes()
    for key in ("train_images", "val_images", "unlabeled_images"):
        names = sorted(p.name for p in Path(standin[key]).iterdir())
        assert names == sorted(p.name for p in Path(again[key]).iterdir())
        for name in names:
            assert (Path(again[key]) / name).read_bytes() == (Path(standin[key]) / name).read_bytes()


def test_mask_to_polygons_round_trip():
    mask = np.zeros((20, 30), bool)
    mask[4:10, 5:15] = True  # 6 x 10 rectangle
    mask[14:18, 20:26] = True  # a second component
    mask[1, 1] = mask[1, 3:6] = True  # a single pixel and a one-pixel-thin run
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 4 and all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
    from pycocotools import mask as mask_utils

    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, 20, 30))).astype(bool)
    assert (decoded == mask).all()  # pixel-edge outlines: exact for axis-aligned shapes


def test_cli(tmp_path):
    from oln.cli import main

    assert main(["make-coco-standin", str(tmp_path), "--num-train", "4", "--num-val", "1",
                 "--num-unlabeled", "0"]) == 0
    assert len(read_json(tmp_path / "annotations" / "instances_train2017.json")["images"]) == 4
    assert list((tmp_path / "unlabeled").iterdir()) == []
    assert main(["make-coco-standin", str(tmp_path), "--num-train", "2"]) == 2  # too few for the filter images
