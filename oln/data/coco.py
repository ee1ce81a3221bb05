"""COCO-format instance data: image decoding, annotation decoding, a torch Dataset.

Every stage reads images through `load_image` and annotations through
`CocoInstances`, so decoding rules (grayscale, RGBA, 16-bit, EXIF orientation,
polygons / RLE / crowd) live in one place. Unreadable images raise
`UnreadableImage`; the dataset skips them with a warning and counts them.
An image folder without annotations becomes an images-only COCO json with
`images_json_from_folder`, so downstream stages handle one format.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pycocotools import mask as mask_utils

from oln.data.filtering import filter_training_images
from oln.data.folders import IMAGE_EXTENSIONS, list_images
from oln.io import read_json, write_json

log = logging.getLogger(__name__)

class UnreadableImage(Exception):
    """An image file that is missing, empty, truncated or not an image."""


def load_image(path: str | os.PathLike, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image file to RGB uint8 (H, W, 3): the one image reader of the library.

    Modes: grayscale and palette are expanded, RGBA/LA drop alpha (no compositing),
    CMYK uses Pillow's conversion ((0, 0, 0, 0) is white; Adobe-inverted JPEGs are
    handled), 16-bit (grayscale or colour) keeps the high byte (v >> 8, so
    65535 -> 255 and 257 * k -> k), as OpenCV's IMREAD_COLOR does. EXIF orientation
    is applied, as mmcv's default `imread(flag='color')` (cv2.IMREAD_COLOR) and
    detectron2 do; pycocotools never reads pixels. When `expected_hw` (the
    annotation's height, width) matches only the raw, un-rotated size, the raw
    pixels are kept so masks stay aligned with the annotations.

    Raises:
        UnreadableImage: the file is missing, empty, truncated or not an image.
    """
    path = Path(path)
    if expected_hw is not None and not all(expected_hw):
        expected_hw = None  # an images json without height/width
    try:
        with Image.open(path) as img:
            img.load()
            sixteen_bit_png = img.format == "PNG" and img.mode == "I"  # older Pillow: 16-bit gray PNG
            oriented = ImageOps.exif_transpose(img)
            if expected_hw is not None and oriented.size[::-1] != tuple(expected_hw):
                if img.size[::-1] == tuple(expected_hw):
                    oriented = img
            return _to_rgb_uint8(oriented, sixteen_bit=sixteen_bit_png)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise UnreadableImage(f"{path}: cannot decode image ({err})") from err


def check_skipped(num_skipped: int, num_images: int, max_fraction: float, image_root: str | os.PathLike,
                  skipped: Sequence[str], option: str = "max_skipped_fraction") -> None:
    """Fail when a stage could not read most of its images (e.g. a wrong image root), else warn.

    The one rule of every stage that skips unreadable images (extract, merge, predict).

    Args:
        num_skipped: images that could not be read.
        num_images: images the stage was given.
        max_fraction: largest share of skipped images that is only warned about.
        image_root: folder the images are relative to (named in the message).
        skipped: the skipped files (or their errors), in order; the first is named.
        option: the config key of `max_fraction`, named in the message.
    Raises:
        ValueError: more than `max_fraction` of the images were skipped.
    """
    if num_images and num_skipped / num_images > max_fraction:
        raise ValueError(f"{num_skipped} of {num_images} images under {image_root} could not be read (more than "
                         f"{option} = {max_fraction}); first: {skipped[0]}")
    if num_skipped:
        log.warning("skipped %d of %d unreadable images under %s", num_skipped, num_images, image_root)


def _to_rgb_uint8(img: Image.Image, sixteen_bit: bool = False) -> np.ndarray:
    """RGB uint8 of a decoded image; integer modes: 16-bit -> high byte, wider -> scaled by the max."""
    if img.mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (32-bit int)
        arr = np.clip(np.asarray(img).astype(np.int64), 0, None)
        top = int(arr.max(initial=0))
        if top > 65535:
            gray = arr * 255 // top
        elif sixteen_bit or img.mode != "I" or top > 255:
            gray = arr >> 8
        else:
            gray = arr
        return np.repeat(gray.astype(np.uint8)[:, :, None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        gray = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image after EXIF orientation, reading the header only."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise UnreadableImage(f"{path}: cannot read image header ({err})") from err
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return height, width


def images_json_from_folder(folder: str | os.PathLike, out_json: str | os.PathLike) -> dict:
    """Write an images-only COCO json for every image file under `folder`.

    `file_name` is relative to `folder`; ids follow sorted path order. Files
    whose header cannot be read are skipped with a warning and counted.

    Returns:
        {"num_images", "num_skipped", "skipped_files"}.
    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the folder holds no readable image (nothing is written).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder does not exist")
    paths = list_images(folder)
    if not paths:
        raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder source")
    images, skipped = [], []
    for path in paths:
        try:
            height, width = image_size(path)
        except UnreadableImage as err:
            log.warning("skipping %s", err)
            skipped.append(str(path))
            continue
        rel = path.relative_to(folder).as_posix()
        images.append({"id": len(images) + 1, "file_name": rel, "height": height, "width": width})
    if not images:
        raise ValueError(f"{folder}: none of its {len(paths)} image files can be read (first: {skipped[0]})")
    write_json(out_json, {"images": images, "annotations": [], "categories": []})
    return {"num_images": len(images), "num_skipped": len(skipped), "skipped_files": skipped}


def annotation_to_rle(ann: dict, height: int, width: int) -> dict:
    """Compressed RLE of an annotation's segmentation (polygons, RLE or box only)."""
    seg = ann.get("segmentation")
    if not seg:
        x, y, w, h = ann["bbox"]
        return mask_utils.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], height, width)[0]
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, height, width)
    counts = seg["counts"]
    return {"size": seg["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def annotation_to_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of an annotation."""
    return mask_utils.decode(annotation_to_rle(ann, height, width)).astype(bool)


class CocoInstances(torch.utils.data.Dataset):
    """Class-agnostic instance targets from a COCO json.

    Args:
        json_path: COCO annotation (or images-only) json.
        image_root: folder that image `file_name`s are relative to.
        category_ids: keep annotations of these categories (None keeps all).
        transform: optional callable `(image, target) -> (image, target)`.
        include_pseudo: keep annotations flagged `pseudo: 1` (kept whatever
            their category when True, dropped when False).
        filter_empty_gt: keep only the images with an annotation of `category_ids`
            (pseudo ones do not count) and a shorter side >= 32 px, as GGN trains
            (see `oln.data.filtering`).
    Items:
        `(image, target)`: image float32 (3, H, W) in [0, 1]; target with
        `boxes` (N, 4) xyxy, `masks` uint8 (N, H, W), `labels` all 1,
        `category_ids`, `iscrowd`, `pseudo`, `image_id`, `orig_size`.
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_root: str | os.PathLike,
        category_ids: Sequence[int] | None = None,
        transform: Callable | None = None,
        include_pseudo: bool = True,
        filter_empty_gt: bool = False,
    ) -> None:
        self.json_path = Path(json_path)
        self.image_root = Path(image_root)
        data = read_json(self.json_path)
        if "images" not in data:
            raise ValueError(f"{self.json_path}: not a COCO json (no 'images' key)")
        self.categories = data.get("categories", [])
        keep = None if category_ids is None else {int(c) for c in category_ids}
        self.images = sorted(data["images"], key=lambda im: im["id"])
        known_ids = {im["id"] for im in self.images}
        if filter_empty_gt:
            self.images = filter_training_images(self.images, data.get("annotations", []), keep,
                                                 str(self.json_path))
        self.anns_by_image: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        self.num_dropped_degenerate = 0
        for ann in data.get("annotations", []):
            is_pseudo = bool(ann.get("pseudo", 0))
            if is_pseudo and not include_pseudo:
                continue
            if not is_pseudo and keep is not None and int(ann["category_id"]) not in keep:
                continue
            if ann["image_id"] not in known_ids:
                raise ValueError(f"{self.json_path}: annotation {ann.get('id')} refers to unknown image "
                                 f"{ann['image_id']}")
            if ann["image_id"] not in self.anns_by_image:  # an image dropped by filter_empty_gt
                continue
            if ann["bbox"][2] < 1 or ann["bbox"][3] < 1:
                self.num_dropped_degenerate += 1
                continue
            self.anns_by_image[ann["image_id"]].append(ann)
        self.transform = transform
        self.skipped_files: list[str] = []

    @property
    def num_skipped(self) -> int:
        """Number of unreadable images met so far (in this process)."""
        return len(self.skipped_files)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.image_root / self.images[index]["file_name"]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        for attempt in range(len(self.images)):
            i = (index + attempt) % len(self.images)
            try:
                image, target = self.load(i)
            except UnreadableImage as err:
                if str(self.image_path(i)) not in self.skipped_files:
                    log.warning("skipping unreadable image: %s", err)
                    self.skipped_files.append(str(self.image_path(i)))
                continue
            if self.transform is not None:
                image, target = self.transform(image, target)
            return image, target
        raise RuntimeError(f"{self.json_path}: no readable image under {self.image_root}")

    def load(self, index: int) -> tuple[torch.Tensor, dict]:
        """Image and target of image `index` without transform (raises UnreadableImage)."""
        info = self.images[index]
        height, width = info.get("height"), info.get("width")
        expected = (height, width) if height and width else None
        pixels = load_image(self.image_path(index), expected)
        height, width = pixels.shape[:2]
        anns = self.anns_by_image[info["id"]]
        masks = np.zeros((len(anns), height, width), dtype=np.uint8)
        for k, ann in enumerate(anns):
            masks[k] = annotation_to_mask(ann, height, width)
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                           a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=np.float32).reshape(-1, 4)
        target = {
            "boxes": torch.from_numpy(boxes),
            "masks": torch.from_numpy(masks),
            "labels": torch.ones(len(anns), dtype=torch.int64),
            "category_ids": torch.tensor([int(a["category_id"]) for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.uint8),
            "pseudo": torch.tensor([int(a.get("pseudo", 0)) for a in anns], dtype=torch.uint8),
            "image_id": int(info["id"]),
            "orig_size": (height, width),
        }
        image = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
        return image, target


def collate_list(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Collate `(image, target)` pairs into two lists (images keep their own sizes)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
