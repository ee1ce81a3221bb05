"""Affinity targets, label maps, loss and network shapes (hand-checked values)."""

import numpy as np
import pytest
import torch

from oln.affinity.model import PAModelOptions, build_pa_model, load_pa_model, save_pa_model
from oln.affinity.targets import (
    DIRECTIONS,
    IGNORE_LABEL,
    affinity_targets,
    boundary_pixels,
    instance_label_map,
    num_affinity_channels,
    pairs_touching,
)
from oln.affinity.train import affinity_loss

# Two instances (1 top-left, 2 bottom-right) on background 0.
PALETTE = torch.tensor([
    [1, 1, 0, 0],
    [1, 1, 0, 2],
    [0, 0, 0, 2],
    [0, 0, 2, 2],
])
UP, LEFT, UP_LEFT, DOWN_LEFT, DOWN, RIGHT, DOWN_RIGHT, UP_RIGHT = range(8)


def reference_targets(labels: np.ndarray, distances, reduction):
    """Plain loop implementation of the GGN target and filter."""
    b, h, w = labels.shape
    channels = [(dy * d, dx * d) for d in distances for dy, dx in DIRECTIONS]
    target = np.zeros((b, len(channels), h, w), dtype=np.float32)
    valid = np.zeros((b, len(channels), h, w), dtype=bool)
    for n in range(b):
        for c, (dy, dx) in enumerate(channels):
            for y in range(h):
                for x in range(w):
                    ny, nx = y + dy, x + dx
                    if not (0 <= ny < h and 0 <= nx < w):
                        continue
                    a, o = labels[n, y, x], labels[n, ny, nx]
                    if a == IGNORE_LABEL or o == IGNORE_LABEL:
                        continue
                    target[n, c, y, x] = float(a == o)
                    valid[n, c, y, x] = not (a == 0 and o == 0)
    if reduction == "mean":
        return target.mean(1, keepdims=True), valid.any(1, keepdims=True)
    if reduction == "min":
        return target.min(1, keepdims=True), valid.any(1, keepdims=True)
    return target, valid


def test_hand_checked_directions_distance_one():
    target, valid = affinity_targets(PALETTE[None], [1], "none")
    assert target.shape == (1, 8, 4, 4)
    up = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 0, 1]], dtype=torch.float32)
    up_valid = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 1], [1, 1, 0, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(target[0, UP], up)
    assert torch.equal(valid[0, UP], up_valid)
    # down is up shifted by one row: pixel (y, x) compares with (y + 1, x)
    assert torch.equal(target[0, DOWN, :3], up[1:])
    assert torch.equal(target[0, DOWN, 3], torch.zeros(4))
    right = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.float32)
    right_valid = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(target[0, RIGHT], right)
    assert torch.equal(valid[0, RIGHT], right_valid)
    # down-left of (1, 3) is (2, 2): 2 vs 0 -> different, valid; (0, 1) vs (1, 0): same instance
    assert target[0, DOWN_LEFT, 1, 3] == 0 and valid[0, DOWN_LEFT, 1, 3]
    assert target[0, DOWN_LEFT, 0, 1] == 1 and valid[0, DOWN_LEFT, 0, 1]
    # up-left of (1, 1) is (0, 0): same; up-right of (3, 2) is (2, 3): same; column 0 has no down-left
    assert target[0, UP_LEFT, 1, 1] == 1 and target[0, UP_RIGHT, 3, 2] == 1
    assert not valid[0, DOWN_LEFT, :, 0].any() and not valid[0, UP_LEFT, 0].any()
    # background-background pairs: target 1 but invalid
    assert target[0, DOWN_RIGHT, 2, 0] == 1 and not valid[0, DOWN_RIGHT, 2, 0]
    assert target[0, LEFT, 0, 3] == 1 and not valid[0, LEFT, 0, 3]


def test_hand_checked_distance_two():
    target, valid = affinity_targets(PALETTE[None], [1, 2], "none")
    assert target.shape == (1, 16, 4, 4)
    up2 = target[0, 8 + UP]
    # (2, x) vs (0, x): 0v1, 0v1, 0v0, 2v0 ; (3, x) vs (1, x): 0v1, 0v1, 2v0, 2v2
    assert torch.equal(up2[2], torch.tensor([0.0, 0, 1, 0]))
    assert torch.equal(up2[3], torch.tensor([0.0, 0, 0, 1]))
    assert not valid[0, 8 + UP, :2].any()
    assert torch.equal(valid[0, 8 + UP, 2], torch.tensor([True, True, False, True]))


def test_hand_checked_reductions():
    mean, mean_valid = affinity_targets(PALETTE[None], [1], "mean")
    low, _ = affinity_targets(PALETTE[None], [1], "min")
    assert mean.shape == (1, 1, 4, 4)
    # (0, 0): down, right, down-right inside instance 1; 5 pairs leave the image (count as 0, as GGN)
    assert mean[0, 0, 0, 0] == pytest.approx(3 / 8)
    # (2, 1) background: left, down-left, down, right, up-right are background
    assert mean[0, 0, 2, 1] == pytest.approx(5 / 8)
    assert mean[0, 0, 0, 2] == pytest.approx(2 / 8)
    assert low[0, 0, 2, 1] == 0 and low.max() == 0  # every pixel has a differing or outside pair
    # (3, 0) has only background neighbours: no valid pair; (0, 3) has one valid pair (down)
    assert not mean_valid[0, 0, 3, 0] and mean_valid[0, 0, 0, 3]


@pytest.mark.parametrize("reduction", ["none", "mean", "min"])
@pytest.mark.parametrize("distances", [[1], [1, 3]])
def test_matches_numpy_reference(reduction, distances):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(-1, 4, (3, 9, 11), generator=gen)
    target, valid = affinity_targets(labels, distances, reduction)
    ref_target, ref_valid = reference_targets(labels.numpy(), distances, reduction)
    assert target.shape[1] == num_affinity_channels(distances, reduction)
    np.testing.assert_allclose(target.numpy(), ref_target, atol=1e-7)
    np.testing.assert_array_equal(valid.numpy(), ref_valid)


def test_ignored_pixels_form_no_valid_pairs():
    labels = torch.tensor([[[1, 1, IGNORE_LABEL]]])
    target, valid = affinity_targets(labels, [1], "none")
    assert valid[0, RIGHT, 0, 0] and target[0, RIGHT, 0, 0] == 1
    assert not valid[0, RIGHT, 0, 1] and target[0, RIGHT, 0, 1] == 0
    assert not valid[0, :, 0, 2].any()


def test_instance_label_map_overlap_crowd_and_padding():
    masks = torch.zeros(3, 3, 4, dtype=torch.uint8)
    masks[0] = 1  # large instance covering everything but the crowd pixel
    masks[0, 2, 3] = 0
    masks[1, 1, 1:3] = 1  # small one on top
    masks[2, 2, 3] = 1  # crowd
    labels = instance_label_map(masks, torch.tensor([0, 0, 1]), size=(4, 5))
    expected = torch.tensor([
        [1, 1, 1, 1, -1],
        [1, 2, 2, 1, -1],
        [1, 1, 1, -1, -1],
        [-1, -1, -1, -1, -1],
    ])
    assert torch.equal(labels, expected)
    assert torch.equal(instance_label_map(torch.zeros(0, 2, 2)), torch.zeros(2, 2, dtype=torch.int64))


def test_pairs_touching_and_boundary():
    region = PALETTE[None] == 2
    touch = pairs_touching(region, [1], "none")
    assert touch[0, LEFT, 1, 3] and touch[0, RIGHT, 1, 2] and not touch[0, RIGHT, 0, 0]
    reduced = pairs_touching(region, [1], "mean")[0, 0]
    assert reduced[0, 2] and not reduced[0, 1]  # (0, 2) has (1, 3) as down-right neighbour
    edges = boundary_pixels(PALETTE[None], [1])[0]
    assert edges[1, 1] and edges[2, 2] and edges[0, 1]
    assert not edges[0, 0]  # all its in-image neighbours are instance 1
    assert not edges[3, 0]  # only background and outside neighbours


def test_loss_hand_case():
    logits = torch.zeros(2, 1, 1, 2)
    target = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    valid = torch.tensor([[[[True, True]]], [[[True, False]]]])
    log2 = float(np.log(2.0))
    # image 1: (0.05 * log2 + log2) / 2 ; image 2: 0.05 * log2 / 1 ; mean over images
    expected = ((1.05 * log2) / 2 + 0.05 * log2) / 2
    assert affinity_loss(logits, target, valid, 0.05).item() == pytest.approx(expected, rel=1e-4)
    assert affinity_loss(logits, target, torch.zeros_like(valid), 0.05).item() == 0.0


@pytest.mark.parametrize("backbone,norm", [("resnet18", "bn"), ("resnet50", "gn")])
def test_model_output_shape(backbone, norm, tmp_path):
    torch.manual_seed(0)
    model = build_pa_model(PAModelOptions(backbone=backbone, norm=norm, head_channels=32), 8).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 8, 64, 96)
    path = tmp_path / "model.pt"
    save_pa_model(path, model, {"out_channels": 8, "reduction": "none", "neighbor_distances": [1]})
    loaded, meta = load_pa_model(path)
    assert meta["out_channels"] == 8
    with torch.no_grad():
        assert torch.allclose(loaded(torch.ones(1, 3, 32, 32)), model(torch.ones(1, 3, 32, 32)))


def test_pretrained_path_is_loaded(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    torch.nn.init.constant_(net.conv1.weight, 0.5)
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    options = PAModelOptions(backbone="resnet18", pretrained_path=str(path), head_channels=16, ppm_channels=0)
    model = build_pa_model(options, 1)
    assert torch.all(model.backbone.stem[0].weight == 0.5)


def test_default_head_has_ggn_widths():
    """GGN's UPerNet: 512 channels per pyramid-pooling branch, 256 in the FPN and the fusion."""
    head = build_pa_model(PAModelOptions(), 1).head
    assert [branch[1][0].out_channels for branch in head.ppm] == [512] * 4
    assert head.ppm_fuse[0].in_channels == 2048 + 4 * 512
    assert head.ppm_fuse[0].out_channels == 256
    assert {conv[0].out_channels for conv in head.lateral} == {256}
    assert head.fuse[0].in_channels == 4 * 256 and head.fuse[0].out_channels == 256


def test_instance_label_map_matches_painting_loop():
    gen = torch.Generator().manual_seed(1)
    masks = torch.rand(6, 10, 12, generator=gen) < 0.3
    iscrowd = torch.tensor([0, 1, 0, 0, 0, 0])
    expected = torch.zeros(10, 12, dtype=torch.int64)
    expected[masks[1]] = IGNORE_LABEL
    areas = masks.flatten(1).sum(1).tolist()
    for i in sorted(range(6), key=lambda k: -areas[k]):  # stable: ties keep index order
        if i != 1:
            expected[masks[i]] = i + 1
    assert torch.equal(instance_label_map(masks, iscrowd), expected)


def test_one_image_per_process_trains_with_batchnorm():
    """GGN trains PA with one image per GPU and BatchNorm: the 1x1 pyramid-pooling branch sees one
    value per channel, which plain BatchNorm refuses in training mode."""
    model = build_pa_model(PAModelOptions(backbone="resnet18", head_channels=8, ppm_channels=8), 1).train()
    out = model(torch.rand(1, 3, 64, 64))
    out.mean().backward()
    assert out.shape == (1, 1, 64, 64)
