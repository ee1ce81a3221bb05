"""How synthetic scenes are painted: background, unannotated clutter, object fills.

Images are painted as planar float32 (3, S, S) RGB arrays: numpy broadcasting over a
trailing axis of length 3 is several times slower than over planes. Every function
draws from the caller's RNG, so a scene is a pure function of its seed.
"""

from __future__ import annotations

import functools
import math
from typing import Protocol

import cv2
import numpy as np


class PaintingOptions(Protocol):
    """The settings painting reads (`oln.data.synthetic.SyntheticOptions` has them)."""

    clutter_lines: int
    clutter_specks: int
    clutter_patches: int
    min_contrast: float


FILL_STYLES: tuple[str, ...] = ("flat", "gradient", "stripes", "checker", "noise")

def random_color(rng: np.random.Generator) -> np.ndarray:
    """(3, 1, 1) float32 RGB colour in [0, 255]."""
    return rng.uniform(0.0, 255.0, size=(3, 1, 1)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(yy, xx) float32 pixel coordinate grids of shape (S, S), shared read-only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def paint_background(size: int, options: PaintingOptions, rng: np.random.Generator) -> np.ndarray:
    """Two-colour gradient plus smooth colour noise and/or stripes and soft texture patches."""
    yy, xx = pixel_grid(size)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    low = min(0.0, cos) * (size - 1) + min(0.0, sin) * (size - 1)  # extremes of a ramp are at corners
    span = max((abs(cos) + abs(sin)) * (size - 1), 1e-6)
    ramp = (xx * cos + yy * sin - np.float32(low)) * np.float32(1.0 / span)
    first, second = random_color(rng), random_color(rng)
    image = first + ramp * (second - first)
    if rng.random() < 0.6:  # low-frequency colour noise: cubic upsampling to S/4, then linear
        cells = int(rng.integers(3, 9))
        coarse = rng.normal(0.0, rng.uniform(10.0, 35.0), size=(cells, cells, 3)).astype(np.float32)
        quarter = cv2.resize(coarse, (size // 4, size // 4), interpolation=cv2.INTER_CUBIC)
        image += cv2.resize(quarter, (size, size), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    if rng.random() < 0.4:  # stripes
        angle, period = rng.uniform(0.0, np.pi), rng.uniform(3.0, size / 6)
        frequency = 2.0 * np.pi / period
        wave = np.sin(xx * np.float32(np.cos(angle) * frequency) + yy * np.float32(np.sin(angle) * frequency))
        image += wave * (rng.uniform(6.0, 25.0) * rng.choice([-1.0, 1.0], size=(3, 1, 1))).astype(np.float32)
    for _ in range(int(rng.integers(0, options.clutter_patches + 1))):
        soft_patch(image, rng)
    return image


def soft_patch(image: np.ndarray, rng: np.random.Generator) -> None:
    """Blend a blurred-edge grainy ellipse into `image`: texture that is not an object."""
    size = image.shape[1]
    center = rng.integers(0, size, size=2)
    axes = rng.integers(size // 12, size // 4 + 1, size=2)
    soften = int(axes.max()) // 2 * 2 + 1  # odd box-filter width, about the larger semi-axis
    reach = int(axes.max()) + soften // 2 + 1  # the blurred ellipse is 0 beyond this
    x0, y0 = max(int(center[0]) - reach, 0), max(int(center[1]) - reach, 0)
    x1, y1 = min(int(center[0]) + reach + 1, size), min(int(center[1]) + reach + 1, size)
    alpha = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.ellipse(alpha, (int(center[0]) - x0, int(center[1]) - y0), (int(axes[0]), int(axes[1])),
                float(rng.uniform(0, 180)), 0, 360, 1.0, thickness=-1)
    alpha = cv2.blur(alpha, (soften, soften), borderType=cv2.BORDER_CONSTANT)
    alpha *= np.float32(rng.uniform(0.25, 0.5))
    grain = (rng.random(size=(y1 - y0, x1 - x0), dtype=np.float32) - np.float32(0.5)) * np.float32(40.0)
    region = image[:, y0:y1, x0:x1]
    region += alpha * (random_color(rng) + grain - region)


def paint_clutter(image: np.ndarray, options: PaintingOptions, rng: np.random.Generator) -> None:
    """Draw thin lines and small specks that are not annotated objects."""
    size = image.shape[1]
    for _ in range(int(rng.integers(0, options.clutter_lines + 1))):
        ends = [int(v) for v in rng.integers(0, size, size=4)]
        for plane, value in zip(image, random_color(rng).ravel()):
            cv2.line(plane, ends[:2], ends[2:], float(value), 1, lineType=cv2.LINE_AA)
    count = int(rng.integers(0, options.clutter_specks + 1))
    corners = rng.integers(0, size - 1, size=(2, count))
    colors = rng.uniform(0.0, 255.0, size=(3, count)).astype(np.float32)
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):  # 1-pixel specks grow to 2x2 with probability 1/2
        grow = (dy == dx == 0) | (rng.random(count) < 0.5)
        image[:, corners[0, grow] + dy, corners[1, grow] + dx] = colors[:, grow]


def object_fill(
    box: tuple[int, int, int, int],
    center: np.ndarray,
    radius: float,
    background_color: np.ndarray,
    options: PaintingOptions,
    rng: np.random.Generator,
    textured_fill: float,
) -> np.ndarray:
    """Colours (3, h, w) of an object over its box (y0, y1, x0, x1): fill style times gradient lighting.

    `textured_fill` is the probability of a non-flat fill style (it depends on the object's category).
    """
    y0, y1, x0, x1 = box
    yy = (np.arange(y0, y1, dtype=np.float32) - np.float32(center[1]))[:, None]
    xx = (np.arange(x0, x1, dtype=np.float32) - np.float32(center[0]))[None, :]
    inv_radius = np.float32(1.0 / max(radius, 1.0))
    color = random_color(rng)
    for _ in range(4):  # keep most objects distinguishable from what is behind them
        if np.abs(color - background_color).max() >= options.min_contrast:
            break
        color = random_color(rng)
    textured = rng.random() < textured_fill
    style = FILL_STYLES[int(rng.integers(1, len(FILL_STYLES)))] if textured else "flat"
    second = color + rng.uniform(-90.0, 90.0, size=(3, 1, 1)).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    if style in ("gradient", "stripes"):  # position along a random direction, about -1..1 over the object
        along = (xx * np.float32(math.cos(angle)) + yy * np.float32(math.sin(angle))) * inv_radius
    if style == "flat":
        fill = color
    elif style == "gradient":
        fill = color + (second - color) * np.clip(0.5 + 0.5 * along, 0.0, 1.0)
    elif style == "stripes":
        fill = np.where(np.sin(along * np.float32(np.pi / rng.uniform(0.3, 0.8))) > 0, color, second)
    elif style == "checker":
        cell = np.float32(max(radius * rng.uniform(0.25, 0.6), 1.5))
        fill = np.where(((xx // cell + yy // cell) % 2) == 0, color, second)
    else:  # noise
        grain = rng.random(size=(y1 - y0, x1 - x0), dtype=np.float32) - np.float32(0.5)
        fill = color + grain * np.float32(rng.uniform(30.0, 100.0))
    light_angle = rng.uniform(0.0, 2.0 * np.pi)
    strength = rng.uniform(0.0, 0.35)
    light = xx * np.float32(strength * math.cos(light_angle)) + yy * np.float32(
        strength * math.sin(light_angle))
    return fill * (np.float32(1.0) + np.clip(light * inv_radius, -1.5 * strength, 1.5 * strength))
