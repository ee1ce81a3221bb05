"""The detectors follow GGN's / OLN's mmdetection recipes: each option against a hand-computed case."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import LevelMapper

from oln.detector.losses import fast_rcnn_loss, mask_targets
from oln.detector.model import OLN_RECIPE, DetectorOptions, build_detector
from oln.detector.roi_align import AlignedMultiScaleRoIAlign, fpn_levels
from oln.detector.rpn import RecipeRPN, build_matcher, label_anchors, usable_anchors

torch.set_num_threads(1)


def make_rpn(nms_thresh: float | None = 0.7, post_top_n: int | None = None, box_loss: str = "l1") -> RecipeRPN:
    return RecipeRPN(
        anchor_generator=AnchorGenerator(((8,), (16,)), ((1.0,), (1.0,))),
        head=RPNHead(4, 1),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n={"training": 2, "testing": 2},
        post_nms_top_n={"training": post_top_n, "testing": post_top_n},
        nms_thresh=nms_thresh,
        box_loss=box_loss,
    ).eval()


# level 0: b2 and b0 overlap (IoU 100/110), b1 has the lowest logit; level 1: c0 == b0, c1 apart
B0, B1, B2 = [0.0, 0, 10, 10], [20.0, 20, 30, 30], [0.0, 0, 10, 11]
C0, C1 = [0.0, 0, 10, 10], [40.0, 40, 60, 60]
PROPOSALS = torch.tensor([[B0, B1, B2, C0, C1]])
LOGITS = torch.tensor([2.0, 1.0, 3.0, 0.5, -1.0])


@pytest.mark.parametrize(
    "nms_thresh, post_top_n, kept",
    [
        (None, None, [2, 0, 3, 4]),  # OLN: per-level top 2 (b1 out), overlaps kept, no cap
        (0.7, None, [2, 3, 4]),  # NMS per level: b0 goes, c0 (same box, other level) stays
        (0.7, 2, [2, 3]),  # GGN / torchvision: then the best 2 per image
    ],
)
def test_rpn_filter_per_level_top_k_nms_and_cap(nms_thresh, post_top_n, kept):
    boxes, scores = make_rpn(nms_thresh, post_top_n).filter_proposals(PROPOSALS, LOGITS, [(100, 100)], [3, 2])
    assert boxes[0].tolist() == PROPOSALS[0, kept].tolist()
    torch.testing.assert_close(scores[0], torch.sigmoid(LOGITS[kept]))


def test_oln_recipe_proposes_every_per_level_top_k():
    """64 px image, strides 4..64: 256, 64, 16, 4, 1 anchors; top 100 per level, no NMS -> 185."""
    options = DetectorOptions(
        backbone="resnet18", min_size=64, max_size=64, anchor_sizes=[8, 16, 32, 64, 128], fpn_channels=16,
        box_head_dim=32, rois_per_image=16, rpn_pre_nms_top_n_test=100, **OLN_RECIPE,
    )
    model = build_detector(options).eval()
    with torch.no_grad():
        images, _ = model.transform([torch.rand(3, 64, 64)])
        boxes, scores, _ = model.rpn.propose(images, model.backbone(images.tensors))
    assert len(boxes[0]) == 100 + 64 + 16 + 4 + 1 and bool((scores[0][:-1] >= scores[0][1:]).all())


def test_allowed_border_ignores_anchors_crossing_the_image():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    # A crosses the left border by 1 px (IoU 90/110 with the GT), B lies inside (IoU 70/130),
    # C ends exactly on the right border of the 32 px image (mmdet requires x2 < W)
    anchors = torch.tensor([[-1.0, 0, 9, 10], [3, 0, 13, 10], [16, 0, 32, 16]])
    matcher = build_matcher(0.7, 0.3, 0.3)
    labels, _ = label_anchors(anchors, gt, matcher, usable_anchors(anchors, (32, 32), None))
    assert labels.tolist() == [1.0, -1.0, 0.0]  # torchvision: B is between 0.3 and 0.7
    inside = usable_anchors(anchors, (32, 32), 0)
    assert inside.tolist() == [False, True, False]
    labels, matched = label_anchors(anchors, gt, matcher, inside)
    assert labels.tolist() == [-1.0, 1.0, -1.0]  # A and C get no label; B becomes the GT's best
    assert matched[1].tolist() == gt[0].tolist()
    assert usable_anchors(anchors, (32, 32), 1).tolist() == [True, True, True]


def test_allowed_border_minus_one_drops_anchors_centred_in_the_padding():
    # 40 px wide image padded to 64: centres 48 (padding of the image itself) and 64 (beyond)
    anchors = torch.tensor([[44.0, 4, 52, 12], [60, 4, 68, 12]])
    assert usable_anchors(anchors, (40, 40), -1).tolist() == [True, False]
    assert usable_anchors(anchors, (40, 40), None).tolist() == [True, True]


@pytest.mark.parametrize("min_pos_iou, expected", [(0.3, 0.0), (0.2, 1.0), (None, 1.0)])
def test_low_quality_match_needs_min_pos_iou(min_pos_iou, expected):
    gt = torch.tensor([[0.0, 0, 10, 10]])
    anchors = torch.tensor([[0.0, 0, 10, 40], [50, 50, 60, 60]])  # IoU 100/400 = 0.25, and 0
    usable = torch.ones(2, dtype=torch.bool)
    labels, _ = label_anchors(anchors, gt, build_matcher(0.7, 0.3, min_pos_iou), usable)
    assert labels.tolist() == [expected, 0.0]


def test_low_quality_match_goes_to_the_last_gt_as_in_mmdet():
    # the only anchor is the best of both GTs; IoU 0.83 with GT 0, 0.5 with GT 1
    gts = torch.tensor([[0.0, 0, 10, 12], [0, 0, 10, 20]])
    anchors = torch.tensor([[0.0, 0, 10, 10]])
    usable = torch.ones(1, dtype=torch.bool)
    _, matched = label_anchors(anchors, gts, build_matcher(0.7, 0.3, 0.3), usable)
    assert matched[0].tolist() == gts[1].tolist()  # mmdet's loop over GTs: the later one wins
    _, matched = label_anchors(anchors, gts, build_matcher(0.7, 0.3, None), usable)
    assert matched[0].tolist() == gts[0].tolist()  # torchvision: the anchor's own best GT


def smooth_l1(x: float, beta: float = 1 / 9) -> float:
    return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta


@pytest.mark.parametrize("box_loss", ["l1", "smooth_l1"])
def test_rpn_losses_average_over_sampled_anchors(box_loss):
    objectness = torch.tensor([[0.0], [1.0], [-1.0], [2.0], [5.0]])
    labels = [torch.tensor([1.0, 1.0, 0.0, 0.0, -1.0])]  # 4 sampled: budget 256 takes them all
    deltas = torch.tensor([[0.1, -0.2, 0, 0.3], [1, 1, 1, 1], [9, 9, 9, 9], [9, 9, 9, 9], [9, 9, 9, 9]])
    targets = [torch.tensor([[0.0, 0, 0, 0], [0.5, 0.5, 0.5, 2], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])]
    loss_objectness, loss_box = make_rpn(box_loss=box_loss).compute_loss(objectness, deltas, labels, targets)
    bce = math.log(2) + math.log1p(math.exp(-1)) + math.log1p(math.exp(-1)) + math.log1p(math.exp(2))
    assert loss_objectness.item() == pytest.approx(bce / 4, rel=1e-6)
    errors = [0.1, 0.2, 0.0, 0.3, 0.5, 0.5, 0.5, 1.0]
    per_element = [abs(e) for e in errors] if box_loss == "l1" else [smooth_l1(e) for e in errors]
    assert loss_box.item() == pytest.approx(sum(per_element) / 4, rel=1e-6)  # 3.1 / 4 for L1


def test_roi_l1_loss_sums_positives_over_sampled_rois():
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    labels = [torch.tensor([1, 0, 1])]
    regression = torch.zeros(3, 8)
    regression[0, 4:] = torch.tensor([0.5, -0.5, 1.0, 0.0])  # class-1 deltas of RoI 0
    regression[1, 4:] = 7.0  # a negative: no box loss
    regression[2, 4:] = torch.tensor([0.0, 0.0, 0.0, 2.0])
    targets = [torch.tensor([[0.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0.5]])]
    classifier, box = fast_rcnn_loss(logits, regression, labels, targets, "l1")
    assert box.item() == pytest.approx((0.5 + 0.5 + 1.0 + 1.5) / 3)
    torch.testing.assert_close((classifier, fast_rcnn_loss(logits, regression, labels, targets, "smooth_l1")[1]),
                               fastrcnn_loss(logits, regression, labels, targets))  # torchvision's own


def ramp_features(size: int = 64) -> dict[str, torch.Tensor]:
    """FPN levels of a 64 px image (strides 4, 8, 16, 32) whose value is the column index."""
    return {
        str(k): torch.arange(size // 4 // 2**k, dtype=torch.float32).expand(1, 1, size // 4 // 2**k, -1).clone()
        for k in range(4)
    }


@pytest.mark.parametrize("aligned, expected", [(True, 5.5), (False, 6.0)])
def test_roi_align_aligned_half_pixel_shift(aligned, expected):
    """Box x 8..40 on stride 4 (s = 32 < 112): feature x 2..10, minus 0.5 when aligned.

    Adaptive sampling: ceil(8 / 1) = 8 samples at the centres of 8 unit steps, so the
    mean of the ramp is the middle of the span: 6 (torchvision) or 5.5 (mmdet)."""
    pool = AlignedMultiScaleRoIAlign(["0", "1", "2", "3"], 1, 0, aligned)
    out = pool(ramp_features(), [torch.tensor([[8.0, 8, 40, 40]])], [(64, 64)])
    assert out.flatten().tolist() == pytest.approx([expected])


def test_fpn_levels_are_mmdets_finest_scale_56():
    sides = torch.tensor([10.0, 111, 112, 223, 224, 447, 448, 1000])
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    expected = [0, 0, 1, 1, 2, 2, 3, 3]  # floor(log2(s / 56)) clamped to 0..3
    assert fpn_levels(boxes, 4).tolist() == expected
    assert LevelMapper(2, 5)([boxes]).tolist() == expected  # torchvision's canonical 224 / level 4


@pytest.mark.parametrize("aligned, binary, expected", [(True, True, 1.0), (False, False, 0.75), (False, True, 1.0)])
def test_mask_targets_aligned_and_binarised(aligned, binary, expected):
    """4 x 4 mask, left two columns on, box = whole mask, 2 x 2 targets with 2 samples per bin side.

    Aligned samples hit pixel centres 0, 1 (left bin) -> 1; unaligned ones 0.5, 1.5 -> (1 + 0.5) / 2."""
    mask = torch.zeros(1, 4, 4)
    mask[:, :, :2] = 1
    targets = mask_targets(mask, torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([0]), 2, aligned, binary)
    assert targets[0].tolist() == [[expected, 0.0], [expected, 0.0]]


def test_defaults_are_ggn_class_agnostic_mask_rcnn():
    """configs/mask_rcnn/class_agn_mask_rcnn.py of GGN (mmdetection v2)."""
    o = DetectorOptions()
    assert (o.arch, o.fpn_channels, o.box_head_dim, o.mask_head_convs, o.mask_head_channels) == (
        "mask_rcnn", 256, 1024, 4, 256)
    assert (o.anchor_sizes, o.anchor_ratios, o.min_size, o.max_size) == ([32, 64, 128, 256, 512], [1.0], 800, 1333)
    assert (o.rpn_fg_iou_thresh, o.rpn_bg_iou_thresh, o.rpn_min_pos_iou, o.rpn_allowed_border) == (0.7, 0.3, 0.3, -1)
    assert (o.rpn_batch_size_per_image, o.rpn_positive_fraction, o.rois_per_image, o.roi_positive_fraction) == (
        256, 0.5, 512, 0.25)
    assert (o.rpn_pre_nms_top_n_train, o.rpn_post_nms_top_n_train, o.rpn_nms_thresh) == (2000, 2000, 0.7)
    assert (o.rpn_pre_nms_top_n_test, o.rpn_post_nms_top_n_test) == (2000, 2000)
    assert (o.box_loss, o.roi_align_aligned, o.roi_sampling_ratio, o.mask_target_binary) == ("l1", True, 0, True)
    assert (o.score_thresh, o.nms_thresh, o.max_detections, o.mask_threshold) == (0.0, 0.7, 1500, 0.5)


TORCHVISION_SETTINGS = dict(
    box_loss="smooth_l1", roi_align_aligned=False, roi_sampling_ratio=2, rpn_min_pos_iou=None,
    rpn_allowed_border=None, mask_target_binary=False,
)


def test_torchvision_settings_reproduce_torchvision_modules():
    """With TORCHVISION_SETTINGS the recipe RPN / ROI heads equal torchvision's (the former behaviour)."""
    options = DetectorOptions(
        backbone="resnet18", min_size=64, max_size=64, anchor_sizes=[8, 16, 32, 64, 128], fpn_channels=16,
        box_head_dim=32, mask_head_convs=1, mask_head_channels=8, rois_per_image=32, max_detections=50,
        **TORCHVISION_SETTINGS,
    )
    torch.manual_seed(0)
    model = build_detector(options)
    reference = copy.deepcopy(model)
    rpn, heads, levels = model.rpn, model.roi_heads, ["0", "1", "2", "3"]
    reference.rpn = RegionProposalNetwork(
        rpn.anchor_generator, rpn.head, 0.7, 0.3, 256, 0.5, rpn._pre_nms_top_n, rpn._post_nms_top_n, 0.7
    )
    reference.roi_heads = RoIHeads(
        MultiScaleRoIAlign(levels, 7, 2), heads.box_head, heads.box_predictor, 0.5, 0.5, 32, 0.25, None, 0.0,
        0.7, 50, mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2), mask_head=heads.mask_head,
        mask_predictor=heads.mask_predictor,
    )
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 4:28, 4:34], masks[1, 30:60, 30:60] = 1, 1
    target = {"boxes": torch.tensor([[4.0, 4, 34, 28], [30, 30, 60, 60]]), "masks": masks,
              "labels": torch.ones(2, dtype=torch.int64)}
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    losses = []
    for m in (model.train(), reference.train()):
        torch.manual_seed(5)  # same anchor and RoI samples
        with torch.no_grad():
            losses.append(m(images, [target, target]))
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    with torch.no_grad():
        ours, theirs = model.eval()(images), reference.eval()(images)
    for key in ("boxes", "scores", "masks"):
        assert torch.equal(ours[0][key], theirs[0][key])
