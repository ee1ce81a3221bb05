"""Named category splits: which categories are "seen" (annotated for training).

A split is given either by name or as an explicit list of category ids:

- COCO: `voc` (the 20 PASCAL VOC classes), `nonvoc` (the other 60),
  `person`, `nonperson`, `all`; looked up by COCO category *name* so the
  numbering of the annotation file does not matter.
- The synthetic open-world set: `seen` / `unseen` (its categories carry
  `supercategory` "seen" or "unseen").
"""

from __future__ import annotations

from collections.abc import Sequence

COCO_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# The 20 PASCAL VOC classes under their COCO names.
VOC_NAMES: tuple[str, ...] = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorcycle", "person", "potted plant", "sheep", "couch",
    "train", "tv",
)  # fmt: skip

NONVOC_NAMES: tuple[str, ...] = tuple(n for n in COCO_NAMES if n not in VOC_NAMES)

SPLIT_NAMES = ("voc", "nonvoc", "person", "nonperson", "all", "seen", "unseen")


def split_category_names(name: str) -> tuple[str, ...] | None:
    """COCO category names of a named COCO split, or None for non-COCO splits."""
    return {
        "voc": VOC_NAMES,
        "nonvoc": NONVOC_NAMES,
        "person": ("person",),
        "nonperson": tuple(n for n in COCO_NAMES if n != "person"),
    }.get(name)


def resolve_split(split: str | Sequence[int], categories: Sequence[dict]) -> list[int]:
    """Category ids of `split` among `categories` (COCO `categories` entries).

    Args:
        split: a split name (see SPLIT_NAMES) or an explicit list of category ids.
        categories: the dataset's category dicts (`id`, `name`, optional `supercategory`).
    Returns:
        Sorted category ids.
    Raises:
        ValueError: unknown name, ids not in the dataset, or COCO names missing.
    """
    known_ids = {int(c["id"]) for c in categories}
    if not isinstance(split, str):
        ids = sorted(int(i) for i in split)
        missing = [i for i in ids if i not in known_ids]
        if missing:
            raise ValueError(f"category ids {missing} are not in the dataset (known: {sorted(known_ids)})")
        return ids
    if split == "all":
        return sorted(known_ids)
    if split in ("seen", "unseen"):
        ids = sorted(int(c["id"]) for c in categories if c.get("supercategory") == split)
        if not ids:
            raise ValueError(f"split '{split}': no category has supercategory '{split}'")
        return ids
    names = split_category_names(split)
    if names is None:
        raise ValueError(f"unknown category split '{split}'; use one of {SPLIT_NAMES} or a list of ids")
    by_name = {c["name"]: int(c["id"]) for c in categories}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"split '{split}': categories {missing} are not in the dataset")
    return sorted(by_name[n] for n in names)


def complement(ids: Sequence[int], categories: Sequence[dict]) -> list[int]:
    """All category ids of `categories` not in `ids`."""
    chosen = set(ids)
    return sorted(int(c["id"]) for c in categories if int(c["id"]) not in chosen)
