"""Vectorised mask pasting equals torchvision's per-mask loop."""

import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from oln.detector.paste import paste_binary_masks, paste_mask_probabilities


def test_full_mask_fills_its_box():
    # A 4x4 mask of ones in box x, y in [2, 9]: padded to 6 samples, the box widens by 6/4
    # to [0.25, 10.75] -> int [0, 10] (11 pixels). Pixel x samples the padded mask at
    # (x + 0.5) * 6/11 - 0.5: x=1 -> 0.32 (off), x=2 -> 0.86, x=8 -> 4.14 -> 0.86 (on),
    # x=9 -> 4.68 -> 0.32 (off). So the mask covers pixels 2..8 on both axes.
    masks = torch.ones((1, 1, 4, 4))
    boxes = torch.tensor([[2.0, 2.0, 9.0, 9.0]])
    pasted = paste_binary_masks(masks, boxes, (12, 14), threshold=0.5)[0, 0]
    expected = torch.zeros((12, 14), dtype=torch.bool)
    expected[2:9, 2:9] = True
    assert torch.equal(pasted, expected)


def test_matches_torchvision_on_random_masks_and_boxes():
    generator = torch.Generator().manual_seed(0)
    n, size, h, w = 300, 14, 40, 52
    masks = torch.rand((n, 1, size, size), generator=generator)
    corner = torch.rand((n, 2), generator=generator) * torch.tensor([w - 1.0, h - 1.0])
    extent = torch.rand((n, 2), generator=generator) * 30.0
    limit = torch.tensor([w - 1.0, h - 1.0])
    boxes = torch.cat([corner, torch.minimum(corner + extent, limit)], dim=1)  # detections: clipped, some < 1 px
    ours = paste_mask_probabilities(masks, boxes, (h, w))
    reference = paste_masks_in_image(masks, boxes, (h, w), padding=1)
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-5)
    binary = paste_binary_masks(masks, boxes, (h, w), threshold=0.5)
    assert (binary != (reference >= 0.5)).sum() <= 2  # only float rounding exactly at 0.5


def test_chunking_and_empty_input(monkeypatch):
    import oln.detector.paste as paste

    masks = torch.rand((10, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[1.0, 1.0, 12.0, 9.0]]).repeat(10, 1)
    whole = paste.paste_binary_masks(masks, boxes, (16, 16), 0.5)
    monkeypatch.setattr(paste, "MAX_PASTE_ELEMENTS", 3 * 16 * 16)  # chunks of 3 masks
    assert torch.equal(paste.paste_binary_masks(masks, boxes, (16, 16), 0.5), whole)
    empty = paste.paste_binary_masks(masks[:0], boxes[:0], (16, 16), 0.5)
    assert empty.shape == (0, 1, 16, 16) and empty.dtype == torch.bool
