"""Over-segmentation of an affinity map into superpixels (watershed from local maxima).

GGN's finest partition: seeds are the local maxima of the affinity map inside a
square footprint (20x20), kept where the affinity exceeds `seed_threshold` times
its maximum; the negated affinity is flooded from these seeds with 8-connectivity.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed


def reduce_affinity(affinity: np.ndarray) -> np.ndarray:
    """Reduce a (C, H, W) affinity stack to (H, W) by the minimum over C (float32).

    Args:
        affinity: array (H, W) or (C, H, W) in [0, 1], high inside objects.
    Returns:
        float32 array (H, W).
    """
    affinity = np.asarray(affinity)
    if affinity.ndim == 3:
        affinity = affinity.min(axis=0)
    if affinity.ndim != 2:
        raise ValueError(f"affinity must be (H, W) or (C, H, W), got shape {affinity.shape}")
    return np.ascontiguousarray(affinity, dtype=np.float32)


def _square_maximum(image: np.ndarray, size: int) -> np.ndarray:
    """Maximum over a size x size window (offsets -size//2 .. size - size//2 - 1), image edges ignored.

    Equal to scipy's `maximum_filter(image, size, mode="nearest")` (a replicated edge
    pixel always lies inside the same window); OpenCV's dilation is used for the
    dtypes it supports because it is about ten times faster.
    """
    if image.dtype in (np.float32, np.float64, np.uint8, np.uint16, np.int16):
        kernel = np.ones((size, size), dtype=np.uint8)
        return cv2.dilate(np.ascontiguousarray(image), kernel, borderType=cv2.BORDER_CONSTANT,
                          borderValue=-np.inf if image.dtype.kind == "f" else int(np.iinfo(image.dtype).min))
    return ndi.maximum_filter(image, size=size, mode="nearest")


def find_seeds(affinity: np.ndarray, footprint_size: int = 20, seed_threshold: float = 0.0) -> np.ndarray:
    """Watershed seeds: local maxima of `affinity` within a square footprint.

    Same seeds as skimage's `peak_local_max(affinity, footprint=ones((s, s)))`: pixels
    equal to their window maximum (plateaus included, none at all on a constant map),
    above the map's minimum, not on the outermost row/column.

    Args:
        affinity: float (H, W).
        footprint_size: side of the square neighbourhood a peak must dominate.
        seed_threshold: keep seeds where affinity > seed_threshold * max(affinity).
    Returns:
        int32 marker image (H, W); 0 = no seed, 4-connected seed pixels share a label.
    """
    if footprint_size == 1 or affinity.size == 1:
        peaks = affinity > affinity.min()
    else:
        peaks = affinity == _square_maximum(affinity, footprint_size)
        if peaks.all():
            peaks[:] = False
        peaks &= affinity > affinity.min()
    peaks[[0, -1]] = False
    peaks[:, [0, -1]] = False
    markers, _ = ndi.label(peaks)
    markers[affinity <= seed_threshold * affinity.max()] = 0
    return markers.astype(np.int32, copy=False)


def oversegment(
    affinity: np.ndarray, footprint_size: int = 20, seed_threshold: float = 0.0
) -> np.ndarray | None:
    """Watershed superpixels of the negated affinity.

    Args:
        affinity: float (H, W) in [0, 1].
        footprint_size: peak footprint (see `find_seeds`).
        seed_threshold: relative seed threshold (see `find_seeds`).
    Returns:
        int32 labels (H, W) numbered 0..L-1 consecutively, or None when there is
        no seed at all.
    """
    markers = find_seeds(affinity, footprint_size, seed_threshold)
    if not markers.any():
        return None
    labels = watershed(-affinity, markers, connectivity=2)
    present = np.bincount(labels.ravel()) > 0
    lut = np.full(present.size, -1, dtype=np.int32)
    lut[present] = np.arange(int(present.sum()), dtype=np.int32)
    return lut[labels]


def thick_boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose 4-neighbourhood holds another label (skimage `find_boundaries`, mode thick).

    Args:
        labels: int (H, W).
    Returns:
        bool (H, W).
    """
    out = np.zeros(labels.shape, dtype=bool)
    vertical = labels[1:] != labels[:-1]
    horizontal = labels[:, 1:] != labels[:, :-1]
    out[1:] |= vertical
    out[:-1] |= vertical
    out[:, 1:] |= horizontal
    out[:, :-1] |= horizontal
    return out
