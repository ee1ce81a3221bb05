"""Batched pasting of ROI mask probabilities into the image (torchvision's rule, vectorised).

torchvision's `paste_masks_in_image` loops over masks in Python: it pads each
M x M mask by one zero pixel, widens the box by (M + 2) / M, truncates it to
integers, resizes the padded mask to the box with bilinear interpolation
(align_corners=False) and writes it into a zero image. Bilinear resizing is
separable, so the same result is `Wy @ padded @ Wx^T` with per-mask (H, M + 2)
and (W, M + 2) interpolation matrices that have at most two non-zeros per row;
we build those matrices for all masks at once and paste with two batched
matrix products. Pixels equal torchvision's up to float rounding at the threshold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_PASTE_ELEMENTS = 1 << 24  # float elements of (masks x H x W) pasted per chunk (64 MiB)


def expanded_integer_boxes(boxes: Tensor, mask_size: int) -> Tensor:
    """Boxes widened for a 1-pixel mask padding, truncated to int64 (torchvision's expand_boxes)."""
    scale = (mask_size + 2) / mask_size
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    centre_x = (boxes[:, 2] + boxes[:, 0]) * 0.5
    centre_y = (boxes[:, 3] + boxes[:, 1]) * 0.5
    expanded = torch.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], dim=1)
    return expanded.to(torch.int64)


def interpolation_matrix(start: Tensor, stop: Tensor, source_size: int, out_size: int) -> Tensor:
    """(N, out_size, source_size) bilinear weights of each box's pixels along one axis.

    Image pixel p of box n lies at p - start[n] in a resize of `source_size` samples to
    stop[n] - start[n] + 1 outputs (torch's align_corners=False rule, negative source
    coordinates clamped to 0); pixels outside the box get all-zero rows.
    """
    length = (stop - start + 1).clamp(min=1).to(torch.float64)  # (N,)
    pixel = torch.arange(out_size, device=start.device, dtype=torch.float64)
    offset = pixel[None, :] - start[:, None].to(torch.float64)  # (N, out)
    inside = (offset >= 0) & (offset < length[:, None])
    source = ((offset + 0.5) * (source_size / length[:, None]) - 0.5).clamp(min=0.0)
    low = source.floor().clamp(max=source_size - 1)
    high_weight = (source - low).to(torch.float32)
    low = low.to(torch.int64)
    high = (low + 1).clamp(max=source_size - 1)
    weights = torch.zeros((len(start), out_size, source_size), device=start.device)
    weights.scatter_add_(2, low[..., None], ((1.0 - high_weight) * inside)[..., None])
    weights.scatter_add_(2, high[..., None], (high_weight * inside)[..., None])
    return weights


def paste_mask_probabilities(masks: Tensor, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Float (N, 1, H, W) image-sized probabilities of (N, 1, M, M) ROI masks in xyxy `boxes`."""
    h, w = int(image_size[0]), int(image_size[1])
    if len(masks) == 0:
        return masks.new_zeros((0, 1, h, w), dtype=torch.float32)
    mask_size = masks.shape[-1]
    padded = F.pad(masks[:, 0].float(), (1, 1, 1, 1))
    box = expanded_integer_boxes(boxes.float(), mask_size)
    rows = interpolation_matrix(box[:, 1], box[:, 3], mask_size + 2, h)
    cols = interpolation_matrix(box[:, 0], box[:, 2], mask_size + 2, w)
    return torch.bmm(torch.bmm(rows, padded), cols.transpose(1, 2))[:, None]


def paste_binary_masks(masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float) -> Tensor:
    """Paste (N, 1, M, M) mask probabilities into the image and threshold them (>= threshold).

    Args:
        masks: ROI mask probabilities.
        boxes: (N, 4) xyxy boxes in the output image's coordinates.
        image_size: (H, W) of the output image.
        threshold: probability at or above which a pixel is foreground.
    Returns:
        bool (N, 1, H, W); pasted in chunks of at most MAX_PASTE_ELEMENTS floats.
    """
    h, w = int(image_size[0]), int(image_size[1])
    out = torch.zeros((len(masks), 1, h, w), dtype=torch.bool, device=masks.device)
    chunk = max(1, MAX_PASTE_ELEMENTS // max(h * w, 1))
    for start in range(0, len(masks), chunk):
        part = slice(start, start + chunk)
        out[part] = paste_mask_probabilities(masks[part], boxes[part], (h, w)) >= threshold
    return out
