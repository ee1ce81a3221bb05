"""Pairwise-affinity targets from instance label maps (GGN semantics, batched torch).

A label map is an int64 tensor (B, H, W): 0 = background, k > 0 = instance k,
`IGNORE_LABEL` (-1) = not annotated / batch padding / crowd.

For each distance d and each of the 8 directions (channel order as GGN's released
code: up, left, up-left, down-left, down, right, down-right, up-right; channel index
= distance_index * 8 + direction_index) the target at pixel p is 1 when p and its
neighbour p + d * direction carry the same label, so background-background pairs are 1.
A pair is valid when both pixels lie inside the image, neither is ignored, and it is not
background-background. Pairs leaving the image (or entering ignored pixels) have target 0
and are invalid, exactly like GGN's zero-initialised arrays.

Reductions over the channels (GGN's `collapse_affinity`):
- `none`: 8 * len(distances) channels.
- `mean`: target = mean over all channels (out-of-image pairs count as 0, as in GGN),
  valid = any channel valid. GGN's released PA config uses this with one channel.
- `min`: target = min over channels, valid = any channel valid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_LABEL = -1
REDUCTIONS = ("none", "mean", "min")

# (dy, dx) of the neighbour compared with each pixel, in GGN's channel order.
DIRECTIONS: tuple[tuple[int, int], ...] = (
    (-1, 0),  # up
    (0, -1),  # left
    (-1, -1),  # up-left
    (1, -1),  # down-left
    (1, 0),  # down
    (0, 1),  # right
    (1, 1),  # down-right
    (-1, 1),  # up-right
)


def num_affinity_channels(neighbor_distances: Sequence[int], reduction: str) -> int:
    """Channels predicted for these distances and this reduction."""
    _check_reduction(reduction)
    return 1 if reduction != "none" else 8 * len(neighbor_distances)


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def instance_label_map(
    masks: torch.Tensor, iscrowd: torch.Tensor | None = None, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Paint instance masks into one label map.

    Where masks overlap, the smaller instance wins (so small objects on top of large
    ones stay visible; GGN sums labels instead, which corrupts overlaps). Crowd masks are
    painted as `IGNORE_LABEL` before the instances.

    Args:
        masks: (N, H, W) bool/uint8 instance masks.
        iscrowd: optional (N,) flags; crowd regions become ignored.
        size: (Hp, Wp) >= (H, W) to pad to; padding is `IGNORE_LABEL`.
    Returns:
        int64 (H, W) (or (Hp, Wp)) map: 0 background, i + 1 for mask i, -1 ignored.
    """
    n, h, w = masks.shape
    out_h, out_w = size if size is not None else (h, w)
    labels = torch.full((out_h, out_w), IGNORE_LABEL, dtype=torch.int64, device=masks.device)
    labels[:h, :w] = 0
    if n == 0:
        return labels
    masks = masks.bool()
    if iscrowd is None:
        iscrowd = torch.zeros(n, dtype=torch.bool)
    crowd = iscrowd.bool().to(masks.device)
    if crowd.any():
        labels[:h, :w][masks[crowd].any(dim=0)] = IGNORE_LABEL
    # Painting order: largest first, so the smallest covering instance ends on top.
    areas = masks.flatten(1).sum(dim=1)
    order = torch.argsort(areas, descending=True, stable=True)
    paint_rank = torch.empty(n, dtype=torch.int32, device=masks.device)
    paint_rank[order] = torch.arange(1, n + 1, dtype=torch.int32, device=masks.device)
    paint_rank[crowd] = 0
    top_rank, top_index = (masks * paint_rank[:, None, None]).max(dim=0)
    labels[:h, :w] = torch.where(top_rank > 0, top_index + 1, labels[:h, :w])
    return labels


def _shifted(labels: torch.Tensor, dy: int, dx: int, fill: int) -> torch.Tensor:
    """out[..., y, x] = labels[..., y + dy, x + dx], `fill` where that is outside the image."""
    h, w = labels.shape[-2:]
    out = torch.full_like(labels, fill)
    ys_dst = slice(max(0, -dy), min(h, h - dy))
    xs_dst = slice(max(0, -dx), min(w, w - dx))
    ys_src = slice(max(0, dy), min(h, h + dy))
    xs_src = slice(max(0, dx), min(w, w + dx))
    if ys_dst.start < ys_dst.stop and xs_dst.start < xs_dst.stop:
        out[..., ys_dst, xs_dst] = labels[..., ys_src, xs_src]
    return out


def neighbor_labels(labels: torch.Tensor, neighbor_distances: Sequence[int]) -> torch.Tensor:
    """(B, H, W) -> (B, 8 * len(d), H, W): the label of each pixel's neighbour per channel
    (`IGNORE_LABEL` outside the image)."""
    return torch.stack(
        [
            _shifted(labels, dy * d, dx * d, IGNORE_LABEL)
            for d in neighbor_distances
            for dy, dx in DIRECTIONS
        ],
        dim=1,
    )


def affinity_targets(
    labels: torch.Tensor, neighbor_distances: Sequence[int] = (1,), reduction: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affinity targets and the valid-pair filter for a batch of label maps.

    Args:
        labels: int64 (B, H, W) label maps (0 background, -1 ignored), any device.
        neighbor_distances: pixel distances d (default [1]).
        reduction: `none` | `mean` | `min` (see module docstring).
    Returns:
        (target float32 (B, C, H, W) in [0, 1], valid bool (B, C, H, W)); C = 8 * len(d)
        for `none`, else 1.
    """
    _check_reduction(reduction)
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W), got {tuple(labels.shape)}")
    center = labels[:, None]
    neighbor = neighbor_labels(labels, neighbor_distances)
    inside = (center != IGNORE_LABEL) & (neighbor != IGNORE_LABEL)
    same = (center == neighbor) & inside
    valid = inside & ((center != 0) | (neighbor != 0))
    target = same.float()
    if reduction == "none":
        return target, valid
    valid = valid.any(dim=1, keepdim=True)
    if reduction == "mean":
        return target.mean(dim=1, keepdim=True), valid
    return target.amin(dim=1, keepdim=True), valid


def pairs_touching(
    region: torch.Tensor, neighbor_distances: Sequence[int] = (1,), reduction: str = "none"
) -> torch.Tensor:
    """Which pairs involve a pixel of `region` (e.g. the pixels of seen-category objects).

    Args:
        region: bool (B, H, W).
        neighbor_distances, reduction: as in `affinity_targets`; reduced outputs mark a
            pixel when any of its pairs touches the region.
    Returns:
        bool (B, C, H, W) aligned with `affinity_targets`' channels.
    """
    _check_reduction(reduction)
    region_int = region.long()
    neighbor = neighbor_labels(region_int, neighbor_distances) == 1
    touch = region[:, None] | neighbor
    if reduction != "none":
        touch = touch.any(dim=1, keepdim=True)
    return touch


def boundary_pixels(labels: torch.Tensor, neighbor_distances: Sequence[int] = (1,)) -> torch.Tensor:
    """Ground-truth boundary: pixels with any valid neighbour pair of different labels.

    Args:
        labels: int64 (B, H, W).
    Returns:
        bool (B, H, W).
    """
    target, valid = affinity_targets(labels, neighbor_distances, "none")
    return (valid & (target == 0)).any(dim=1)
