"""RoIAlign on the CPU as batched matrix products over each RoI's feature window.

torchvision's CPU RoIAlign loops over every bilinear sample of every channel; its backward
scatters those samples one by one and takes a quarter of a detector training iteration here
(README, "Measured"). The same numbers come out of a separable form: RoIAlign averages
`s_y x s_x` bilinear samples per bin, and bilinear weights factor into a row weight and a
column weight, so a RoI's (P x Q) output per channel is `Wy @ window @ Wx^T`, with `Wy`
(P x Ky) and `Wx` (Q x Kx) the averaged sample weights over the Ky x Kx window of feature
cells its samples touch. Windows are gathered as rows of C channels (channels-last), so the
backward is a row-wise index_add and two small matrix products.

torchvision's rules are kept exactly (`roi_align_cpu` / `bilinear_interpolate`): box corners
scaled and shifted by -0.5 when `aligned`, sizes clamped to >= 1 when not, `sampling_ratio`
samples per bin side or ceil(bin size) when 0, samples beyond [-1, size] contribute zero,
coordinates clamped to [0, size - 1]. Results equal torchvision's up to float summation order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

MAX_WINDOW_ELEMENTS = 1 << 24  # floats of gathered windows (RoIs x Ky x Kx x C) per chunk: 64 MiB


def roi_align_windows(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                      sampling_ratio: int, aligned: bool) -> Tensor:
    """torchvision.ops.roi_align's result for (K, 5) `rois` [batch index, x0, y0, x1, y1].

    Args:
        features: (N, C, H, W) float feature map.
        rois: RoIs in image coordinates with their image's index in `features`.
        output_size: (P, Q) bins.
        spatial_scale: feature cells per image pixel.
        sampling_ratio: samples per bin side (0 = ceil(bin size), per RoI).
        aligned: half-pixel shift (mmcv / Detectron2) or not (torchvision's legacy default).
    Returns:
        (K, C, P, Q) pooled features; differentiable with respect to `features`.
    """
    if len(rois) == 0:
        return features.new_zeros((0, features.shape[1], *output_size))
    plan = _window_plan(features.shape, rois.detach(), output_size, spatial_scale, sampling_ratio, aligned,
                        features.dtype)
    return _WindowRoIAlign.apply(features, plan)


@dataclass
class _WindowPlan:
    """Where each chunk of RoIs reads: RoI indices, window cells (R, Ky, Kx) into the
    channels-last flattened map, and the row / column weights (R, P, Ky), (R, Q, Kx)."""

    shape: torch.Size
    chunks: list[tuple[Tensor, Tensor, Tensor, Tensor]]


def _window_plan(shape: torch.Size, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                 sampling_ratio: int, aligned: bool, dtype: torch.dtype) -> _WindowPlan:
    _, _, height, width = shape
    bins_y, bins_x = output_size
    boxes = rois[:, 1:].to(dtype) * spatial_scale - (0.5 if aligned else 0.0)
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if not aligned:
        box_w, box_h = box_w.clamp(min=1.0), box_h.clamp(min=1.0)
    start_y, weights_y, need_y = axis_weights(boxes[:, 1], box_h, bins_y, height, sampling_ratio)
    start_x, weights_x, need_x = axis_weights(boxes[:, 0], box_w, bins_x, width, sampling_ratio)
    cell = rois[:, 0].long() * (height * width)
    chunks = []
    for index, window_y, window_x in _chunks(need_y, need_x, weights_y.shape[-1], weights_x.shape[-1], shape[1]):
        rows = (start_y[index, None] + torch.arange(window_y)).clamp(max=height - 1)
        cols = (start_x[index, None] + torch.arange(window_x)).clamp(max=width - 1)
        cells = cell[index, None, None] + rows[:, :, None] * width + cols[:, None, :]
        chunks.append((index, cells, weights_y[index, :, :window_y], weights_x[index, :, :window_x]))
    return _WindowPlan(shape, chunks)


class _WindowRoIAlign(torch.autograd.Function):
    """Pooling by windows; the backward adds every chunk's window gradient into one buffer."""

    @staticmethod
    def forward(ctx, features: Tensor, plan: _WindowPlan) -> Tensor:
        num_images, channels, height, width = features.shape
        flat = features.permute(0, 2, 3, 1).reshape(num_images * height * width, channels)
        num_rois = sum(len(index) for index, *_ in plan.chunks)
        bins_y, bins_x = plan.chunks[0][2].shape[1], plan.chunks[0][3].shape[1]
        out = features.new_empty((num_rois, channels, bins_y, bins_x))
        for index, cells, weights_y, weights_x in plan.chunks:
            rois, window_y, window_x = cells.shape
            window = flat.index_select(0, cells.reshape(-1)).reshape(rois, window_y, window_x, channels)
            out[index] = torch.einsum("rpy,ryxc,rqx->rcpq", weights_y, window, weights_x)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:
        plan: _WindowPlan = ctx.plan
        num_images, channels, height, width = plan.shape
        grad_flat = grad_out.new_zeros((num_images * height * width, channels))
        for index, cells, weights_y, weights_x in plan.chunks:
            grad_window = torch.einsum("rcpq,rpy,rqx->ryxc", grad_out[index], weights_y, weights_x)
            grad_flat.index_add_(0, cells.reshape(-1), grad_window.reshape(-1, channels))
        grad = grad_flat.reshape(num_images, height, width, channels).permute(0, 3, 1, 2)
        return grad, None


def axis_weights(start: Tensor, length: Tensor, bins: int, size: int,
                 sampling_ratio: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each RoI's first touched cell along one axis, its (R, bins, span) averaged sample weights
    and the number of cells it touches.

    Args:
        start: (R,) RoI start in feature cells (scaled, shifted).
        length: (R,) RoI length in feature cells (clamped when not aligned).
        bins: output bins along the axis.
        size: feature map size along the axis.
        sampling_ratio: samples per bin (0 = ceil(length / bins) per RoI).
    Returns:
        (start cell (R,) int64, weights (R, bins, span), touched cells (R,) int64 >= 1) where span
        covers every RoI's touched cells; weight [r, p, k] is bin p's averaged bilinear weight of
        cell start[r] + k.
    """
    if sampling_ratio > 0:
        samples = torch.full_like(length, float(sampling_ratio))
    else:
        samples = torch.ceil(length / bins)
    most = max(int(samples.max().item()), 1)
    bin_size = (length / bins)[:, None, None]
    position = (torch.arange(bins, dtype=start.dtype)[None, :, None] * bin_size
                + (torch.arange(most, dtype=start.dtype)[None, None, :] + 0.5) * bin_size
                / samples.clamp(min=1.0)[:, None, None])
    coord = start[:, None, None] + position  # (R, bins, most)
    valid = (torch.arange(most)[None, None, :] < samples[:, None, None]) & (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0.0)
    low = coord.floor()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    coord = torch.where(at_edge, low, coord)
    high = torch.where(at_edge, low, low + 1)
    high_weight = coord - low
    share = valid.to(start.dtype) / samples.clamp(min=1.0)[:, None, None]
    low, high = low.long(), high.long()
    first = torch.where(valid, low, torch.full_like(low, size)).amin(dim=(1, 2)).clamp(max=size - 1)
    last = torch.where(valid, high, torch.full_like(high, -1)).amax(dim=(1, 2))
    touched = (last - first + 1).clamp(min=1)
    span = int(touched.max().item())
    # invalid samples carry zero weight; put them at offset 0 so they stay inside the window
    low_offset = torch.where(valid, low - first[:, None, None], torch.zeros_like(low))
    high_offset = torch.where(valid, high - first[:, None, None], torch.zeros_like(high))
    weights = torch.zeros((len(start), bins, span), dtype=start.dtype)
    weights.scatter_add_(2, low_offset, (1.0 - high_weight) * share)
    weights.scatter_add_(2, high_offset, high_weight * share)
    return first, weights, touched


def _chunks(need_y: Tensor, need_x: Tensor, span_y: int, span_x: int, channels: int):
    """(RoI indices, window rows, window cols): RoIs grouped by power-of-two window sizes (at
    most the spans of the weights), chunked so that a chunk's gathered windows hold at most
    MAX_WINDOW_ELEMENTS floats."""
    bucket_y = _next_power_of_two(need_y)
    bucket_x = _next_power_of_two(need_x)
    keys = bucket_y * (int(bucket_x.max()) + 1) + bucket_x
    for key in torch.unique(keys).tolist():
        index = torch.where(keys == key)[0]
        window_y = min(int(bucket_y[index[0]]), span_y)
        window_x = min(int(bucket_x[index[0]]), span_x)
        per_roi = window_y * window_x * channels
        step = max(1, MAX_WINDOW_ELEMENTS // per_roi)
        for begin in range(0, len(index), step):
            yield index[begin:begin + step], window_y, window_x


def _next_power_of_two(values: Tensor) -> Tensor:
    return (2 ** torch.ceil(torch.log2(values.to(torch.float64)))).long()
