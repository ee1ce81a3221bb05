"""Which training images a stage uses: GGN's filter of images without training-class GT.

GGN's split COCO dataset (mmdet `CustomDataset` with `filter_empty_gt=True`, as applied by
`CocoSplitDataset._filter_imgs`) trains on the images that hold at least one annotation of a
training category (crowd annotations count, as they are in COCO's category-to-image index)
and whose shorter side is at least 32 px. Images with no seen object are dropped, so they
are neither pure background for a detector nor counted in an epoch.

Pseudo-GT does not make a training-split image count (GGN keeps pseudo masks in a separate
annotation file that its filter never sees). Images added by another pseudo-GT source (e.g. the
unlabeled split or a folder of images) have no annotated GT by construction; they are kept
when they hold a pseudo mask (GGN has no such source), otherwise that source would be dropped
whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

log = logging.getLogger(__name__)

MIN_IMAGE_SIDE = 32  # mmdet CustomDataset._filter_imgs(min_size=32)
TRAIN_SOURCE = "train"  # `source` of pseudo masks extracted from the training split itself


def _counts(annotation: dict, wanted: set[int] | None) -> bool:
    """Whether an annotation makes its image a training image (see the module docstring)."""
    if annotation.get("pseudo", 0):
        return annotation.get("source", TRAIN_SOURCE) != TRAIN_SOURCE
    return wanted is None or int(annotation["category_id"]) in wanted


def images_with_training_annotations(
    images: Sequence[dict],
    annotations: Iterable[dict],
    category_ids: Iterable[int] | None,
    min_side: int = MIN_IMAGE_SIDE,
) -> list[dict]:
    """The images GGN trains on: >= 1 annotation of `category_ids` and shorter side >= `min_side`.

    Args:
        images: COCO `images` records (with `width`/`height`; records without them are kept
            by the size rule, since their size is unknown until decoded).
        annotations: COCO annotations; one flagged `pseudo: 1` counts only when its `source` is not
            the training split (`TRAIN_SOURCE`).
        category_ids: training categories (None = any category).
        min_side: minimum shorter image side in pixels.
    Returns:
        the kept image records, in their input order.
    """
    wanted = None if category_ids is None else {int(c) for c in category_ids}
    with_gt = {ann["image_id"] for ann in annotations if _counts(ann, wanted)}
    kept = []
    for info in images:
        if info["id"] not in with_gt:
            continue
        width, height = info.get("width"), info.get("height")
        if width and height and min(width, height) < min_side:
            continue
        kept.append(info)
    return kept


def filter_training_images(
    images: Sequence[dict], annotations: Iterable[dict], category_ids: Iterable[int] | None, where: str
) -> list[dict]:
    """`images_with_training_annotations`, logging how many images were dropped and why.

    Raises:
        ValueError: when no image is left (names `where`, the json or stage).
    """
    kept = images_with_training_annotations(images, annotations, category_ids)
    dropped = len(images) - len(kept)
    log.info("%s: %d of %d images hold annotations of the training categories (%d dropped: no such "
             "annotation or a side under %d px; dataset.filter_empty_gt)", where, len(kept), len(images),
             dropped, MIN_IMAGE_SIDE)
    if images and not kept:
        raise ValueError(f"{where}: no image holds an annotation of the training categories {category_ids}")
    return kept
