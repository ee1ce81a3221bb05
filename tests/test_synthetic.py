"""Tests of the synthetic open-world dataset, its shapes, the summary and the preview."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from oln.data import shapes
from oln.data.summary import dataset_summary, draw_preview, size_bucket
from oln.data.synthetic import (
    CATEGORY_NAMES,
    SEEN_NAMES,
    UNSEEN_NAMES,
    SyntheticOptions,
    _draw_category_names,
    categories,
    coco_area_thresholds,
    render_scene,
    synthesize,
)
from oln.io import read_json
from oln.rle import decode_rle

SMALL = dict(num_train=6, num_val=3, num_unlabeled=3, image_size=64)


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset40(tmp_path_factory) -> Path:
    """40 annotated training images at the default 128 px (plus small val/unlabeled)."""
    out = tmp_path_factory.mktemp("syn40")
    synthesize(out, SyntheticOptions(num_train=40, num_val=10, num_unlabeled=5))
    return out


def test_category_split_is_a_partition_of_twelve_shapes():
    assert len(CATEGORY_NAMES) == 12 and len(set(CATEGORY_NAMES)) == 12
    assert len(SEEN_NAMES) == 6 and len(UNSEEN_NAMES) == 6
    assert not set(SEEN_NAMES) & set(UNSEEN_NAMES)
    assert set(SEEN_NAMES) | set(UNSEEN_NAMES) == set(CATEGORY_NAMES)
    cats = categories()
    assert [c["id"] for c in cats] == list(range(1, 13))
    by_name = {c["name"]: c for c in cats}
    assert by_name["disc"] == {"id": 1, "name": "disc", "supercategory": "seen"}
    assert by_name["ring"]["supercategory"] == "unseen"
    assert {c["name"] for c in cats if c["supercategory"] == "seen"} == set(SEEN_NAMES)



def test_seen_names_move_the_split_and_the_per_image_guarantee(tmp_path):
    options = SyntheticOptions(num_train=12, num_val=0, num_unlabeled=0, image_size=64,
                               seen_names=["cross", "disc", "triangle"])
    cats = categories(options)
    assert [c["name"] for c in cats if c["supercategory"] == "seen"] == ["disc", "triangle", "cross"]
    assert sum(c["supercategory"] == "unseen" for c in cats) == 9
    synthesize(tmp_path, options)
    train = read_json(tmp_path / "train.json")
    assert train["categories"] == cats
    # every image draws one of the three seen shapes and one unseen one (before occlusion drops)
    rng = np.random.default_rng(0)
    for count in [2] * 100 + [8] * 100:
        names = _draw_category_names(count, options, rng)
        assert set(names) & {"disc", "triangle", "cross"} and set(names) - {"disc", "triangle", "cross"}


@pytest.mark.parametrize("names", [["disc", "sphere"], [], list(CATEGORY_NAMES), ["disc", "disc"]])
def test_bad_seen_names_are_an_error_naming_the_key(tmp_path, names):
    with pytest.raises(ValueError, match="synthetic.seen_names"):
        synthesize(tmp_path, SyntheticOptions(num_train=1, num_val=0, num_unlabeled=0, seen_names=names))


def test_coco_area_thresholds_scale_with_image_side():
    assert coco_area_thresholds(640) == (1024.0, 9216.0)
    small_max, large_min = coco_area_thresholds(128)  # factor (128/640)**2 = 0.04
    assert small_max == pytest.approx(40.96) and large_min == pytest.approx(368.64)


def test_shape_outlines_rasterise_to_the_requested_pixel_count():
    rng = np.random.default_rng(0)
    for name, make in shapes.SHAPES.items():
        outline = make(rng)
        scale = shapes.scale_for_pixel_count(outline, 400.0)
        mask = shapes.rasterise(shapes.place_contours(outline, (32.0, 32.0), scale, 0.3), 64, 64)
        assert 360 <= mask.sum() <= 440, name  # within 10 % of 400 pixels
    # A ring has a hole in the middle, a disc does not.
    ring = shapes.place_contours(shapes.ring(rng), (16.0, 16.0), 10.0, 0.0)
    disc = shapes.place_contours(shapes.disc(rng), (16.0, 16.0), 10.0, 0.0)
    assert shapes.rasterise(ring, 32, 32)[16, 16] == 0 and shapes.rasterise(ring, 32, 32)[16, 24] == 1
    assert shapes.rasterise(disc, 32, 32)[16, 16] == 1
    # Unit square scaled by 5 around (10, 10): corners at 5 and 15 -> 11 x 11 pixels.
    square = shapes.place_contours(shapes.square(rng), (10.0, 10.0), 5.0, 0.0)
    assert shapes.rasterise(square, 20, 20).sum() == 121


def test_same_seed_gives_byte_identical_files_and_rerun_is_idempotent(tmp_path):
    options = SyntheticOptions(**SMALL, seed=3)
    first = synthesize(tmp_path / "a", options)
    second = synthesize(tmp_path / "b", options)
    assert first == second
    files_a, files_b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    assert len(files_a) == 3 + 12  # three json files and 12 PNGs
    assert files_a == files_b
    synthesize(tmp_path / "a", options)  # re-run in place
    assert _all_files(tmp_path / "a") == files_a


def test_different_seed_gives_different_images_and_annotations(tmp_path):
    synthesize(tmp_path / "a", SyntheticOptions(**SMALL, seed=0))
    synthesize(tmp_path / "b", SyntheticOptions(**SMALL, seed=1))
    for name in ("train/000001.png", "val/000001.png", "unlabeled/000001.png"):
        assert (tmp_path / "a/images" / name).read_bytes() != (tmp_path / "b/images" / name).read_bytes()
    ann_a = read_json(tmp_path / "a/train.json")["annotations"]
    ann_b = read_json(tmp_path / "b/train.json")["annotations"]
    assert [a["segmentation"] for a in ann_a] != [b["segmentation"] for b in ann_b]


def test_images_do_not_depend_on_split_sizes_and_stale_images_are_removed(tmp_path):
    synthesize(tmp_path, SyntheticOptions(**{**SMALL, "num_train": 5}))
    five = (tmp_path / "images/train/000002.png").read_bytes()
    synthesize(tmp_path, SyntheticOptions(**{**SMALL, "num_train": 2}))
    assert (tmp_path / "images/train/000002.png").read_bytes() == five
    assert sorted(p.name for p in (tmp_path / "images/train").iterdir()) == ["000001.png", "000002.png"]


def test_annotations_are_tight_disjoint_visible_masks(dataset40):
    image_ids, annotation_ids = set(), set()
    for split in ("train", "val", "unlabeled"):
        coco = read_json(dataset40 / f"{split}.json")
        assert coco["categories"] == categories()
        for image in coco["images"]:
            assert image["id"] not in image_ids
            image_ids.add(image["id"])
            assert image["file_name"].startswith(f"{split}/") and image["height"] == image["width"] == 128
            pixels = cv2.imread(str(dataset40 / "images" / image["file_name"]), cv2.IMREAD_UNCHANGED)
            assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
        by_image: dict[int, list[np.ndarray]] = {}
        for ann in coco["annotations"]:
            assert ann["id"] not in annotation_ids
            annotation_ids.add(ann["id"])
            assert isinstance(ann["segmentation"]["counts"], str) and ann["iscrowd"] == 0
            assert 1 <= ann["category_id"] <= 12
            mask = decode_rle(ann["segmentation"])
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            tight = [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
            assert ann["bbox"] == [int(v) for v in tight]
            assert ann["area"] == int(mask.sum()) >= 0.0006 * 128 * 128
            by_image.setdefault(ann["image_id"], []).append(mask)
        for masks in by_image.values():
            assert np.stack(masks).sum(0).max() == 1  # no two masks overlap


def test_unlabeled_split_has_images_but_no_annotations(dataset40):
    coco = read_json(dataset40 / "unlabeled.json")
    assert len(coco["images"]) == 5 and coco["annotations"] == []


def test_all_categories_occur_in_forty_images_with_seen_and_unseen_mixed(dataset40):
    coco = read_json(dataset40 / "train.json")
    assert {a["category_id"] for a in coco["annotations"]} == set(range(1, 13))
    seen_ids = {c["id"] for c in categories() if c["supercategory"] == "seen"}
    groups: dict[int, set[bool]] = {}
    for ann in coco["annotations"]:
        groups.setdefault(ann["image_id"], set()).add(ann["category_id"] in seen_ids)
    mixed = sum(len(g) == 2 for g in groups.values())
    assert mixed >= 0.8 * len(coco["images"])


def test_default_sizes_cover_all_categories_and_size_buckets():
    options = SyntheticOptions()
    small_max, large_min = coco_area_thresholds(options.image_size)
    counts = np.zeros(13, int)
    buckets = {"small": 0, "medium": 0, "large": 0}
    for split_index, num in ((0, options.num_train), (1, options.num_val)):
        for index in range(num):
            rng = np.random.default_rng([options.seed, split_index, index])  # as synthesize seeds it
            _, category_ids, masks = render_scene(options, rng)
            assert len(category_ids) <= options.max_objects
            np.add.at(counts, category_ids, 1)
            for area in masks.sum((1, 2)):
                buckets["small" if area < small_max else "large" if area > large_min else "medium"] += 1
    # 500 images x 5 objects drawn on average; few are dropped as (almost) fully hidden.
    assert counts.sum() >= 0.9 * 5 * 500
    assert (counts[1:] >= 100).all()  # ~200 per category
    total = sum(buckets.values())
    assert all(count > 0.15 * total for count in buckets.values()), buckets


def test_without_occlusion_full_shapes_are_kept_apart():
    options = SyntheticOptions(image_size=96, occlusion=False, min_objects=4, max_objects=4)
    for index in range(10):
        image, category_ids, masks = render_scene(options, np.random.default_rng(index))
        assert image.shape == (96, 96, 3) and 1 <= len(category_ids) <= 4
        grown = [cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)) for m in masks]
        assert np.stack(grown).sum(0).max() <= 1 or len(masks) == 1  # a gap of at least 1 pixel


def _tiny_coco(side: int) -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": side, "width": side},
                   {"id": 2, "file_name": "b.png", "height": side, "width": side}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "area": 100, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "area": 2000, "bbox": [0, 0, 40, 50], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 2, "area": 10000, "bbox": [0, 0, 100, 100], "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "disc", "supercategory": "seen"},
                       {"id": 2, "name": "ring", "supercategory": "unseen"},
                       {"id": 3, "name": "heart", "supercategory": "unseen"}],
    }


def test_dataset_summary_counts_by_hand(tmp_path):
    from oln.io import write_json

    write_json(tmp_path / "big.json", _tiny_coco(640))
    write_json(tmp_path / "small.json", _tiny_coco(128))
    summary = dataset_summary({"big": tmp_path / "big.json", "small": tmp_path / "small.json"})
    big = summary["big"]
    assert (big["images"], big["images_with_annotations"], big["instances"], big["crowd"]) == (2, 1, 3, 1)
    assert big["size_coco"] == {"small": 1, "medium": 1, "large": 1} == big["size_scaled"]
    assert big["supercategories"] == {"seen": 1, "unseen": 2}
    assert big["categories"]["ring"]["instances"] == 2 and big["categories"]["ring"]["images"] == 1
    assert big["categories"]["heart"]["instances"] == 0
    # At 128 px the scaled thresholds are 40.96 and 368.64: 100 is medium, 2000 and 10000 large.
    assert summary["small"]["size_scaled"] == {"small": 0, "medium": 1, "large": 2}
    assert summary["small"]["size_coco"] == big["size_coco"]
    assert size_bucket(1023) == "small" and size_bucket(1024) == "medium" and size_bucket(9217) == "large"


def test_draw_preview_grid_with_seen_and_unseen_contours(dataset40, tmp_path):
    out = tmp_path / "preview.png"
    images = dataset40 / "images"
    assert draw_preview(dataset40 / "val.json", images, out, num_images=4, seed=1, tile_size=64) == 4
    grid = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert grid.shape == (2 * 64 + 22, 2 * 64, 3)  # 2 x 2 tiles plus the legend strip
    tiles = grid[:128]
    assert (np.abs(tiles.astype(int) - (0, 230, 0)).sum(-1) == 0).any()  # seen contour colour
    assert (np.abs(tiles.astype(int) - (255, 40, 255)).sum(-1) == 0).any()  # unseen contour colour
    # Asking for more images than exist draws them all; an empty split still writes a legend.
    assert draw_preview(dataset40 / "unlabeled.json", images, out, num_images=50, tile_size=32) == 5
    empty = tmp_path / "empty.json"
    empty.write_text('{"images": [], "annotations": [], "categories": []}')
    assert draw_preview(empty, images, tmp_path / "empty.png") == 0
    assert cv2.imread(str(tmp_path / "empty.png")) is not None
    # A missing image file becomes a plain grey tile instead of an error.
    missing = tmp_path / "missing.json"
    missing.write_text('{"images": [{"id": 1, "file_name": "nope.png", "height": 8, "width": 8}], '
                       '"annotations": [], "categories": []}')
    assert draw_preview(missing, images, tmp_path / "missing.png", tile_size=16) == 1
    assert (cv2.imread(str(tmp_path / "missing.png"))[:16] == 128).all()


def test_unseen_textured_fill_applies_to_unseen_objects_only(monkeypatch):
    import oln.data.synthetic as synthetic

    calls: list[float] = []
    real_fill = synthetic.object_fill

    def recording_fill(*args, textured_fill=None, **kwargs):
        calls.append(textured_fill)
        return real_fill(*args, textured_fill=textured_fill, **kwargs)

    monkeypatch.setattr(synthetic, "object_fill", recording_fill)
    options = SyntheticOptions(image_size=64, textured_fill=0.2, unseen_textured_fill=0.9)
    seen_ids = {CATEGORY_NAMES.index(name) + 1 for name in SEEN_NAMES}
    for index in range(5):
        calls.clear()
        _, category_ids, _ = render_scene(options, np.random.default_rng(index))
        assert calls == [0.2 if cid in seen_ids else 0.9 for cid in category_ids]
    # None means textured_fill for every object: the same random draws, the same image
    same = [render_scene(SyntheticOptions(image_size=64, unseen_textured_fill=value), np.random.default_rng(3))[0]
            for value in (None, 0.6)]
    assert np.array_equal(same[0], same[1])
