"""Shape outlines for the synthetic open-world dataset, and their rasterisation.

Each shape category has a canonical outline: a list of closed contours in unit
coordinates centred near the origin (the first contour is the outline, any
further contours are holes, filled with the even-odd rule). Outlines carry a
little per-instance randomness (star depth, arm width, blob wiggle) so that a
category is a family of shapes rather than one template. `place_contours`
scales, stretches, rotates and moves an outline into pixel coordinates and
`rasterise` turns it into a boolean mask with cv2.fillPoly (sub-pixel precise).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import cv2
import numpy as np

#: cv2.fillPoly fixed-point precision: coordinates are multiplied by 2**SUBPIXEL_BITS.
SUBPIXEL_BITS = 4

Contours = list[np.ndarray]


@functools.lru_cache(maxsize=8)
def _unit_circle(num_points: int = 48) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * np.pi, num_points, endpoint=False)
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    points.flags.writeable = False  # shared by all calls
    return points


def _regular_polygon(num_sides: int, phase: float = 0.0) -> np.ndarray:
    angles = phase + np.linspace(0.0, 2.0 * np.pi, num_sides, endpoint=False)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def disc(rng: np.random.Generator) -> Contours:
    """Filled circle (ellipse once stretched)."""
    return [_unit_circle()]


def square(rng: np.random.Generator) -> Contours:
    """Axis-aligned unit square (rectangle once stretched)."""
    return [np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])]


def triangle(rng: np.random.Generator) -> Contours:
    """Triangle: an equilateral one with jittered corners."""
    corners = _regular_polygon(3, phase=-np.pi / 2)
    return [corners + rng.uniform(-0.15, 0.15, size=corners.shape)]


def star(rng: np.random.Generator) -> Contours:
    """Five-pointed star with a random inner radius (depth of the notches)."""
    inner_radius = rng.uniform(0.38, 0.55)
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, 1.0, inner_radius)
    return [np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)]


def cross(rng: np.random.Generator) -> Contours:
    """Plus sign with equal arms of random width."""
    w = rng.uniform(0.28, 0.42)
    return [np.array([
        [-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w],
        [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w],
    ], dtype=float)]


def arrow(rng: np.random.Generator) -> Contours:
    """Arrow pointing right: a shaft and a triangular head."""
    shaft = rng.uniform(0.16, 0.28)
    head_start = rng.uniform(0.0, 0.35)
    head_half = rng.uniform(0.55, 0.8)
    return [np.array([
        [-1, -shaft], [head_start, -shaft], [head_start, -head_half], [1, 0],
        [head_start, head_half], [head_start, shaft], [-1, shaft],
    ], dtype=float)]


def hexagon(rng: np.random.Generator) -> Contours:
    """Regular hexagon."""
    return [_regular_polygon(6)]


def ring(rng: np.random.Generator) -> Contours:
    """Annulus: an outer circle with a concentric circular hole."""
    hole = rng.uniform(0.45, 0.65)
    return [_unit_circle(), _unit_circle()[::-1] * hole]


def crescent(rng: np.random.Generator) -> Contours:
    """Unit disc minus an overlapping, offset disc, traced as one outline."""
    offset = rng.uniform(0.4, 0.6)
    cut_radius = rng.uniform(0.8, 0.95)
    # Intersection points (x, +-y) of |p| = 1 and |p - (offset, 0)| = cut_radius.
    x = (1.0 - cut_radius**2 + offset**2) / (2.0 * offset)
    y = np.sqrt(max(1.0 - x * x, 1e-6))
    outer_start = np.arctan2(y, x)
    outer = np.linspace(outer_start, 2.0 * np.pi - outer_start, 32)
    inner_start = np.arctan2(y, x - offset)
    inner = np.linspace(-inner_start, -(2.0 * np.pi - inner_start), 32)
    outer_arc = np.stack([np.cos(outer), np.sin(outer)], axis=1)
    inner_arc = np.stack([offset + cut_radius * np.cos(inner), cut_radius * np.sin(inner)], axis=1)
    return [np.concatenate([outer_arc, inner_arc])]


def heart(rng: np.random.Generator) -> Contours:
    """Heart from the classic trigonometric curve, point facing down (image y grows down)."""
    return [_heart_outline()]


@functools.lru_cache(maxsize=1)
def _heart_outline() -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
    x = 16.0 * np.sin(t) ** 3
    y = 13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t)
    points = np.stack([x, -y - 2.5], axis=1) / 16.0
    points.flags.writeable = False  # shared by all calls
    return points


def l_shape(rng: np.random.Generator) -> Contours:
    """Letter L: two perpendicular bars of random thickness."""
    t = rng.uniform(0.5, 0.9)
    return [np.array([[-1, -1], [-1 + t, -1], [-1 + t, 1 - t], [1, 1 - t], [1, 1], [-1, 1]], dtype=float)]


def blob(rng: np.random.Generator) -> Contours:
    """Smooth random star-convex blob: a radius that is a low-order Fourier series of the angle."""
    angles = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
    radius = np.ones_like(angles)
    for order in (2, 3, 4):
        radius += rng.uniform(0.05, 0.25) / order * 2 * np.cos(order * angles + rng.uniform(0, 2 * np.pi))
    radius = np.clip(radius, 0.35, None)
    return [np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)]


#: Category name -> canonical outline generator; the order defines category ids 1..12.
SHAPES: dict[str, Callable[[np.random.Generator], Contours]] = {
    "disc": disc,
    "square": square,
    "triangle": triangle,
    "star": star,
    "cross": cross,
    "arrow": arrow,
    "hexagon": hexagon,
    "ring": ring,
    "crescent": crescent,
    "heart": heart,
    "l_shape": l_shape,
    "blob": blob,
}


def polygon_area(points: np.ndarray) -> float:
    """Absolute area of a simple closed polygon (K, 2)."""
    return float(cv2.contourArea(points.astype(np.float32)))


def contours_area(contours: Contours) -> float:
    """Area of an outline: the first contour minus its holes."""
    return polygon_area(contours[0]) - sum(polygon_area(hole) for hole in contours[1:])


def contours_perimeter(contours: Contours) -> float:
    """Total boundary length of an outline, holes included."""
    return sum(float(cv2.arcLength(points.astype(np.float32), True)) for points in contours)


def scale_for_pixel_count(contours: Contours, pixels: float) -> float:
    """Scale at which a canonical outline rasterises to about `pixels` pixels.

    cv2.fillPoly also fills the pixels the boundary passes through, which adds
    about half a pixel per unit of perimeter (matters for small objects), so
    solve area * s**2 + perimeter / 2 * s = pixels for s.
    """
    area, half_perimeter = contours_area(contours), 0.5 * contours_perimeter(contours)
    return (-half_perimeter + np.sqrt(half_perimeter**2 + 4.0 * area * pixels)) / (2.0 * area)


def place_contours(
    contours: Contours,
    center: tuple[float, float],
    scale: float,
    angle: float,
    aspect: float = 1.0,
) -> Contours:
    """Map a canonical outline to pixel coordinates.

    Args:
        contours: canonical outline (unit coordinates).
        center: (x, y) pixel position of the canonical origin.
        scale: pixels per canonical unit (geometric mean of the two axes).
        angle: rotation in radians, applied after stretching.
        aspect: x/y stretch ratio (1 keeps the proportions).

    Returns:
        Contours as float (K, 2) arrays in pixel coordinates.
    """
    stretch = np.array([scale * np.sqrt(aspect), scale / np.sqrt(aspect)])
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    offset = np.asarray(center, dtype=float)
    return [(points * stretch) @ rotation.T + offset for points in contours]


def rasterise(
    contours: Contours, height: int, width: int, value: int = 1, out: np.ndarray | None = None
) -> np.ndarray:
    """Fill pixel-coordinate contours (even-odd rule, so holes stay empty).

    Args:
        contours: outline in pixel coordinates (pixel centres at integers).
        height, width: canvas size, used when `out` is None.
        value: value written inside the outline.
        out: optional uint8/int32 canvas painted in place.

    Returns:
        The canvas (uint8 (H, W) with `value` inside unless `out` was given).
    """
    canvas = np.zeros((height, width), np.uint8) if out is None else out
    fixed_point = [np.round(points * (1 << SUBPIXEL_BITS)).astype(np.int32) for points in contours]
    cv2.fillPoly(canvas, fixed_point, int(value), lineType=cv2.LINE_8, shift=SUBPIXEL_BITS)
    return canvas
