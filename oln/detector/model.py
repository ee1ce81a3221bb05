"""Class-agnostic detectors on torchvision: options and builders.

Architectures (`DetectorOptions.arch`):
- "mask_rcnn": Mask R-CNN with two classes (background, object).
- "faster_rcnn": the same without the mask branch (box-only runs).
- "oln": OLN-Box / OLN-Mask (`oln_masks`), see `oln.detector.oln_heads`.
- "two_tower": GGN's two-tower detector: a trained grouping detector (`grouping_model`)
  proposes boxes and masks, a recognition tower re-scores them, see `oln.detector.two_tower`.

All use a ResNet-18/50/101 FPN backbone built without downloads; weights come
only from local files (`backbone_weights`: a torchvision ResNet state dict;
`model_weights`: a full detector state dict, tensors of other shapes skipped).
Defaults are GGN's class-agnostic Mask R-CNN (`configs/mask_rcnn/class_agn_mask_rcnn.py`,
mmdetection v2): paper widths, 800 x 1333 images, one square anchor of 8 x stride per
location, RPN NMS 0.7 with 2000 proposals per level and per image, anchors centred in the
padding ignored (`rpn_allowed_border=-1`), low-quality matches from IoU 0.3, L1 box losses,
RoIAlign aligned with adaptive sampling, binary mask targets. OLN-Box's recipe
(`configs/oln_box/oln_box.py`) differs in `OLN_RECIPE`. The embedded synthetic experiment
sets its slim widths in its config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from oln.backbones import BACKBONE_HELP, build_resnet, is_backbone
from oln.detector.components import DetectorBase, Float32FastRCNNPredictor, Float32RPNHead, PastingTransform
from oln.detector.losses import BOX_LOSSES
from oln.detector.oln_heads import OLNRCNN, OLNBoxPredictor, OLNRegionProposalNetwork, OLNRoIHeads, OLNRPNHead
from oln.detector.roi_align import AlignedMultiScaleRoIAlign
from oln.detector.roi_heads import RecipeRoIHeads
from oln.detector.rpn import RecipeRPN

log = logging.getLogger(__name__)

ARCHS = ("mask_rcnn", "faster_rcnn", "oln", "two_tower")
BACKBONE_NORMS = ("auto", "frozen_bn", "bn")
NUM_CLASSES = 2  # background + object
SIZE_DIVISIBLE = 32  # batched images are padded to a multiple of this (torchvision and mmdet)

# Detector keys that make a run OLN-Box's recipe (configs/oln_box/oln_box.py) on top of the
# GGN defaults of DetectorOptions: no RPN NMS, no per-image proposal cap, anchors crossing
# the image border ignored. Its ROI box loss is L1 in any case (OLNRoIHeads).
OLN_RECIPE = {
    "arch": "oln",
    "oln_masks": False,
    "rpn_nms_thresh": None,
    "rpn_post_nms_top_n_train": None,
    "rpn_post_nms_top_n_test": None,
    "rpn_allowed_border": 0,
}


@dataclass
class DetectorOptions:
    """Architecture and test-time settings of a class-agnostic detector.

    Fields:
        arch: "mask_rcnn" | "faster_rcnn" | "oln" | "two_tower".
        backbone: "resnet18" | "resnet34" | "resnet50" | "resnet101" | "resnet18_w<N>" (ResNet-18 of base
            width N, see oln.backbones); FPN on C2-C5 + max-pool level.
        backbone_weights: local torchvision ResNet state-dict file ("" = random init).
        model_weights: local full-detector state-dict file loaded last ("" = none).
        backbone_norm: "auto" (frozen BN when weights are given, trainable BN otherwise),
            "frozen_bn" or "bn".
        trainable_backbone_layers: ResNet stages trained (0-5); None = 3 with weights, 5 without.
        anchor_sizes: anchor side per FPN level (5 levels, strides 4..64); GGN/OLN: 8 * stride.
        anchor_ratios: aspect ratios at every location; GGN/OLN (1.0,), stock Mask R-CNN (0.5, 1, 2).
        fpn_channels: FPN width (stock 256).
        box_head_dim: width of the two FC layers of the box head (stock 1024).
        mask_head_convs / mask_head_channels: 3x3 convs of the mask head (stock 4 x 256).
        rois_per_image: ROIs sampled per image for the ROI-head losses (stock 512).
        roi_positive_fraction: share of positives among them (0.25).
        rpn_batch_size_per_image / rpn_positive_fraction: RPN anchor sampling (256, 0.5).
        rpn_fg_iou_thresh / rpn_bg_iou_thresh: RPN anchor matching (0.7 / 0.3).
        rpn_pre_nms_top_n_train/_test: proposals kept per FPN level before NMS (GGN, OLN: 2000).
        rpn_post_nms_top_n_train/_test: proposals kept per image after NMS (GGN: 2000);
            None = no per-image cap (OLN).
        rpn_nms_thresh: RPN NMS IoU, per FPN level (GGN: 0.7); None = no NMS (OLN).
        rpn_allowed_border: anchors used for RPN targets (mmdet's allowed_border): None = all
            (torchvision); -1 = those centred inside the image padded to 32 (GGN); b >= 0 = also
            within b px of the image (OLN: 0); the others are neither matched nor sampled.
        rpn_min_pos_iou: a GT's best anchors become positive only from this IoU (mmdet's
            min_pos_iou, GGN/OLN 0.3); None = at any IoU (torchvision).
        box_loss: box regression loss of the standard RPN and ROI heads: "l1" (GGN) or
            "smooth_l1" (torchvision, beta 1/9); OLN's losses are fixed (IoU / L1).
        roi_align_aligned: RoIAlign with the half-pixel shift (mmdet, True) or without (torchvision).
        roi_sampling_ratio: RoIAlign samples per bin side for box and mask pooling (0 = adaptive, mmdet).
        mask_target_binary: mask targets cropped with `roi_align_aligned` and binarised at 0.5
            (mmdet, True) or soft (torchvision).
        min_size / max_size: GeneralizedRCNNTransform resize (shorter side / longer side cap).
        train_min_sizes: shorter sides drawn at random per training image (scale
            augmentation); empty = min_size only.
        max_detections: detections kept per image at test time (>= the largest AR@k).
        score_thresh: minimum detection score at test time (0 keeps everything).
        nms_thresh: test-time NMS IoU of the ROI stage.
        mask_threshold: pasted mask probability counted as foreground.
        oln_masks: OLN-Mask (True) or OLN-Box (False).
        grouping_model: two_tower: the grouping detector's model.pt (set by the workflow from the
            run's `grouping_run`; "" once rebuilt from a saved two-tower model).
        feed_in_rpn: two_tower: propose the grouping tower's RPN proposals instead of its
            detections (no grouping masks; box-only output unless refine_grouping).
        use_group_mask: two_tower: the grouping mask of each ROI is one more ROI-feature channel.
        refine_grouping: two_tower: the recognition tower has its own mask head and outputs its
            own boxes and masks; otherwise the grouping tower's, re-scored (GGN's merge_results).
        freeze_grouping: two_tower: freeze the whole grouping tower (GGN's freeze_rpn_scoring);
            otherwise its RPN scoring layers keep training.
        freeze_backbone: two_tower: freeze the recognition tower's ResNet (its FPN trains).
        detach_mask_features: two_tower with refine_grouping: the mask loss does not reach the
            recognition features (GGN's stop_grad_group).
    """

    arch: str = "mask_rcnn"
    backbone: str = "resnet50"
    backbone_weights: str = ""
    model_weights: str = ""
    backbone_norm: str = "auto"
    trainable_backbone_layers: int | None = None
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    anchor_ratios: list[float] = field(default_factory=lambda: [1.0])
    fpn_channels: int = 256
    box_head_dim: int = 1024
    mask_head_convs: int = 4
    mask_head_channels: int = 256
    rois_per_image: int = 512
    roi_positive_fraction: float = 0.25
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 2000
    rpn_post_nms_top_n_train: int | None = 2000
    rpn_post_nms_top_n_test: int | None = 2000
    rpn_nms_thresh: float | None = 0.7
    rpn_allowed_border: int | None = -1
    rpn_min_pos_iou: float | None = 0.3
    box_loss: str = "l1"
    roi_align_aligned: bool = True
    roi_sampling_ratio: int = 0
    mask_target_binary: bool = True
    min_size: int = 800
    max_size: int = 1333
    train_min_sizes: list[int] = field(default_factory=list)
    max_detections: int = 1500
    score_thresh: float = 0.0
    nms_thresh: float = 0.7
    mask_threshold: float = 0.5
    oln_masks: bool = True
    grouping_model: str = ""
    feed_in_rpn: bool = False
    use_group_mask: bool = False
    refine_grouping: bool = False
    freeze_grouping: bool = False
    freeze_backbone: bool = False
    detach_mask_features: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.arch, ARCHS, "arch"),
            (self.backbone_norm, BACKBONE_NORMS, "backbone_norm"),
            (self.box_loss, BOX_LOSSES, "box_loss"),
        ]
        if not is_backbone(self.backbone):
            raise ValueError(f"DetectorOptions.backbone must be {BACKBONE_HELP}, got {self.backbone!r}")
        for value, allowed, name in checks:
            if value not in allowed:
                raise ValueError(f"DetectorOptions.{name} must be one of {allowed}, got {value!r}")
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs one size per FPN level (5), got {self.anchor_sizes}")

    @property
    def has_masks(self) -> bool:
        if self.arch == "two_tower":
            return self.refine_grouping or not self.feed_in_rpn
        return self.arch == "mask_rcnn" or (self.arch == "oln" and self.oln_masks)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DetectorOptions:
        """Build from a dict, ignoring unknown keys (older checkpoints stay loadable)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _norm_layer(options: DetectorOptions) -> Callable[..., nn.Module]:
    norm = options.backbone_norm
    if norm == "auto":
        norm = "frozen_bn" if (options.backbone_weights or options.model_weights) else "bn"
    return FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d


def load_state_file(path: str) -> dict[str, torch.Tensor]:
    """State dict from a local file (plain, or under "state_dict" / "model")."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def build_backbone(options: DetectorOptions) -> BackboneWithFPN:
    """ResNet + FPN (levels '0'-'3' and 'pool') with `fpn_channels` outputs."""
    resnet = build_resnet(options.backbone, norm_layer=_norm_layer(options))
    if options.backbone_weights:
        missing, unexpected = resnet.load_state_dict(load_state_file(options.backbone_weights), strict=False)
        if missing:
            raise ValueError(f"{options.backbone_weights}: missing backbone weights {missing[:5]}...")
        log.info(
            "loaded backbone weights from %s (%d unused keys)", options.backbone_weights, len(unexpected)
        )
    trainable = options.trainable_backbone_layers
    if trainable is None:
        trainable = 3 if (options.backbone_weights or options.model_weights) else 5
    stages = ["layer4", "layer3", "layer2", "layer1", "conv1", "bn1"][: trainable + (trainable == 5)]
    for name, parameter in resnet.named_parameters():
        if not any(name.startswith(stage) for stage in stages):
            parameter.requires_grad_(False)
    c2 = resnet.inplanes // 8
    return BackboneWithFPN(
        resnet,
        {f"layer{k}": str(k - 1) for k in range(1, 5)},
        [c2 * 2 ** (k - 1) for k in range(1, 5)],
        options.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def _rpn_kwargs(options: DetectorOptions) -> dict:
    anchors = AnchorGenerator(
        tuple((s,) for s in options.anchor_sizes), (tuple(options.anchor_ratios),) * len(options.anchor_sizes)
    )
    return dict(
        anchor_generator=anchors,
        fg_iou_thresh=options.rpn_fg_iou_thresh,
        bg_iou_thresh=options.rpn_bg_iou_thresh,
        batch_size_per_image=options.rpn_batch_size_per_image,
        positive_fraction=options.rpn_positive_fraction,
        pre_nms_top_n={
            "training": options.rpn_pre_nms_top_n_train,
            "testing": options.rpn_pre_nms_top_n_test,
        },
        post_nms_top_n={
            "training": options.rpn_post_nms_top_n_train,
            "testing": options.rpn_post_nms_top_n_test,
        },
        nms_thresh=options.rpn_nms_thresh,
        allowed_border=options.rpn_allowed_border,
        min_pos_iou=options.rpn_min_pos_iou,
        box_loss=options.box_loss,
        size_divisible=SIZE_DIVISIBLE,
    )


def mask_predictor(in_channels: int, channels: int) -> MaskRCNNPredictor:
    """torchvision's mask predictor with small initial logits (normal std 0.001, bias 0).

    torchvision's Kaiming init of the 1x1 logit layer starts the mask loss near 5 instead
    of log 2, which costs a from-scratch run on a CPU budget a large part of its iterations.
    """
    predictor = MaskRCNNPredictor(in_channels, channels, NUM_CLASSES)
    nn.init.normal_(predictor.mask_fcn_logits.weight, std=0.001)
    nn.init.zeros_(predictor.mask_fcn_logits.bias)
    return predictor


def build_roi_heads(options: DetectorOptions, with_masks: bool, oln: bool = False) -> RecipeRoIHeads:
    """Box head (+ mask head) ROI stage; OLN's box-IoU predictor when `oln`."""
    levels = ["0", "1", "2", "3"]

    def roi_pool(size: int) -> AlignedMultiScaleRoIAlign:
        return AlignedMultiScaleRoIAlign(levels, size, options.roi_sampling_ratio, options.roi_align_aligned)

    box_head = TwoMLPHead(options.fpn_channels * 7 * 7, options.box_head_dim)
    predictor = (
        OLNBoxPredictor(options.box_head_dim)
        if oln
        else Float32FastRCNNPredictor(options.box_head_dim, NUM_CLASSES)
    )
    mask_parts = {}
    if with_masks:
        convs = [options.mask_head_channels] * options.mask_head_convs
        mask_parts = dict(
            mask_roi_pool=roi_pool(14),
            mask_head=MaskRCNNHeads(options.fpn_channels, convs, 1),
            mask_predictor=mask_predictor(convs[-1] if convs else options.fpn_channels, options.mask_head_channels),
        )
    heads_class = OLNRoIHeads if oln else RecipeRoIHeads
    return heads_class(
        roi_pool(7),
        box_head,
        predictor,
        0.5,
        0.5,
        options.rois_per_image,
        options.roi_positive_fraction,
        None,
        options.score_thresh,
        options.nms_thresh,
        options.max_detections,
        **mask_parts,
        box_loss=options.box_loss,
        mask_target_aligned=options.roi_align_aligned,
        mask_target_binary=options.mask_target_binary,
    )


def build_detector(
    options: DetectorOptions, grouping: tuple[nn.Module, DetectorOptions] | None = None
) -> nn.Module:
    """Build the detector described by `options` (eval-mode outputs: boxes, scores, labels, masks).

    `grouping`: two_tower only, the grouping detector and its options (default: loaded from
    `options.grouping_model`).

    Returns:
        an nn.Module: train mode `model(images, targets) -> dict of losses`;
        eval mode `model(images) -> list of {"boxes", "scores", "labels"[, "masks"]}`.
    """
    backbone = build_backbone(options)
    num_anchors = len(options.anchor_ratios)
    transform = PastingTransform(
        options.min_size,
        options.max_size,
        [0.485, 0.456, 0.406],
        [0.229, 0.224, 0.225],
        train_min_sizes=tuple(options.train_min_sizes),
        mask_threshold=options.mask_threshold,
    )
    if options.arch == "two_tower":
        from oln.detector.two_tower import build_two_tower  # that module imports this one

        model = build_two_tower(options, backbone, transform, grouping)
    elif options.arch == "oln":
        rpn = OLNRegionProposalNetwork(
            head=OLNRPNHead(options.fpn_channels, num_anchors), **_rpn_kwargs(options)
        )
        model = OLNRCNN(backbone, rpn, build_roi_heads(options, options.oln_masks, oln=True), transform)
    else:
        rpn = RecipeRPN(
            head=Float32RPNHead(options.fpn_channels, num_anchors), **_rpn_kwargs(options)
        )
        model = DetectorBase(
            backbone, rpn, build_roi_heads(options, options.arch == "mask_rcnn"), transform
        )
    if options.model_weights:
        load_matching_weights(model, load_state_file(options.model_weights))
    return model


def load_matching_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Copy tensors whose name and shape match.

    Returns:
        the number of tensors loaded.
    """
    own = model.state_dict()
    loaded = {}
    for name, tensor in own.items():
        if name in state and state[name].shape == tensor.shape:
            loaded[name] = state[name]
    model.load_state_dict(loaded, strict=False)
    log.info("loaded %d / %d tensors from model weights", len(loaded), len(own))
    return len(loaded)
