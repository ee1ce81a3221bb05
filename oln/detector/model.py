"""Class-agnostic detectors on torchvision: options and builders.

Architectures (`DetectorOptions.arch`):
- "mask_rcnn": Mask R-CNN with two classes (background, object).
- "faster_rcnn": the same without the mask branch (box-only runs).
- "oln": OLN-Box / OLN-Mask (`oln_masks`), see `oln.detector.oln_heads`.
- "two_tower": shared backbone + RPN, ROI tower A (annotated GT) and tower B
  (annotated + pseudo GT), see `oln.detector.two_tower`.

All use a ResNet-18/50/101 FPN backbone built without downloads; weights come
only from local files (`backbone_weights`: a torchvision ResNet state dict;
`model_weights`: a full detector state dict, tensors of other shapes skipped).
Defaults are the slim heads of the embedded synthetic experiment; the paper's
stock widths are fpn_channels=256, box_head_dim=1024, mask_head_convs=4,
mask_head_channels=256, rois_per_image=512 (COCO: min_size=800, max_size=1333).
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
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from oln.backbones import BACKBONE_HELP, build_resnet, is_backbone
from oln.detector.components import DetectorBase, Float32FastRCNNPredictor, Float32RPNHead, PastingTransform
from oln.detector.oln_heads import OLNRCNN, OLNBoxPredictor, OLNRegionProposalNetwork, OLNRoIHeads, OLNRPNHead
from oln.detector.two_tower import TwoTowerRCNN

log = logging.getLogger(__name__)

ARCHS = ("mask_rcnn", "faster_rcnn", "oln", "two_tower")
BACKBONE_NORMS = ("auto", "frozen_bn", "bn")
NUM_CLASSES = 2  # background + object


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
        rpn_pre_nms_top_n_train/_test: proposals kept per FPN level before NMS.
        rpn_post_nms_top_n_train/_test: proposals kept per image after NMS.
        rpn_nms_thresh: RPN NMS IoU (stock 0.7; OLN uses 1.0 = no NMS).
        min_size / max_size: GeneralizedRCNNTransform resize (shorter side / longer side cap).
        train_min_sizes: shorter sides drawn at random per training image (scale
            augmentation); empty = min_size only.
        max_detections: detections kept per image at test time (>= the largest AR@k).
        score_thresh: minimum detection score at test time (0 keeps everything).
        nms_thresh: test-time NMS IoU of the ROI stage (and of the two-tower pooling).
        mask_threshold: pasted mask probability counted as foreground.
        oln_masks: OLN-Mask (True) or OLN-Box (False).
        tower: two_tower test output "a" | "b" | "pooled".
    """

    arch: str = "mask_rcnn"
    backbone: str = "resnet50"
    backbone_weights: str = ""
    model_weights: str = ""
    backbone_norm: str = "auto"
    trainable_backbone_layers: int | None = None
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    anchor_ratios: list[float] = field(default_factory=lambda: [1.0])
    fpn_channels: int = 128
    box_head_dim: int = 256
    mask_head_convs: int = 2
    mask_head_channels: int = 64
    rois_per_image: int = 64
    roi_positive_fraction: float = 0.25
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 2000
    rpn_nms_thresh: float = 0.7
    min_size: int = 128
    max_size: int = 128
    train_min_sizes: list[int] = field(default_factory=list)
    max_detections: int = 1000
    score_thresh: float = 0.0
    nms_thresh: float = 0.7
    mask_threshold: float = 0.5
    oln_masks: bool = True
    tower: str = "pooled"

    def __post_init__(self) -> None:
        checks = [
            (self.arch, ARCHS, "arch"),
            (self.backbone_norm, BACKBONE_NORMS, "backbone_norm"),
            (self.tower, ("a", "b", "pooled"), "tower"),
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
        return self.arch in ("mask_rcnn", "two_tower") or (self.arch == "oln" and self.oln_masks)

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


def build_roi_heads(options: DetectorOptions, with_masks: bool, oln: bool = False) -> RoIHeads:
    """Box head (+ mask head) ROI stage; OLN's box-IoU predictor when `oln`."""
    levels = ["0", "1", "2", "3"]
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
            mask_roi_pool=MultiScaleRoIAlign(levels, 14, 2),
            mask_head=MaskRCNNHeads(options.fpn_channels, convs, 1),
            mask_predictor=mask_predictor(convs[-1] if convs else options.fpn_channels, options.mask_head_channels),
        )
    heads_class = OLNRoIHeads if oln else RoIHeads
    return heads_class(
        MultiScaleRoIAlign(levels, 7, 2),
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
    )


def build_detector(options: DetectorOptions) -> nn.Module:
    """Build the detector described by `options` (eval-mode outputs: boxes, scores, labels, masks).

    Returns:
        an nn.Module: train mode `model(images, targets) -> dict of losses`;
        eval mode `model(images) -> list of {"boxes", "scores", "labels"[, "masks"][, "tower"]}`.
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
    if options.arch == "oln":
        rpn = OLNRegionProposalNetwork(
            head=OLNRPNHead(options.fpn_channels, num_anchors), **_rpn_kwargs(options)
        )
        model = OLNRCNN(backbone, rpn, build_roi_heads(options, options.oln_masks, oln=True), transform)
    else:
        rpn = RegionProposalNetwork(
            head=Float32RPNHead(options.fpn_channels, num_anchors), **_rpn_kwargs(options)
        )
        if options.arch == "two_tower":
            model = TwoTowerRCNN(
                backbone,
                rpn,
                build_roi_heads(options, True),
                build_roi_heads(options, True),
                transform,
                options.nms_thresh,
                options.max_detections,
                options.tower,
            )
        else:
            model = DetectorBase(
                backbone, rpn, build_roi_heads(options, options.arch == "mask_rcnn"), transform
            )
    if options.model_weights:
        load_matching_weights(model, load_state_file(options.model_weights))
    return model


def load_matching_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Copy tensors whose name and shape match; single-tower ROI weights also fill both towers.

    Returns:
        the number of tensors loaded.
    """
    own = model.state_dict()
    loaded = {}
    for name, tensor in own.items():
        source = name
        for tower in (".a.", ".b."):
            if name.startswith("roi_heads" + tower) and name not in state:
                source = "roi_heads." + name[len("roi_heads" + tower) :]
        if source in state and state[source].shape == tensor.shape:
            loaded[name] = state[source]
    model.load_state_dict(loaded, strict=False)
    log.info("loaded %d / %d tensors from model weights", len(loaded), len(own))
    return len(loaded)
