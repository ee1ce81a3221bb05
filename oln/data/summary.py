"""Dataset summary (counts per split and category) and a preview gallery with masks drawn.

Size buckets are reported twice: `size_coco` uses the raw COCO area thresholds
(small < 32**2 <= medium <= 96**2 < large, in pixels) and `size_scaled` scales
them per image by (longer side / 640)**2, the same rule the synthetic generator
uses, so small images (e.g. 128 px) get meaningful buckets too.
"""

from __future__ import annotations

import math
import os
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np

from oln.data.coco import UnreadableImage, annotation_to_mask, load_image
from oln.io import atomic_path, read_json

SIZE_BUCKETS = ("small", "medium", "large")
COCO_SMALL_MAX, COCO_LARGE_MIN = 32.0**2, 96.0**2  # pixel areas at COCO's ~640 px image side
COCO_REFERENCE_SIDE = 640

# Preview colours (RGB).
CONTOUR_COLORS = {
    "seen": (0, 230, 0), "unseen": (255, 40, 255), "pseudo": (0, 220, 255), "other": (255, 220, 0),
}


def size_bucket(area: float, scale: float = 1.0) -> str:
    """COCO size bucket of an area; thresholds are multiplied by `scale`."""
    if area < COCO_SMALL_MAX * scale:
        return "small"
    return "large" if area > COCO_LARGE_MIN * scale else "medium"


def _empty_buckets() -> dict[str, int]:
    return {bucket: 0 for bucket in SIZE_BUCKETS}


def _empty_category(cat_id: int, supercategory: str) -> dict:
    return {"id": cat_id, "supercategory": supercategory, "instances": 0, "images": set(),
            "size_coco": _empty_buckets(), "size_scaled": _empty_buckets()}


def split_summary(coco: dict) -> dict:
    """Counts for one COCO instances dict.

    Returns:
        {"images", "images_with_annotations", "instances", "crowd", "pseudo",
         "max_instances_per_image", "size_coco", "size_scaled", "supercategories",
         "categories": {name: {"id", "supercategory", "instances", "images", "size_coco", "size_scaled"}}}
    """
    images = {img["id"]: img for img in coco.get("images", [])}
    categories = {cat["id"]: cat for cat in coco.get("categories", [])}
    per_category: dict[int, dict] = {}
    for cat_id, cat in sorted(categories.items()):
        per_category[cat_id] = _empty_category(cat_id, cat.get("supercategory", ""))
    totals = {"size_coco": _empty_buckets(), "size_scaled": _empty_buckets()}
    per_image: Counter = Counter()
    supercategories: Counter = Counter()
    crowd = pseudo = 0
    for ann in coco.get("annotations", []):
        cat_id = ann["category_id"]
        entry = per_category.setdefault(cat_id, _empty_category(cat_id, ""))
        image = images.get(ann["image_id"], {})
        side = max(image.get("height", COCO_REFERENCE_SIDE), image.get("width", COCO_REFERENCE_SIDE))
        area = ann["area"] if "area" in ann else ann["bbox"][2] * ann["bbox"][3]
        for key, scale in (("size_coco", 1.0), ("size_scaled", (side / COCO_REFERENCE_SIDE) ** 2)):
            bucket = size_bucket(area, scale)
            entry[key][bucket] += 1
            totals[key][bucket] += 1
        entry["instances"] += 1
        entry["images"].add(ann["image_id"])
        per_image[ann["image_id"]] += 1
        supercategories[entry["supercategory"] or "none"] += 1
        crowd += int(ann.get("iscrowd", 0))
        pseudo += int(ann.get("pseudo", 0))
    named = {}
    for cat_id, entry in per_category.items():
        name = categories.get(cat_id, {}).get("name", str(cat_id))
        named[name] = {**entry, "images": len(entry["images"])}
    return {
        "images": len(images),
        "images_with_annotations": len(per_image),
        "instances": sum(per_image.values()),
        "crowd": crowd,
        "pseudo": pseudo,
        "max_instances_per_image": max(per_image.values(), default=0),
        **totals,
        "supercategories": dict(sorted(supercategories.items())),
        "categories": named,
    }


def dataset_summary(json_paths: dict[str, str | os.PathLike]) -> dict:
    """Summarise COCO instance files, one per split.

    Args:
        json_paths: split name -> COCO json path.

    Returns:
        {split: split_summary(...)} in the order given.
    """
    return {split: split_summary(read_json(path)) for split, path in json_paths.items()}


# ----------------------------------------------------------------------------- preview


def _instance_color(index: int) -> np.ndarray:
    """A distinct-ish RGB fill colour per instance (golden-angle hue steps)."""
    hue = int((index * 137.508) % 360) // 2  # OpenCV hue range is 0..179
    hsv = np.array([[[hue, 200, 255]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _contour_color(ann: dict, categories: dict[int, dict]) -> tuple[int, int, int]:
    if ann.get("pseudo", 0):
        return CONTOUR_COLORS["pseudo"]
    supercategory = categories.get(ann["category_id"], {}).get("supercategory", "")
    return CONTOUR_COLORS.get(supercategory, CONTOUR_COLORS["other"])


def _render_tile(image: np.ndarray, anns: list[dict], categories: dict[int, dict], tile_size: int,
                 alpha: float = 0.45) -> np.ndarray:
    """Image with coloured mask overlays and contours, letterboxed into a square RGB tile."""
    height, width = image.shape[:2]
    factor = tile_size / max(height, width)
    new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
    interpolation = cv2.INTER_NEAREST if factor >= 1 else cv2.INTER_AREA
    shown = cv2.resize(image, (new_w, new_h), interpolation=interpolation).astype(np.float32)
    outlines = []
    for index, ann in enumerate(anns):
        mask = annotation_to_mask(ann, height, width).astype(np.uint8)
        mask = cv2.resize(mask, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        shown[mask > 0] = (1 - alpha) * shown[mask > 0] + alpha * _instance_color(index)
        contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        outlines.append((contours, _contour_color(ann, categories)))
    shown = np.clip(shown, 0, 255).astype(np.uint8)
    thickness = max(1, tile_size // 128)
    for contours, _ in outlines:  # dark halo first so contours stay visible on any background
        cv2.drawContours(shown, contours, -1, (0, 0, 0), thickness + 2)
    for contours, color in outlines:
        cv2.drawContours(shown, contours, -1, color, thickness)
    tile = np.full((tile_size, tile_size, 3), 64, np.uint8)
    y0, x0 = (tile_size - new_h) // 2, (tile_size - new_w) // 2
    tile[y0 : y0 + new_h, x0 : x0 + new_w] = shown
    return tile


def _legend(width: int, height: int = 22) -> np.ndarray:
    strip = np.full((height, width, 3), 32, np.uint8)
    x = 6
    for label, color in CONTOUR_COLORS.items():
        cv2.putText(strip, label, (x, height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
        x += 12 + 9 * len(label)
    return strip


def draw_preview(
    json_path: str | os.PathLike,
    image_root: str | os.PathLike,
    out_png: str | os.PathLike,
    num_images: int = 16,
    seed: int = 0,
    tile_size: int = 256,
) -> int:
    """Draw a grid of randomly chosen images with their masks (overlay + contour).

    Contour colour says what an annotation is: green seen, magenta unseen (by the
    category's supercategory), cyan pseudo (`pseudo: 1`), yellow anything else.
    Unreadable images become grey tiles. The PNG is written atomically.

    Args:
        json_path: COCO instances json.
        image_root: folder that `file_name`s are relative to.
        out_png: output PNG path.
        num_images: how many images to show (fewer if the split is smaller).
        seed: seed of the image choice.
        tile_size: side of each square tile in pixels.

    Returns:
        The number of images drawn.
    """
    coco = read_json(json_path)
    images = sorted(coco.get("images", []), key=lambda img: img["id"])
    categories = {cat["id"]: cat for cat in coco.get("categories", [])}
    anns_by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in coco.get("annotations", []):
        anns_by_image[ann["image_id"]].append(ann)
    count = min(num_images, len(images))
    chosen = sorted(np.random.default_rng(seed).choice(len(images), size=count, replace=False).tolist())
    tiles = []
    for index in chosen:
        info = images[index]
        try:
            image = load_image(Path(image_root) / info["file_name"], (info["height"], info["width"]))
        except UnreadableImage:
            tiles.append(np.full((tile_size, tile_size, 3), 128, np.uint8))
            continue
        tiles.append(_render_tile(image, anns_by_image.get(info["id"], []), categories, tile_size))
    columns = max(1, math.ceil(math.sqrt(max(count, 1))))
    rows = max(1, math.ceil(count / columns))
    grid = np.full((rows * tile_size, columns * tile_size, 3), 16, np.uint8)
    for position, tile in enumerate(tiles):
        row, column = divmod(position, columns)
        grid[row * tile_size : (row + 1) * tile_size, column * tile_size : (column + 1) * tile_size] = tile
    grid = np.concatenate([grid, _legend(grid.shape[1])])
    with atomic_path(out_png) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {out_png}")
    return count
