"""COCO data layer: decoding rules, round trips, unreadable files skipped and counted."""

import io
import logging

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from oln.data.coco import (
    CocoInstances,
    UnreadableImage,
    annotation_to_mask,
    collate_list,
    images_json_from_folder,
    load_image,
)
from oln.io import read_json, write_json
from oln.rle import encode_mask


def _png(path, array, mode=None):
    Image.fromarray(array, mode=mode).save(path)


@pytest.fixture
def coco_dir(tmp_path):
    """Three 8x10 images: polygon + RLE + crowd annotations, a crowd-only image, an empty image."""
    root = tmp_path / "images"
    root.mkdir()
    for i in (1, 2, 3):
        _png(root / f"{i}.png", np.full((8, 10, 3), 40 * i, np.uint8))
    rle_mask = np.zeros((8, 10), bool)
    rle_mask[5:8, 6:9] = True  # 3x3 square
    rle = encode_mask(rle_mask)
    crowd = np.zeros((8, 10), bool)
    crowd[0:2, 0:10] = True
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 8, "width": 10} for i in (1, 2, 3)],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            # polygon: the axis-aligned rectangle x in [1,4], y in [1,3] -> 4x3 = 12 pixels
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 12, "bbox": [1, 1, 4, 3],
             "segmentation": [[1, 1, 4.99, 1, 4.99, 3.99, 1, 3.99]]},
            {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0, "area": 9, "bbox": [6, 5, 3, 3],
             "segmentation": rle},
            {"id": 3, "image_id": 2, "category_id": 2, "iscrowd": 1, "area": 20, "bbox": [0, 0, 10, 2],
             "segmentation": {"size": [8, 10], "counts": mask_utils.encode(
                 np.asfortranarray(crowd.astype(np.uint8)))["counts"].decode()}},
            {"id": 4, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 16, "bbox": [0, 0, 2, 8],
             "segmentation": {"size": [8, 10], "counts": [0, 16, 64]}},
            {"id": 5, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 4, "bbox": [0, 6, 2, 2],
             "segmentation": {"size": [8, 10], "counts": rle["counts"]}, "pseudo": 1},
        ],
    }
    write_json(tmp_path / "ann.json", data)
    return tmp_path


def test_polygon_rle_crowd_round_trip(coco_dir):
    ds = CocoInstances(coco_dir / "ann.json", coco_dir / "images")
    assert len(ds) == 3
    image, target = ds[0]
    assert image.shape == (3, 8, 10) and abs(float(image.max()) - 40 / 255) < 1e-6
    masks = target["masks"].numpy().astype(bool)
    assert masks.shape == (3, 8, 10)
    assert masks[0].sum() == 12 and masks[0][1:4, 1:5].all()  # polygon -> 4x3 rectangle
    assert masks[1].sum() == 9 and masks[1][5:8, 6:9].all()  # compressed RLE
    assert target["labels"].tolist() == [1, 1, 1]
    assert target["category_ids"].tolist() == [1, 2, 1]
    assert target["pseudo"].tolist() == [0, 0, 1]
    assert target["boxes"][0].tolist() == [1, 1, 5, 4]  # xywh -> xyxy
    _, target2 = ds[1]
    assert target2["iscrowd"].tolist() == [1, 0]
    assert target2["masks"][0].sum() == 20  # crowd RLE, two full rows
    assert target2["masks"][1].numpy()[:, 0:2].all() and target2["masks"][1].sum() == 16  # uncompressed RLE
    _, target3 = ds[2]
    assert target3["boxes"].shape == (0, 4) and target3["masks"].shape == (0, 8, 10)


def test_category_filter_and_pseudo_flag(coco_dir):
    seen_only = CocoInstances(coco_dir / "ann.json", coco_dir / "images", category_ids=[2], include_pseudo=False)
    assert seen_only[0][1]["category_ids"].tolist() == [2]
    with_pseudo = CocoInstances(coco_dir / "ann.json", coco_dir / "images", category_ids=[2])
    assert with_pseudo[0][1]["category_ids"].tolist() == [2, 1]  # pseudo kept whatever its category
    assert with_pseudo[0][1]["pseudo"].tolist() == [0, 1]


def test_collate_keeps_lists(coco_dir):
    ds = CocoInstances(coco_dir / "ann.json", coco_dir / "images")
    images, targets = collate_list([ds[0], ds[2]])
    assert len(images) == 2 and targets[1]["image_id"] == 3


def test_unreadable_images_are_skipped_and_counted(coco_dir, caplog):
    root = coco_dir / "images"
    good = (root / "1.png").read_bytes()
    (root / "2.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    (root / "3.png").write_bytes(b"")  # zero bytes
    ds = CocoInstances(coco_dir / "ann.json", root)
    with caplog.at_level(logging.WARNING):
        ids = [ds[i][1]["image_id"] for i in range(3)]
    assert ids == [1, 1, 1]  # unreadable items replaced by the next readable image
    assert ds.num_skipped == 2
    assert "unreadable" in caplog.text


def test_truncated_jpeg_and_empty_file_raise(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[:300])
    (tmp_path / "e.png").write_bytes(b"")
    for name in ("t.jpg", "e.png", "missing.png"):
        with pytest.raises(UnreadableImage, match=name):
            load_image(tmp_path / name)


def test_decoding_gray_rgba_16bit_exif(tmp_path):
    _png(tmp_path / "g.png", np.full((4, 6), 200, np.uint8))
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 10
    _png(tmp_path / "a.png", rgba)
    Image.fromarray(np.full((4, 6), 65535, np.uint16)).save(tmp_path / "w.png")
    assert load_image(tmp_path / "g.png").tolist()[0][0] == [200, 200, 200]
    assert load_image(tmp_path / "a.png")[0, 0].tolist() == [255, 0, 0]  # alpha dropped
    assert load_image(tmp_path / "w.png")[0, 0].tolist() == [255, 255, 255]  # 16-bit white -> 255
    # EXIF orientation 6 (rotate 90 cw): a 4x6 stored image is shown as 6x4.
    img = Image.fromarray(np.zeros((4, 6, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").shape == (6, 4, 3)
    # ... unless the annotation file says the raw size, then the raw pixels are kept.
    assert load_image(tmp_path / "r.jpg", expected_hw=(4, 6)).shape == (4, 6, 3)


def test_images_json_from_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    _png(tmp_path / "b.png", np.zeros((5, 7, 3), np.uint8))
    _png(tmp_path / "sub" / "a.png", np.zeros((3, 2, 3), np.uint8))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    stats = images_json_from_folder(tmp_path, tmp_path / "out" / "images.json")
    assert stats["num_images"] == 2 and stats["num_skipped"] == 1
    data = read_json(tmp_path / "out" / "images.json")
    assert [(im["file_name"], im["height"], im["width"]) for im in data["images"]] == [
        ("b.png", 5, 7), ("sub/a.png", 3, 2)]
    assert data["annotations"] == []


def test_box_only_annotation_becomes_box_mask():
    mask = annotation_to_mask({"bbox": [2, 1, 3, 2]}, 5, 6)
    assert mask.sum() == 6 and mask[1:3, 2:5].all()


def test_atomic_writes_leave_no_temp_files_and_readable_modes(tmp_path):
    import os

    from oln.io import write_text

    write_text(tmp_path / "a" / "x.txt", "hello")
    assert (tmp_path / "a" / "x.txt").read_text() == "hello"
    assert os.listdir(tmp_path / "a") == ["x.txt"]
    mode = (tmp_path / "a" / "x.txt").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_decoding_16_bit_keeps_the_high_byte(tmp_path):
    from oln.data.coco import _to_rgb_uint8

    values = np.array([[0, 255, 1000, 257 * 7], [257 * 200 + 100, 257 * 128, 65280, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    expected = [[0, 0, 3, 7], [201, 128, 255, 255]]  # v >> 8 (OpenCV's rule): 257 k -> k, no clipping
    assert load_image(tmp_path / "g16.png")[..., 0].tolist() == expected
    assert (load_image(tmp_path / "g16.png") == load_image(tmp_path / "g16.png")[..., :1]).all()
    # Older Pillow decodes 16-bit PNGs as 32-bit mode "I": same rule when the source is a PNG.
    as_int = Image.fromarray(values.astype(np.int32))
    assert _to_rgb_uint8(as_int, sixteen_bit=True)[..., 0].tolist() == expected
    assert _to_rgb_uint8(Image.fromarray(np.full((1, 2), 200, np.int32)))[0, 0].tolist() == [200] * 3
    wide = _to_rgb_uint8(Image.fromarray(np.array([[0, 50000, 100000]], np.int32)))
    assert wide[0, :, 0].tolist() == [0, 127, 255]  # wider than 16 bits: scaled by the maximum
    # 16-bit colour PNG (written by OpenCV, BGR order): high byte per channel.
    import cv2

    rgb16 = np.zeros((2, 3, 3), np.uint16)
    rgb16[..., 0], rgb16[..., 1], rgb16[..., 2] = 257 * 10, 65535, 257 * 200 + 100
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[..., ::-1])
    assert load_image(tmp_path / "c16.png")[0, 0].tolist() == [10, 255, 201]


def test_decoding_palette_gray_jpeg_la(tmp_path):
    palette = Image.new("P", (3, 2))
    palette.putpalette([255, 0, 0, 0, 0, 255, 10, 20, 30])
    palette.putdata([0, 1, 2, 2, 1, 0])
    palette.save(tmp_path / "p.png", transparency=0)
    assert load_image(tmp_path / "p.png").reshape(-1, 3).tolist() == [
        [255, 0, 0], [0, 0, 255], [10, 20, 30], [10, 20, 30], [0, 0, 255], [255, 0, 0]]
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "g.jpg", quality=100)
    gray = load_image(tmp_path / "g.jpg")
    assert gray.shape == (8, 8, 3) and np.abs(gray.astype(int) - 200).max() <= 1
    Image.fromarray(np.dstack([np.full((2, 2), 77, np.uint8), np.zeros((2, 2), np.uint8)]), "LA").save(
        tmp_path / "la.png")
    assert load_image(tmp_path / "la.png")[1, 1].tolist() == [77, 77, 77]  # alpha 0 dropped, not composited


@pytest.mark.parametrize("cmyk, rgb", [((0, 0, 0, 0), (255, 255, 255)), ((255, 0, 0, 0), (0, 255, 255)),
                                        ((0, 0, 0, 255), (0, 0, 0)), ((0, 255, 255, 0), (255, 0, 0))])
def test_decoding_cmyk_jpeg(tmp_path, cmyk, rgb):
    Image.new("CMYK", (8, 8), cmyk).save(tmp_path / "c.jpg", quality=100)
    with Image.open(tmp_path / "c.jpg") as img:
        assert img.mode == "CMYK"
    pixels = load_image(tmp_path / "c.jpg")
    assert pixels.shape == (8, 8, 3) and np.abs(pixels.astype(int) - rgb).max() <= 2


def test_decoding_exif_orientation_moves_pixels(tmp_path):
    raw = np.zeros((2, 3, 3), np.uint8)
    raw[0, 0] = [255, 0, 0]  # top-left red
    raw[1, 0] = [0, 255, 0]  # bottom-left green
    img = Image.fromarray(raw)
    exif = img.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the bottom-left pixel goes top-left
    img.save(tmp_path / "r.png", exif=exif)
    shown = load_image(tmp_path / "r.png")
    assert shown.shape == (3, 2, 3)
    assert shown[0, 0].tolist() == [0, 255, 0] and shown[0, 1].tolist() == [255, 0, 0]
    assert load_image(tmp_path / "r.png", expected_hw=(3, 2)).shape == (3, 2, 3)
    assert load_image(tmp_path / "r.png", expected_hw=(2, 3))[0, 0].tolist() == [255, 0, 0]  # raw kept
    assert load_image(tmp_path / "r.png", expected_hw=(None, None)).shape == (3, 2, 3)  # no size: as shown


def test_an_empty_folder_source_fails_instead_of_indexing_nothing(tmp_path):
    from oln.data.coco import images_json_from_folder

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        images_json_from_folder(tmp_path / "empty", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
