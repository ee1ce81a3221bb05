"""GGN's two-tower detector: a frozen grouping detector proposes, a recognition tower re-scores.

Wang et al. (CVPR 2022), `TwoTowerDetector` + `RecRoIHead` of GGN's code, on torchvision parts:

- Grouping tower: a trained class-agnostic detector (Mask R-CNN or OLN, in practice the
  GGN-trained run `ggn`) loaded from its model.pt. Its backbone and ROI heads are frozen and
  always in eval mode. `freeze_grouping=False` (GGN's `freeze_rpn_scoring=False`, the
  default) keeps only its RPN scoring layers trainable (objectness / centerness logits),
  trained by its RPN losses (`grouping_loss_*`) on the annotated GT; `True` freezes all of it.
  It proposes its final detections (boxes + masks, its own test-time settings, run on the
  proposals of its RPN in training or test mode as the model is), or with `feed_in_rpn`
  its RPN proposals (no masks).
- Recognition tower: its own ResNet + FPN and a torchvision ROI stage ("RecRoIHead")
  trained on the grouping proposals (+ the GT boxes, as torchvision's sampler adds them)
  against the annotated GT. With `use_group_mask` the grouping tower's 28x28 mask logits
  of each ROI are resized (bilinear) to the ROI feature size and concatenated as one more
  channel (zeros with `feed_in_rpn`; GT boxes get the grouping mask head's prediction on
  the GT box). With `refine_grouping` it has its own mask head (input detached by default,
  `detach_mask_features`, GGN's `stop_grad_group`), otherwise none. `freeze_backbone`
  freezes its ResNet (the FPN trains).
- Test time without `refine_grouping` (GGN's `merge_results`): the recognition tower scores
  every grouping proposal and runs its post-processing (score threshold, NMS on its
  regressed boxes, top `max_detections`); the output is the grouping tower's boxes and
  masks at the kept indices, in that order, with the recognition scores. With
  `refine_grouping` the output is the recognition tower's own detections and masks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference
from torchvision.ops import boxes as box_ops
from torchvision.ops.misc import FrozenBatchNorm2d

from oln.detector.components import DetectorBase, PastingTransform
from oln.detector.losses import fast_rcnn_loss, mask_rcnn_loss
from oln.detector.model import DetectorOptions, _norm_layer, build_detector, build_roi_heads
from oln.detector.oln_heads import OLNRegionProposalNetwork
from oln.detector.roi_heads import RecipeRoIHeads

# Parameters of the grouping tower that stay trainable unless `freeze_grouping` (GGN's
# RPN_SCORE_LAYERS: the RPN's objectness logits; OLN's centerness logits).
RPN_SCORE_LAYERS = (
    "rpn.head.cls_logits.weight",
    "rpn.head.cls_logits.bias",
    "rpn.head.centerness.weight",
    "rpn.head.centerness.bias",
)


@dataclass
class Grouping:
    """What the grouping tower proposes for a batch (resized-image coordinates).

    Fields:
        boxes: (N_i, 4) xyxy per image.
        mask_logits: (N_i, 1, 28, 28) per image, or None (`feed_in_rpn`).
        masks: the same as probabilities, or None.
        losses: its RPN losses (training with trainable scoring layers), else empty.
        features: its FPN features (for masks of GT boxes).
    """

    boxes: list[Tensor]
    mask_logits: list[Tensor] | None
    masks: list[Tensor] | None
    losses: dict[str, Tensor]
    features: dict[str, Tensor]


@contextmanager
def recorded_outputs(module: nn.Module) -> Iterator[list]:
    """Collects `module`'s forward outputs (a forward hook) while the block runs."""
    outputs: list = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


@contextmanager
def boxes_only(heads: RoIHeads, enabled: bool) -> Iterator[None]:
    """Run `heads` without its mask branch while the block runs (when `enabled`).

    Training without `use_group_mask` needs only the grouping tower's boxes; its mask head on
    up to `max_detections` boxes per image would otherwise dominate the training step.
    """
    parts = ("mask_roi_pool", "mask_head", "mask_predictor")
    saved = {name: getattr(heads, name) for name in parts}
    if enabled:
        for name in parts:
            setattr(heads, name, None)
    try:
        yield
    finally:
        for name, module in saved.items():
            setattr(heads, name, module)


def label_logits(logits: Tensor, labels: list[Tensor]) -> list[Tensor]:
    """Per-class mask logits (N, C, M, M) -> each detection's own class, (N_i, 1, M, M) per image."""
    flat = torch.cat(labels) if labels else logits.new_zeros(0, dtype=torch.int64)
    picked = logits[torch.arange(len(flat), device=logits.device), flat][:, None]
    return list(picked.split([len(lab) for lab in labels]))


def grouping_mask_logits(
    heads: RoIHeads, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]]
) -> list[Tensor]:
    """The grouping tower's mask logits (class 1) for given boxes, (N_i, 1, 28, 28) per image."""
    logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, image_sizes)))
    return label_logits(logits, [torch.ones(len(b), dtype=torch.int64, device=logits.device) for b in boxes])


def with_group_mask(roi_features: Tensor, group_masks: Tensor | None) -> Tensor:
    """Append the group mask, resized to the ROI size, as one more channel (zeros when None)."""
    if group_masks is None:
        extra = roi_features.new_zeros((roi_features.shape[0], 1, *roi_features.shape[-2:]))
    else:
        extra = F.interpolate(group_masks.to(roi_features.dtype), size=roi_features.shape[-2:], mode="bilinear")
    return torch.cat([roi_features, extra], dim=1)


@dataclass
class Samples:
    """ROI training samples per image: boxes, index into cat(proposals, GT), label, matched GT."""

    boxes: list[Tensor]
    sources: list[Tensor]
    labels: list[Tensor]
    matched_idxs: list[Tensor]
    regression_targets: tuple[Tensor, ...]


def sample_proposals(heads: RoIHeads, proposals: list[Tensor], targets: list[dict]) -> Samples:
    """torchvision's ROI sampling (GT boxes appended, matched, subsampled), keeping sample indices."""
    dtype = proposals[0].dtype
    gt_boxes = [t["boxes"].to(dtype) for t in targets]
    candidates = heads.add_gt_proposals(proposals, gt_boxes)
    matched_idxs, labels = heads.assign_targets_to_proposals(candidates, gt_boxes, [t["labels"] for t in targets])
    sources = heads.subsample(labels)
    boxes, kept_labels, kept_matches, matched_boxes = [], [], [], []
    for k, index in enumerate(sources):
        boxes.append(candidates[k][index])
        kept_labels.append(labels[k][index])
        kept_matches.append(matched_idxs[k][index])
        gt = gt_boxes[k] if gt_boxes[k].numel() else gt_boxes[k].new_zeros((1, 4))
        matched_boxes.append(gt[kept_matches[-1]])
    targets_encoded = heads.box_coder.encode(matched_boxes, boxes)
    return Samples(boxes, sources, kept_labels, kept_matches, targets_encoded)


def postprocess_with_indices(
    heads: RoIHeads,
    class_logits: Tensor,
    box_regression: Tensor,
    proposals: list[Tensor],
    image_sizes: list[tuple[int, int]],
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """torchvision's class-agnostic post-processing that also returns the kept proposal indices.

    Returns:
        per image (regressed boxes, scores, indices into that image's proposals), best first.
    """
    counts = [len(p) for p in proposals]
    decoded = heads.box_coder.decode(box_regression, proposals).reshape(len(class_logits), -1, 4)[:, 1]
    scores_all = F.softmax(class_logits.float(), -1)[:, 1]
    results = []
    for boxes, scores, size in zip(decoded.split(counts), scores_all.split(counts), image_sizes):
        boxes = box_ops.clip_boxes_to_image(boxes, size)
        keep = torch.where(scores > heads.score_thresh)[0]
        keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
        keep = keep[box_ops.nms(boxes[keep].float(), scores[keep], heads.nms_thresh)][: heads.detections_per_img]
        results.append((boxes[keep], scores[keep], keep))
    return results


def grouping_proposals(
    rpn: nn.Module, images: ImageList, features: dict[str, Tensor], targets: list[dict] | None
) -> tuple[list[Tensor], list[Tensor] | None, dict[str, Tensor]]:
    """RPN proposals of the grouping tower: (boxes, OLN proposal scores or None, RPN losses)."""
    if isinstance(rpn, OLNRegionProposalNetwork):
        return rpn.propose(images, features, targets)
    boxes, losses = rpn(images, features, targets)
    return boxes, None, losses


class TwoTowerRCNN(DetectorBase):
    """GGN's two-tower detector (see the module docstring).

    Args:
        grouping: the trained grouping detector (`DetectorBase` / `OLNRCNN`).
        grouping_options: its `DetectorOptions` (stored with the model to rebuild it).
        backbone, roi_heads, transform: the recognition tower (torchvision parts; `roi_heads`
            built for `fpn_channels + 1` input channels when `use_group_mask`).
        feed_in_rpn, use_group_mask, refine_grouping, freeze_grouping, freeze_backbone,
        detach_mask_features: see `DetectorOptions`.
    """

    def __init__(
        self,
        grouping: DetectorBase,
        grouping_options: DetectorOptions,
        backbone: nn.Module,
        roi_heads: RecipeRoIHeads,
        transform: PastingTransform,
        *,
        feed_in_rpn: bool = False,
        use_group_mask: bool = False,
        refine_grouping: bool = False,
        freeze_grouping: bool = False,
        freeze_backbone: bool = False,
        detach_mask_features: bool = True,
    ) -> None:
        super().__init__(backbone, None, roi_heads, transform)
        self.grouping = grouping
        self.grouping_options = grouping_options
        self.feed_in_rpn = feed_in_rpn
        self.use_group_mask = use_group_mask
        self.refine_grouping = refine_grouping
        self.freeze_grouping = freeze_grouping
        self.freeze_backbone = freeze_backbone
        self.detach_mask_features = detach_mask_features
        for name, parameter in grouping.named_parameters():
            parameter.requires_grad_(not freeze_grouping and name in RPN_SCORE_LAYERS)
        if freeze_backbone:
            backbone.body.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> TwoTowerRCNN:
        """Train mode for the recognition tower; the grouping tower stays in eval mode except its
        RPN (training-mode proposals and losses, as GGN), a frozen ResNet stays in eval mode."""
        super().train(mode)
        self.grouping.eval()
        self.grouping.rpn.train(mode)
        if self.freeze_backbone:
            self.backbone.body.eval()
        return self

    def group(self, images: ImageList, targets: list[dict] | None) -> Grouping:
        """Run the grouping tower: RPN proposals, then (unless `feed_in_rpn`) its detections."""
        with torch.no_grad():
            features = self.grouping.backbone(images.tensors)
        train_scoring = self.training and not self.freeze_grouping
        with torch.set_grad_enabled(train_scoring):
            boxes, scores, losses = grouping_proposals(self.grouping.rpn, images, features, targets)
        losses = {f"grouping_{k}": v for k, v in losses.items()} if train_scoring else {}
        boxes = [b.detach() for b in boxes]
        if self.feed_in_rpn:
            return Grouping(boxes, None, None, losses, features)
        heads = self.grouping.roi_heads
        extra = () if scores is None else (None, [s.detach() for s in scores])
        skip_masks = self.training and not self.use_group_mask
        with torch.no_grad(), recorded_outputs(heads.mask_predictor) as logits, boxes_only(heads, skip_masks):
            detections, _ = heads(features, boxes, images.image_sizes, *extra)
        boxes = [d["boxes"] for d in detections]
        if skip_masks:
            return Grouping(boxes, None, None, losses, features)
        labels = [d["labels"] for d in detections]
        return Grouping(boxes, label_logits(logits[0], labels), [d["masks"] for d in detections], losses, features)

    def detect(self, images, features, targets):
        grouping = self.group(images, targets)
        if self.training:
            return [], {**grouping.losses, **self.recognition_losses(features, grouping, images, targets)}
        return self.recognize(features, grouping, images.image_sizes), {}

    def group_masks_of_samples(
        self, grouping: Grouping, images: ImageList, targets: list[dict], sources: list[Tensor]
    ) -> list[Tensor] | None:
        """Grouping mask logits of the sampled ROIs (GT boxes: the grouping mask head on the box)."""
        if not self.use_group_mask or grouping.mask_logits is None:
            return None
        with torch.no_grad():
            gt_logits = grouping_mask_logits(
                self.grouping.roi_heads, grouping.features, [t["boxes"] for t in targets], images.image_sizes
            )
        return [torch.cat([own, gt])[index] for own, gt, index in zip(grouping.mask_logits, gt_logits, sources)]

    def roi_features(
        self, pool: nn.Module, features: dict[str, Tensor], boxes: list[Tensor],
        image_sizes: list[tuple[int, int]], group_masks: list[Tensor] | None,
    ) -> Tensor:
        """ROI-aligned recognition features (+ the group-mask channel with `use_group_mask`)."""
        pooled = pool(features, boxes, image_sizes)
        if not self.use_group_mask:
            return pooled
        return with_group_mask(pooled, None if group_masks is None else torch.cat(group_masks))

    def recognition_losses(
        self, features: dict[str, Tensor], grouping: Grouping, images: ImageList, targets: list[dict]
    ) -> dict[str, Tensor]:
        """RecRoIHead training: box (+ mask) losses on sampled grouping proposals vs the GT."""
        heads = self.roi_heads
        samples = sample_proposals(heads, grouping.boxes, targets)
        group_masks = self.group_masks_of_samples(grouping, images, targets, samples.sources)
        pooled = self.roi_features(heads.box_roi_pool, features, samples.boxes, images.image_sizes, group_masks)
        class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
        loss_classifier, loss_box_reg = fast_rcnn_loss(
            class_logits, box_regression, samples.labels, list(samples.regression_targets), heads.box_loss
        )
        losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        if self.refine_grouping:
            positive = [torch.where(labels > 0)[0] for labels in samples.labels]
            boxes = [b[p] for b, p in zip(samples.boxes, positive)]
            masks = None if group_masks is None else [m[p] for m, p in zip(group_masks, positive)]
            logits = self.mask_logits(features, boxes, images.image_sizes, masks)
            losses["loss_mask"] = mask_rcnn_loss(
                logits, boxes, [t["masks"] for t in targets], [t["labels"] for t in targets],
                [m[p] for m, p in zip(samples.matched_idxs, positive)],
                aligned=heads.mask_target_aligned, binary=heads.mask_target_binary,
            )
        return losses

    def mask_logits(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_sizes: list[tuple[int, int]],
        group_masks: list[Tensor] | None,
    ) -> Tensor:
        """The recognition tower's own mask head (`refine_grouping`)."""
        heads = self.roi_heads
        pooled = self.roi_features(heads.mask_roi_pool, features, boxes, image_sizes, group_masks)
        if self.detach_mask_features:
            pooled = pooled.detach()
        return heads.mask_predictor(heads.mask_head(pooled))

    def recognize(
        self, features: dict[str, Tensor], grouping: Grouping, image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Test time: score the grouping proposals; merge (GGN's merge_results) or refine."""
        heads = self.roi_heads
        pooled = self.roi_features(heads.box_roi_pool, features, grouping.boxes, image_sizes, grouping.mask_logits)
        class_logits, box_regression = heads.box_predictor(heads.box_head(pooled))
        kept = postprocess_with_indices(heads, class_logits, box_regression, grouping.boxes, image_sizes)
        results = []
        for k, (boxes, scores, index) in enumerate(kept):
            result = {"scores": scores, "labels": torch.ones_like(index)}
            if self.refine_grouping:
                result["boxes"] = boxes
            else:
                result["boxes"] = grouping.boxes[k][index]
                if grouping.masks is not None:
                    result["masks"] = grouping.masks[k][index]
            results.append(result)
        if self.refine_grouping:
            group_masks = None
            if grouping.mask_logits is not None:
                group_masks = [m[index] for m, (_, _, index) in zip(grouping.mask_logits, kept)]
            logits = self.mask_logits(features, [r["boxes"] for r in results], image_sizes, group_masks)
            for probs, result in zip(maskrcnn_inference(logits, [r["labels"] for r in results]), results):
                result["masks"] = probs
        return results


def standalone_options(options: DetectorOptions) -> DetectorOptions:
    """`options` rebuildable without weight files (the norm layer that `auto` chose kept)."""
    norm = "frozen_bn" if _norm_layer(options) is FrozenBatchNorm2d else "bn"
    return replace(options, backbone_norm=norm, backbone_weights="", model_weights="", grouping_model="")


def load_grouping_detector(path: str | os.PathLike) -> tuple[DetectorBase, DetectorOptions]:
    """The trained grouping detector of a model.pt written by `oln.detector.train`."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    options = standalone_options(DetectorOptions.from_dict(checkpoint["options"]))
    if options.arch == "two_tower":
        raise ValueError(f"{path}: the grouping tower must be a single detector, not a two_tower model")
    model = build_detector(options)
    model.load_state_dict(checkpoint["state_dict"])
    return model, options


def build_two_tower(
    options: DetectorOptions,
    backbone: nn.Module,
    transform: PastingTransform,
    grouping: tuple[DetectorBase, DetectorOptions] | None = None,
) -> TwoTowerRCNN:
    """GGN's two-tower model: grouping detector from `options.grouping_model` (or `grouping`,
    when rebuilding a saved model) + a recognition tower on `backbone`."""
    if grouping is None:
        if not options.grouping_model:
            raise ValueError("arch two_tower needs grouping_model (the grouping run's model.pt)")
        grouping = load_grouping_detector(options.grouping_model)
    grouping_model, grouping_options = grouping
    if not (options.feed_in_rpn or grouping_options.has_masks):
        raise ValueError("the grouping detector has no mask head: use feed_in_rpn or a run with masks")
    in_channels = options.fpn_channels + int(options.use_group_mask)
    roi_heads = build_roi_heads(replace(options, fpn_channels=in_channels), options.refine_grouping)
    return TwoTowerRCNN(
        grouping_model,
        grouping_options,
        backbone,
        roi_heads,
        transform,
        feed_in_rpn=options.feed_in_rpn,
        use_group_mask=options.use_group_mask,
        refine_grouping=options.refine_grouping,
        freeze_grouping=options.freeze_grouping,
        freeze_backbone=options.freeze_backbone,
        detach_mask_features=options.detach_mask_features,
    )
