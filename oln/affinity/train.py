"""Train the pairwise-affinity network on seen-category instance masks (GGN stage 1).

Loss (GGN): binary cross-entropy with logits over valid pairs, positive ("same
instance") pairs weighted by `pos_weight` (0.05), normalised per image by its number of
valid pairs and averaged over the batch. Batches are padded to a multiple of 32 with
ignored labels, so padding never forms valid pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from oln.affinity.model import IMAGENET_MEAN, IMAGENET_STD, PAModelOptions, build_pa_model, save_pa_model
from oln.affinity.targets import affinity_targets, instance_label_map, num_affinity_channels
from oln.data.transforms import build_transforms
from oln.engine import TrainOptions, seed_model_init, train
from oln.plots import plot_curve
from oln.schedule import resolve_schedule

PAD_MULTIPLE = 32
EPS = 1e-5


@dataclass
class PATargetOptions:
    """Affinity target options.

    Attributes:
        neighbor_distances: pixel distances d of the compared neighbours (GGN: [1]).
        reduction: none (8 * len(d) channels) | mean (GGN, 1 channel) | min (1 channel).
        pos_weight: BCE weight of same-instance pairs (GGN: 0.05).
    """

    neighbor_distances: list[int] = field(default_factory=lambda: [1])
    reduction: str = "mean"
    pos_weight: float = 0.05


@dataclass
class PADataOptions:
    """Training-data options.

    Attributes:
        max_size: shrink images so the longer side is <= max_size (0 = original
            resolution, as GGN on COCO).
        flip: random horizontal flip (p = 0.5; GGN's PA training does not flip).
        scale_range: [min, max] random rescale factor ([1, 1] = off).
        crop_size: random square crop side in pixels (0 = off).
    """

    max_size: int = 0
    flip: bool = False
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])
    crop_size: int = 0


def _default_pa_train() -> TrainOptions:
    """GGN's PA schedule: SGD 0.02, 20 epochs of 1 image per GPU (8 GPUs), lr step after epoch 15."""
    return TrainOptions(iterations=0, epochs=20, lr_step_epochs=[15], batch_size=1, optimizer="sgd", lr=0.02,
                        momentum=0.9, weight_decay=1e-4, warmup_iters=500, schedule="step",
                        checkpoint_every=5000, log_every=50)


@dataclass
class PATrainOptions:
    """Everything `train_pa` needs: model, targets, data, and the engine's loop options."""

    model: PAModelOptions = field(default_factory=PAModelOptions)
    target: PATargetOptions = field(default_factory=PATargetOptions)
    data: PADataOptions = field(default_factory=PADataOptions)
    train: TrainOptions = field(default_factory=_default_pa_train)


def pad_batch(images: list[torch.Tensor], multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Stack (3, H, W) images into (B, 3, Hp, Wp), zero-padded bottom/right to a multiple."""
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    hp, wp = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    out = images[0].new_zeros((len(images), 3, hp, wp))
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]] = im
    return out


def batch_label_maps(targets: list[dict], size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(B, Hp, Wp) int64 instance label maps on `device`; padding and crowd are ignored (-1)."""
    return torch.stack([
        instance_label_map(t["masks"].to(device), t.get("iscrowd"), size=size) for t in targets
    ])


def affinity_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, pos_weight: float = 0.05
) -> torch.Tensor:
    """GGN's affinity loss.

    Args:
        logits, target: (B, C, H, W); target in [0, 1].
        valid: bool (B, C, H, W) pairs that count.
        pos_weight: weight of the positive (same-instance) term.
    Returns:
        scalar: mean over images of sum(valid * bce) / (sum(valid) + 1e-5).
    """
    weight = torch.tensor([pos_weight], device=logits.device, dtype=torch.float32)
    per_pair = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=weight, reduction="none")
    valid = valid.float()
    per_image = (per_pair * valid).flatten(1).sum(1) / (valid.flatten(1).sum(1) + EPS)
    return per_image.mean()


def make_loss_fn(target_options: PATargetOptions):
    """Engine loss function: `(model, (images, targets), device) -> {"loss_pa": ...}`."""

    def loss_fn(model, batch, device):
        images, targets = batch
        x = pad_batch(images).to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        labels = batch_label_maps(targets, tuple(x.shape[-2:]), device)
        target, valid = affinity_targets(labels, target_options.neighbor_distances, target_options.reduction)
        logits = model(x)
        return {"loss_pa": affinity_loss(logits, target, valid, target_options.pos_weight)}

    return loss_fn


def model_meta(options: PATrainOptions) -> dict:
    """What inference needs to know about a trained model."""
    return {
        "reduction": options.target.reduction,
        "neighbor_distances": list(options.target.neighbor_distances),
        "out_channels": num_affinity_channels(options.target.neighbor_distances, options.target.reduction),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "data": asdict(options.data),
        "train_options": asdict(options),
    }


def train_pa(
    train_json: str | Path,
    image_root: str | Path,
    seen_category_ids: list[int],
    options: PATrainOptions,
    out_dir: str | Path,
    filter_empty_gt: bool = False,
) -> Path:
    """Train the affinity network on seen-category masks.

    Args:
        train_json: COCO json of the training split.
        image_root: folder the `file_name`s are relative to.
        seen_category_ids: categories whose masks supervise the network.
        options: `PATrainOptions`.
        out_dir: receives model.pt, log.jsonl, curve.png, checkpoints/.
        filter_empty_gt: train only on images with a seen-category annotation (GGN).
    Returns:
        path of `out_dir/model.pt`.
    """
    from oln.data.coco import CocoInstances, collate_list

    out_dir = Path(out_dir)
    transform = build_transforms(options.data.max_size, options.data.flip, options.data.scale_range,
                                 options.data.crop_size)
    dataset = CocoInstances(train_json, image_root, category_ids=list(seen_category_ids),
                            transform=transform, include_pseudo=False, filter_empty_gt=filter_empty_gt)
    out_channels = num_affinity_channels(options.target.neighbor_distances, options.target.reduction)
    seed_model_init(options.train.seed)
    model = build_pa_model(options.model, out_channels)
    train_options = resolve_schedule(options.train, len(dataset))
    model = train(model, dataset, collate_list, make_loss_fn(options.target), train_options, out_dir,
                  desc="train_pa")
    if _is_rank_zero():
        save_pa_model(out_dir / "model.pt", model, model_meta(options))
        plot_curve(out_dir / "log.jsonl", out_dir / "curve.png", title="pairwise affinity")
    return out_dir / "model.pt"


def _is_rank_zero() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
        torch.distributed.get_rank() == 0
