"""RoIAlign by windows equals torchvision's kernel, forward and backward."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from oln.detector import window_roi_align
from oln.detector.roi_align import pool_function
from oln.detector.window_roi_align import roi_align_windows


def random_rois(num: int, num_images: int, extent: float, generator: torch.Generator) -> torch.Tensor:
    """RoIs of 0.3-60 px, some partly or wholly outside the image, some degenerate."""
    corner = torch.rand(num, 2, generator=generator, dtype=torch.float64) * extent * 1.2 - 0.1 * extent - 10
    size = torch.rand(num, 2, generator=generator, dtype=torch.float64) * 60 + 0.3
    rois = torch.cat([torch.randint(0, num_images, (num, 1), generator=generator).double(), corner, corner + size], 1)
    rois[0, 1:] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # zero-sized
    rois[1, 1:] = torch.tensor([-200.0, -200.0, -150.0, -150.0])  # outside
    return rois


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("output_size", [(7, 7), (14, 14), (3, 5)])
def test_equals_torchvision_forward_and_backward(aligned, sampling_ratio, output_size):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 4, 24, 31, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = random_rois(200, 3, 4 * 31, generator)
    expected = roi_align(features, rois, output_size, 0.25, sampling_ratio, aligned)
    pooled = roi_align_windows(features, rois, output_size, 0.25, sampling_ratio, aligned)
    assert torch.allclose(pooled, expected, rtol=0, atol=1e-12)
    grad_out = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    (expected_grad,) = torch.autograd.grad(expected, features, grad_out)
    (grad,) = torch.autograd.grad(pooled, features, grad_out)
    assert torch.allclose(grad, expected_grad, rtol=0, atol=1e-12)


def test_one_sample_reads_the_bilinear_value():
    """Ramp feature f(y, x) = 10 y + x; an aligned 2 x 2 box at (0.5, 0.5) has its one sample at (1, 1)."""
    ramp = (10 * torch.arange(4.0)[:, None] + torch.arange(4.0)[None, :])[None, None]
    pooled = roi_align_windows(ramp, torch.tensor([[0.0, 0.5, 0.5, 2.5, 2.5]]), (1, 1), 1.0, 1, True)
    assert pooled.item() == pytest.approx(11.0)
    # a quarter cell further: bilinear between cells 1 and 2
    pooled = roi_align_windows(ramp, torch.tensor([[0.0, 0.75, 0.5, 2.75, 2.5]]), (1, 1), 1.0, 1, True)
    assert pooled.item() == pytest.approx(11.25)


def test_small_chunks_give_the_same_result(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 8, 20, 20, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = random_rois(50, 2, 80, generator)
    whole = roi_align_windows(features, rois, (7, 7), 0.25, 2, False)
    (whole_grad,) = torch.autograd.grad(whole.sum(), features)
    monkeypatch.setattr(window_roi_align, "MAX_WINDOW_ELEMENTS", 100)  # one RoI per chunk
    chunked = roi_align_windows(features, rois, (7, 7), 0.25, 2, False)
    (chunked_grad,) = torch.autograd.grad(chunked.sum(), features)
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-12) and torch.allclose(chunked_grad, whole_grad, atol=1e-12)


def test_windows_are_used_for_cpu_training_only():
    feature = torch.zeros(1, 2, 4, 4, requires_grad=True)
    assert pool_function(feature) is roi_align_windows
    with torch.no_grad():
        assert pool_function(feature) is roi_align
    assert pool_function(feature.detach()) is roi_align


def test_no_rois():
    pooled = roi_align_windows(torch.zeros(1, 3, 4, 4), torch.zeros(0, 5), (7, 7), 1.0, 2, False)
    assert pooled.shape == (0, 3, 7, 7)
