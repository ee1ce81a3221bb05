"""Orientation alignment of the boundary map with the watershed lines.

Boundary strength (1 - affinity) is kept only on watershed boundary pixels and
weighted by |cos| of the angle between the local orientation of the predicted
boundary and that of the watershed lines (GGN's `use_orientation`).
"""

from __future__ import annotations

import cv2
import numpy as np

from oln.grouping.oversegment import thick_boundaries

_TRIANGLE = np.array([1, 2, 3, 4, 5, 4, 3, 2, 1], dtype=np.float64) / 25.0
_SECOND_DIFF = np.array([[-1.0, 2.0, -1.0]])
_MIXED = np.array([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 1.0]])


def _filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(image, cv2.CV_64F, kernel, borderType=cv2.BORDER_CONSTANT)


def edge_orientation(edge_map: np.ndarray) -> np.ndarray:
    """Local orientation in [0, pi) of an edge map from second derivatives of its smoothed version.

    The map is smoothed with a 9x9 triangle kernel (zero padding); the angle is
    atan2 of the second differences along x and y, with the sign of the x term
    flipped where the mixed derivative is positive.

    Args:
        edge_map: float (H, W).
    Returns:
        float64 (H, W) angles.
    """
    smoothed = cv2.sepFilter2D(
        edge_map.astype(np.float64), cv2.CV_64F, _TRIANGLE, _TRIANGLE, borderType=cv2.BORDER_CONSTANT
    )
    d_x = _filter(smoothed, _SECOND_DIFF)
    d_y = _filter(smoothed, _SECOND_DIFF.T)
    d_x[_filter(smoothed, _MIXED) > 0] *= -1
    return np.mod(np.arctan2(d_x, d_y), np.pi)


def orientation_aligned_boundary(affinity: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boundary strength restricted to watershed lines and weighted by orientation agreement.

    Args:
        affinity: float (H, W) in [0, 1].
        labels: int (H, W) superpixels.
    Returns:
        float32 (H, W) boundary strength in [0, 1].
    """
    lines = thick_boundaries(labels)
    boundary = 1.0 - affinity.astype(np.float64)
    alignment = np.abs(np.cos(edge_orientation(lines.astype(np.float64)) - edge_orientation(boundary)))
    return (alignment * lines * boundary).astype(np.float32)
