"""A small COCO-format stand-in for COCO 2017, to run the real COCO data path in CI.

It is laid out and encoded like COCO: `annotations/instances_{train,val}2017.json`
with COCO's 80 category names, ids (1..90 with gaps) and supercategories;
`train2017/` and `val2017/` JPEGs named by 12-digit image id, of varied
non-square sizes; polygon segmentations (several polygons when an object is
split by occlusion, holes lost as in COCO) and crowd annotations as uncompressed
RLE with `iscrowd: 1` and 12-digit annotation ids; float xywh boxes and areas.
A few train images have no VOC annotation (only non-VOC objects, or none at
all) for GGN's image filter. `unlabeled/` holds images without annotations in
the decoding modes real folders contain: grayscale, CMYK and EXIF-rotated JPEG,
RGBA, palette and 16-bit grayscale PNG (plus
`annotations/image_info_unlabeled2017.json`).

Pixels are the synthetic set's shape scenes (oln.data.synthetic), rendered on a
square canvas and cropped: the six "seen" shapes are labelled with VOC
categories and the six "unseen" ones with non-VOC categories, so a VOC -> non-VOC
experiment has a learnable open-world gap. Every image comes from its own RNG
seeded by (seed, split, index): deterministic, and image k does not depend on
the other counts.
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from oln.data.coco import images_json_from_folder
from oln.data.splits import COCO_NAMES, NONVOC_NAMES, VOC_NAMES
from oln.data.synthetic import CATEGORY_NAMES, SEEN_NAMES, UNSEEN_NAMES, SyntheticOptions, render_scene
from oln.io import write_bytes, write_json

log = logging.getLogger(__name__)

#: COCO 2017 ids that no category uses (ids run 1..90 for 80 categories).
COCO_UNUSED_IDS: tuple[int, ...] = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_IDS: tuple[int, ...] = tuple(i for i in range(1, 91) if i not in COCO_UNUSED_IDS)
#: Supercategory of each COCO category id: (last id of the range, supercategory).
_SUPERCATEGORY_RANGES = ((1, "person"), (9, "vehicle"), (15, "outdoor"), (25, "animal"), (33, "accessory"),
                         (43, "sports"), (51, "kitchen"), (61, "food"), (70, "furniture"), (77, "electronic"),
                         (82, "appliance"), (90, "indoor"))
#: Decoding modes of the unlabeled images, in order (then plain RGB JPEGs); PNG: rgba, gray16, palette.
UNLABELED_MODES: tuple[str, ...] = ("gray", "rgba", "gray16", "palette", "cmyk", "exif_rotated", "rgb")
SPLIT_FOLDERS = {"train": "train2017", "val": "val2017"}
_ID_STRIDE = 1009  # image ids: (index + 1) * stride + split offset -> unique, non-contiguous
_ID_OFFSET = {"train": 0, "val": 500, "unlabeled": 800}
_CROWD_ID_BASE = 900100000000  # COCO's crowd annotations carry ids like 900100581904


def coco_categories() -> list[dict]:
    """COCO 2017's 80 category dicts: `id` (1..90 with gaps), `name`, `supercategory`."""
    def supercategory(category_id: int) -> str:
        return next(name for last, name in _SUPERCATEGORY_RANGES if category_id <= last)

    return [{"supercategory": supercategory(i), "id": i, "name": name} for i, name in zip(COCO_IDS, COCO_NAMES)]


def _shape_category_names() -> dict[str, tuple[str, ...]]:
    """Shape -> the COCO category names it is labelled with (seen -> VOC, unseen -> non-VOC)."""
    groups = {}
    for shapes, names in ((SEEN_NAMES, VOC_NAMES), (UNSEEN_NAMES, NONVOC_NAMES)):
        for k, shape in enumerate(shapes):
            groups[shape] = tuple(names[k :: len(shapes)])
    return groups


SHAPE_CATEGORY_NAMES = _shape_category_names()
_ID_OF_NAME = dict(zip(COCO_NAMES, COCO_IDS))


def _draw_size(rng: np.random.Generator) -> tuple[int, int]:
    """(height, width): long side 300-500, short side 55-85 % of it (>= 200), landscape 60 %."""
    long_side = int(rng.integers(300, 501))
    short_side = max(200, round(long_side * rng.uniform(0.55, 0.85)))
    return (short_side, long_side) if rng.random() < 0.6 else (long_side, short_side)


def render_crop(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """A synthetic scene rendered on a square canvas and cropped to (height, width).

    Returns:
        image uint8 (H, W, 3) RGB; shape name per object; bool masks (N, H, W) of
        the objects still visible on at least 0.06 % of the crop.
    """
    side = max(height, width)
    options = SyntheticOptions(image_size=side, min_objects=3, max_objects=8)
    image, category_ids, masks = render_scene(options, rng)
    y0, x0 = int(rng.integers(0, side - height + 1)), int(rng.integers(0, side - width + 1))
    image = np.ascontiguousarray(image[y0 : y0 + height, x0 : x0 + width])
    masks = masks[:, y0 : y0 + height, x0 : x0 + width]
    keep = masks.sum(axis=(1, 2)) >= max(20, 0.0006 * height * width)
    names = [CATEGORY_NAMES[c - 1] for c, kept in zip(category_ids, keep) if kept]
    return image, names, np.ascontiguousarray(masks[keep])


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons of a bool mask: one per outer contour, holes lost (as in COCO).

    The contour through boundary pixel centres is pushed out by half a pixel, so
    pycocotools rasterises the polygon back to (nearly) the same pixels.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [[round(float(v), 2) for v in _pixel_edge_outline(c.reshape(-1, 2)).ravel()] for c in contours]


def _pixel_edge_outline(centres: np.ndarray) -> np.ndarray:
    """Polygon (K, 2) around boundary pixel centres: each vertex moved 0.5 px out (mitred), then +0.5."""
    points = centres.astype(np.float64)
    if len(points) < 3:  # a pixel or a straight run of pixels: its box
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0) + 1
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    x, y = points[:, 0], points[:, 1]
    orientation = np.sign(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) or 1.0

    def outward_normal(edges: np.ndarray) -> np.ndarray:
        normals = orientation * np.stack([edges[:, 1], -edges[:, 0]], axis=1)
        return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-9)

    before = outward_normal(points - np.roll(points, 1, axis=0))
    after = outward_normal(np.roll(points, -1, axis=0) - points)
    miter = (before + after) / np.maximum(1.0 + (before * after).sum(axis=1, keepdims=True), 0.5)
    return points + 0.5 + 0.5 * miter


def _annotation(mask: np.ndarray, category_id: int, image_id: int, index: int, crowd: bool) -> dict | None:
    """COCO annotation of one object: polygons, or uncompressed RLE when `crowd`; None if too thin."""
    height, width = mask.shape
    if crowd:
        segmentation = _uncompressed_rle(mask)
        rle = mask_utils.frPyObjects(segmentation, height, width)
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
    else:
        segmentation = mask_to_polygons(mask)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        points = np.concatenate([np.reshape(p, (-1, 2)) for p in segmentation])
        low, high = points.min(axis=0), points.max(axis=0)
        bbox = [round(float(v), 2) for v in (*low, *(high - low))]
    area = float(mask_utils.area(rle))
    if area < 1 or bbox[2] < 1 or bbox[3] < 1:
        return None
    ann_id = (_CROWD_ID_BASE if crowd else 0) + image_id * 100 + index
    return {"segmentation": segmentation, "area": area, "iscrowd": int(crowd), "image_id": image_id,
            "bbox": bbox, "category_id": category_id, "id": ann_id}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd encoding: column-major run lengths as a list, starting with a 0-run."""
    flat = np.asfortranarray(mask).ravel(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _category_id(shape: str, nonvoc_only: bool, rng: np.random.Generator) -> int:
    """A COCO category id for an object of `shape` (any non-VOC one when `nonvoc_only`)."""
    names = SHAPE_CATEGORY_NAMES[shape]
    if nonvoc_only and shape in SEEN_NAMES:
        names = NONVOC_NAMES
    return _ID_OF_NAME[names[int(rng.integers(0, len(names)))]]


def _jpeg_bytes(image: Image.Image, quality: int = 90, **save_args) -> bytes:
    """Baseline JPEG file bytes (COCO's images are quality ~90 JPEGs)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **save_args)
    return buffer.getvalue()


def _png_bytes(image: Image.Image) -> bytes:
    """PNG file bytes, fast compression."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _annotated_image(
    out_dir: Path, split: str, index: int, seed: int, kind: str, crowd_fraction: float
) -> tuple[dict, list[dict]]:
    """Render, write and annotate image `index` of `split`; `kind` is normal, nonvoc_only or empty."""
    rng = np.random.default_rng([seed, list(SPLIT_FOLDERS).index(split), index])
    height, width = _draw_size(rng)
    pixels, shapes, masks = render_crop(rng, height, width)
    image_id = (index + 1) * _ID_STRIDE + _ID_OFFSET[split]
    file_name = f"{image_id:012d}.jpg"
    write_bytes(out_dir / SPLIT_FOLDERS[split] / file_name, _jpeg_bytes(Image.fromarray(pixels)))
    info = {"license": int(rng.integers(1, 9)), "file_name": file_name,
            "coco_url": f"http://images.cocodataset.org/{SPLIT_FOLDERS[split]}/{file_name}",
            "height": height, "width": width, "date_captured": "2013-11-14 11:18:45", "flickr_url": "",
            "id": image_id}
    if kind == "empty":
        return info, []
    crowd = rng.random(len(shapes)) < crowd_fraction
    if index == 0 and len(shapes) > 1:
        crowd[-1] = True  # every split has a crowd annotation
    anns = []
    for k, (shape, mask) in enumerate(zip(shapes, masks)):
        category_id = _category_id(shape, kind == "nonvoc_only", rng)
        ann = _annotation(mask, category_id, image_id, k, bool(crowd[k]))
        if ann is not None:
            anns.append(ann)
    return info, anns


def _write_annotated_split(
    out_dir: Path, split: str, count: int, seed: int, special: dict[int, str], crowd_fraction: float
) -> dict:
    """Images of `split` (kind by index in `special`), then its instances json; returns counts."""
    folder = out_dir / SPLIT_FOLDERS[split]
    if folder.is_dir():  # a re-run with fewer images must not leave stale ones
        for old in folder.glob("*.jpg"):
            if re.fullmatch(r"\d{12}\.jpg", old.name):
                old.unlink()
    images, annotations = [], []
    for index in range(count):
        info, anns = _annotated_image(out_dir, split, index, seed, special.get(index, "normal"), crowd_fraction)
        images.append(info)
        annotations.extend(anns)
    order = np.random.default_rng([seed, 99, list(SPLIT_FOLDERS).index(split)]).permutation(len(images))
    coco = {
        "info": {"description": "oln COCO 2017 stand-in (synthetic shapes)", "version": "1.0", "year": 2017,
                 "contributor": "oln", "date_created": "2017/09/01"},
        "licenses": [{"url": "", "id": i, "name": f"stand-in license {i}"} for i in range(1, 9)],
        "images": [images[i] for i in order],
        "annotations": annotations,
        "categories": coco_categories(),
    }
    write_json(out_dir / "annotations" / f"instances_{SPLIT_FOLDERS[split]}.json", coco)
    return {"images": len(images), "annotations": len(annotations),
            "crowd": sum(a["iscrowd"] for a in annotations)}


def _unlabeled_image(mode: str, pixels: np.ndarray, rng: np.random.Generator) -> tuple[str, bytes]:
    """(extension, file bytes) of `pixels` encoded in decoding mode `mode`."""
    rgb = Image.fromarray(pixels)
    if mode == "gray":
        return "jpg", _jpeg_bytes(rgb.convert("L"))
    if mode == "cmyk":
        return "jpg", _jpeg_bytes(rgb.convert("CMYK"))
    if mode == "exif_rotated":
        exif = rgb.getexif()
        exif[0x0112] = 6  # shown rotated 90 degrees clockwise
        return "jpg", _jpeg_bytes(rgb, exif=exif)
    if mode == "rgba":
        alpha = rng.integers(0, 256, size=pixels.shape[:2], dtype=np.uint8)
        return "png", _png_bytes(Image.fromarray(np.dstack([pixels, alpha])))
    if mode == "gray16":  # true 16-bit: 257 * gray plus low bits that round away
        gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).astype(np.uint16)
        low_bits = rng.integers(0, 128, size=gray.shape, dtype=np.uint16)
        return "png", _png_bytes(Image.fromarray(gray * 257 + low_bits))
    if mode == "palette":
        return "png", _png_bytes(rgb.quantize(colors=64))
    return "jpg", _jpeg_bytes(rgb)


def _write_unlabeled(out_dir: Path, count: int, seed: int) -> dict:
    """`unlabeled/` images cycling through UNLABELED_MODES, then their images-only json."""
    folder = out_dir / "unlabeled"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():  # a re-run with other counts must not leave stale images
        if re.fullmatch(r"\d{12}_[a-z0-9_]+\.(jpg|png)", old.name):
            old.unlink()
    for index in range(count):
        rng = np.random.default_rng([seed, len(SPLIT_FOLDERS), index])
        mode = UNLABELED_MODES[min(index, len(UNLABELED_MODES) - 1)]
        pixels, _, _ = render_crop(rng, *_draw_size(rng))
        extension, data = _unlabeled_image(mode, pixels, rng)
        image_id = (index + 1) * _ID_STRIDE + _ID_OFFSET["unlabeled"]
        write_bytes(folder / f"{image_id:012d}_{mode}.{extension}", data)
    out_json = out_dir / "annotations" / "image_info_unlabeled2017.json"
    if count == 0:  # an images-only json with no image (indexing an empty folder is an error)
        write_json(out_json, {"images": [], "annotations": [], "categories": []})
        return {"num_images": 0, "num_skipped": 0, "skipped_files": []}
    return images_json_from_folder(folder, out_json)


def make_coco_standin(
    out_dir: str | os.PathLike,
    num_train: int = 24,
    num_val: int = 12,
    num_unlabeled: int = 8,
    seed: int = 0,
    *,
    num_nonvoc_only: int = 2,
    num_empty: int = 1,
    crowd_fraction: float = 0.05,
) -> dict:
    """Write the COCO stand-in into `out_dir` (see the module docstring for the layout).

    Args:
        out_dir: output folder (created; existing files are overwritten).
        num_train, num_val: annotated images per split.
        num_unlabeled: images in `unlabeled/`; the first ones cycle through UNLABELED_MODES.
        seed: everything is a function of it.
        num_nonvoc_only: last train images whose objects are all labelled non-VOC.
        num_empty: train images (just before those) with no annotation at all.
        crowd_fraction: probability that an object is a crowd (RLE) annotation.
    Returns:
        Paths (`train_json`, `train_images`, `val_json`, `val_images`,
        `unlabeled_json`, `unlabeled_images`) and per-split counts.
    """
    if num_train < num_nonvoc_only + num_empty + 1 or num_val < 1 or num_unlabeled < 0:
        raise ValueError(f"need num_train > num_nonvoc_only + num_empty ({num_nonvoc_only + num_empty}), "
                         f"num_val >= 1, num_unlabeled >= 0")
    out_dir = Path(out_dir)
    special = {num_train - 1 - k: "nonvoc_only" for k in range(num_nonvoc_only)}
    special.update({num_train - 1 - num_nonvoc_only - k: "empty" for k in range(num_empty)})
    counts = {
        "train": _write_annotated_split(out_dir, "train", num_train, seed, special, crowd_fraction),
        "val": _write_annotated_split(out_dir, "val", num_val, seed, {}, crowd_fraction),
        "unlabeled": _write_unlabeled(out_dir, num_unlabeled, seed),
    }
    log.info("COCO stand-in in %s: %s", out_dir, counts)
    paths = {f"{split}_json": str(out_dir / "annotations" / f"instances_{folder}.json")
             for split, folder in SPLIT_FOLDERS.items()}
    paths.update({f"{split}_images": str(out_dir / folder) for split, folder in SPLIT_FOLDERS.items()})
    paths.update(unlabeled_json=str(out_dir / "annotations" / "image_info_unlabeled2017.json"),
                 unlabeled_images=str(out_dir / "unlabeled"))
    return {**paths, **counts}
