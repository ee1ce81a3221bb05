"""Augmentations on (image, target) pairs shared by the affinity and detector trainers.

An image is a float tensor (3, H, W) in [0, 1]; a target is the dict produced by
`oln.data.coco.CocoInstances` (`boxes` xyxy (N, 4), `masks` uint8 (N, H, W) and
per-instance vectors `labels`, `category_ids`, `iscrowd`, `pseudo`, ...).

Every transform is a callable `(image, target, rng) -> (image, target)` drawing its
randomness only from `rng` (a `random.Random`). `Compose` without an explicit rng uses
the module-level `random` generator, which the training engine reseeds before each
sample from (seed, iteration, sample index), so a resumed run sees the same crops.
Boxes are recomputed from the masks after a geometric change, and instances whose mask
becomes empty are dropped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Target = dict
Transform = Callable[[torch.Tensor, Target, random.Random], tuple[torch.Tensor, Target]]

# Target entries with one row per instance; they are filtered together.
INSTANCE_KEYS = ("boxes", "masks", "labels", "category_ids", "iscrowd", "pseudo", "area", "scores")


class Compose:
    """Apply transforms in order with one shared random generator.

    Args:
        transforms: callables `(image, target, rng) -> (image, target)`.
    """

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target, rng: random.Random | None = None):
        rng = rng if rng is not None else random._inst  # the module-level generator
        for transform in self.transforms:
            image, target = transform(image, target, rng)
        return image, target


def select_instances(target: Target, keep: torch.Tensor) -> Target:
    """Return a copy of `target` keeping the instances where the bool vector `keep` is True."""
    out = dict(target)
    keep = keep.bool()
    for key in INSTANCE_KEYS:
        if key in out and isinstance(out[key], torch.Tensor) and len(out[key]) == len(keep):
            out[key] = out[key][keep]
    return out


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes (N, 4) float32 of (N, H, W) masks; pixel boxes cover [x0, x1 + 1)."""
    n = masks.shape[0]
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    masks = masks.bool()
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    h, w = masks.shape[1:]
    y_idx = torch.arange(h)
    x_idx = torch.arange(w)
    big = max(h, w) + 1
    y0 = torch.where(rows, y_idx, big).min(dim=1).values
    y1 = torch.where(rows, y_idx, -1).max(dim=1).values + 1
    x0 = torch.where(cols, x_idx, big).min(dim=1).values
    x1 = torch.where(cols, x_idx, -1).max(dim=1).values + 1
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def _refresh_instances(target: Target) -> Target:
    """Recompute boxes from masks and drop instances whose mask is empty."""
    masks = target.get("masks")
    if masks is None:
        return target
    keep = masks.flatten(1).bool().any(dim=1) if len(masks) else torch.zeros(0, dtype=torch.bool)
    target = select_instances(target, keep)
    target["boxes"] = boxes_from_masks(target["masks"])
    if "area" in target:
        target["area"] = target["masks"].flatten(1).sum(dim=1).float()
    return target


def resize(image: torch.Tensor, target: Target, size: tuple[int, int]) -> tuple[torch.Tensor, Target]:
    """Resize image (bilinear, antialiased) and masks (nearest) to `size` = (H, W)."""
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return image, target
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    image = image.clamp_(0.0, 1.0)
    target = dict(target)
    masks = target.get("masks")
    if masks is not None:
        if len(masks):
            target["masks"] = F.interpolate(masks[None].float(), size=size, mode="nearest")[0].to(masks.dtype)
        else:
            target["masks"] = masks.new_zeros((0, *size))
        target = _refresh_instances(target)
    elif "boxes" in target:
        scale = torch.tensor([size[1] / w, size[0] / h, size[1] / w, size[0] / h])
        target["boxes"] = target["boxes"] * scale
    return image, target


class RandomHorizontalFlip:
    """Mirror image and target left-right with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, target, rng):
        if rng.random() >= self.p:
            return image, target
        w = image.shape[-1]
        image = image.flip(-1)
        target = dict(target)
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        if "boxes" in target and len(target["boxes"]):
            boxes = target["boxes"].clone()
            boxes[:, 0] = w - target["boxes"][:, 2]
            boxes[:, 2] = w - target["boxes"][:, 0]
            target["boxes"] = boxes
        return image, target


class RandomScale:
    """Resize by a factor drawn uniformly from [min_scale, max_scale]."""

    def __init__(self, min_scale: float = 1.0, max_scale: float = 1.0):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.min_scale = min_scale
        self.max_scale = max_scale

    def __call__(self, image, target, rng):
        factor = rng.uniform(self.min_scale, self.max_scale)
        if self.min_scale == self.max_scale == 1.0:
            return image, target
        h, w = image.shape[-2:]
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        return resize(image, target, size)


class RandomCrop:
    """Crop a random window of at most `size` x `size` (sides shorter than `size` are kept whole).

    No padding is added here: batches are padded by the trainers' collate step, which
    marks padding as ignored.
    """

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, target, rng):
        h, w = image.shape[-2:]
        ch, cw = min(h, self.size), min(w, self.size)
        top = rng.randint(0, h - ch)
        left = rng.randint(0, w - cw)
        if (ch, cw) == (h, w):
            return image, target
        image = image[:, top : top + ch, left : left + cw]
        target = dict(target)
        if "masks" in target:
            target["masks"] = target["masks"][:, top : top + ch, left : left + cw]
            target = _refresh_instances(target)
        elif "boxes" in target:
            boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=torch.float32)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, cw)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ch)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            target["boxes"] = boxes
            target = select_instances(target, keep)
        return image, target


class ResizeMaxSize:
    """Shrink so the longer side is at most `max_size` (never enlarges; 0 = off)."""

    def __init__(self, max_size: int):
        self.max_size = max_size

    def __call__(self, image, target, rng):
        h, w = image.shape[-2:]
        if self.max_size <= 0 or max(h, w) <= self.max_size:
            return image, target
        factor = self.max_size / max(h, w)
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        return resize(image, target, size)


def build_transforms(
    max_size: int = 0,
    flip: bool = True,
    scale_range: Sequence[float] = (1.0, 1.0),
    crop_size: int = 0,
) -> Compose:
    """Standard training pipeline: resize to max size, random scale, random crop, flip.

    Args:
        max_size: longer side limit applied first (0 = keep original resolution, as GGN).
        flip: random horizontal flip with p = 0.5.
        scale_range: (min, max) random rescale factor; (1, 1) = off.
        crop_size: random square crop side (0 = no crop).
    Returns:
        a `Compose` usable as `CocoInstances(transform=...)`.
    """
    transforms: list[Transform] = []
    if max_size > 0:
        transforms.append(ResizeMaxSize(max_size))
    lo, hi = float(scale_range[0]), float(scale_range[1])
    if not (math.isclose(lo, 1.0) and math.isclose(hi, 1.0)):
        transforms.append(RandomScale(lo, hi))
    if crop_size > 0:
        transforms.append(RandomCrop(crop_size))
    if flip:
        transforms.append(RandomHorizontalFlip(0.5))
    return Compose(transforms)
