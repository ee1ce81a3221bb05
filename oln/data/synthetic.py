"""Embedded synthetic open-world instance segmentation dataset (COCO format).

Images show 2-8 shapes from 12 categories on textured, cluttered backgrounds,
with occlusion, random rotation/scale/stretch, flat or textured fills and
gradient lighting. Annotations are the visible part of every object, for all
12 categories, so any seen/unseen protocol can be evaluated on them.

Seen/unseen split. `SEEN_NAMES` (disc, square, triangle, star, cross, arrow)
are simple, simply connected outlines: convex shapes plus straight-edged
radial concave ones. `UNSEEN_NAMES` (hexagon, ring, crescent, heart, l_shape,
blob) add what no seen shape has: a hole (ring), curved concavities
(crescent, heart), an irregular smooth outline (blob) and an asymmetric
right-angle corner (l_shape). Hexagon is the deliberately easy novel shape
(convex, between disc and square), so the unseen set spans easy to hard
generalisation. Where an unseen shape derives from a seen one (disc -> ring,
crescent; cross -> l_shape), it differs in topology (a hole), curvature
(concave arcs) or symmetry (one corner instead of four arms), so none is a
near-copy. `SyntheticOptions.seen_names` moves the split (the supercategory
written to the jsons and the seen/unseen pair every image is guaranteed).

Every image is rendered from its own RNG, seeded by (seed, split, index), so
image k of a split does not depend on the other splits or on num_*; re-running
with the same options rewrites byte-identical files (written atomically).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage

from oln.data.painting import object_fill, paint_background, paint_clutter
from oln.data.shapes import SHAPES, place_contours, rasterise, scale_for_pixel_count
from oln.io import write_bytes, write_json
from oln.progress import progress
from oln.rle import encode_masks

SEEN_NAMES: list[str] = ["disc", "square", "triangle", "star", "cross", "arrow"]
UNSEEN_NAMES: list[str] = ["hexagon", "ring", "crescent", "heart", "l_shape", "blob"]
CATEGORY_NAMES: list[str] = list(SHAPES)  # category id = position + 1
SPLITS: tuple[str, ...] = ("train", "val", "unlabeled")

#: COCO area thresholds (small < 32**2 <= medium <= 96**2 < large) at this image side.
COCO_REFERENCE_SIDE = 640
#: Fast lossless PNG settings: zlib level 1, Huffman-only, "up" row filter (about 3x faster than the
#: defaults on noisy images at a similar file size).
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


@dataclass
class SyntheticOptions:
    """Options of the synthetic dataset generator.

    Areas are fractions of the image area so they scale with `image_size`.
    """

    num_train: int = 400  # annotated training images
    num_val: int = 100  # annotated validation images
    num_unlabeled: int = 200  # images without annotations (pseudo-label source)
    image_size: int = 128  # square image side in pixels
    min_objects: int = 2  # objects drawn per image, uniform in [min, max] (before drops)
    max_objects: int = 8
    seed: int = 0
    size_mix: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.3])  # P(small), P(medium), P(large)
    min_object_area: float = 0.0012  # smallest drawn object (fraction of image area; ~20 px at 128)
    max_object_area: float = 0.2  # largest drawn object (fraction of image area)
    min_visible_area: float = 0.0006  # objects with less visible area are removed (~10 px at 128)
    max_aspect: float = 1.5  # objects are stretched by a ratio in [1/max_aspect, max_aspect]
    occlusion: bool = True  # False: objects are placed without overlap (dropped if no free spot)
    mix_seen_unseen: bool = True  # draw at least one seen and one unseen object per image
    # categories with supercategory "seen" (the rest are "unseen"); None: SEEN_NAMES
    seen_names: list[str] | None = None
    textured_fill: float = 0.6  # probability that an object has a non-flat fill
    unseen_textured_fill: float | None = None  # the same for unseen-category objects; None: textured_fill
    min_contrast: float = 40.0  # object colour differs from the local background by this much (0-255)
    clutter_lines: int = 3  # at most this many thin unannotated lines per image
    clutter_specks: int = 12  # at most this many small unannotated specks per image
    clutter_patches: int = 2  # at most this many soft-edged unannotated texture patches per image
    noise_std: float = 4.0  # standard deviation of per-pixel (uniform) noise, grey levels
    blur: float = 0.2  # probability of a slight Gaussian blur of the whole image


def coco_area_thresholds(image_size: int) -> tuple[float, float]:
    """COCO small/large area thresholds scaled from 640 px to `image_size`.

    Returns:
        (small_max, large_min): small if area < small_max, large if area > large_min.
    """
    factor = (image_size / COCO_REFERENCE_SIDE) ** 2
    return 32.0**2 * factor, 96.0**2 * factor


def seen_unseen_names(options: SyntheticOptions | None = None) -> tuple[list[str], list[str]]:
    """(seen, unseen) category names, in category order: `options.seen_names` or `SEEN_NAMES`.

    Raises:
        ValueError: `seen_names` names an unknown shape, repeats one, or leaves no seen or no
            unseen category (names the key and the known shapes).
    """
    chosen = SEEN_NAMES if options is None or options.seen_names is None else list(options.seen_names)
    unknown = sorted(set(chosen) - set(CATEGORY_NAMES))
    if unknown or len(set(chosen)) != len(chosen) or not 0 < len(chosen) < len(CATEGORY_NAMES):
        raise ValueError(f"synthetic.seen_names: {chosen} must be distinct names of the shapes {CATEGORY_NAMES} "
                         f"leaving at least one seen and one unseen"
                         + (f" (unknown: {unknown})" if unknown else ""))
    seen = [name for name in CATEGORY_NAMES if name in chosen]
    return seen, [name for name in CATEGORY_NAMES if name not in chosen]


def categories(options: SyntheticOptions | None = None) -> list[dict]:
    """COCO category dicts, ids 1..12, supercategory 'seen' or 'unseen' (see `seen_unseen_names`)."""
    seen, _ = seen_unseen_names(options)
    return [
        {"id": i + 1, "name": name, "supercategory": "seen" if name in seen else "unseen"}
        for i, name in enumerate(CATEGORY_NAMES)
    ]


# ----------------------------------------------------------------------------- rendering

def _draw_category_names(count: int, options: SyntheticOptions, rng: np.random.Generator) -> list[str]:
    names = [CATEGORY_NAMES[i] for i in rng.integers(0, len(CATEGORY_NAMES), size=count)]
    if options.mix_seen_unseen and count >= 2:
        seen, unseen = seen_unseen_names(options)
        names[0] = seen[int(rng.integers(0, len(seen)))]
        names[1] = unseen[int(rng.integers(0, len(unseen)))]
        rng.shuffle(names)
    return names


def _object_area(options: SyntheticOptions, rng: np.random.Generator) -> float:
    """Draw an object area (pixels): a COCO size bucket by `size_mix`, then log-uniform within it."""
    size = options.image_size
    small_max, large_min = coco_area_thresholds(size)
    low, high = options.min_object_area * size * size, options.max_object_area * size * size
    edges = [low, max(small_max, low), min(max(large_min, low), high), high]
    small, medium, large = options.size_mix
    draw = rng.random() * (small + medium + large)
    bucket = 0 if draw < small else 1 if draw < small + medium else 2
    lo, hi = edges[bucket], max(edges[bucket + 1], edges[bucket])
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _place_objects(options: SyntheticOptions, rng: np.random.Generator) -> list[tuple]:
    """Draw categories, outlines and poses: list of (name, pixel contours, center, radius) in paint order."""
    size = options.image_size
    count = int(rng.integers(options.min_objects, options.max_objects + 1))
    placed = []
    occupied = np.zeros((size, size), np.uint8)
    for name in _draw_category_names(count, options, rng):
        outline = SHAPES[name](rng)
        scale = scale_for_pixel_count(outline, _object_area(options, rng))
        aspect = float(np.exp(rng.uniform(-1.0, 1.0) * np.log(options.max_aspect)))
        angle = rng.uniform(0.0, 2.0 * np.pi)
        for _ in range(1 if options.occlusion else 10):
            center = rng.uniform(0.05 * size, 0.95 * size, size=2)
            contours = place_contours(outline, (center[0], center[1]), scale, angle, aspect)
            if options.occlusion:
                break
            mask = rasterise(contours, size, size)
            if not (mask & occupied).any():
                occupied |= cv2.dilate(mask, np.ones((3, 3), np.uint8))  # keep a 1 px gap
                break
        else:
            continue  # no free spot found
        placed.append((name, contours, center, scale * max(aspect, 1.0 / aspect) ** 0.5))
    return placed


def render_scene(
    options: SyntheticOptions, rng: np.random.Generator
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Render one image.

    Args:
        options: generator options.
        rng: the image's random generator (all randomness comes from it).

    Returns:
        image: uint8 (S, S, 3) RGB.
        category_ids: category id of every annotated object, in paint order.
        masks: bool (N, S, S) visible-part masks (pairwise disjoint, each >= min_visible_area).
    """
    size = options.image_size
    placed = _place_objects(options, rng)
    # Paint object indices in order (later objects occlude earlier ones), then drop objects
    # whose visible part is too small and repaint; removing objects only uncovers others.
    min_pixels = max(options.min_visible_area * size * size, 1.0)
    while True:
        labels = np.zeros((size, size), np.uint8)
        for index, (_, contours, _, _) in enumerate(placed):
            rasterise(contours, size, size, value=index + 1, out=labels)
        keep = np.bincount(labels.ravel(), minlength=len(placed) + 1)[1:] >= min_pixels
        if keep.all():
            break
        placed = [obj for obj, kept in zip(placed, keep) if kept]

    image = paint_background(size, options, rng)
    paint_clutter(image, options, rng)
    for index, box in enumerate(ndimage.find_objects(labels, max_label=len(placed))):
        name, _, center, radius = placed[index]
        y0, y1, x0, x1 = box[0].start, box[0].stop, box[1].start, box[1].stop
        behind = image[:, (y0 + y1) // 2, (x0 + x1) // 2, None, None]  # colour near the box centre
        unseen_fill = options.unseen_textured_fill is not None and name in seen_unseen_names(options)[1]
        textured_fill = options.unseen_textured_fill if unseen_fill else options.textured_fill
        fill = object_fill((y0, y1, x0, x1), center, radius, behind, options, rng, textured_fill=textured_fill)
        region = image[:, box[0], box[1]]
        np.copyto(region, fill, where=labels[box] == index + 1)
    if options.noise_std > 0:
        noise = rng.random(size=image.shape, dtype=np.float32) - np.float32(0.5)
        image += noise * np.float32(options.noise_std * np.sqrt(12.0))  # uniform noise with this std
    if rng.random() < options.blur:
        sigma = rng.uniform(0.4, 0.8)
        image = np.stack([cv2.GaussianBlur(plane, (3, 3), sigma) for plane in image])
    np.clip(image + np.float32(0.5), 0, 255, out=image)
    image_u8 = cv2.merge(list(image.astype(np.uint8)))
    masks = labels[None] == np.arange(1, len(placed) + 1, dtype=np.uint8)[:, None, None]
    category_ids = [CATEGORY_NAMES.index(name) + 1 for name, _, _, _ in placed]
    return image_u8, category_ids, masks


# ----------------------------------------------------------------------------- writing


def _boxes_and_areas(rles: list[dict]) -> tuple[list[list[int]], list[int]]:
    """Tight COCO xywh boxes (x, y of the min pixel, w = max - min + 1) and pixel counts of RLE masks."""
    if not rles:
        return [], []
    raw = [{"size": rle["size"], "counts": rle["counts"].encode("ascii")} for rle in rles]
    boxes = [[int(v) for v in box] for box in mask_utils.toBbox(raw)]
    return boxes, [int(a) for a in mask_utils.area(raw)]


def _write_png_if_changed(path: Path, image: np.ndarray) -> None:
    """Write an RGB image as PNG atomically, unless `path` already holds exactly these bytes."""
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), PNG_PARAMS)
    if not ok:
        raise OSError(f"could not encode {path}")
    data = encoded.tobytes()
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return  # a re-run: replacing an identical file only costs time
    except FileNotFoundError:
        pass
    write_bytes(path, data)


def _split_count(options: SyntheticOptions, split: str) -> int:
    return {"train": options.num_train, "val": options.num_val, "unlabeled": options.num_unlabeled}[split]


def _remove_stale_images(image_dir: Path, count: int) -> None:
    """Delete NNNNNN.png files left by an earlier run with more images in this split."""
    for path in image_dir.glob("*.png"):
        if re.fullmatch(r"\d{6}\.png", path.name) and int(path.stem) > count:
            path.unlink()


def synthesize(out_dir: Path, options: SyntheticOptions) -> dict:
    """Generate the synthetic dataset into `out_dir`.

    Writes `out_dir/{train,val,unlabeled}.json` (COCO instances; unlabeled has
    `annotations: []`) and PNGs `out_dir/images/<split>/NNNNNN.png` (NNNNNN = index
    from 1; `file_name` is `<split>/NNNNNN.png`). Image and annotation ids are unique
    across the three splits. Every file is written atomically; each json is written
    after its images, so an existing json means its split is complete.

    Args:
        out_dir: output directory (created).
        options: generator options.

    Returns:
        {"categories": 12, "<split>": {"images": n, "annotations": m}, ...}.
    """
    if not 1 <= options.min_objects <= options.max_objects <= 255:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 255, got {options.min_objects}, "
                         f"{options.max_objects}")
    if len(options.size_mix) != 3 or min(options.size_mix) < 0 or sum(options.size_mix) <= 0:
        raise ValueError(f"size_mix needs 3 weights >= 0 (small, medium, large), got {options.size_mix}")
    if not 0 < options.min_object_area <= options.max_object_area <= 1:
        raise ValueError("need 0 < min_object_area <= max_object_area <= 1 (fractions of the image area)")
    if sorted(SEEN_NAMES + UNSEEN_NAMES) != sorted(CATEGORY_NAMES):
        raise AssertionError("SEEN_NAMES and UNSEEN_NAMES must partition the categories")
    seen_unseen_names(options)  # fails early on a bad synthetic.seen_names
    out_dir = Path(out_dir)
    counts: dict = {"categories": len(CATEGORY_NAMES)}
    next_image_id, next_annotation_id = 1, 1
    for split_index, split in enumerate(SPLITS):
        annotated = split != "unlabeled"
        count = _split_count(options, split)
        image_dir = out_dir / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_images(image_dir, count)
        images, annotations = [], []
        for index in progress(range(count), f"synthesize {split}", unit="img"):
            rng = np.random.default_rng([options.seed, split_index, index])
            image, category_ids, masks = render_scene(options, rng)
            file_name = f"{split}/{index + 1:06d}.png"
            _write_png_if_changed(out_dir / "images" / file_name, image)
            images.append({"id": next_image_id, "file_name": file_name,
                           "height": options.image_size, "width": options.image_size})
            if annotated:
                rles = encode_masks(masks)
                for category_id, rle, box, area in zip(category_ids, rles, *_boxes_and_areas(rles)):
                    annotations.append({
                        "id": next_annotation_id, "image_id": next_image_id, "category_id": category_id,
                        "segmentation": rle, "area": area, "bbox": box, "iscrowd": 0,
                    })
                    next_annotation_id += 1
            next_image_id += 1
        info = {"description": "oln synthetic open-world shapes", "split": split, "options": asdict(options)}
        coco = {"info": info, "images": images, "annotations": annotations, "categories": categories(options)}
        write_json(out_dir / f"{split}.json", coco)
        counts[split] = {"images": len(images), "annotations": len(annotations)}
    return counts
